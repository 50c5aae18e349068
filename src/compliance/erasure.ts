// GDPR erasure, on the owner connection: of one data subject's workflows (found by their plain-text
// subject_key) or of a whole tenant's. The subject's running workflows are cancelled first (their
// agents aborted, late results fenced out), so no personal data is written after the erasure; then,
// in bounded batches:
//   * payload columns (workflows.input/error, agent_coordination.data/result/error, enterprise
//     members' input/error and their output in the run's summary, the payloads of events delivered
//     to the workflows) are replaced by an
//     {"$erased": true, "erasure": <id>} marker, without being read: they may be encrypted envelopes;
//   * audit rows get action_data {"$redacted": "erasure <id>"}, the one change the append-only
//     trigger allows (equilateral.audit_redaction): every other column stays, and the seal kept the
//     data's hash, so the audit chain still verifies;
//   * the subject key itself is cleared;
// and the last batch's transaction records one `deletion` compliance event with the counts (the
// subject only as a SHA-256, so the record holds no personal data). Structure (ids, statuses,
// timestamps) and compliance events (ids and statuses only) are kept. Running it again is harmless:
// an interrupted erasure is completed by running it again.
import { createHash, randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { APP_SCHEMA, BOSS_SCHEMA } from '../db/names.ts'
import type { Db, TenantScope } from '../db/tx.ts'
import { InvalidInputError } from '../errors.ts'
import { cancelWorkflow } from '../flow/cancel.ts'
import { DEAD_LETTER_QUEUE } from '../queue/boss.ts'
import { ERASURE_ACTOR, ownerTenant, ownerTx, recordComplianceEvent } from './owner.ts'

export interface ErasureReport {
  tenantId: string
  /** Ties the markers, the redacted audit rows and the deletion event together. */
  erasureId: string
  scope: 'subject' | 'tenant'
  /** Running workflows cancelled before their data was erased. */
  cancelled: number
  workflows: number
  tasks: number
  auditRows: number
  enterpriseMembers: number
  /** `deletion` compliance events written (one per regime that applies). */
  events: number
}

export interface ErasureOptions {
  /** Workflows (or audit rows, in the tenant-wide pass) per transaction. Default 200. */
  batchSize?: number
}

const CANCEL_PAGE = 100
const MAX_CANCEL_PAGES = 1000
const ZERO_UUID = '00000000-0000-0000-0000-000000000000'

/**
 * The CTEs `members` and `runs`: the enterprise members `where` picks (alias m; $1 the tenant, $2
 * the erased marker) get the marker, and their runs' summaries lose the tenant's output and error.
 */
function erasedMembers(where: string): string {
  return `members AS (
  UPDATE ${APP_SCHEMA}.enterprise_run_tenants m SET input = CASE WHEN m.input IS NULL THEN NULL ELSE $2::jsonb END,
    error = CASE WHEN m.error IS NULL THEN NULL ELSE $2::jsonb END, updated_at = now()
  ${where}
  RETURNING m.run_id
),
runs AS (
  UPDATE ${APP_SCHEMA}.enterprise_runs r
  SET summary = jsonb_set(r.summary, ARRAY['tenants', $1],
    ((r.summary #> ARRAY['tenants', $1]) - 'output' - 'error') || jsonb_build_object('$erased', true))
  WHERE r.id IN (SELECT run_id FROM members) AND jsonb_typeof(r.summary #> ARRAY['tenants', $1]) = 'object'
  RETURNING 1
)`
}

/**
 * The statement of one batch: `pick` is the CTE `w` choosing the workflows (locked), $1 is the
 * tenant, $2 the erased marker, $3 the audit redaction marker; the picker's own parameters follow.
 */
function eraseBatch(pick: string): string {
  return `
WITH w AS (${pick}),
wf AS (
  UPDATE workflows x SET input = CASE WHEN x.input IS NULL THEN NULL ELSE $2::jsonb END,
    error = CASE WHEN x.error IS NULL THEN NULL ELSE $2::jsonb END, subject_key = NULL, updated_at = now()
  FROM w WHERE x.tenant_id = $1 AND x.id = w.id
  RETURNING x.id
),
tasks AS (
  UPDATE agent_coordination c SET data = CASE WHEN c.data IS NULL THEN NULL ELSE $2::jsonb END,
    result = CASE WHEN c.result IS NULL THEN NULL ELSE $2::jsonb END,
    error = CASE WHEN c.error IS NULL THEN NULL ELSE $2::jsonb END, updated_at = now()
  FROM w WHERE c.tenant_id = $1 AND c.workflow_id = w.id
  RETURNING 1
),
audit AS (
  UPDATE agent_audit_log a SET action_data = jsonb_build_object('$redacted', $3::text)
  FROM w WHERE a.tenant_id = $1 AND a.workflow_id = w.id
    AND a.action_data IS DISTINCT FROM jsonb_build_object('$redacted', a.action_data ->> '$redacted')
  RETURNING 1
),
events AS (
  UPDATE workflow_events e SET payload = CASE WHEN e.payload IS NULL THEN NULL ELSE $2::jsonb END
  FROM w WHERE e.tenant_id = $1 AND e.workflow_id = w.id
  RETURNING 1
),
${erasedMembers('FROM w WHERE m.tenant_id = $1 AND m.workflow_id = w.id')}
SELECT array(SELECT id::text FROM wf ORDER BY id) AS ids, (SELECT count(*) FROM tasks)::int AS tasks,
  (SELECT count(*) FROM audit)::int AS audit, (SELECT count(*) FROM events)::int AS inbox,
  (SELECT count(*) FROM members)::int AS members,
  (SELECT count(*) FROM runs)::int AS runs`
}

const BY_SUBJECT = eraseBatch(`
  SELECT id FROM workflows WHERE tenant_id = $1 AND subject_key = $4 AND status <> 'running'
  ORDER BY id LIMIT $5 FOR UPDATE`)

const BY_TENANT = eraseBatch(`
  SELECT id FROM workflows WHERE tenant_id = $1 AND id > $4::uuid AND status <> 'running'
  ORDER BY id LIMIT $5 FOR UPDATE`)

// Tenant-wide, after the workflows: audit rows of workflows that no longer exist (purged), by id.
const AUDIT_PASS = `
WITH a AS (SELECT id FROM agent_audit_log WHERE tenant_id = $1 AND id > $2::bigint ORDER BY id LIMIT $3),
u AS (
  UPDATE agent_audit_log x SET action_data = jsonb_build_object('$redacted', $4::text)
  FROM a WHERE x.tenant_id = $1 AND x.id = a.id
    AND x.action_data IS DISTINCT FROM jsonb_build_object('$redacted', x.action_data ->> '$redacted')
  RETURNING 1
)
SELECT (SELECT max(id) FROM a)::text AS last, (SELECT count(*) FROM a)::int AS seen, (SELECT count(*) FROM u)::int AS n`

// Tenant-wide, at the end: enterprise members without a workflow (rejected) and their runs' summaries.
const TENANT_MEMBERS = `
WITH changed AS (
  UPDATE ${APP_SCHEMA}.enterprise_run_tenants m SET input = CASE WHEN m.input IS NULL THEN NULL ELSE $2::jsonb END,
    error = CASE WHEN m.error IS NULL THEN NULL ELSE $2::jsonb END, updated_at = now()
  WHERE m.tenant_id = $1 AND m.workflow_id IS NULL
  RETURNING 1
),
r AS (
  UPDATE ${APP_SCHEMA}.enterprise_runs r
  SET summary = jsonb_set(r.summary, ARRAY['tenants', $1],
    ((r.summary #> ARRAY['tenants', $1]) - 'output' - 'error') || jsonb_build_object('$erased', true))
  WHERE jsonb_typeof(r.summary #> ARRAY['tenants', $1]) = 'object'
    AND NOT ((r.summary #> ARRAY['tenants', $1]) ? '$erased')
  RETURNING 1
)
SELECT (SELECT count(*) FROM changed)::int AS members`

// Dead-lettered jobs carry the failed task's error (pg-boss keeps them for its retention period).
const DEAD_LETTERS = `
UPDATE ${BOSS_SCHEMA}.job SET data = (data - 'error') || jsonb_build_object('error', $3::jsonb)
WHERE name = '${DEAD_LETTER_QUEUE}' AND data ->> 't' = $1 AND ($2::text[] IS NULL OR data ->> 'w' = ANY ($2))
  AND data ? 'error'`

interface Deps {
  /** The owner's pool on the database the tenant's data is in. */
  admin: pg.Pool
  boss: PgBoss
  /**
   * The owner's pool on the control database, when that is another database (database-per-tenant):
   * enterprise runs are control rows, erased there first.
   */
  control?: pg.Pool
}

// database-per-tenant: a tenant's enterprise members (of the given workflows, or all) in the control
// database, with their runs' summaries. Run before the tenant's own rows, so an erasure interrupted
// between the two databases finds the same workflows again when it is run again.
const CONTROL_MEMBERS = `
WITH ${erasedMembers('WHERE m.tenant_id = $1 AND ($3::uuid[] IS NULL OR m.workflow_id = ANY ($3))')}
SELECT (SELECT count(*) FROM members)::int AS members`

async function eraseControlMembers(
  deps: Deps,
  scope: TenantScope,
  select: string | null,
  params: unknown[],
  erased: string,
): Promise<number> {
  const control = deps.control
  if (!control || control === deps.admin) return 0
  const run = async (ids: string[] | null) => {
    const { rows } = await control.query(CONTROL_MEMBERS, [scope.tenantId, erased, ids])
    return (rows[0]?.members as number | undefined) ?? 0
  }
  if (select === null) return run(null)
  let n = 0
  for (let after = ZERO_UUID; ;) {
    const ids = await ownerTx(deps.admin, scope, [], async (db) => {
      const { rows } = await db.executeSql(select, [...params, after, CANCEL_PAGE])
      return rows.map((r) => r.id as string)
    })
    if (ids.length > 0) n += await run(ids)
    if (ids.length < CANCEL_PAGE) return n
    after = ids[ids.length - 1] as string
  }
}

function newReport(tenantId: string, scope: ErasureReport['scope']): ErasureReport {
  return {
    tenantId,
    erasureId: randomUUID(),
    scope,
    cancelled: 0,
    workflows: 0,
    tasks: 0,
    auditRows: 0,
    enterpriseMembers: 0,
    events: 0,
  }
}

function markers(report: ErasureReport): { erased: string; redacted: string } {
  return {
    erased: JSON.stringify({ $erased: true, erasure: report.erasureId }),
    redacted: `erasure ${report.erasureId}`,
  }
}

/** Cancels the running workflows `select` finds (its last parameter is the page size). */
async function cancelRunning(
  deps: Deps,
  scope: TenantScope,
  select: string,
  params: unknown[],
  report: ErasureReport,
): Promise<void> {
  for (let page = 0; page < MAX_CANCEL_PAGES; page++) {
    const ids = await ownerTx(deps.admin, scope, [], async (db) => {
      const { rows } = await db.executeSql(select, [...params, CANCEL_PAGE])
      return rows.map((r) => r.id as string)
    })
    if (ids.length === 0) return
    for (const id of ids) {
      const r = await cancelWorkflow({ pool: deps.admin, boss: deps.boss }, scope, id, {
        reason: `erasure ${report.erasureId}`,
        actor: ERASURE_ACTOR,
      })
      if (r.cancelled) report.cancelled++
    }
  }
}

/** Adds a batch's counts to `report`; returns the number of workflows in the batch. */
function add(report: ErasureReport, row: Record<string, unknown>): number {
  const ids = row.ids as string[]
  report.workflows += ids.length
  report.tasks += row.tasks as number
  report.auditRows += row.audit as number
  report.enterpriseMembers += row.members as number
  return ids.length
}

async function recordDeletion(db: Db, report: ErasureReport, extra: Record<string, unknown>): Promise<void> {
  const { tenantId, erasureId, scope, cancelled, workflows, tasks, auditRows, enterpriseMembers } = report
  report.events = await recordComplianceEvent(db, tenantId, ERASURE_ACTOR, 'deletion', {
    erasure: erasureId,
    scope,
    ...extra,
    cancelled,
    workflows,
    tasks,
    auditRows,
    enterpriseMembers,
  })
}

/** Erases one data subject's personal data in a tenant (a suspended tenant too). */
export async function eraseSubject(
  deps: Deps,
  tenantId: string,
  subjectKey: string,
  options: ErasureOptions = {},
): Promise<ErasureReport> {
  if (typeof subjectKey !== 'string' || subjectKey.length === 0 || subjectKey.length > 200) {
    throw new InvalidInputError('subjectKey must be a string of 1-200 characters', '$.subjectKey')
  }
  const limit = options.batchSize ?? 200
  const { scope } = await ownerTenant(deps.admin, tenantId)
  const report = newReport(scope.tenantId, 'subject')
  const { erased, redacted } = markers(report)
  const t = scope.tenantId
  report.enterpriseMembers += await eraseControlMembers(
    deps,
    scope,
    `SELECT id FROM workflows WHERE tenant_id = $1 AND subject_key = $2 AND id > $3::uuid ORDER BY id LIMIT $4`,
    [t, subjectKey],
    erased,
  )
  await cancelRunning(
    deps,
    scope,
    `SELECT id FROM workflows WHERE tenant_id = $1 AND subject_key = $2 AND status = 'running' LIMIT $3`,
    [t, subjectKey],
    report,
  )
  for (;;) {
    // Counts are kept in a copy until the transaction commits (it may be retried).
    const { total, last } = await ownerTx(deps.admin, scope, ['equilateral.audit_redaction'], async (db) => {
      const { rows } = await db.executeSql(BY_SUBJECT, [t, erased, redacted, subjectKey, limit])
      const row = rows[0] as Record<string, unknown>
      const total = { ...report }
      const n = add(total, row)
      if (n > 0) await db.executeSql(DEAD_LETTERS, [t, row.ids, erased])
      if (n === limit) return { total, last: false }
      await recordDeletion(db, total, { subject: createHash('sha256').update(subjectKey).digest('hex') })
      return { total, last: true }
    })
    Object.assign(report, total)
    if (last) return report
  }
}

/** Erases the personal data of a whole tenant (active or suspended); the tenant itself stays. */
export async function eraseTenant(
  deps: Deps,
  tenantId: string,
  options: ErasureOptions = {},
): Promise<ErasureReport> {
  const limit = options.batchSize ?? 200
  const { scope } = await ownerTenant(deps.admin, tenantId)
  const report = newReport(scope.tenantId, 'tenant')
  const { erased, redacted } = markers(report)
  const t = scope.tenantId
  report.enterpriseMembers += await eraseControlMembers(deps, scope, null, [], erased)
  await cancelRunning(
    deps,
    scope,
    `SELECT id FROM workflows WHERE tenant_id = $1 AND status = 'running' LIMIT $2`,
    [t],
    report,
  )
  for (let after = ZERO_UUID; ;) {
    const row = await ownerTx(deps.admin, scope, ['equilateral.audit_redaction'], async (db) => {
      const { rows } = await db.executeSql(BY_TENANT, [t, erased, redacted, after, limit])
      return rows[0] as Record<string, unknown>
    })
    const n = add(report, row)
    if (n < limit) break
    after = (row.ids as string[])[n - 1] as string
  }
  // Audit rows of workflows purged earlier have no workflow row left: a pass over the rows by id.
  for (let after = '0'; ;) {
    const { pass, total } = await ownerTx(deps.admin, scope, ['equilateral.audit_redaction'], async (db) => {
      const { rows } = await db.executeSql(AUDIT_PASS, [t, after, limit, redacted])
      const pass = rows[0] as { last: string | null; seen: number; n: number }
      const total = { ...report, auditRows: report.auditRows + pass.n }
      if (pass.seen === limit) return { pass, total }
      const members = await db.executeSql(TENANT_MEMBERS, [t, erased])
      total.enterpriseMembers += (members.rows[0]?.members as number | undefined) ?? 0
      await db.executeSql(DEAD_LETTERS, [t, null, erased])
      await recordDeletion(db, total, {})
      return { pass, total }
    })
    Object.assign(report, total)
    if (pass.seen < limit) return report
    after = pass.last as string
  }
}
