// The stale-task sweeper (after River's JobRescuer). Row-level security lets no transaction see
// across tenants, so it works tenant by tenant, exactly as the engine does everywhere else: for each
// active tenant (paged by id), one transaction in the tenant's scope pages through its in-flight
// tasks and its ready tasks without a job (`id > cursor ORDER BY id LIMIT n`, on two partial
// indexes that hold only such rows), lets the pure decideSweep() judge each against its job and the
// database clock, and fixes what it must, fenced on the status and attempt it saw, so it is safe
// beside live workers and beside another sweeper. It never waits on a worker: the tasks it acts on
// are locked with SKIP LOCKED (one a frozen worker's open transaction holds is left for the next
// run), and its transactions run with a lock_timeout, so a blocked or slow tenant is passed over
// and never holds up the others' recovery.
import type { PgBoss } from 'pg-boss'
import type pg from 'pg'
import { attemptStateOf } from '../core/retry.ts'
import { decideSweep, type SweepCandidate } from '../core/sweep-plan.ts'
import { BOSS_SCHEMA } from '../db/names.ts'
import {
  type Db,
  isTimedOut,
  type TenantScope,
  type TxTimeouts,
  unlessLocked,
  withTimeouts,
} from '../db/tx.ts'
import { isTransient } from './completer.ts'
import { failAttemptIn } from './fail.ts'
import { requeueTasks, type RequeueItem } from './requeue.ts'
import { dueWaits, expireWaits, type WaitDeps } from './waits.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { JsonLimits } from '../core/json.ts'
import type { DeadWorkers } from './liveness.ts'

export interface SweepOptions {
  /** For wait tasks timed out here (their results are encrypted like any task's). */
  keyRing: KeyRing
  limits: JsonLimits
  /** A running task whose heartbeat is older than this is taken as lost. */
  staleAfterMs: number
  /** Rows per page. */
  batchSize: number
  /** Pages per tenant and run at most, so one run is bounded; the next run starts over. */
  maxPages: number
  /** lock_timeout and statement_timeout of the sweep's transactions (absent: the server's). */
  timeouts?: TxTimeouts
  /**
   * Workers found dead by their database session (src/flow/liveness.ts) and the database time they
   * were seen dead: their running tasks whose attempt started before then are lost, whatever their
   * heartbeat says.
   */
  deadWorkers?: DeadWorkers | undefined
}

export interface SweepReport {
  scanned: number
  requeued: number
  lost: number
  pages: number
  /** Active tenants examined. */
  tenants: number
  /** Tenants in a database of their own that could not be reached (the next run tries again). */
  unreachable: string[]
  /** Waits past their deadline that the sweeper timed out (their timer job was lost). */
  waitsExpired: number
  /**
   * Tenants whose sweep failed with an error that is not an outage (the error's message): passed
   * over, so that one tenant's bad row does not stop the others' recovery; the next sweep tries again.
   */
  failed: { tenantId: string; message: string }[]
  /**
   * Tasks to recover that another transaction held locked (a worker frozen mid-completion): left
   * alone, for the next sweep.
   */
  skipped: number
  /** Tenants passed over because a lock or a statement timed out (the next sweep tries again). */
  blocked: string[]
  /**
   * Tasks the sweep failed for good (their worker was lost and no attempt is left), and the
   * workflows that failed with them, each with the database its store names (Store.key): the worker
   * that would have counted them in the metrics is gone, so the sweep's caller counts them.
   */
  ended: {
    tasks: { tenantId: string; agentId: string; database: string }[]
    workflows: { tenantId: string; type: string; durationMs: number; database: string }[]
  }
}

