// Step 3: a worker fetched jobs; before running agents it claims their tasks. One transaction per
// tenant marks the fetched tasks running (fenced on status and attempt), writes their audit rows and
// reads what each agent needs: task data, workflow input, and its dependencies' results. Jobs whose
// task can no longer run (completed, cancelled, a newer attempt exists) are completed as dropped.
// Encrypted payloads are decrypted after the commit: CPU only, and one that cannot be decrypted fails
// its own task (see payloadError), not the batch.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Json } from '../core/json.ts'
import { type AttemptState, attemptStateOf } from '../core/retry.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import type { EncryptionError } from '../errors.ts'
import { failpoint } from '../failpoints.ts'

export interface FetchedJob {
  queue: string
  jobId: string
  retryCount: number
  taskId: string
  workflowId: string
  attempt: number
}

export interface ClaimedTask extends AttemptState {
  job: FetchedJob
  taskId: string
  workflowId: string
  workflowType: string
  taskKey: string
  agentId: string
  taskType: string
  data: Json
  input: Json
  results: Record<string, Json>
  correlationId: string
  /** From the task becoming ready (queued_at) to this claim, on the database's clock. */
  queueWaitMs: number
  /** performance.now() when the claim returned: dispatch latency = queueWaitMs + (agent start - claimedAt). */
  claimedAt: number
  /**
   * Set when the task's data, the workflow input or a parent's result could not be decrypted (a
   * missing or wrong key): the worker records it as the attempt's failure instead of running the
   * agent, and data, input and results are empty.
   */
  payloadError?: EncryptionError
}

/** Exported for the benchmark's EXPLAIN of the hot path (bench/growth.ts). */
export const CLAIM = `
WITH j AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS j(id uuid, attempt int)),
claimed AS (
  UPDATE agent_coordination t
  SET status = 'running', started_at = now(), heartbeat_at = now(), worker_id = $3, updated_at = now()
  FROM j, workflows w
  WHERE t.tenant_id = $1 AND t.id = ANY($4::uuid[]) AND t.id = j.id AND t.attempt = j.attempt
    AND t.status IN ('queued', 'running')
    AND w.tenant_id = $1 AND w.id = t.workflow_id AND w.status = 'running'
  RETURNING t.id, t.workflow_id, t.task_key, t.agent_id, t.task_type, t.attempt, t.failures, t.max_attempts,
    t.backoff_ms, t.backoff_max_ms, t.timeout_ms, t.data, t.depends_on, w.type AS workflow_type, w.input, w.correlation_id,
    greatest(0, extract(epoch FROM clock_timestamp() - t.queued_at) * 1000)::float8 AS queue_wait_ms
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, c.workflow_id, c.id, c.agent_id, 'task_started', jsonb_build_object('attempt', c.attempt, 'worker', $3::text),
    c.correlation_id
  FROM claimed c
)
SELECT c.*, (
  SELECT coalesce(jsonb_object_agg(p.task_key, p.result), '{}'::jsonb)
  FROM agent_coordination p WHERE p.tenant_id = $1 AND p.id = ANY(c.depends_on)
) AS results
FROM claimed c`

export interface ClaimOutcome {
  claimed: ClaimedTask[]
  /** Jobs whose task was not claimable; already completed as dropped in the same transaction. */
  dropped: FetchedJob[]
}

export async function claimTasks(
  deps: { pool: pg.Pool; boss: PgBoss; keyRing: KeyRing },
  scope: TenantScope,
  jobs: readonly FetchedJob[],
  workerId: string,
): Promise<ClaimOutcome> {
  const outcome = await withTenantTx(deps.pool, scope, async (db) => {
    const { rows } = await db.executeSql(CLAIM, [
      scope.tenantId,
      JSON.stringify(jobs.map((j) => ({ id: j.taskId, attempt: j.attempt }))),
      workerId,
      jobs.map((j) => j.taskId),
    ])
    const byTask = new Map(rows.map((r) => [r.id as string, r]))
    const claimed: ClaimedTask[] = []
    const dropped: FetchedJob[] = []
    for (const job of jobs) {
      const r = byTask.get(job.taskId)
      if (!r || r.attempt !== job.attempt) {
        dropped.push(job)
        continue
      }
      byTask.delete(job.taskId) // a job delivered twice in one batch runs once
      claimed.push({
        job,
        taskId: r.id,
        workflowId: r.workflow_id,
        workflowType: r.workflow_type,
        taskKey: r.task_key,
        agentId: r.agent_id,
        taskType: r.task_type,
        ...attemptStateOf(r),
        data: r.data,
        input: r.input,
        results: r.results,
        correlationId: r.correlation_id,
        queueWaitMs: r.queue_wait_ms ?? 0,
        claimedAt: 0,
      })
    }
    const byQueue = Map.groupBy(dropped, (j) => j.queue)
    for (const [queue, list] of byQueue) {
      await deps.boss.complete(
        queue,
        list.map((j) => ({ id: j.jobId, retryCount: j.retryCount })),
        { dropped: 'task no longer runnable for this attempt' },
        { db },
      )
    }
    failpoint('claim.before-commit')
    return { claimed, dropped }
  })
  failpoint('claim.after-commit')
  const claimedAt = performance.now()
  for (const task of outcome.claimed) {
    task.claimedAt = claimedAt
    openPayloads(deps.keyRing, scope.tenantId, task)
  }
  return outcome
}

/** Decrypts the task's payloads in place, or sets payloadError. */
function openPayloads(keyRing: KeyRing, tenantId: string, task: ClaimedTask): void {
  try {
    const data = keyRing.decrypt(tenantId, 'task.data', task.data)
    const input = keyRing.decrypt(tenantId, 'workflow.input', task.input)
    const results: Record<string, Json> = {}
    for (const [key, value] of Object.entries(task.results)) {
      results[key] = keyRing.decrypt(tenantId, 'task.result', value)
    }
    task.data = data
    task.input = input
    task.results = results
  } catch (error) {
    task.payloadError = error as EncryptionError
    task.data = null
    task.input = null
    task.results = {}
  }
}
