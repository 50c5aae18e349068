// Dead letters: the tenant's tasks that failed for good (their attempts used up, or a permanent
// error) and went to the dead-letter queue (src/flow/fail.ts). They are read from the coordination
// table, under the tenant's row-level security (or its own schema or database), not from pg-boss's
// dead-letter jobs, which every tenant of a shared database shares: a task is a dead letter while it
// is `failed`, a rejected approval excepted (it fails its workflow but is not dead-lettered).
//
// Redriving a dead letter runs its task again: the task's workflow failed with it, so the workflow
// is retried (src/flow/retry.ts: the task and the tasks its failure skipped get new attempts, the
// completed ones keep their results), with a `dead_letter_redriven` audit row per task. A task is a
// dead letter no more once redriven, so a repeated redrive finds nothing to do: each runs once.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { isUuid } from '../core/ids.ts'
import { assertStorableJson, type Json } from '../core/json.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { InvalidInputError, NotFoundError } from '../errors.ts'
import { checkRequest, type OperatorRequest, storeAnswer, storedAnswer } from './requests.ts'
import { retryIn } from './retry.ts'

export interface DeadLetter {
  taskId: string
  workflowId: string
  workflowType: string
  taskKey: string
  agent: string
  /** The attempt that failed for good, and the failures counted. */
  attempt: number
  failures: number
  error: Json
  failedAt: Date
}

export interface DeadLetterFilter {
  agent?: string
  /** 1 to 200, default 50. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
}

export interface DeadLetterPage {
  deadLetters: DeadLetter[]
  nextCursor: string | null
}

export type RedriveSelection = { taskId: string; agent?: never } | { agent: string; taskId?: never }

export interface RedriveResult {
  /** The dead letters redriven, each with its workflow. */
  redriven: { taskId: string; workflowId: string }[]
  /** Workflows retried (several dead letters of one workflow retry it once). */
  workflowsRetried: number
  /** More dead letters of the agent remain than one redrive takes (REDRIVE_BATCH): redrive again. */
  more: boolean
}

/** At most this many dead letters per redrive of an agent, so one transaction stays bounded. */
export const REDRIVE_BATCH = 200

const IS_DEAD = `t.status = 'failed' AND coalesce(t.error->>'code', '') <> 'approval_rejected'`

const LIST = `
SELECT t.id, t.workflow_id, w.type, t.task_key, t.agent_id, t.attempt, t.failures, t.error, t.completed_at,
  (extract(epoch FROM t.completed_at) * 1000000)::bigint::text AS cursor_us
FROM agent_coordination t JOIN workflows w ON w.tenant_id = t.tenant_id AND w.id = t.workflow_id
WHERE t.tenant_id = $1 AND ${IS_DEAD} AND ($2::text IS NULL OR t.agent_id = $2)
  AND ($3::bigint IS NULL
    OR (t.completed_at, t.id) < ('epoch'::timestamptz + $3::bigint * interval '1 microsecond', $4::uuid))
ORDER BY t.completed_at DESC NULLS LAST, t.id DESC NULLS LAST
LIMIT $5`

// The dead letters a redrive takes, with their workflows locked in id order (two redrives of one
// agent at once take them in the same order; the second then finds them retried).
const SELECT_REDRIVE = `
SELECT t.id, t.workflow_id, t.agent_id, t.task_key, t.attempt FROM agent_coordination t
WHERE t.tenant_id = $1 AND ${IS_DEAD} AND ($2::uuid IS NULL OR t.id = $2) AND ($3::text IS NULL OR t.agent_id = $3)
ORDER BY t.workflow_id, t.id
LIMIT $4`

const AUDIT_REDRIVEN = `
INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
SELECT $1, w.id, x.id, x.agent, 'dead_letter_redriven',
  jsonb_strip_nulls(jsonb_build_object('key', x.key, 'attempt', x.attempt, 'requestKey', $4::text)), $3, w.correlation_id
FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, workflow_id uuid, agent text, key text, attempt int)
JOIN workflows w ON w.tenant_id = $1 AND w.id = x.workflow_id`

