// Replaying a workflow from one of its tasks: a new workflow of the same type and version, linked to
// the original (workflows.replay_of), with a copy of each of the original's tasks. The task `from`
// and everything downstream of it run again; the other tasks that completed in the original are
// recorded as completed with the original's results (audited `task_reused`, naming the original
// task) and do not run; those that had not completed (there is no result to reuse) run too. One
// transaction: the workflow, its tasks, the audit rows (with the actor) on both workflows, and the
// ready tasks' jobs.
//
// Payloads are copied as stored (encrypted under the tenant's key, which binds tenant and purpose,
// not the row). Tasks an agent spawned (dynamic tasks) are copied only when their spawner is reused:
// a spawner that runs again spawns its tasks anew, so those, and whatever depends on them, are not
// copied. The definition need not be registered in this process: the rows say everything.
import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Json } from '../core/json.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { NotFoundError, OperationError } from '../errors.ts'
import { insertJobsTx, type ReadyJob } from '../queue/boss.ts'
import { READY_CHANNEL } from './channels.ts'
import { checkRequest, type OperatorRequest, storeAnswerTx, storedAnswerTx } from './requests.ts'
import { readyAt, readyJobOf, timerOf } from './task-rows.ts'

export interface ReplayOptions extends OperatorRequest {
  /** The key of the task to run again, with everything downstream of it. */
  from: string
}

export interface ReplayResult {
  /** The new workflow. */
  id: string
  status: 'running'
  /** The workflow it replays. */
  replayOf: string
  from: string
  type: string
  version: number
  /** Keys of the tasks that run again, and of those whose original results were reused. */
  rerun: string[]
  reused: string[]
}

interface OriginalTask {
  id: string
  task_key: string
  status: string
  depends_on: string[]
  dependents: string[]
}

const ORIGINAL = `SELECT id, type, version, correlation_id FROM workflows WHERE tenant_id = $1 AND id = $2 FOR SHARE`
const ORIGINAL_TASKS = `
SELECT id, task_key, status, depends_on, dependents FROM agent_coordination
WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY created_at, task_key`
const SPAWNED = `
SELECT task_id, action_data->>'spawnedBy' AS spawner FROM agent_audit_log
WHERE tenant_id = $1 AND workflow_id = $2 AND action_type IN ('task_created', 'task_queued')
  AND action_data ? 'spawnedBy'`

// $3: the copies, [{ id, source, reused, deps_remaining, depends_on, dependents }]. Everything else is
// read from the original rows.
const REPLAY = `
WITH x AS (
  SELECT * FROM jsonb_to_recordset($3::jsonb)
    AS x(id uuid, source uuid, reused boolean, deps_remaining int, depends_on uuid[], dependents uuid[])
),
orig AS (
  SELECT w.type, w.version, w.input, w.subject_key FROM workflows w WHERE w.tenant_id = $1 AND w.id = $4::uuid
),
wf AS (
  INSERT INTO workflows (tenant_id, id, type, version, status, input, correlation_id, tasks_remaining, subject_key, replay_of)
  SELECT $1, $2::uuid, orig.type, orig.version, 'running', orig.input, $2::uuid::text,
    (SELECT count(*) FROM x WHERE NOT x.reused), orig.subject_key, $4::uuid
  FROM orig
  RETURNING id, correlation_id
),
t AS (
  INSERT INTO agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue, data, status,
    dependencies, depends_on, dependents, deps_remaining, attempt, max_attempts, backoff_ms, backoff_max_ms,
    timeout_ms, job_id, agent_version, wait, start_at, start_delay_ms, result, queued_at, completed_at)
  SELECT $1, x.id, $2::uuid, o.task_key, o.agent_id, o.task_type, o.queue, o.data,
    CASE WHEN x.reused THEN 'completed' WHEN x.deps_remaining = 0 THEN 'queued' ELSE 'pending' END,
    o.dependencies, x.depends_on, x.dependents, CASE WHEN x.reused THEN 0 ELSE x.deps_remaining END,
    CASE WHEN NOT x.reused AND x.deps_remaining = 0 THEN 1 ELSE 0 END,
    o.max_attempts, o.backoff_ms, o.backoff_max_ms, o.timeout_ms,
    CASE WHEN NOT x.reused AND x.deps_remaining = 0 THEN gen_random_uuid() END,
    o.agent_version, o.wait, o.start_at, o.start_delay_ms,
    CASE WHEN x.reused THEN o.result END,
    CASE WHEN NOT x.reused AND x.deps_remaining = 0 THEN ${readyAt('o')} END,
    CASE WHEN x.reused THEN now() END
  FROM x JOIN agent_coordination o ON o.tenant_id = $1 AND o.id = x.source
  CROSS JOIN wf
  RETURNING id, task_key, agent_id, status, attempt, queue, job_id, timeout_ms,
    ${timerOf('agent_coordination')} AS start_after
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
  SELECT $1, wf.id, NULL::uuid, NULL, 'workflow_started',
    jsonb_strip_nulls(jsonb_build_object('type', (SELECT type FROM orig), 'version', (SELECT version FROM orig),
      'tasks', (SELECT count(*) FROM x), 'replayOf', $4::uuid, 'from', $5::text, 'requestKey', $7::text)),
    $6, wf.correlation_id
  FROM wf
  UNION ALL
  SELECT $1, $4::uuid, NULL, NULL, 'workflow_replayed',
    jsonb_strip_nulls(jsonb_build_object('replay', $2::uuid, 'from', $5::text, 'requestKey', $7::text)), $6, $8
  FROM wf
  UNION ALL
  SELECT $1, wf.id, t.id, t.agent_id,
    CASE t.status WHEN 'completed' THEN 'task_reused' WHEN 'queued' THEN 'task_queued' ELSE 'task_created' END,
    jsonb_strip_nulls(jsonb_build_object('key', t.task_key, 'attempt', t.attempt, 'startAfter', t.start_after,
      'reusedFrom', CASE WHEN t.status = 'completed' THEN x.source END)),
    $6, wf.correlation_id
  FROM t JOIN x ON x.id = t.id, wf
),
notified AS (
  SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t WHERE status = 'queued') q
)
SELECT t.id, t.task_key, t.status, t.attempt, t.queue, t.job_id, t.timeout_ms, t.start_after,
  (SELECT count(*) FROM notified) AS notified
FROM t`

