// The stale-task sweeper (after River's JobRescuer). Row-level security lets no transaction see
// across tenants, so it works tenant by tenant, exactly as the engine does everywhere else: for each
// active tenant (paged by id), one transaction in the tenant's scope pages through its in-flight
// tasks and its ready tasks without a job (`id > cursor ORDER BY id LIMIT n`, on two partial
// indexes that hold only such rows), lets the pure decideSweep() judge each against its job and the
// database clock, and fixes what it must, fenced on the status and attempt it saw, so it is safe
// beside live workers and beside another sweeper.
import type { PgBoss } from 'pg-boss'
import type pg from 'pg'
import { attemptStateOf } from '../core/retry.ts'
import { decideSweep, type SweepCandidate } from '../core/sweep-plan.ts'
import { BOSS_SCHEMA } from '../db/names.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
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
ORDER BY t.id
LIMIT $4`

/**
 * Sweeps the given tenants, each in its own database's store. A tenant database that cannot be
 * reached is noted and passed over, so one database down does not stop the others' recovery.
 */
export async function sweepOnce(
  storeOf: (scope: TenantScope) => Promise<{ pool: pg.Pool; boss: PgBoss }>,
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
  }
  for await (const scope of scopes) {
    try {
      const { pool, boss } = await storeOf(scope)
      await sweepTenant(pool, boss, scope, options, report)
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
  scope: TenantScope,
  options: SweepOptions,
  report: SweepReport,
): Promise<void> {
  let cursor = '00000000-0000-0000-0000-000000000000'
  for (let pages = 0; pages < options.maxPages; pages++) {
    const scanned = await withTenantTx(pool, scope, async (db) => {
      const { rows } = await db.executeSql(SCAN, [
        scope.tenantId,
        cursor,
        options.staleAfterMs,
        options.batchSize,
        options.deadWorkers?.ids ?? [],
        options.deadWorkers?.seenAt ?? null,
      ])
      const candidates = rows.map(toCandidate)
      const requeue: RequeueItem[] = []
      for (const c of candidates) {
        const action = decideSweep(c)
        if (action.kind === 'requeue') {
          requeue.push({
            taskId: c.taskId,
            attempt: c.attempt,
            status: c.status,
            reason: action.reason,
            ...(c.jobId ? { oldJob: { queue: c.queue, jobId: c.jobId } } : {}),
          })
        } else if (action.kind === 'lost_worker') {
          const outcome = await failAttemptIn(boss, db, scope, {
            ...c,
            error: { name: 'WorkerLost', message: action.reason },
            permanent: false,
            action: 'task_lost',
            ...(c.jobId && c.jobState && !['completed', 'cancelled', 'failed'].includes(c.jobState)
              ? { job: { jobId: c.jobId } }
              : {}),
          })
          if (outcome.kind !== 'lease_lost') report.lost++
        }
      }
      const jobs = await requeueTasks(boss, db, scope, requeue, 'task_recovered')
      report.requeued += jobs.length
      return candidates
    })
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
    const due = await withTenantTx(deps.pool, scope, (db) => dueWaits(db, scope, options.batchSize))
    if (due.length === 0) return
    // Those a delivery or their timer job resolved meanwhile are left alone, and not counted.
    report.waitsExpired += (await expireWaits(deps, scope, due)).expired
    if (due.length < options.batchSize) return
  }
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
