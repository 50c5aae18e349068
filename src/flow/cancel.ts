// Cancelling a workflow: one transaction marks it and every unfinished task cancelled, cancels the
// queued jobs, and tells the workers running its agents (NOTIFY on the cancel channel, delivered at
// commit) to abort them through their signal. A running agent's late completion is fenced out.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { assertStorableJson } from '../core/json.ts'
import type { WorkflowStatus } from '../core/task-state.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { NotFoundError } from '../errors.ts'
import { notifyProgressTx } from './progress.ts'
import { CANCEL_CHANNEL, ENDED_CHANNEL } from './channels.ts'

const CANCEL = `
WITH wf AS (
  UPDATE workflows SET status = 'cancelled', error = jsonb_build_object('reason', $3::text), tasks_remaining = 0,
    completed_at = now(), updated_at = now()
  WHERE tenant_id = $1 AND id = $2 AND status = 'running'
  RETURNING id, correlation_id, type, extract(epoch FROM now() - created_at) * 1000 AS ms
),
before AS (
  SELECT t.id, t.status FROM agent_coordination t, wf
  WHERE t.tenant_id = $1 AND t.workflow_id = wf.id AND t.status IN ('pending', 'queued', 'running', 'waiting')
),
t AS (
  UPDATE agent_coordination t SET status = 'cancelled', completed_at = now(), updated_at = now()
  FROM wf
  WHERE t.tenant_id = $1 AND t.workflow_id = wf.id AND t.status IN ('pending', 'queued', 'running', 'waiting')
  RETURNING t.id, t.agent_id, t.job_id, t.queue
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
  SELECT $1, wf.id, NULL, NULL, 'workflow_cancelled', jsonb_build_object('reason', $3::text), $4, wf.correlation_id FROM wf
  UNION ALL
  SELECT $1, wf.id, t.id, t.agent_id, 'task_cancelled', '{}'::jsonb, $4, wf.correlation_id FROM t, wf
),
notified AS (
  SELECT pg_notify('${CANCEL_CHANNEL}', string_agg(b.id::text, ',')) FROM (
    SELECT id, (row_number() OVER ()) / 200 AS chunk FROM before WHERE status = 'running'
  ) b GROUP BY b.chunk
),
ended AS (SELECT pg_notify('${ENDED_CHANNEL}', wf.id::text) FROM wf)
SELECT 'workflow' AS kind, wf.id, NULL::uuid AS job_id, NULL AS queue, NULL AS status, wf.type, wf.ms::float8 AS ms FROM wf
WHERE (SELECT count(*) FROM ended) >= 0
UNION ALL
SELECT 'task', t.id, t.job_id, t.queue, b.status, NULL, NULL FROM t JOIN before b ON b.id = t.id
UNION ALL
SELECT 'notified', NULL, NULL, NULL, (SELECT count(*) FROM notified)::text, NULL, NULL`

export interface CancelResult {
  /** False when the workflow had already ended; its status is returned unchanged. */
  cancelled: boolean
  status: WorkflowStatus
  tasksCancelled: number
}

/** What the engine's metrics need of a cancellation that happened. */
export interface CancelledWorkflow {
  type: string
  durationMs: number
}

export async function cancelWorkflow(
  deps: { pool: pg.Pool; boss: PgBoss },
  scope: TenantScope,
  workflowId: string,
  options: { reason?: string; actor?: string } = {},
  onCancelled: (wf: CancelledWorkflow) => void = () => {},
): Promise<CancelResult> {
  // Refused before the transaction: PostgreSQL text cannot hold a NUL, and would store a lone
  // surrogate altered.
  if (options.reason !== undefined) assertStorableJson(options.reason, '$.reason')
  if (options.actor !== undefined) assertStorableJson(options.actor, '$.actor')
  const { result, ended } = await withTenantTx(deps.pool, scope, async (db) => {
    const { rows } = await db.executeSql(CANCEL, [
      scope.tenantId,
      workflowId,
      options.reason ?? 'cancelled',
      options.actor ?? null,
    ])
    const ended = rows.find((r) => r.kind === 'workflow')
    if (!ended) {
      const wf = await db.executeSql('SELECT status FROM workflows WHERE tenant_id = $1 AND id = $2', [
        scope.tenantId,
        workflowId,
      ])
      const status = wf.rows[0]?.status as WorkflowStatus | undefined
      if (!status) throw new NotFoundError(`workflow ${workflowId}`)
      return { result: { cancelled: false, status, tasksCancelled: 0 }, ended: null }
    }
    await notifyProgressTx(db, scope.tenantId, [workflowId])
    const tasks = rows.filter((r) => r.kind === 'task')
    const queued = tasks.filter((r) => r.job_id && r.status !== 'pending')
    for (const [queue, list] of Map.groupBy(queued, (r) => r.queue as string)) {
      await deps.boss.cancel(
        queue,
        list.map((r) => r.job_id as string),
        { db },
      )
    }
    return {
      result: { cancelled: true, status: 'cancelled', tasksCancelled: tasks.length } as CancelResult,
      ended: { type: ended.type as string, durationMs: ended.ms as number },
    }
  })
  // After the commit, so a transaction run again after a serialization failure reports once.
  if (ended) onCancelled(ended)
  return result
}
