// One scheduler tick for one tenant: in one tenant transaction, lock the due schedules nobody else
// holds (FOR UPDATE SKIP LOCKED), start a workflow per slot in that same transaction, and move the
// schedules on. Exactly one workflow per slot whatever the number of schedulers: a schedule is
// handled by one transaction at a time and moved past its slots when it commits (SKIP LOCKED, and
// the re-check of next_slot on a row another scheduler just updated), and should anything still
// start a slot twice, the idempotency key `schedule:<id>:<slot>` returns the first workflow.
//
// Slots are judged by the database clock (the transaction's now()). A due slot at most `graceMs`
// old is on time and starts a workflow; an older one was missed (no scheduler ran when it fell
// due) and follows the schedule's policy. The cost of a tick never depends on how long schedulers
// were down: missed slots are never listed, only the latest is looked up (and counted up to a cap).
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { WorkflowDefinition } from '../core/definition.ts'
import type { JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { isTimedOut, type TenantScope, type TenantTx, type TxTimeouts, withTimeouts } from '../db/tx.ts'
import { isTransient } from '../db/errors.ts'
import { startWorkflow, type StartDeps } from '../flow/start.ts'
import { APP_SCHEMA } from '../db/names.ts'
import { type CronSpec, latestSlot, nextSlot, slotsBetween } from './cron.ts'
import type { MissedPolicy } from './schedules.ts'

export interface TickOptions {
  /** How old a due slot may be and still be on time. */
  graceMs: number
  /** Due schedules one transaction handles at most (default 100). */
  batchSize?: number
  /** On-time slots of one schedule started per tick at most (default 100); the rest wait for the next tick. */
  maxSlotsPerSchedule?: number
  /** Judge slots by this instant instead of the database clock (tests, the test kit). */
  now?: Date
}

/** Missed slots counted per schedule at most (the count is only reported; it is never looped over beyond this). */
export const MISSED_COUNT_CAP = 100

export interface ScheduledStart {
  tenantId: string
  scheduleId: string
  workflowType: string
  slot: Date
  workflowId: string
  /** False when the slot's workflow already existed (its idempotency key): nothing new was started. */
  created: boolean
  /** True for the one workflow `catch-up-once` starts for a missed slot. */
  catchUp: boolean
}

export interface ScheduleProblem {
  tenantId: string
  scheduleId: string
  message: string
}

export interface ScheduleTickReport {
  /** Due schedules handled. */
  schedules: number
  /** Workflows started (created). */
  started: number
  /** Missed slots that started nothing (per schedule counted up to MISSED_COUNT_CAP). */
  skipped: number
  /** Workflows started by `catch-up-once` for a missed slot (included in `started`). */
  caughtUp: number
  /** Every slot handled with a workflow, including ones whose workflow already existed. */
  starts: ScheduledStart[]
  /** Due schedules of a workflow type this process does not know: left for a process that does. */
  unknownTypes: {
    tenantId: string
    scheduleId: string
    workflowType: string
    /** Its due slot is still on time: a process that knows the type would start it now. */
    onTime: boolean
  }[]
  /** Schedules whose start failed (rolled back to before them; they stay due and are tried again). */
  problems: ScheduleProblem[]
}

export function emptyTickReport(): ScheduleTickReport {
  return { schedules: 0, started: 0, skipped: 0, caughtUp: 0, starts: [], unknownTypes: [], problems: [] }
}

export interface TickDeps extends StartDeps {
  /** The registered definition of a type, or undefined. */
  definition: (type: string) => WorkflowDefinition<any> | undefined
  types: () => string[]
}

/** What to do with one schedule's due slots: pure, so its bounds are easy to see. */
export interface SlotPlan {
  /** Slots to start, earliest first. */
  start: Date[]
  /** Whether start[0] is the catch-up of a missed slot. */
  catchUp: boolean
  /** Missed slots that start nothing (counted up to MISSED_COUNT_CAP). */
  skipped: number
  /** The latest slot handled, or null when no slot was due after all. */
  lastSlot: Date | null
  nextSlot: Date
}

export function planSlots(
  spec: CronSpec,
  missed: MissedPolicy,
  due: Date,
  now: Date,
  graceMs: number,
  maxSlots: number,
): SlotPlan {
  if (!Number.isInteger(maxSlots) || maxSlots < 1) throw new RangeError('maxSlots must be a positive integer')
  const onTimeFrom = new Date(now.getTime() - graceMs)
  // `due` is a slot itself (nextSlot found it), and is used as one: listing slots from an instant
  // does not always find it again. cron-parser moves a local time that a DST gap skips on by the
  // gap (02:30 becomes 03:30 in New York) only when it walks across the gap, so a list that starts
  // at 03:30 itself would miss it, and the day's slot would be lost.
  // Slots in [due, onTimeFrom) were missed; the latest of them is looked up, never walked to.
  let latestMissed: Date | null = null
  let missedCount = 0
  if (due < onTimeFrom) {
    latestMissed = latestSlot(spec, new Date(onTimeFrom.getTime() - 1))
    if (!latestMissed || latestMissed < due) latestMissed = due
    missedCount = Math.max(1, slotsBetween(spec, due, latestMissed, MISSED_COUNT_CAP).length)
  }
  const onTime =
    due > now
      ? []
      : due >= onTimeFrom
        ? [due, ...slotsBetween(spec, new Date(due.getTime() + 1), now, maxSlots - 1)]
        : slotsBetween(spec, onTimeFrom, now, maxSlots)
  const full = onTime.length === maxSlots
  let start = onTime
  let catchUp = false
  if (latestMissed && missed === 'catch-up-once' && onTime.length === 0) {
    start = [latestMissed]
    catchUp = true
  }
  const lastSlot = onTime[onTime.length - 1] ?? latestMissed
  return {
    start,
    catchUp,
    skipped: missedCount - (catchUp ? 1 : 0),
    lastSlot,
    // All slots up to now are handled, unless this tick started as many as it may.
    nextSlot: nextSlot(spec, full && lastSlot ? lastSlot : now),
  }
}

// The due schedules of known types, locked (those another scheduler holds are skipped), and, in the
// same round trip, a few due ones of types this process does not know (not locked: left alone).
const DUE = `
WITH clock AS (SELECT coalesce($2::timestamptz, now()) AS now),
due AS (
  SELECT s.id, s.workflow_type, s.cron, s.timezone, s.input, s.missed, s.next_slot, clock.now
  FROM workflow_schedules s, clock
  WHERE s.tenant_id = $1 AND s.enabled AND s.next_slot <= clock.now AND s.workflow_type = ANY($3::text[])
    AND NOT (s.id = ANY($5::text[]))
  ORDER BY s.next_slot
  LIMIT $4
  FOR UPDATE OF s SKIP LOCKED
),
unknown AS (
  SELECT s.id, s.workflow_type, s.next_slot, clock.now FROM workflow_schedules s, clock
  WHERE s.tenant_id = $1 AND s.enabled AND s.next_slot <= clock.now AND NOT (s.workflow_type = ANY($3::text[]))
  ORDER BY s.next_slot DESC LIMIT 10
)
SELECT true AS known, * FROM due
UNION ALL
SELECT false, id, workflow_type, NULL, NULL, NULL, NULL, next_slot, now FROM unknown`

/**
 * Handles, in the caller's tenant transaction `tx`, up to `batchSize` of the tenant's due
 * schedules. Returns what it did; `full` says the batch was full (more schedules may be due).
 */
export async function tickTenantTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  deps: TickDeps,
  options: TickOptions,
  /**
   * Schedules whose start failed earlier in this pass: not selected again (they keep their slot
   * for the next pass), so that they cannot fill every batch and starve the schedules behind them.
   * Those failing now are added.
   */
  failed: Set<string>,
): Promise<ScheduleTickReport & { full: boolean }> {
  const tenantId = scope.tenantId
  const batchSize = options.batchSize ?? 100
  const maxSlots = options.maxSlotsPerSchedule ?? 100
  const report = emptyTickReport()
  const types = deps.types()
  const now = options.now ?? null
  const { rows: found } = await db.executeSql(DUE, [tenantId, now, types, batchSize, [...failed]])
  const rows = found.filter((r) => r.known)
  for (const r of found) {
    if (!r.known) {
      report.unknownTypes.push({
        tenantId,
        scheduleId: r.id,
        workflowType: r.workflow_type,
        onTime: r.next_slot.getTime() >= r.now.getTime() - options.graceMs,
      })
    }
  }
  for (const row of rows) {
    const def = deps.definition(row.workflow_type) as WorkflowDefinition<any>
    const spec = { cron: row.cron, timezone: row.timezone }
    await db.executeSql('SAVEPOINT schedule', [])
    try {
      const plan = planSlots(spec, row.missed, row.next_slot, row.now, options.graceMs, maxSlots)
      if (plan.start.length > 0) await deps.keyRing.prepareFor(db, scope, [row.input])
      const input = plan.start.length > 0 ? deps.keyRing.decrypt(tenantId, 'workflow.input', row.input) : null
      const starts: ScheduledStart[] = []
      for (const slot of plan.start) {
        const started = await startWorkflow(deps, scope, def, input, {
          db,
          idempotencyKey: `schedule:${row.id}:${slot.toISOString()}`,
          actor: `schedule:${row.id}`,
        })
        starts.push({
          tenantId,
          scheduleId: row.id,
          workflowType: def.name,
          slot,
          workflowId: started.id,
          created: started.created,
          catchUp: plan.catchUp,
        })
      }
      await db.executeSql(
        `UPDATE workflow_schedules SET last_slot = coalesce($3, last_slot), next_slot = $4, updated_at = now()
         WHERE tenant_id = $1 AND id = $2`,
        [tenantId, row.id, plan.lastSlot, plan.nextSlot],
      )
      await db.executeSql('RELEASE SAVEPOINT schedule', [])
      report.schedules++
      report.starts.push(...starts)
      report.started += starts.filter((s) => s.created).length
      report.caughtUp += starts.filter((s) => s.created && s.catchUp).length
      report.skipped += plan.skipped
    } catch (error) {
      await db.executeSql('ROLLBACK TO SAVEPOINT schedule', [])
      report.problems.push({ tenantId, scheduleId: row.id, message: (error as Error).message })
      failed.add(row.id)
    }
  }
  return { ...report, full: rows.length === batchSize }
}

