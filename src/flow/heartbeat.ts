// Heartbeats: a worker periodically stamps the tasks it runs with the database clock (one statement
// per tenant), and learns from the same statement which of them it no longer holds (cancelled,
// recovered by the sweeper): those agents are aborted. Staleness is judged by the sweeper against
// now() in the database, never against a worker's clock.
import type pg from 'pg'
import { executeNamed, type TenantScope, withTenantTx } from '../db/tx.ts'
import { UNINDEXED_STATUS } from './claim.ts'

const BEAT = `
UPDATE agent_coordination t SET heartbeat_at = now()
FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, attempt int)
WHERE t.tenant_id = $1 AND t.id = x.id AND t.attempt = x.attempt AND ${UNINDEXED_STATUS("t.status = 'running'")}
RETURNING t.id`

/** Returns the ids of the tasks still held by their attempt. */
export async function heartbeat(
  pool: pg.Pool,
  scope: TenantScope,
  tasks: readonly { taskId: string; attempt: number }[],
): Promise<Set<string>> {
  if (tasks.length === 0) return new Set()
  return withTenantTx(pool, scope, async (db) => {
    const { rows } = await executeNamed(db, 'eq_heartbeat', BEAT, [
      scope.tenantId,
      JSON.stringify(tasks.map((t) => ({ id: t.taskId, attempt: t.attempt }))),
    ])
    return new Set(rows.map((r) => r.id as string))
  })
}

/**
 * Between tries of a write, stamps its tasks' heartbeats, so the sweeper does not take them as lost
 * while their outcome waits to be written (best effort: the database may still be away).
 */
export async function keepAlive(
  pool: pg.Pool,
  scope: TenantScope,
  tasks: readonly { taskId: string; attempt: number }[],
): Promise<void> {
  await heartbeat(pool, scope, tasks).catch(() => {})
}
