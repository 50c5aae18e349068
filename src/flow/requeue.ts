// Puts tasks back in the queue with a new attempt, without counting a failure: a released task
// (its worker shut down before the agent finished), a snoozed one (its agent asked to run later), a
// queued task whose job was lost, or a ready task that has no job. Fenced on the status and attempt
// the caller saw. A queued task keeps its timer (startAfter, backoff) if it has not passed yet; a
// ready pending task gets its startAfter timer as it would have when it became ready.
import type { TenantTx } from '../db/tx.ts'
import { insertJobsTx, type ReadyJob } from '../queue/boss.ts'
import { READY_CHANNEL } from './channels.ts'
import { readyAt, readyJobOf } from './task-rows.ts'

export interface RequeueItem {
  taskId: string
  attempt: number
  status: 'pending' | 'queued' | 'running'
  reason: string
  /** The old job, failed (completed, for a snooze) so it cannot run alongside the new one. */
  oldJob?: { queue: string; jobId: string }
  /** Snooze: the new attempt starts this long from now, by the database clock ... */
  delayMs?: number
  /** ... or at this time. */
  until?: string | null
  /** Write the audit row (default true); a task left again and again is audited on the first leave only. */
  audit?: boolean
}

const REQUEUE = `
WITH x AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, attempt int, status text, reason text, delay_ms int, until timestamptz, audit boolean)
),
t AS (
  UPDATE agent_coordination t
  SET status = 'queued', attempt = t.attempt + 1, job_id = gen_random_uuid(), worker_id = NULL,
    queued_at = greatest(now() + coalesce(x.delay_ms, 0) * interval '1 millisecond', x.until,
      CASE t.status WHEN 'queued' THEN t.queued_at WHEN 'pending' THEN ${readyAt('t')} END),
    heartbeat_at = NULL, updated_at = now()
  FROM x
  WHERE t.tenant_id = $1 AND t.id = x.id AND t.attempt = x.attempt AND t.status = x.status
    AND (t.status <> 'pending' OR t.deps_remaining = 0)
    -- Under a share lock: a workflow failing meanwhile is seen, and waits for this (fail.ts WORKFLOW_LOCK).
    AND EXISTS (
      SELECT 1 FROM workflows w WHERE w.tenant_id = $1 AND w.id = t.workflow_id AND w.status = 'running' FOR SHARE
    )
  RETURNING t.id, t.workflow_id, t.agent_id, t.attempt, t.job_id, t.queue, t.timeout_ms, x.reason, x.audit,
    CASE WHEN t.queued_at > now() THEN t.queued_at::text END AS start_after
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, t.workflow_id, t.id, t.agent_id, $3,
    jsonb_strip_nulls(jsonb_build_object('attempt', t.attempt, 'reason', t.reason, 'startAfter', t.start_after)),
    w.correlation_id
  FROM t JOIN workflows w ON w.tenant_id = $1 AND w.id = t.workflow_id
  WHERE t.audit
),
notified AS (SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t) q)
SELECT t.*, (SELECT count(*) FROM notified) AS notified FROM t`

export async function requeueTasksTx(
  tx: TenantTx,
  items: readonly RequeueItem[],
  action: 'task_released' | 'task_recovered' | 'task_snoozed' | 'task_left',
): Promise<ReadyJob[]> {
  if (items.length === 0) return []
  const { db, boss, scope } = tx
  const { rows } = await db.executeSql(REQUEUE, [
    scope.tenantId,
    JSON.stringify(
      items.map((i) => ({
        id: i.taskId,
        attempt: i.attempt,
        status: i.status,
        reason: i.reason,
        delay_ms: i.delayMs ?? 0,
        until: i.until ?? null,
        audit: i.audit ?? true,
      })),
    ),
    action,
  ])
  const requeued = new Set(rows.map((r) => r.id as string))
  const old = items
    .filter((i) => i.oldJob && requeued.has(i.taskId))
    .map((i) => i.oldJob as { queue: string; jobId: string })
  for (const [queue, list] of Map.groupBy(old, (j) => j.queue)) {
    const ids = list.map((j) => j.jobId)
    // A snooze is the attempt's successful end, a leave its worker's choice; the others did not finish their job.
    if (action === 'task_snoozed') await boss.complete(queue, ids, { snoozed: true }, { db })
    else if (action === 'task_left') await boss.complete(queue, ids, { left: true }, { db })
    else await boss.fail(queue, ids, { error: { name: 'Requeued', message: action } }, { db })
  }
  const jobs: ReadyJob[] = rows.map((r) => readyJobOf(r))
  await insertJobsTx(tx, jobs)
  return jobs
}