/** Adds a tick's report to a running total. */
export function addTick(total: ScheduleTickReport, tick: ScheduleTickReport): void {
  total.schedules += tick.schedules
  total.started += tick.started
  total.skipped += tick.skipped
  total.caughtUp += tick.caughtUp
  total.starts.push(...tick.starts)
  total.unknownTypes.push(...tick.unknownTypes)
  total.problems.push(...tick.problems)
}

export interface ScheduleReport extends ScheduleTickReport {
  /** Active tenants examined. */
  tenants: number
  /** Tenants in a database of their own that could not be reached (the next run tries again). */
  unreachable: string[]
  /** Tenants passed over because a lock or a statement timed out (the next pass tries again). */
  blocked: string[]
}

export interface RunDeps {
  keyRing: KeyRing
  limits: JsonLimits
  definition: (type: string) => WorkflowDefinition<any> | undefined
  types: () => string[]
  /** `key` names the database (metrics). */
  storeOf: (scope: TenantScope) => Promise<{ pool: pg.Pool; boss: PgBoss; key: string }>
  /** Called for each workflow started, once its transaction committed. */
  started?: (start: ScheduledStart, database: string) => void
}

/**
 * One scheduler pass over the given tenants: per tenant, transactions of up to `batchSize` due
 * schedules, at most `maxBatches` of them. A tenant database that cannot be reached is noted and
 * passed over, so one database down does not stop the others' schedules; so is a tenant whose lock or
 * statement timed out (`timeouts`: a transaction that holds what the pass needs, a slow database).
 */
