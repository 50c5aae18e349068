// SQL shared by the two places that insert task rows (starting a workflow, and spawning tasks):
// the planned rows (src/core/plan.ts) arrive as one jsonb parameter and are inserted in one statement.

/**
 * CTEs `x` (the planned rows, read from the jsonb parameter `param`) and `t` (their insert,
 * returning id, task_key, agent_id, status, attempt, queue). `workflowId` is the SQL expression of
 * the workflow id; `from` is the FROM list that provides `x` (and whatever `workflowId` refers to).
 */
export function insertPlannedTasks(param: string, workflowId: string, from: string): string {
  return `
x AS (
  SELECT * FROM jsonb_to_recordset(${param}::jsonb) AS x(
    id uuid, task_key text, agent_id text, task_type text, queue text, data jsonb, status text,
    dependencies text[], depends_on uuid[], dependents uuid[], deps_remaining int, attempt int,
    max_attempts int, backoff_ms int, backoff_max_ms int, timeout_ms int, job_id uuid)
),
t AS (
  INSERT INTO agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue, data, status,
    dependencies, depends_on, dependents, deps_remaining, attempt, max_attempts, backoff_ms, backoff_max_ms,
    timeout_ms, job_id, queued_at)
  SELECT $1, x.id, ${workflowId}, x.task_key, x.agent_id, x.task_type, x.queue, x.data, x.status,
    x.dependencies, x.depends_on, x.dependents, x.deps_remaining, x.attempt, x.max_attempts, x.backoff_ms,
    x.backoff_max_ms, x.timeout_ms, x.job_id, CASE WHEN x.status = 'queued' THEN now() END
  FROM ${from}
  RETURNING id, task_key, agent_id, status, attempt, queue
)`
}
