// Retention purge, on the owner connection: per tenant, in bounded batches (one transaction each,
// so an interrupted purge simply resumes at the next run), it deletes
//   * coordination data: workflows that ended more than the profile's dataRetentionDays ago, with
//     their tasks;
//   * compliance events whose retention_until has passed;
//   * audit rows: whole sealed blocks whose rows are all older than the audit retention, taken from
//     the start of the tenant's chain (the purged part is always a prefix), never an unsealed row,
//     never part of a block; each block is marked purged in the same transaction and keeps its
//     hashes as the anchor of the rest of the chain;
// and records, in that same transaction, one `purge` compliance event with what it deleted.
import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { APP_SCHEMA } from '../db/names.ts'
import { type Db, isTimedOut, type TenantScope, type TxTimeouts } from '../db/tx.ts'
import { isTransient } from '../flow/completer.ts'
import { scopeOfRow } from '../tenants.ts'
import { ownerTx, recordComplianceEvent, RETENTION_ACTOR, TENANT_COLUMNS, type TenantRow } from './owner.ts'
import { auditRetentionDays, type ComplianceProfile, parseComplianceProfile } from './profile.ts'

export interface PurgeCounts {
  workflows: number
  tasks: number
  auditRows: number
  auditBlocks: number
  complianceEvents: number
}

export interface TenantPurgeReport extends PurgeCounts {
  tenantId: string
  batches: number
  /** False when maxBatches stopped it with more to purge (the next run continues). */
  complete: boolean
}

export interface PurgeReport extends PurgeCounts {
  runId: string
  tenants: number
  batches: number
  complete: boolean
  /** Tenants whose row could not be used (malformed schema name, profile edited into nonsense). */
  problems: { tenantId: string; message: string }[]
}

export interface PurgeOptions {
  /** Rows (workflows, compliance events) or sealed blocks per statement. Default 500. */
  batchSize?: number
  /** Batches per tenant per run. Default 100. */
  maxBatches?: number
  /**
   * lock_timeout and statement_timeout of the purge's transactions: a tenant whose batch times out
   * (rows another transaction holds, a slow database) is reported in `problems` and the others are
   * purged; the next run resumes it.
   */
  timeouts?: TxTimeouts
}

const EMPTY: PurgeCounts = { workflows: 0, tasks: 0, auditRows: 0, auditBlocks: 0, complianceEvents: 0 }

// Ended workflows older than the cutoff, oldest first, with their tasks and their events. created_at < cutoff is implied by
// completed_at < cutoff and lets the (tenant_id, created_at) index find them.
const PURGE_DATA = `
WITH w AS (
  SELECT id FROM workflows
  WHERE tenant_id = $1 AND created_at < now() - make_interval(days => $2::int)
    AND completed_at < now() - make_interval(days => $2::int) AND status <> 'running'
  ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED
),
t AS (DELETE FROM agent_coordination c USING w WHERE c.tenant_id = $1 AND c.workflow_id = w.id RETURNING 1),
ev AS (DELETE FROM workflow_events e USING w WHERE e.tenant_id = $1 AND e.workflow_id = w.id RETURNING 1),
d AS (DELETE FROM workflows x USING w WHERE x.tenant_id = $1 AND x.id = w.id RETURNING 1)
SELECT (SELECT count(*) FROM d)::int AS workflows, (SELECT count(*) FROM t)::int AS tasks`

const PURGE_EVENTS = `
WITH e AS (
  SELECT id FROM compliance_events WHERE tenant_id = $1 AND retention_until < now()
  ORDER BY retention_until LIMIT $2 FOR UPDATE SKIP LOCKED
),
d AS (DELETE FROM compliance_events c USING e WHERE c.tenant_id = $1 AND c.id = e.id RETURNING 1)
SELECT count(*)::int AS n FROM d`

// The leading run of unpurged blocks whose rows are all present and all older than the cutoff. A
// block with a row missing is left alone: marking it purged would hide that from verify.
const PURGE_AUDIT = `
WITH b AS (
  SELECT s.block_no, s.row_ids FROM agent_audit_seals s
  WHERE s.tenant_id = $1 AND s.purged_at IS NULL ORDER BY s.block_no LIMIT $3 FOR UPDATE
),
age AS (
  SELECT b.block_no, b.row_ids, a.present, a.newest
  FROM b CROSS JOIN LATERAL (
    SELECT count(*) AS present, max(l."timestamp") AS newest
    FROM agent_audit_log l WHERE l.tenant_id = $1 AND l.id = ANY (b.row_ids)
  ) a
),
expired AS (
  SELECT g.block_no, g.row_ids FROM age g
  WHERE NOT EXISTS (
    SELECT FROM age h WHERE h.block_no <= g.block_no
      AND (h.present <> cardinality(h.row_ids) OR h.newest >= now() - make_interval(days => $2::int)))
),
del AS (
  DELETE FROM agent_audit_log l USING expired e WHERE l.tenant_id = $1 AND l.id = ANY (e.row_ids) RETURNING 1
),
sealed AS (
  UPDATE agent_audit_seals s SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}'
  FROM expired e WHERE s.tenant_id = $1 AND s.block_no = e.block_no RETURNING 1
)
SELECT (SELECT count(*) FROM del)::int AS rows, (SELECT count(*) FROM sealed)::int AS blocks`

