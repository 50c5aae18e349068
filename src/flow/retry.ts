// Retrying a failed or cancelled workflow: it runs again from where it stopped. One transaction
// locks the workflow and its tasks, gives every task that did not complete a new attempt with a
// fresh attempt budget (failures back to 0; the attempt number goes on, so a straggler of an earlier
// attempt stays fenced out), queues those whose dependencies are all completed (their jobs inserted
// in the same transaction, with a NOTIFY), leaves the others pending with their remaining-dependency
// count, makes the workflow running again, and writes the audit rows with the actor. Completed tasks
// keep their results and do not run again.
//
// A task still running in a failed workflow (a sibling's agent that had not returned when the
// workflow failed) gets a new attempt too, and its agent is told to stop (the cancel channel): its
// late completion would otherwise be judged against a workflow state it did not see.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Json } from '../core/json.ts'
import { type TenantScope, type TenantTx, withTenantTx } from '../db/tx.ts'
import { NotFoundError, OperationError } from '../errors.ts'
import { insertJobsTx, type ReadyJob } from '../queue/boss.ts'
import { CANCEL_CHANNEL, READY_CHANNEL } from './channels.ts'
import { checkRequest, type OperatorRequest, storeAnswerTx, storedAnswerTx } from './requests.ts'
import { readyAt, readyJobOf, timerOf } from './task-rows.ts'

export interface RetryResult {
  /** The workflow retried. */
  id: string
  status: 'running'
  /** What it was before the retry. */
  previousStatus: 'failed' | 'cancelled'
  /** Tasks given a new attempt (every task that had not completed). */
  tasksRetried: number
  /** Of those, the ones queued at once (their dependencies all completed); the rest wait for theirs. */
  tasksQueued: number
}

export interface RetryDeps {
  pool: pg.Pool
  boss: PgBoss
}

// The workflow and its tasks are locked first (LOCK_*): a completion or failure of one of its tasks
// that is under way commits before the statement below reads them, and one that comes later waits
// for this transaction and then finds its attempt superseded.
const LOCK_WORKFLOW = `SELECT status, correlation_id FROM workflows WHERE tenant_id = $1 AND id = $2 FOR UPDATE`
const LOCK_TASKS = `SELECT id FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY id FOR UPDATE`

const RETRY = `
WITH r AS (
  SELECT t.id, t.status AS previous, t.job_id AS old_job, t.queue AS old_queue,
    (SELECT count(*) FROM agent_coordination p
     WHERE p.tenant_id = $1 AND p.id = ANY(t.depends_on) AND p.status <> 'completed')::int AS remaining
  FROM agent_coordination t
  WHERE t.tenant_id = $1 AND t.workflow_id = $2 AND t.status <> 'completed'
),
t AS (
  UPDATE agent_coordination c
  SET status = CASE WHEN r.remaining = 0 THEN 'queued' ELSE 'pending' END,
    deps_remaining = r.remaining,
    attempt = CASE WHEN r.remaining = 0 THEN c.attempt + 1 ELSE c.attempt END,
    failures = 0,
    job_id = CASE WHEN r.remaining = 0 THEN gen_random_uuid() END,
    queued_at = CASE WHEN r.remaining = 0 THEN ${readyAt('c')} END,
    result = NULL, error = NULL, worker_id = NULL, started_at = NULL, heartbeat_at = NULL,
    completed_at = NULL, unserved_since = NULL, wait_deadline = NULL, updated_at = now()
  FROM r
  WHERE c.tenant_id = $1 AND c.id = r.id
  RETURNING c.id, c.task_key, c.agent_id, c.status, c.attempt, c.job_id, c.queue, c.timeout_ms,
    ${timerOf('c')} AS start_after, r.previous, r.old_job, r.old_queue
),
wf AS (
  UPDATE workflows w
  SET status = 'running', error = NULL, completed_at = NULL, tasks_remaining = (SELECT count(*) FROM r),
    updated_at = now()
  WHERE w.tenant_id = $1 AND w.id = $2 AND w.status IN ('failed', 'cancelled')
  RETURNING w.id, w.correlation_id
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
  SELECT $1, wf.id, NULL, NULL, 'workflow_retried',
    jsonb_strip_nulls(jsonb_build_object('previousStatus', $3::text, 'tasks', (SELECT count(*) FROM t),
      'requestKey', $5::text) || coalesce($6::jsonb, '{}'::jsonb)),
    $4, wf.correlation_id
  FROM wf
  UNION ALL
  SELECT $1, wf.id, t.id, t.agent_id, 'task_retried',
    jsonb_build_object('key', t.task_key, 'previousStatus', t.previous, 'attempt', t.attempt, 'status', t.status),
    $4, wf.correlation_id
  FROM t, wf
  UNION ALL
  SELECT $1, wf.id, t.id, t.agent_id, CASE WHEN t.status = 'queued' THEN 'task_queued' ELSE 'task_pending' END,
    jsonb_strip_nulls(jsonb_build_object('key', t.task_key, 'attempt', t.attempt, 'startAfter', t.start_after)),
    $4, wf.correlation_id
  FROM t, wf
),
stopped AS (
  SELECT pg_notify('${CANCEL_CHANNEL}', string_agg(s.id::text, ',')) FROM (
    SELECT id, (row_number() OVER ()) / 200 AS chunk FROM t WHERE previous = 'running'
  ) s GROUP BY s.chunk
),
notified AS (
  SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t WHERE status = 'queued') q
)
-- The stop notices are sent before the ready ones: a worker must not abort the new attempt it may
-- claim of a task whose old attempt it still runs.
SELECT t.id, t.status, t.attempt, t.job_id, t.queue, t.timeout_ms, t.start_after, t.previous, t.old_job,
  t.old_queue, (SELECT count(*) FROM stopped) + (SELECT count(*) FROM notified) AS notified,
  (SELECT count(*) FROM wf) AS workflows
FROM t`

