// GDPR erasure: of one data subject's workflows (found by their plain-text subject_key) or of a
// whole tenant's. The subject's running workflows are cancelled first, on the application
// connection like any cancellation (their agents aborted, late results fenced out), so no personal
// data is written after the erasure; then, on the maintenance connection (equilateral_maintenance,
// or the owner by default) and through its SECURITY DEFINER functions (drizzle/tenant/0015), which
// build the markers from the erasure id so nothing else can be written, in bounded batches:
//   * payload columns (workflows.input/error, agent_coordination.data/result/error, enterprise
//     members' input/error and their output in the run's summary, the payloads of events delivered
//     to the workflows) are replaced by an
//     {"$erased": true, "erasure": <id>} marker, without being read: they may be encrypted envelopes;
//   * audit rows get action_data {"$redacted": "erasure <id>"}, the one change the append-only
//     trigger allows (equilateral.audit_redaction, set by the function alone), which records it:
//     every other column stays, and the seal kept the data's hash, so the audit chain still verifies;
//   * the subject key itself is cleared;
// and the last batch's transaction records one `deletion` compliance event with the counts (the
// subject only as a SHA-256, so the record holds no personal data). Structure (ids, statuses,
// timestamps) and compliance events (ids and statuses only) are kept. Running it again is harmless:
// an interrupted erasure is completed by running it again.
import { createHash, randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { APP_SCHEMA } from '../db/names.ts'
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import { InvalidInputError } from '../errors.ts'
import { cancelWorkflow } from '../flow/cancel.ts'
import { ERASURE_ACTOR, maintenanceTx, ownerTenant, recordComplianceEventTx } from './owner.ts'

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

// One batch (maintenance_erase): the workflows picked, locked, with their tasks, audit rows, events,
// enterprise members and dead letters erased. $3 the subject key, or null with $4 the last id done.
const BATCH = `SELECT e.ids, e.tasks, e.audit, e.inbox, e.members, e.runs,
  maintenance_erase_dead_letters($1, $2, e.ids) AS dead_letters
FROM maintenance_erase($1, $2, $3, $4, $5) e`

// Tenant-wide, after the workflows: audit rows of workflows that no longer exist (purged), by id.
const AUDIT_PASS = `SELECT last, seen, n FROM maintenance_redact_audit($1, $2, $3, $4)`

// Tenant-wide, at the end: enterprise members without a workflow (rejected), their runs' summaries,
// and every dead-lettered job of the tenant.
const TENANT_REST = `SELECT maintenance_erase_rest($1, $2) AS members,
  maintenance_erase_dead_letters($1, $2, NULL) AS dead_letters`

export interface Deps {
  /** The maintenance pool on the database the tenant's data is in. */
  maintenance: pg.Pool
  /**
   * The application's pool and pg-boss on that database: running workflows are found and cancelled
   * there, as any cancellation.
   */
  app: pg.Pool
  boss: PgBoss
  /**
   * The maintenance pool on the control database, when that is another database
   * (database-per-tenant): enterprise runs are control rows, erased there first.
   */
  control?: pg.Pool
}

async function eraseControlMembers(
  deps: Deps,
  scope: TenantScope,
  select: string | null,
  params: unknown[],
  erasureId: string,
): Promise<number> {
  const control = deps.control
  if (!control || control === deps.maintenance) return 0
  const run = async (ids: string[] | null) => {
    const { rows } = await control.query(
      `SELECT ${APP_SCHEMA}.maintenance_erase_members($1, $2, $3) AS members`,
      [scope.tenantId, erasureId, ids],
    )
    return (rows[0]?.members as number | undefined) ?? 0
  }
  if (select === null) return run(null)
  let n = 0
  for (let after = ZERO_UUID; ;) {
    const ids = await withTenantTx(deps.app, scope, async (db) => {
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

/** Cancels the running workflows `select` finds (its last parameter is the page size). */
export async function cancelRunning(
  deps: Pick<Deps, 'app' | 'boss'>,
  scope: TenantScope,
  select: string,
  params: unknown[],
  report: { erasureId: string; cancelled: number },
): Promise<void> {
  for (let page = 0; page < MAX_CANCEL_PAGES; page++) {
    const ids = await withTenantTx(deps.app, scope, async (db) => {
      const { rows } = await db.executeSql(select, [...params, CANCEL_PAGE])
      return rows.map((r) => r.id as string)
    })
    if (ids.length === 0) return
    for (const id of ids) {
      const r = await cancelWorkflow({ pool: deps.app, boss: deps.boss }, scope, id, {
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
  report.events = await recordComplianceEventTx(db, tenantId, ERASURE_ACTOR, 'deletion', {
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
  const { scope } = await ownerTenant(deps.maintenance, tenantId)
  const report = newReport(scope.tenantId, 'subject')
  const t = scope.tenantId
  report.enterpriseMembers += await eraseControlMembers(
    deps,
    scope,
    `SELECT id FROM workflows WHERE tenant_id = $1 AND subject_key = $2 AND id > $3::uuid ORDER BY id LIMIT $4`,
    [t, subjectKey],
    report.erasureId,
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
    const { total, last } = await maintenanceTx(deps.maintenance, scope, async (db) => {
      const { rows } = await db.executeSql(BATCH, [t, report.erasureId, subjectKey, null, limit])
      const row = rows[0] as Record<string, unknown>
      const total = { ...report }
      const n = add(total, row)
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
  const { scope } = await ownerTenant(deps.maintenance, tenantId)
  const report = newReport(scope.tenantId, 'tenant')
  const t = scope.tenantId
  report.enterpriseMembers += await eraseControlMembers(deps, scope, null, [], report.erasureId)
  await cancelRunning(
    deps,
    scope,
    `SELECT id FROM workflows WHERE tenant_id = $1 AND status = 'running' LIMIT $2`,
    [t],
    report,
  )
  for (let after = ZERO_UUID; ;) {
    const row = await maintenanceTx(deps.maintenance, scope, async (db) => {
      const { rows } = await db.executeSql(BATCH, [t, report.erasureId, null, after, limit])
      return rows[0] as Record<string, unknown>
    })
    const n = add(report, row)
    if (n < limit) break
    after = (row.ids as string[])[n - 1] as string
  }
  // Audit rows of workflows purged earlier have no workflow row left: a pass over the rows by id.
  for (let after = '0'; ;) {
    const { pass, total } = await maintenanceTx(deps.maintenance, scope, async (db) => {
      const { rows } = await db.executeSql(AUDIT_PASS, [t, report.erasureId, after, limit])
      const pass = rows[0] as { last: string | null; seen: number; n: number }
      const total = { ...report, auditRows: report.auditRows + pass.n }
      if (pass.seen === limit) return { pass, total }
      const rest = await db.executeSql(TENANT_REST, [t, report.erasureId])
      total.enterpriseMembers += (rest.rows[0]?.members as number | undefined) ?? 0
      await recordDeletion(db, total, {})
      return { pass, total }
    })
    Object.assign(report, total)
    if (pass.seen < limit) return report
    after = pass.last as string
  }
}
