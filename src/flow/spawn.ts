// Dynamic tasks: an agent (a planner) adds tasks to its own workflow as part of its result. They
// are validated against the workflow's existing tasks and inserted in the completion transaction of
// the agent's task, so they exist if and only if that completion commits.
import { randomUUID } from 'node:crypto'
import { LIMITS, resolveTask, type SpawnedTask, topologicalOrder } from '../core/definition.ts'
import { assertStorableJson, type JsonLimits } from '../core/json.ts'
import { planTasks } from '../core/plan.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TenantTx } from '../db/tx.ts'
import { DefinitionError } from '../errors.ts'
import { queueName, type ReadyJob } from '../queue/boss.ts'
import { READY_CHANNEL } from './channels.ts'
import { insertPlannedTasks } from './task-rows.ts'

export interface SpawnRequest {
  tasks: SpawnedTask[]
  limits: JsonLimits
  /** Encrypts the spawned tasks' data (limits apply to the plain values). */
  keyRing: KeyRing
  /** The spawner's data subject key (per-tenant data keys): the spawned data goes under it too. */
  sealKey?: string
}

const INSERT_SPAWNED = `
WITH ${insertPlannedTasks('$3', '$2', 'x')},
parents AS (
  UPDATE agent_coordination p SET dependents = p.dependents || e.children, updated_at = now()
  FROM (SELECT parent, array_agg(child) AS children
        FROM jsonb_to_recordset($4::jsonb) AS e(parent uuid, child uuid) GROUP BY parent) e
  WHERE p.tenant_id = $1 AND p.id = e.parent
),
wf AS (
  UPDATE workflows SET tasks_remaining = tasks_remaining + (SELECT count(*) FROM x), updated_at = now()
  WHERE tenant_id = $1 AND id = $2
  RETURNING correlation_id
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, $2, t.id, t.agent_id, CASE WHEN t.status = 'queued' THEN 'task_queued' ELSE 'task_created' END,
    jsonb_strip_nulls(jsonb_build_object('key', t.task_key, 'attempt', t.attempt, 'spawnedBy', $5::uuid,
      'startAfter', t.start_after)), wf.correlation_id
  FROM t, wf
),
notified AS (
  SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t WHERE status = 'queued') q
)
SELECT (SELECT count(*) FROM notified) AS notified,
  (SELECT jsonb_object_agg(t.id, t.start_after) FROM t WHERE t.start_after IS NOT NULL) AS timers`

/** Inserts the spawned tasks; returns the jobs of the ones ready at once (to insert with the batch). */
export async function spawnTasksTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  workflowId: string,
  spawnerId: string,
  request: SpawnRequest,
): Promise<ReadyJob[]> {
  const where = `spawned by task ${spawnerId}`
  const specs = request.tasks.map((t) => resolveTask(t, where))
  // Lock the workflow row first: concurrent spawns into one workflow see each other's keys.
  const wf = await db.executeSql('SELECT status FROM workflows WHERE tenant_id = $1 AND id = $2 FOR UPDATE', [
    scope.tenantId,
    workflowId,
  ])
  if (wf.rows[0]?.status !== 'running') return []
  const { rows } = await db.executeSql(
    'SELECT id, task_key, status FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2',
    [scope.tenantId, workflowId],
  )
  if (rows.length + specs.length > LIMITS.maxTasksPerWorkflow) {
    throw new DefinitionError(
      `${where}: the workflow would have more than ${LIMITS.maxTasksPerWorkflow} tasks`,
    )
  }
  const existing = new Map<string, { id: string; done: boolean }>(
    rows.map((r) => [r.task_key as string, { id: r.id as string, done: r.status === 'completed' }]),
  )
  topologicalOrder(specs, new Set(existing.keys()), where)
  const data = request.tasks.map((t, i) => {
    const value = t.data ?? null
    assertStorableJson(value, `$.spawn[${i}].data`, request.limits)
    return request.keyRing.encrypt(scope.tenantId, 'task.data', value, `$.spawn[${i}].data`, request.sealKey)
  })
  const planned = planTasks(specs, data, { newId: randomUUID, queueName, limits: request.limits }, existing)
  const newIds = new Set(planned.map((p) => p.id))
  // Edges from existing tasks, the spawner included: the spawner's own completion, in this same
  // transaction, then counts down its new dependents like any other.
  const edges = planned.flatMap((p) =>
    p.depends_on.filter((parent) => !newIds.has(parent)).map((parent) => ({ parent, child: p.id })),
  )
  // A dependency on an existing task that is not done only makes sense if it can still complete.
  const statusById = new Map(rows.map((r) => [r.id as string, r.status as string]))
  for (const p of planned) {
    for (const key of p.dependencies) {
      const e = existing.get(key)
      if (e && !e.done && !['pending', 'queued', 'running', 'waiting'].includes(statusById.get(e.id) ?? '')) {
        throw new DefinitionError(
          `${where}: task "${p.task_key}" depends on "${key}", which can no longer complete`,
          p.task_key,
        )
      }
    }
  }
  const inserted = await db.executeSql(INSERT_SPAWNED, [
    scope.tenantId,
    workflowId,
    JSON.stringify(planned),
    JSON.stringify(edges),
    spawnerId,
  ])
  const timers: Record<string, string> = inserted.rows[0]?.timers ?? {}
  return planned
    .filter((p) => p.status === 'queued')
    .map((p) => ({
      queue: p.queue,
      jobId: p.job_id as string,
      workflowId,
      taskId: p.id,
      attempt: p.attempt,
      timeoutMs: p.timeout_ms,
      startAfter: timers[p.id] ?? null,
    }))
}
