// SQL shared by the two places that insert task rows (starting a workflow, and spawning tasks):
// the planned rows (src/core/plan.ts) arrive as one jsonb parameter and are inserted in one statement.
// Also the job a task row a statement returned is queued with (readyJobOf): requeue, retry, replay
// and the release of budget holds.
import type { ReadyJob } from '../queue/boss.ts'

/**
 * CTEs `x` (the planned rows, read from the jsonb parameter `param`) and `t` (their insert,
 * returning id, task_key, agent_id, status, attempt, queue, job_id,
 * timeout_ms, start_after). `workflowId` is the SQL expression of
 * the workflow id; `from` is the FROM list that provides `x` (and whatever `workflowId` refers to).
 */
export function insertPlannedTasks(param: string, workflowId: string, from: string): string {
  return `
x AS (
  SELECT * FROM jsonb_to_recordset(${param}::jsonb) AS x(
    id uuid, task_key text, agent_id text, task_type text, queue text, data jsonb, status text,
    dependencies text[], depends_on uuid[], dependents uuid[], deps_remaining int, attempt int,
    max_attempts int, backoff_ms int, backoff_max_ms int, timeout_ms int, job_id uuid, agent_version int,
    wait jsonb, start_at timestamptz, start_delay_ms int)
),
t AS (
  INSERT INTO agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue, data, status,
    dependencies, depends_on, dependents, deps_remaining, attempt, max_attempts, backoff_ms, backoff_max_ms,
    timeout_ms, job_id, agent_version, wait, start_at, start_delay_ms, queued_at)
  SELECT $1, x.id, ${workflowId}, x.task_key, x.agent_id, x.task_type, x.queue, x.data, x.status,
    x.dependencies, x.depends_on, x.dependents, x.deps_remaining, x.attempt, x.max_attempts, x.backoff_ms,
    x.backoff_max_ms, x.timeout_ms, x.job_id, x.agent_version, x.wait, x.start_at, x.start_delay_ms,
    CASE WHEN x.status = 'queued' THEN ${readyAt('x')} END
  FROM ${from}
  RETURNING id, task_key, agent_id, status, attempt, queue, job_id, timeout_ms,
    ${timerOf('agent_coordination')} AS start_after
)`
}

/**
 * When a task that becomes ready now may start, by the database clock: now, or later when it has
 * a durable timer (no earlier than start_at, and start_delay_ms after becoming ready). `t` is the
 * row's alias.
 */
export function readyAt(t: string): string {
  return `greatest(now(), ${t}.start_at, now() + coalesce(${t}.start_delay_ms, 0) * interval '1 millisecond')`
}

/**
 * A ready task's job start time when its timer holds it back (as text, the database's own
 * rendering, which pg-boss reads back exactly), else null: the job may start at once.
 */
export function timerOf(t: string): string {
  return `CASE WHEN ${t}.status = 'queued' AND ${t}.queued_at > now() THEN ${t}.queued_at::text END`
}

/** The columns of a task row a statement returns for its job (see `insertPlannedTasks`'s RETURNING). */
export interface TaskJobRow {
  id: string
  queue: string
  job_id: string
  attempt: number
  timeout_ms: number
  workflow_id?: string
  /** `timerOf`'s value: when the job may start; absent or null: at once. */
  start_after?: string | null
}

/** The job to insert for a queued task row, in `workflowId` (default: the row's own). */
export function readyJobOf(r: TaskJobRow, workflowId = r.workflow_id as string): ReadyJob {
  return {
    queue: r.queue,
    jobId: r.job_id,
    workflowId,
    taskId: r.id,
    attempt: r.attempt,
    timeoutMs: r.timeout_ms,
    ...(r.start_after !== undefined ? { startAfter: r.start_after } : {}),
  }
}