// In-flight tasks, and ready tasks that have no job (only after a bug or a manual edit).
const SCAN = `
SELECT t.tenant_id, t.id, t.workflow_id, t.status, t.attempt, t.failures, t.max_attempts, t.backoff_ms,
  t.backoff_max_ms, t.timeout_ms, t.queue, t.agent_id, t.job_id, j.state AS job_state,
  coalesce(j.started_on < now() - $3 * interval '1 millisecond', false) AS job_stale,
  coalesce(t.heartbeat_at < now() - $3 * interval '1 millisecond', true) AS heartbeat_stale,
  coalesce(t.worker_id = ANY($5::text[]) AND t.started_at <= $6::timestamptz, false) AS worker_dead
FROM agent_coordination t
LEFT JOIN ${BOSS_SCHEMA}.job j ON j.name = t.queue AND j.id = t.job_id
WHERE t.tenant_id = $1 AND t.id > $2::uuid
  AND (t.status IN ('queued', 'running') OR (t.status = 'pending' AND t.deps_remaining = 0))
  AND t.hold_reason IS NULL -- held for a budget, without a job on purpose (src/usage/holds.ts)
ORDER BY t.id
LIMIT $4`

// Of the tasks to act on, those no other transaction holds, locked until the sweep's commit: what a
// worker holds (a completion under way, or frozen mid-way) is skipped instead of waited for.
const LOCK = `
SELECT id FROM agent_coordination
WHERE tenant_id = $1 AND id = ANY($2::uuid[])
FOR NO KEY UPDATE SKIP LOCKED`

/**
 * Sweeps the given tenants, each in its own database's store. A tenant database that cannot be
 * reached is noted and passed over, so one database down does not stop the others' recovery.
 */
export async function sweepOnce(
  storeOf: (scope: TenantScope) => Promise<{ pool: pg.Pool; boss: PgBoss; key: string }>,
  scopes: AsyncIterable<TenantScope> | Iterable<TenantScope>,
  options: SweepOptions,
): Promise<SweepReport> {
  const report: SweepReport = {
    scanned: 0,
    requeued: 0,
    lost: 0,
    pages: 0,
    tenants: 0,
    unreachable: [],
    waitsExpired: 0,
    failed: [],
    skipped: 0,
    blocked: [],
    ended: { tasks: [], workflows: [] },
  }
  for await (const scope of scopes) {
    try {
      const { pool, boss, key } = await storeOf(scope)
      await sweepTenant(pool, boss, key, scope, options, report)
      await expireDueWaits(
        { pool, boss, keyRing: options.keyRing, limits: options.limits },
        scope,
        options,
        report,
      )
    } catch (error) {
      if (isTransient(error)) {
        // The control database away stops the sweep; a tenant database away is passed over.
        if (!scope.database) throw error
        report.unreachable.push(scope.tenantId)
        continue
      }
      if (isTimedOut(error)) {
        report.blocked.push(scope.tenantId)
        continue
      }
      report.failed.push({
        tenantId: scope.tenantId,
        message: error instanceof Error ? error.message : String(error),
      })
      continue
    }
    report.tenants++
  }
  return report
}

async function sweepTenant(
  pool: pg.Pool,
  boss: PgBoss,
  database: string,
  scope: TenantScope,
  options: SweepOptions,
  report: SweepReport,
): Promise<void> {
  let cursor = '00000000-0000-0000-0000-000000000000'
  for (let pages = 0; pages < options.maxPages; pages++) {
    // What this page's transaction ended: counted only once it committed (a retried body starts over).
    let ended: SweepReport['ended'] = { tasks: [], workflows: [] }
    const scanned = await withTimeouts(options.timeouts)(pool, scope, async (db) => {
      ended = { tasks: [], workflows: [] }
      const { rows } = await db.executeSql(SCAN, [
        scope.tenantId,
        cursor,
        options.staleAfterMs,
        options.batchSize,
        options.deadWorkers?.ids ?? [],
        options.deadWorkers?.seenAt ?? null,
      ])
      const candidates = rows.map(toCandidate)
      const free = await lockFree(db, scope, candidates, report)
      const requeue: RequeueItem[] = []
      for (const c of candidates) {
        const action = decideSweep(c)
        if (!free.has(c.taskId)) continue
        if (action.kind === 'requeue') {
          requeue.push({
            taskId: c.taskId,
            attempt: c.attempt,
            status: c.status,
            reason: action.reason,
            ...(c.jobId ? { oldJob: { queue: c.queue, jobId: c.jobId } } : {}),
          })
        } else if (action.kind === 'lost_worker') {
          // Failing a task for good fails its workflow, whose row a sibling's completion may hold.
          const outcome = await unlessLocked(db, null, () =>
            failAttemptIn(boss, db, scope, {
              ...c,
              error: { name: 'WorkerLost', message: action.reason },
              permanent: false,
              action: 'task_lost',
              ...(c.jobId && c.jobState && !['completed', 'cancelled', 'failed'].includes(c.jobState)
                ? { job: { jobId: c.jobId } }
                : {}),
            }),
          )
          if (outcome === null) report.skipped++
          else if (outcome.kind !== 'lease_lost') {
            report.lost++
            if (outcome.kind === 'failed') {
              ended.tasks.push({ tenantId: scope.tenantId, agentId: c.agentId, database })
              if (outcome.workflow)
                ended.workflows.push({ tenantId: scope.tenantId, ...outcome.workflow, database })
            }
          }
        }
      }
      report.requeued += await requeueUnlessLocked(boss, db, scope, requeue, report)
      return candidates
    })
    report.ended.tasks.push(...ended.tasks)
    report.ended.workflows.push(...ended.workflows)
    report.pages++
    report.scanned += scanned.length
    if (scanned.length < options.batchSize) return
    cursor = scanned[scanned.length - 1]!.taskId
  }
}

