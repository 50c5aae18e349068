// The usage and budget SQL the hot statements embed (src/flow/complete.ts, claim.ts) and the failure
// path runs (src/flow/fail.ts). Kept here so the flow files carry only a hook each.
//
// Cost on the hot path: a completion batch that reports no usage runs COMPLETE unchanged; one that
// does runs COMPLETE with the USAGE_CTE below (one CTE, no extra statement; the budget check is the
// statement trigger of drizzle/tenant/0019, which touches a budget row only when it is reached). A
// claim reads whether the tenant has a hard budget exhausted (NOT_BUDGET_HELD): one probe of the
// tenant's few budget rows.
import type { TenantTx } from '../db/tx.ts'
import type { Usage } from './meter.ts'

/** The column COMPLETE's batch recordset gets when a completion of the batch reports usage. */
export const USAGE_COLUMN = 'usage jsonb'

/**
 * A CTE of COMPLETE: inserts the usage of the completions that were written (`done`: fenced on
 * status and attempt), so a late completion's usage is never counted, and an attempt's once (the
 * primary key is the task, attempt and dimension).
 */
export function usageCte(done: string, batch: string): string {
  return `usage_recorded AS (
  INSERT INTO agent_usage (tenant_id, task_id, attempt, dimension, workflow_id, agent_id, amount, outcome)
  SELECT DISTINCT ON (d.id, u.key) $1, d.id, d.attempt, u.key, d.workflow_id, d.agent_id, (u.value #>> '{}')::bigint,
    'completed'
  FROM ${done} d JOIN ${batch} b ON b.id = d.id CROSS JOIN LATERAL jsonb_each(b.usage) u
  WHERE b.usage IS NOT NULL
)`
}

/**
 * The claim's condition: no hard budget of the tenant ($1) is exhausted. A task not claimed for it
 * is held (src/usage/holds.ts) until the budget is raised or its period rolls.
 */
export const NOT_BUDGET_HELD = `NOT EXISTS (
    SELECT 1 FROM usage_budgets b WHERE b.tenant_id = $1 AND b.hard AND b.exceeded_at IS NOT NULL)`

const RECORD_FAILED = `
INSERT INTO agent_usage (tenant_id, task_id, attempt, dimension, workflow_id, agent_id, amount, outcome)
SELECT $1, $2, $3, u.key, $4, $5, (u.value #>> '{}')::bigint, 'failed' FROM jsonb_each($6::jsonb) u
ON CONFLICT DO NOTHING`

/**
 * A failed attempt's usage, in the failure's transaction, after its fenced update matched (so a
 * failure written for an attempt that had already ended records nothing): spent all the same.
 */
export async function recordFailedUsageTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  attempt: { taskId: string; attempt: number; workflowId: string; agentId: string; usage: Usage },
): Promise<void> {
  await db.executeSql(RECORD_FAILED, [
    scope.tenantId,
    attempt.taskId,
    attempt.attempt,
    attempt.workflowId,
    attempt.agentId,
    JSON.stringify(attempt.usage),
  ])
}