export async function listDeadLetters(
  pool: pg.Pool,
  scope: TenantScope,
  filter: DeadLetterFilter = {},
): Promise<DeadLetterPage> {
  const limit = filter.limit ?? 50
  if (!Number.isInteger(limit) || limit < 1 || limit > 200)
    throw new InvalidInputError(`limit must be an integer from 1 to 200 (got ${limit})`, '$.limit')
  if (filter.agent !== undefined) checkAgent(filter.agent)
  const after = filter.cursor === undefined ? null : decodeCursor(filter.cursor)
  return withTenantTx(pool, scope, async (db) => {
    const { rows } = await db.executeSql(LIST, [
      scope.tenantId,
      filter.agent ?? null,
      after?.us ?? null,
      after?.id ?? null,
      limit + 1,
    ])
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    return {
      deadLetters: page.map((r) => ({
        taskId: r.id,
        workflowId: r.workflow_id,
        workflowType: r.type,
        taskKey: r.task_key,
        agent: r.agent_id,
        attempt: r.attempt,
        failures: r.failures,
        error: r.error,
        failedAt: r.completed_at,
      })),
      nextCursor: rows.length > limit && last ? encodeCursor(last.cursor_us, last.id) : null,
    }
  })
}

/**
 * Redrives one dead letter (`taskId`: NotFoundError when the tenant has no such dead letter), or
 * up to REDRIVE_BATCH of an agent's. One transaction: each workflow's retry and the audit rows.
 */
export async function redrive(
  deps: { pool: pg.Pool; boss: PgBoss },
  scope: TenantScope,
  selection: RedriveSelection,
  request: OperatorRequest = {},
): Promise<RedriveResult> {
  checkRequest(request)
  if (selection === null || typeof selection !== 'object')
    throw new InvalidInputError('redrive needs { taskId } or { agent }')
  const { taskId, agent } = selection
  if ((taskId === undefined) === (agent === undefined))
    throw new InvalidInputError('redrive takes exactly one of taskId and agent')
  if (taskId !== undefined && !isUuid(taskId))
    throw new InvalidInputError('taskId must be a UUID', '$.taskId')
  if (agent !== undefined) checkAgent(agent)
  const target = taskId !== undefined ? `task:${taskId.toLowerCase()}` : `agent:${agent}`
  return withTenantTx(deps.pool, scope, async (db) => {
    const known = await storedAnswer<RedriveResult & Json>(db, scope, request.requestKey, 'redrive', target)
    if (known) return known
    const { rows } = await db.executeSql(SELECT_REDRIVE, [
      scope.tenantId,
      taskId?.toLowerCase() ?? null,
      agent ?? null,
      REDRIVE_BATCH + 1,
    ])
    if (taskId !== undefined && rows.length === 0) throw new NotFoundError(`dead letter ${taskId}`)
    const batch = rows.slice(0, REDRIVE_BATCH)
    const redriven: RedriveResult['redriven'] = []
    let workflowsRetried = 0
    for (const [workflowId, letters] of Map.groupBy(batch, (r) => r.workflow_id as string)) {
      const retried = await retryIn(deps.boss, db, scope, workflowId, request, {
        redrive: letters.map((l) => l.id as string),
      }).then(
        () => true,
        (error: unknown) => {
          // Retried meanwhile by someone else (it runs again already): nothing to redrive there.
          if ((error as { code?: string }).code === 'workflow_not_retryable') return false
          throw error
        },
      )
      if (!retried) continue
      workflowsRetried++
      await db.executeSql(AUDIT_REDRIVEN, [
        scope.tenantId,
        JSON.stringify(
          letters.map((l) => ({
            id: l.id,
            workflow_id: l.workflow_id,
            agent: l.agent_id,
            key: l.task_key,
            attempt: l.attempt,
          })),
        ),
        request.actor ?? null,
        request.requestKey ?? null,
      ])
      for (const l of letters) redriven.push({ taskId: l.id, workflowId })
    }
    const result: RedriveResult = { redriven, workflowsRetried, more: rows.length > REDRIVE_BATCH }
    await storeAnswer(db, scope, request, 'redrive', target, result as RedriveResult & Json)
    return result
  })
}

function checkAgent(agent: unknown): void {
  if (typeof agent !== 'string' || agent.length === 0 || agent.length > 200)
    throw new InvalidInputError('agent must be a string of 1-200 characters', '$.agent')
  assertStorableJson(agent, '$.agent')
}

/** An opaque page cursor: the last row's completed_at in microseconds since the epoch, and its id. */
function encodeCursor(us: string, id: string): string {
  return Buffer.from(JSON.stringify([us, id])).toString('base64url')
}

function decodeCursor(cursor: string): { us: string; id: string } {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
    if (
      Array.isArray(value) &&
      value.length === 2 &&
      typeof value[0] === 'string' &&
      /^-?\d{1,17}$/.test(value[0]) &&
      isUuid(value[1])
    ) {
      return { us: value[0], id: value[1] }
    }
  } catch {
    // reported below
  }
  throw new InvalidInputError('cursor is not one this API returned', '$.cursor')
}