export async function runSchedules(
  deps: RunDeps,
  scopes: AsyncIterable<TenantScope> | Iterable<TenantScope>,
  options: TickOptions & { maxBatches?: number; timeouts?: TxTimeouts },
): Promise<ScheduleReport> {
  const report: ScheduleReport = { ...emptyTickReport(), tenants: 0, unreachable: [], blocked: [] }
  for await (const scope of scopes) {
    try {
      const { pool, boss, key } = await deps.storeOf(scope)
      const tickDeps: TickDeps = { ...deps, pool, boss }
      const failed = new Set<string>()
      for (let batch = 0; batch < (options.maxBatches ?? 10); batch++) {
        const { full, ...tick } = await withTimeouts(options.timeouts)(pool, scope, (db) =>
          tickTenantTx({ db, scope }, tickDeps, options, failed),
        )
        // The same due schedules of unknown types would be listed again by every batch.
        addTick(report, batch === 0 ? tick : { ...tick, unknownTypes: [] })
        for (const start of tick.starts) if (start.created) deps.started?.(start, key)
        if (!full) break
      }
    } catch (error) {
      if (isTimedOut(error)) {
        report.blocked.push(scope.tenantId)
        continue
      }
      if (!scope.database || !isTransient(error)) throw error
      report.unreachable.push(scope.tenantId)
      continue
    }
    report.tenants++
  }
  return report
}

// A fleet's processes all tick their scheduler; the one whose statement moves the pass on runs it.
// Concurrent takers serialise on the row, and the loser re-reads it (ON CONFLICT sees the winner's
// last_at), so one pass per interval runs across the fleet. Judged by the database clock.
const TAKE_PASS = `
INSERT INTO ${APP_SCHEMA}.fleet_passes AS p (pass, last_at) VALUES ($1, now())
ON CONFLICT (pass) DO UPDATE SET last_at = now()
WHERE p.last_at <= now() - $2::bigint * interval '1 millisecond'
RETURNING p.pass`

/**
 * Whether this process takes the pass over the pool's database: true unless another process took
 * it less than `everyMs` ago (database clock). One statement, no lock held: a pass that outlasts
 * the interval may meet the next one, which SKIP LOCKED and the slots' idempotency keys make safe.
 */
export async function takePass(pool: pg.Pool, pass: string, everyMs: number): Promise<boolean> {
  // 90%: a process whose timer fires a little early on the database's clock still takes its turn.
  const { rowCount } = await pool.query(TAKE_PASS, [pass, Math.floor(everyMs * 0.9)])
  return rowCount === 1
}

/**
 * Hands the pass back at once: the process that took it left due schedules of workflow types it
 * does not know (a fleet mid-deploy), so the next process to tick passes again instead of waiting
 * out the interval, until one that knows them has started them.
 */
export async function releasePass(pool: pg.Pool, pass: string): Promise<void> {
  await pool.query(`UPDATE ${APP_SCHEMA}.fleet_passes SET last_at = '-infinity' WHERE pass = $1`, [pass])
}