/**
 * Retries a failed or cancelled workflow in the caller's transaction (see the file's comment). A
 * running or completed workflow is refused (OperationError `workflow_not_retryable`), an unknown one
 * is NotFoundError. `audit` is merged into the workflow_retried audit row (a redrive names itself).
 */
export async function retryWorkflowTx(
  tx: TenantTx,
  workflowId: string,
  request: OperatorRequest,
  audit: Record<string, Json> | null = null,
): Promise<RetryResult> {
  const { db, scope } = tx
  const wf = await db.executeSql(LOCK_WORKFLOW, [scope.tenantId, workflowId])
  const status = wf.rows[0]?.status as string | undefined
  if (!status) throw new NotFoundError(`workflow ${workflowId}`)
  if (status !== 'failed' && status !== 'cancelled') {
    throw new OperationError(
      'workflow_not_retryable',
      `workflow ${workflowId} is ${status}: only a failed or cancelled workflow can be retried`,
      status,
    )
  }
  await db.executeSql(LOCK_TASKS, [scope.tenantId, workflowId])
  const { rows } = await db.executeSql(RETRY, [
    scope.tenantId,
    workflowId,
    status,
    request.actor ?? null,
    request.requestKey ?? null,
    audit === null ? null : JSON.stringify(audit),
  ])
  // Jobs of a previous attempt still queued (none in the usual case) are cancelled: their attempt
  // is superseded, and a worker fetching one would only find it fenced out.
  const stale = rows.filter((r) => r.old_job && (r.previous === 'queued' || r.previous === 'running'))
  for (const [queue, list] of Map.groupBy(stale, (r) => r.old_queue as string)) {
    await tx.boss.cancel(
      queue,
      list.map((r) => r.old_job as string),
      { db },
    )
  }
  const ready: ReadyJob[] = rows.filter((r) => r.status === 'queued').map((r) => readyJobOf(r, workflowId))
  await insertJobsTx(tx, ready)
  return {
    id: workflowId,
    status: 'running',
    previousStatus: status,
    tasksRetried: rows.length,
    tasksQueued: ready.length,
  }
}

/** retryWorkflowTx in a transaction of its own, idempotent on the request key. */
export async function retryWorkflow(
  deps: RetryDeps,
  scope: TenantScope,
  workflowId: string,
  request: OperatorRequest = {},
): Promise<RetryResult> {
  checkRequest(request)
  return withTenantTx(deps.pool, scope, async (db) => {
    const known = await storedAnswerTx<RetryResult & Json>(db, scope, request.requestKey, 'retry', workflowId)
    if (known) return known
    const result = await retryWorkflowTx({ db, boss: deps.boss, scope }, workflowId, request)
    await storeAnswerTx(db, scope, request, 'retry', workflowId, result as RetryResult & Json)
    return result
  })
}
