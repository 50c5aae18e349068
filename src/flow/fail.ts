// Step 5, unhappy path: an attempt failed (the agent threw, timed out, returned a value that cannot
// be stored, or its worker was lost). One transaction records the failure and either queues the
// next attempt after its backoff, or fails the task for good: the workflow fails, its tasks that
// have not started are skipped, and a dead-letter job records the task.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { type AttemptState, canRetry, retryDelayMs } from '../core/retry.ts'
import { executeNamed, type TenantScope, type TenantTx, withTenantTx } from '../db/tx.ts'
import { DEAD_LETTER_QUEUE, insertJobsTx } from '../queue/boss.ts'
import { ENDED_CHANNEL } from './channels.ts'
import { notifyProgressTx } from './progress.ts'
import { failpoint } from '../failpoints.ts'
import type { Usage } from '../usage/meter.ts'
import { recordFailedUsageTx } from '../usage/sql.ts'

/** The attempt that failed, with the counters and limits read when it was claimed (or swept). */
export interface AttemptFailure extends AttemptState {
  taskId: string
  workflowId: string
  queue: string
  agentId: string
  error: { name: string; message: string; code?: string }
  /** No retry whatever attempts are left (PermanentError, a result that cannot be stored). */
  permanent: boolean
  /** The attempt's job, to mark failed; absent when the job is gone. */
  job?: { jobId: string; retryCount?: number }
  /** Audit action for the failure: 'task_failed_attempt' by default, 'task_lost' from the sweeper. */
  action?: string
  /** A wait task failing (rejected, timed out): fenced on 'waiting'. */
  waiting?: boolean
  /** Record the task in the dead-letter queue when it fails for good (default true; not for a rejection). */
  deadLetter?: boolean
  /** What the agent reported spending before it failed: counted as spent if this failure is written. */
  usage?: Usage
}

export type FailureOutcome =
  | { kind: 'retrying'; attempt: number; delayMs: number }
  | {
      kind: 'failed'
      /** The workflow this failure ended (null if it had ended already), with its type and duration. */
      workflow: { type: string; durationMs: number } | null
      skipped: number
    }
  | { kind: 'lease_lost' }

// A retry is queued only while the workflow runs: once it has ended (a sibling failed it), nothing
// would ever claim the new attempt, so the task fails for good instead. The workflow row is read
// under a share lock, so the decision sees a sibling's failure that committed meanwhile (a plain
// read would not, and the retry would leave a queued task in a failed workflow); and a sibling
// failing the workflow waits for this transaction (see WORKFLOW_LOCK).
const FAIL_ATTEMPT = `
WITH r AS (
  SELECT $6::boolean AND EXISTS (
    SELECT 1 FROM workflows w
    WHERE w.tenant_id = $1 AND w.status = 'running'
      AND w.id = (SELECT t.workflow_id FROM agent_coordination t WHERE t.tenant_id = $1 AND t.id = $2)
    FOR SHARE
  ) AS retry
),
t AS (
  UPDATE agent_coordination
  SET failures = failures + 1, error = $5::jsonb, updated_at = now(), worker_id = NULL,
    status = CASE WHEN r.retry THEN 'queued' ELSE 'failed' END,
    attempt = CASE WHEN r.retry THEN attempt + 1 ELSE attempt END,
    job_id = CASE WHEN r.retry THEN gen_random_uuid() ELSE job_id END,
    queued_at = CASE WHEN r.retry THEN now() + $7::int * interval '1 millisecond' ELSE queued_at END,
    completed_at = CASE WHEN r.retry THEN NULL ELSE now() END
  FROM r
  WHERE tenant_id = $1 AND id = $2 AND attempt = $3 AND failures = $4
    AND status = ANY(CASE WHEN $9::boolean THEN ARRAY['waiting'] ELSE ARRAY['running', 'queued'] END)
  RETURNING id, workflow_id, agent_id, status, attempt, job_id, queued_at::text AS start_after
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, t.workflow_id, t.id, t.agent_id, $8, jsonb_build_object('attempt', $3::int, 'error', $5::jsonb), w.correlation_id
  FROM t JOIN workflows w ON w.tenant_id = $1 AND w.id = t.workflow_id
  UNION ALL
  SELECT $1, t.workflow_id, t.id, t.agent_id, CASE WHEN t.status = 'queued' THEN 'task_retry_queued' ELSE 'task_failed' END,
    jsonb_build_object('attempt', t.attempt, 'delayMs', $7::int), w.correlation_id
  FROM t JOIN workflows w ON w.tenant_id = $1 AND w.id = t.workflow_id
)
SELECT status, attempt, job_id, start_after FROM t`

// Taken, as a statement of its own, before a failure that ends the workflow: it waits for every
// transaction that is putting one of the workflow's tasks back in the queue (they hold a share lock
// on the workflow row: FAIL_ATTEMPT's retry, requeue.ts), so that FAIL_WORKFLOW, whose snapshot is
// taken after, sees their queued tasks and skips them; and those that come later see the workflow
// failed.
const WORKFLOW_LOCK = `SELECT 1 FROM workflows WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE`

