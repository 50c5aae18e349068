// Hard budgets hold a tenant's tasks. The completion whose usage reaches a hard budget marks it
// exhausted (the trigger of drizzle/tenant/0019), in its own transaction; from then on the claim
// (src/flow/claim.ts CLAIM, LOCAL_CLAIM) takes none of the tenant's tasks, and holdTasksTx, in the
// claim's transaction, marks the fetched ones held: still `queued`, with hold_reason
// 'budget_exhausted' and no job (the fetched job is completed as dropped; the sweeper passes held
// tasks over). Tasks already running finish, and their usage counts. releaseHoldsTx queues them all
// again, with a new attempt and job, once no hard budget of the tenant is exhausted: when a budget is
// raised or removed, or its period rolls (src/usage/budgets.ts). Each step is one transaction with
// its audit rows, so a crash at any point leaves the tasks either held or queued with a job.
import type { TenantTx } from '../db/tx.ts'
import { READY_CHANNEL } from '../flow/channels.ts'
import { insertJobsTx, type ReadyJob } from '../queue/boss.ts'
import { readyJobOf } from '../flow/task-rows.ts'

export const HOLD_REASON = 'budget_exhausted'

const HOLD = `
WITH j AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS j(id uuid, attempt int)),
h AS (
  UPDATE agent_coordination t SET hold_reason = '${HOLD_REASON}', job_id = NULL, updated_at = now()
  FROM j
  WHERE t.tenant_id = $1 AND t.id = ANY($3::uuid[]) AND t.id = j.id AND t.attempt = j.attempt
    AND t.status = 'queued' AND t.hold_reason IS NULL
    AND EXISTS (SELECT 1 FROM usage_budgets b WHERE b.tenant_id = $1 AND b.hard AND b.exceeded_at IS NOT NULL)
  RETURNING t.id, t.workflow_id, t.agent_id, t.attempt
)
INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
SELECT $1, h.workflow_id, h.id, h.agent_id, 'task_held',
  jsonb_build_object('attempt', h.attempt, 'reason', '${HOLD_REASON}'), w.correlation_id
FROM h JOIN workflows w ON w.tenant_id = $1 AND w.id = h.workflow_id`

/**
 * Holds the fetched tasks the claim did not take because a hard budget is exhausted, in the
 * claim's transaction.
 */
export async function holdTasksTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  jobs: readonly { taskId: string; attempt: number }[],
): Promise<number> {
  const result = (await db.executeSql(HOLD, [
    scope.tenantId,
    JSON.stringify(jobs.map((j) => ({ id: j.taskId, attempt: j.attempt }))),
    jobs.map((j) => j.taskId),
  ])) as { rowCount?: number | null }
  return result.rowCount ?? 0
}

// The held tasks are locked first: a workflow failing or cancelled meanwhile either skipped them
// before (they are no longer queued: they only lose their mark) or waits for this and then skips
// them, cancelling the job queued here. In pages, so a release of many tasks is many short
// statements of one transaction.
const RELEASE = `
WITH cand AS (
  SELECT t.id FROM agent_coordination t
  WHERE t.tenant_id = $1 AND t.hold_reason IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM usage_budgets b WHERE b.tenant_id = $1 AND b.hard AND b.exceeded_at IS NOT NULL)
  ORDER BY t.id LIMIT $2
  FOR UPDATE
),
t AS (
  UPDATE agent_coordination t
  SET hold_reason = NULL, updated_at = now(),
    attempt = CASE WHEN t.status = 'queued' THEN t.attempt + 1 ELSE t.attempt END,
    job_id = CASE WHEN t.status = 'queued' THEN gen_random_uuid() ELSE t.job_id END,
    queued_at = CASE WHEN t.status = 'queued' THEN now() ELSE t.queued_at END
  FROM cand
  WHERE t.tenant_id = $1 AND t.id = cand.id
  RETURNING t.id, t.workflow_id, t.agent_id, t.attempt, t.job_id, t.queue, t.timeout_ms, t.status
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, t.workflow_id, t.id, t.agent_id, 'task_released',
    jsonb_build_object('attempt', t.attempt, 'reason', $3::text), w.correlation_id
  FROM t JOIN workflows w ON w.tenant_id = $1 AND w.id = t.workflow_id
  WHERE t.status = 'queued'
),
notified AS (SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t WHERE status = 'queued') q)
SELECT t.*, (SELECT count(*) FROM notified) AS notified FROM t`

/**
 * Queues the tenant's held tasks again (new attempt and job) if no hard budget of it is exhausted,
 * in the caller's transaction; returns how many. `reason` goes into their audit rows.
 */
export async function releaseHoldsTx(tx: TenantTx, reason: string): Promise<number> {
  const { db, scope } = tx
  let released = 0
  for (;;) {
    const { rows } = await db.executeSql(RELEASE, [scope.tenantId, 500, reason])
    const jobs: ReadyJob[] = rows.filter((r) => r.status === 'queued').map((r) => readyJobOf(r))
    await insertJobsTx(tx, jobs)
    released += jobs.length
    if (rows.length < 500) return released
  }
}
