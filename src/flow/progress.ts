// Progress notifications for the web console's live view (src/web/live.ts). The statement that
// changes tasks adds PROGRESS_CTE, which notifies PROGRESS_CHANNEL once, and only while a console
// watches the tenant (an unexpired console_watchers row: one primary-key probe otherwise).
// Paths off the hot path (an attempt's failure, a cancel) call notifyProgressTx after their statement.
import type { Db } from '../db/tx.ts'
import { PROGRESS_CHANNEL } from './channels.ts'

/** More workflow ids than this in one transaction: the payload says "*" (re-read everything). */
export const PROGRESS_MAX_IDS = 100

/**
 * A CTE named `name` notifying the workflows in `ids` (an SQL expression yielding a `workflow_id`
 * column), for tenant `$tenant`. Its statement must reference it (a SELECT CTE nobody reads does
 * not run): `(SELECT count(*) FROM name)`.
 */
export function progressCte(name: string, ids: string, tenant = '$1'): string {
  return `${name} AS (
  SELECT pg_notify('${PROGRESS_CHANNEL}', json_build_object('t', ${tenant}::text, 'w',
    CASE WHEN count(DISTINCT p.workflow_id) <= ${PROGRESS_MAX_IDS} THEN to_json(array_agg(DISTINCT p.workflow_id))
    ELSE to_json('*'::text) END)::text)
  FROM ${ids} p
  WHERE EXISTS (SELECT FROM console_watchers v WHERE v.tenant_id = ${tenant}::text AND v.expires_at > now())
  HAVING count(*) > 0
)`
}

/** Notifies the progress of `workflowIds` in the caller's transaction, if a console watches. */
export async function notifyProgressTx(
  db: Db,
  tenantId: string,
  workflowIds: readonly string[],
): Promise<void> {
  if (workflowIds.length === 0) return
  await db.executeSql(
    `WITH ${progressCte('progress', '(SELECT unnest($2::uuid[]) AS workflow_id)')}
     SELECT count(*) FROM progress`,
    [tenantId, workflowIds],
  )
}