/**
 * Waits past their deadline, whose timer job should have timed them out: a backstop for a lost
 * timer job. The timeout is fenced on the wait's state, so racing its timer job is harmless.
 */
async function expireDueWaits(
  deps: WaitDeps,
  scope: TenantScope,
  options: SweepOptions,
  report: SweepReport,
): Promise<void> {
  for (let pages = 0; pages < options.maxPages; pages++) {
    const due = await withTimeouts(options.timeouts)(deps.pool, scope, (db) =>
      dueWaits(db, scope, options.batchSize),
    )
    if (due.length === 0) return
    // Those a delivery or their timer job resolved meanwhile are left alone, and not counted; those
    // another transaction holds are skipped (the next sweep comes back to them).
    const maintenance = options.timeouts ?? { lockTimeoutMs: 0, statementTimeoutMs: 0 }
    report.waitsExpired += (await expireWaits(deps, scope, due, [], maintenance)).expired
    if (due.length < options.batchSize) return
  }
}

/**
 * Locks, without waiting, the candidates the sweep must act on; those another transaction holds (a
 * worker's completion under way, or frozen mid-way) are counted as skipped and left for next time.
 */
async function lockFree(
  db: Db,
  scope: TenantScope,
  candidates: readonly SweepCandidate[],
  report: SweepReport,
): Promise<Set<string>> {
  const todo = candidates.filter((c) => decideSweep(c).kind !== 'none').map((c) => c.taskId)
  if (todo.length === 0) return new Set()
  const { rows } = await db.executeSql(LOCK, [scope.tenantId, todo])
  report.skipped += todo.length - rows.length
  return new Set(rows.map((r) => r.id as string))
}

/**
 * Requeues in one statement; should a row it needs be held all the same (a job's, past
 * lock_timeout), one task at a time, skipping the held ones. Returns the tasks requeued.
 */
async function requeueUnlessLocked(
  boss: PgBoss,
  db: Db,
  scope: TenantScope,
  items: readonly RequeueItem[],
  report: SweepReport,
): Promise<number> {
  const all = await unlessLocked(db, null, () => requeueTasks(boss, db, scope, items, 'task_recovered'))
  if (all) return all.length
  let requeued = 0
  for (const item of items) {
    const one = await unlessLocked(db, null, () => requeueTasks(boss, db, scope, [item], 'task_recovered'))
    if (one) requeued += one.length
    else report.skipped++
  }
  return requeued
}

function toCandidate(r: Record<string, any>): SweepCandidate {
  return {
    tenantId: r.tenant_id,
    taskId: r.id,
    workflowId: r.workflow_id,
    status: r.status,
    ...attemptStateOf(r),
    queue: r.queue,
    agentId: r.agent_id,
    jobId: r.job_id,
    jobState: r.job_state ?? null,
    jobStale: r.job_stale,
    heartbeatStale: r.heartbeat_stale,
    workerDead: r.worker_dead,
  }
}