/** One tenant, batch after batch, until nothing is left or maxBatches. */
export async function purgeTenant(
  admin: pg.Pool,
  scope: TenantScope,
  profile: ComplianceProfile,
  options: PurgeOptions & { runId?: string } = {},
): Promise<TenantPurgeReport> {
  const limit = options.batchSize ?? 500
  const maxBatches = options.maxBatches ?? 100
  const runId = options.runId ?? randomUUID()
  const dataDays = profile.dataRetentionDays
  const auditDays = auditRetentionDays(profile)
  const report: TenantPurgeReport = { tenantId: scope.tenantId, ...EMPTY, batches: 0, complete: false }
  const t = scope.tenantId
  while (report.batches < maxBatches) {
    const { counts, more } = await ownerTx(
      admin,
      scope,
      ['equilateral.audit_purge', 'equilateral.retention_purge'],
      async (db: Db) => {
        const c = { ...EMPTY }
        let more = false
        if (dataDays !== undefined) {
          const { rows } = await db.executeSql(PURGE_DATA, [t, dataDays, limit])
          c.workflows = rows[0]?.workflows ?? 0
          c.tasks = rows[0]?.tasks ?? 0
          more ||= c.workflows === limit
        }
        const events = await db.executeSql(PURGE_EVENTS, [t, limit])
        c.complianceEvents = events.rows[0]?.n ?? 0
        more ||= c.complianceEvents === limit
        if (auditDays !== undefined) {
          const { rows } = await db.executeSql(PURGE_AUDIT, [t, auditDays, limit])
          c.auditRows = rows[0]?.rows ?? 0
          c.auditBlocks = rows[0]?.blocks ?? 0
          more ||= c.auditBlocks === limit
        }
        if (Object.values(c).some((n) => n > 0)) {
          await recordComplianceEvent(db, t, RETENTION_ACTOR, 'purge', {
            run: runId,
            ...c,
            ...(dataDays !== undefined ? { dataRetentionDays: dataDays } : {}),
            ...(auditDays !== undefined ? { auditRetentionDays: auditDays } : {}),
          })
        }
        return { counts: c, more }
      },
      options.timeouts,
    )
    report.batches++
    for (const k of Object.keys(EMPTY) as (keyof PurgeCounts)[]) report[k] += counts[k]
    if (!more) {
      report.complete = true
      break
    }
  }
  return report
}

/**
 * Every tenant (active or suspended), a page at a time. `ownerOf` gives the owner's pool on a
 * tenant's own database (database-per-tenant), or null to pass the tenant over (its database is
 * purged by a schedule of its own); one that cannot be reached is reported in `problems` and the
 * others are purged.
 */
export async function purgeExpired(
  admin: pg.Pool,
  options: PurgeOptions = {},
  ownerOf: (scope: TenantScope) => pg.Pool | null = () => admin,
): Promise<PurgeReport> {
  const runId = randomUUID()
  const report: PurgeReport = { runId, ...EMPTY, tenants: 0, batches: 0, complete: true, problems: [] }
  for (let after = ''; ;) {
    const { rows } = await admin.query<TenantRow>(
      `SELECT ${TENANT_COLUMNS} FROM ${APP_SCHEMA}.tenants WHERE id > $1 ORDER BY id LIMIT 100`,
      [after],
    )
    for (const row of rows) {
      let scope: TenantScope
      let profile: ComplianceProfile
      try {
        scope = scopeOfRow(row)
      } catch (error) {
        report.problems.push({ tenantId: row.id, message: (error as Error).message })
        continue
      }
      try {
        profile = parseComplianceProfile(row.compliance_profile)
      } catch (error) {
        // Events still go when their own retention_until says so; data and audit rows are kept.
        report.problems.push({ tenantId: row.id, message: (error as Error).message })
        profile = {}
      }
      const owner = ownerOf(scope)
      if (!owner) continue
      let r: TenantPurgeReport
      try {
        r = await purgeTenant(owner, scope, profile, { ...options, runId })
      } catch (error) {
        if (isTimedOut(error)) {
          report.problems.push({ tenantId: row.id, message: `passed over: ${(error as Error).message}` })
          report.complete = false
          continue
        }
        if (!scope.database || !isTransient(error)) throw error
        report.problems.push({
          tenantId: row.id,
          message: `database unreachable: ${(error as Error).message}`,
        })
        report.complete = false
        continue
      }
      report.tenants++
      report.batches += r.batches
      report.complete &&= r.complete
      for (const k of Object.keys(EMPTY) as (keyof PurgeCounts)[]) report[k] += r[k]
    }
    if (rows.length < 100) return report
    after = rows[rows.length - 1]!.id
  }
}

/** Whether this connection may purge and erase: it must own the tenant tables (or be a superuser). */
export async function ownsTenantTables(admin: pg.Pool): Promise<boolean> {
  const { rows } = await admin.query(
    `SELECT pg_has_role(c.relowner, 'MEMBER') AS ok FROM pg_class c
     WHERE c.oid = to_regclass('${APP_SCHEMA}.agent_audit_log')`,
  )
  return rows[0]?.ok === true
}

/** The retention purge's pg-boss queue ('/' keeps it apart from every agent's `eq.<id>` queue). */
export const RETENTION_QUEUE = 'eq/retention'

/**
 * Creates the purge's queue if it is missing: one job queued and one active at most (a purge that
 * outlasts the schedule's period is not started twice), no pg-boss retries (the next run resumes).
 */
export async function ensureRetentionQueue(boss: PgBoss): Promise<void> {
  if (await boss.getQueue(RETENTION_QUEUE)) return
  try {
    await boss.createQueue(RETENTION_QUEUE, {
      policy: 'stately',
      retryLimit: 0,
      expireInSeconds: 3600,
      deleteAfterSeconds: 7 * 24 * 3600,
    })
  } catch (error) {
    // Another process created it between our read and our create.
    if (!(await boss.getQueue(RETENTION_QUEUE))) throw error
  }
}