export interface ReplayDeps {
  pool: pg.Pool
  boss: PgBoss
}

export async function replayWorkflow(
  deps: ReplayDeps,
  scope: TenantScope,
  workflowId: string,
  options: ReplayOptions,
): Promise<ReplayResult> {
  checkRequest(options)
  const from = options.from
  if (typeof from !== 'string' || from.length === 0 || from.length > 200)
    throw new OperationError('unknown_task', 'from must name a task key (1-200 characters)')
  return withTenantTx(deps.pool, scope, async (db) => {
    const target = `${workflowId}#${from}`
    const known = await storedAnswerTx<ReplayResult & Json>(db, scope, options.requestKey, 'replay', target)
    if (known) return known
    const wf = await db.executeSql(ORIGINAL, [scope.tenantId, workflowId])
    const original = wf.rows[0]
    if (!original) throw new NotFoundError(`workflow ${workflowId}`)
    const { rows } = await db.executeSql(ORIGINAL_TASKS, [scope.tenantId, workflowId])
    const tasks = rows as OriginalTask[]
    const start = tasks.find((t) => t.task_key === from)
    if (!start) {
      throw new OperationError(
        'unknown_task',
        `workflow ${workflowId} has no task "${from}" (its tasks: ${tasks.map((t) => t.task_key).join(', ')})`,
      )
    }
    const spawned = await db.executeSql(SPAWNED, [scope.tenantId, workflowId])
    const plan = planReplay(
      tasks,
      start.id,
      new Map(spawned.rows.map((r) => [r.task_id as string, r.spawner as string])),
    )
    const newId = randomUUID()
    const ids = new Map(plan.copied.map((t) => [t.id, randomUUID()]))
    const copies = plan.copied.map((t) => ({
      id: ids.get(t.id),
      source: t.id,
      reused: plan.reused.has(t.id),
      deps_remaining: t.depends_on.filter((p) => ids.has(p) && !plan.reused.has(p)).length,
      depends_on: t.depends_on.filter((p) => ids.has(p)).map((p) => ids.get(p)),
      dependents: t.dependents.filter((c) => ids.has(c)).map((c) => ids.get(c)),
    }))
    const inserted = await db.executeSql(REPLAY, [
      scope.tenantId,
      newId,
      JSON.stringify(copies),
      workflowId,
      from,
      options.actor ?? null,
      options.requestKey ?? null,
      original.correlation_id,
    ])
    const ready: ReadyJob[] = inserted.rows
      .filter((r) => r.status === 'queued')
      .map((r) => readyJobOf(r, newId))
    await insertJobsTx({ db, boss: deps.boss, scope }, ready)
    const byKey = (status: (s: string) => boolean) =>
      inserted.rows.filter((r) => status(r.status)).map((r) => r.task_key as string)
    const result: ReplayResult = {
      id: newId,
      status: 'running',
      replayOf: workflowId,
      from,
      type: original.type,
      version: original.version,
      rerun: byKey((s) => s !== 'completed'),
      reused: byKey((s) => s === 'completed'),
    }
    await storeAnswerTx(db, scope, options, 'replay', target, result as ReplayResult & Json)
    return result
  })
}

/**
 * Which of the original's tasks are copied, and which of those reuse their result: `from` and its
 * descendants run again; a task spawned by a task that runs again is not copied (nor, transitively,
 * what depends on it or what it spawned); every other completed task is reused.
 */
export function planReplay(
  tasks: readonly OriginalTask[],
  fromId: string,
  spawnerOf: ReadonlyMap<string, string>,
): { copied: OriginalTask[]; reused: Set<string> } {
  const byId = new Map(tasks.map((t) => [t.id, t]))
  const rerun = new Set<string>()
  const walk = [fromId]
  while (walk.length > 0) {
    const id = walk.pop() as string
    if (rerun.has(id)) continue
    rerun.add(id)
    for (const c of byId.get(id)?.dependents ?? []) walk.push(c)
  }
  const dropped = new Set<string>()
  for (let changed = true; changed;) {
    changed = false
    for (const t of tasks) {
      if (dropped.has(t.id) || t.id === fromId) continue
      const spawner = spawnerOf.get(t.id)
      const drop =
        (spawner !== undefined && (rerun.has(spawner) || dropped.has(spawner))) ||
        t.depends_on.some((p) => dropped.has(p) || !byId.has(p))
      if (drop) {
        dropped.add(t.id)
        changed = true
      }
    }
  }
  const copied = tasks.filter((t) => !dropped.has(t.id))
  const reused = new Set(copied.filter((t) => !rerun.has(t.id) && t.status === 'completed').map((t) => t.id))
  return { copied, reused }
}
