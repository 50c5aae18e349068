// The stale-task sweeper (after River's JobRescuer): pages through in-flight tasks in bounded
// batches (`(tenant_id, id) > cursor ORDER BY ... LIMIT n`, on a partial index that holds only
// in-flight rows), lets the pure decideSweep() judge each against its job and the database clock,
// and fixes what it must, one tenant transaction per page and tenant, fenced on the status and
// attempt it saw, so it is safe beside live workers and beside another sweeper.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { attemptStateOf } from '../core/retry.ts'
import { decideSweep, type SweepCandidate } from '../core/sweep-plan.ts'
import { APP_SCHEMA, BOSS_SCHEMA } from '../db/names.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { failAttemptIn } from './fail.ts'
import { requeueTasks, type RequeueItem } from './requeue.ts'

export interface SweepOptions {
  /** A running task whose heartbeat is older than this is taken as lost. */
  staleAfterMs: number
  /** Rows per page. */
  batchSize: number
  /** Pages per run at most, so one run is bounded; the next run starts over. */
  maxPages: number
}

export interface SweepReport {
  scanned: number
  requeued: number
  lost: number
  pages: number
}

const COLUMNS = `t.tenant_id, t.id, t.workflow_id, t.status, t.attempt, t.failures, t.max_attempts, t.backoff_ms,
  t.backoff_max_ms, t.timeout_ms, t.queue, t.agent_id, t.job_id, j.state AS job_state,
  coalesce(j.started_on < now() - $3 * interval '1 millisecond', false) AS job_stale,
  coalesce(t.heartbeat_at < now() - $3 * interval '1 millisecond', true) AS heartbeat_stale`

// Two partial indexes, two scans: in-flight tasks, and ready tasks that have no job.
const SCAN_INFLIGHT = `
SELECT ${COLUMNS}
FROM ${APP_SCHEMA}.agent_coordination t
LEFT JOIN ${BOSS_SCHEMA}.job j ON j.name = t.queue AND j.id = t.job_id
WHERE t.status IN ('queued', 'running') AND (t.tenant_id, t.id) > ($1, $2::uuid)
ORDER BY t.tenant_id, t.id
LIMIT $4`

const SCAN_ORPHANS = `
SELECT ${COLUMNS}
FROM ${APP_SCHEMA}.agent_coordination t
LEFT JOIN ${BOSS_SCHEMA}.job j ON j.name = t.queue AND j.id = t.job_id
WHERE t.status = 'pending' AND t.deps_remaining = 0 AND (t.tenant_id, t.id) > ($1, $2::uuid)
ORDER BY t.tenant_id, t.id
LIMIT $4`

export async function sweepOnce(
  deps: { pool: pg.Pool; boss: PgBoss; scopeOf: (tenantIds: string[]) => Promise<Map<string, TenantScope>> },
  options: SweepOptions,
): Promise<SweepReport> {
  const report: SweepReport = { scanned: 0, requeued: 0, lost: 0, pages: 0 }
  for (const scan of [SCAN_INFLIGHT, SCAN_ORPHANS]) {
    let cursor: [string, string] = ['', '00000000-0000-0000-0000-000000000000']
    while (report.pages < options.maxPages) {
      const { rows } = await deps.pool.query(scan, [...cursor, options.staleAfterMs, options.batchSize])
      report.pages++
      report.scanned += rows.length
      const candidates = rows.map(toCandidate)
      const work = candidates
        .map((c) => ({ c, action: decideSweep(c) }))
        .filter((w) => w.action.kind !== 'none')
      if (work.length > 0) {
        const scopes = await deps.scopeOf([...new Set(work.map((w) => w.c.tenantId))])
        for (const [tenantId, list] of Map.groupBy(work, (w) => w.c.tenantId)) {
          const scope = scopes.get(tenantId)
          if (!scope) continue
          await withTenantTx(deps.pool, scope, async (db) => {
            const requeue: RequeueItem[] = []
            for (const { c, action } of list) {
              if (action.kind === 'requeue') {
                requeue.push({
                  taskId: c.taskId,
                  attempt: c.attempt,
                  status: c.status,
                  reason: action.reason,
                  ...(c.jobId ? { oldJob: { queue: c.queue, jobId: c.jobId } } : {}),
                })
              } else if (action.kind === 'lost_worker') {
                const outcome = await failAttemptIn(deps.boss, db, scope, {
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
            const jobs = await requeueTasks(deps.boss, db, scope, requeue, 'task_recovered')
            report.requeued += jobs.length
          })
        }
      }
      if (rows.length < options.batchSize) break
      const last = candidates[candidates.length - 1] as SweepCandidate
      cursor = [last.tenantId, last.taskId]
    }
  }
  return report
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
  }
}
