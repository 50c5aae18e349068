// Retention purge, on the maintenance connection (equilateral_maintenance, or the owner by default),
// through the SECURITY DEFINER function maintenance_purge (drizzle/tenant/0015), which refuses a
// retention shorter than the tenant's profile: per tenant, in bounded batches (one transaction each,
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
import { isTransient } from '../db/errors.ts'
import { scopeOfRow } from '../tenancy/tenants.ts'
import {
  maintenanceTx,
  recordComplianceEventTx,
  RETENTION_ACTOR,
  TENANT_COLUMNS,
  type TenantRow,
} from './owner.ts'
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

// What maintenance_purge deletes (drizzle/tenant/0015): ended workflows past dataRetentionDays with
// their tasks and events, compliance events past their retention_until, and the leading run of
// sealed audit blocks whose rows are all present and past the audit retention.
const PURGE = `SELECT purged_workflows AS workflows, purged_tasks AS tasks, purged_audit_rows AS "auditRows",
  purged_audit_blocks AS "auditBlocks", purged_events AS "complianceEvents"
FROM maintenance_purge($1, $2, $3, $4)`

/** One tenant, batch after batch, until nothing is left or maxBatches. */
export async function purgeTenant(
  maintenance: pg.Pool,
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
    const { counts, more } = await maintenanceTx(
      maintenance,
      scope,
      async (db: Db) => {
        const { rows } = await db.executeSql(PURGE, [t, dataDays ?? null, auditDays ?? null, limit])
        const c: PurgeCounts = { ...EMPTY, ...(rows[0] as Partial<PurgeCounts>) }
        const more = c.workflows === limit || c.complianceEvents === limit || c.auditBlocks === limit
        if (Object.values(c).some((n) => n > 0)) {
          await recordComplianceEventTx(db, t, RETENTION_ACTOR, 'purge', {
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
 * Every tenant (active or suspended), a page at a time, listed on `maintenance` (the control
 * database's). `ownerOf` gives the maintenance pool on a tenant's own database (database-per-tenant),
 * or null to pass the tenant over (its database is purged by a schedule of its own); one that cannot
 * be reached is reported in `problems` and the others are purged.
 */
export async function purgeExpired(
  maintenance: pg.Pool,
  options: PurgeOptions = {},
  ownerOf: (scope: TenantScope) => pg.Pool | null = () => maintenance,
): Promise<PurgeReport> {
  const runId = randomUUID()
  const report: PurgeReport = { runId, ...EMPTY, tenants: 0, batches: 0, complete: true, problems: [] }
  for (let after = ''; ;) {
    const { rows } = await maintenance.query<TenantRow>(
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

/**
 * Whether this connection may purge and erase: it may execute the maintenance functions (a login
 * in equilateral_maintenance, the owner, a superuser) and, in database-per-tenant mode, read the
 * tenant list.
 */
export async function canMaintain(maintenance: pg.Pool): Promise<boolean> {
  const { rows } = await maintenance.query(
    `SELECT CASE WHEN to_regprocedure($1) IS NULL THEN false
       ELSE has_function_privilege($1, 'EXECUTE') AND has_column_privilege($2, 'compliance_profile', 'SELECT') END AS ok`,
    [`${APP_SCHEMA}.maintenance_purge(text, integer, integer, integer)`, `${APP_SCHEMA}.tenants`],
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