const FAIL_WORKFLOW = `
WITH wf AS (
  UPDATE workflows SET status = 'failed', error = $3::jsonb, tasks_remaining = 0, completed_at = now(), updated_at = now()
  WHERE tenant_id = $1 AND id = $2 AND status = 'running'
  RETURNING id, correlation_id, type, extract(epoch FROM now() - created_at) * 1000 AS ms
),
skipped AS (
  UPDATE agent_coordination t SET status = 'skipped', completed_at = now(), updated_at = now()
  FROM wf
  WHERE t.tenant_id = $1 AND t.workflow_id = wf.id AND t.status IN ('pending', 'queued', 'waiting')
  RETURNING t.id, t.agent_id, t.job_id, t.queue, t.attempt
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, wf.id, NULL, NULL, 'workflow_failed', $3::jsonb, wf.correlation_id FROM wf
  UNION ALL
  SELECT $1, wf.id, s.id, s.agent_id, 'task_skipped', jsonb_build_object('reason', 'workflow failed'), wf.correlation_id
  FROM skipped s, wf
),
ended AS (SELECT pg_notify('${ENDED_CHANNEL}', wf.id::text) FROM wf)
SELECT 'workflow' AS kind, NULL::uuid AS job_id, NULL AS queue, wf.type, wf.ms::float8 AS ms FROM wf
WHERE (SELECT count(*) FROM ended) >= 0
UNION ALL
SELECT 'skipped', s.job_id, s.queue, NULL, NULL FROM skipped s`

/** The row FAIL_ATTEMPT returns when the attempt still held the task. */
interface FailAttemptRow {
  status: 'queued' | 'failed'
  attempt: number
  job_id: string
  start_after: string
}

/** The rows FAIL_WORKFLOW returns: the workflow it failed, and the tasks it skipped. */
type FailWorkflowRow =
  | { kind: 'workflow'; job_id: null; queue: null; type: string; ms: number }
  | { kind: 'skipped'; job_id: string | null; queue: string; type: null; ms: null }

export async function failAttempt(
  deps: { pool: pg.Pool; boss: PgBoss },
  scope: TenantScope,
  f: AttemptFailure,
  random: () => number = Math.random,
): Promise<FailureOutcome> {
  const outcome = await withTenantTx(deps.pool, scope, async (db) => {
    const outcome = await failAttemptTx({ db, boss: deps.boss, scope }, f, random)
    failpoint('fail.before-commit')
    return outcome
  })
  failpoint('fail.after-commit')
  return outcome
}

/** Records the failed attempt in the caller's transaction (see failAttempt). */
export async function failAttemptTx(
  tx: TenantTx,
  f: AttemptFailure,
  random: () => number = Math.random,
): Promise<FailureOutcome> {
  const { db, boss, scope } = tx
  const failures = f.failures + 1
  const mayRetry = canRetry(failures, f.maxAttempts, f.permanent)
  const delayMs = mayRetry ? retryDelayMs(failures, f.backoffMs, f.backoffMaxMs, random) : 0
  // A failure for good ends the workflow: lock it first (a retry's share lock comes with FAIL_ATTEMPT).
  if (!mayRetry) await db.executeSql(WORKFLOW_LOCK, [scope.tenantId, f.workflowId])
  const { rows } = await executeNamed<FailAttemptRow>(db, 'eq_fail_attempt', FAIL_ATTEMPT, [
    scope.tenantId,
    f.taskId,
    f.attempt,
    f.failures,
    JSON.stringify(f.error),
    mayRetry,
    delayMs,
    f.action ?? 'task_failed_attempt',
    f.waiting ?? false,
  ])
  const row = rows[0]
  if (!row) return { kind: 'lease_lost' }
  if (f.usage) await recordFailedUsageTx(tx, { ...f, usage: f.usage })
  // A live console shows the failed attempt (off the hot path: failures only).
  await notifyProgressTx(db, scope.tenantId, [f.workflowId])
  const retry = row.status === 'queued'
  if (f.job) {
    const { jobId, retryCount } = f.job
    await boss.fail(
      f.queue,
      retryCount === undefined ? jobId : { id: jobId, retryCount },
      { error: f.error },
      { db },
    )
  }
  if (retry) {
    await insertJobsTx(tx, [
      {
        queue: f.queue,
        jobId: row.job_id,
        workflowId: f.workflowId,
        taskId: f.taskId,
        attempt: row.attempt,
        timeoutMs: f.timeoutMs,
        // The backoff's end as the database computed it: judged by its clock, not this process's.
        startAfter: delayMs > 0 ? row.start_after : null,
      },
    ])
    return { kind: 'retrying', attempt: row.attempt, delayMs }
  }
  const wf: { rows: FailWorkflowRow[] } = await db.executeSql(FAIL_WORKFLOW, [
    scope.tenantId,
    f.workflowId,
    JSON.stringify({ task: f.taskId, agent: f.agentId, error: f.error }),
  ])
  const skipped = wf.rows.filter((r) => r.kind === 'skipped')
  for (const [queue, list] of Map.groupBy(
    skipped.filter((r) => r.job_id),
    (r) => r.queue,
  )) {
    await boss.cancel(
      queue,
      list.map((r) => r.job_id as string),
      { db },
    )
  }
  if (f.deadLetter !== false) {
    await boss.send(
      DEAD_LETTER_QUEUE,
      { t: scope.tenantId, w: f.workflowId, k: f.taskId, a: f.attempt, agent: f.agentId, error: f.error },
      { db },
    )
  }
  const ended = wf.rows.find((r) => r.kind === 'workflow')
  return {
    kind: 'failed',
    workflow: ended ? { type: ended.type, durationMs: ended.ms } : null,
    skipped: skipped.length,
  }
}
