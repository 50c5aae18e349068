// Request keys of operator requests (retry, replay, redrive): the first request's answer is stored
// in workflow_requests, in the transaction that does the operation, so a repeated request (a client
// that retries after losing the response) gets the same answer and changes nothing. Requests with
// the same key are serialised by a transaction-level advisory lock on the key, taken before anything
// is read: the second one waits for the first to commit and then finds its answer.
import { assertStorableJson, type Json } from '../core/json.ts'
import type { Db, TenantScope } from '../db/tx.ts'
import { InvalidInputError, OperationError } from '../errors.ts'

export type Operation = 'retry' | 'replay' | 'redrive'

/** Who asked and under which request key: what every operator request takes. */
export interface OperatorRequest {
  /** Who asked, for the audit trail (e.g. `cli`, `api:<request id>`, a user name). */
  actor?: string
  /** Makes the request idempotent: the same key answers the first request's result. */
  requestKey?: string
}

/** Refuses a bad actor or request key before the transaction (PostgreSQL text cannot hold a NUL). */
export function checkRequest(request: OperatorRequest): void {
  if (request === null || typeof request !== 'object')
    throw new InvalidInputError('options must be an object')
  for (const name of ['actor', 'requestKey'] as const) {
    const value = request[name]
    if (value === undefined) continue
    if (typeof value !== 'string' || value.length === 0 || value.length > 200)
      throw new InvalidInputError(`${name} must be a string of 1-200 characters`, `$.${name}`)
    assertStorableJson(value, `$.${name}`)
  }
}

/**
 * Takes the key's lock and returns the answer stored for it, or null when the key is new (or
 * absent). A key used for another operation or target is a request_key_conflict.
 */
export async function storedAnswer<T extends Json>(
  db: Db,
  scope: TenantScope,
  key: string | undefined,
  operation: Operation,
  target: string,
): Promise<T | null> {
  if (key === undefined) return null
  await db.executeSql(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
    `equilateral.request:${scope.tenantId}:${key}`,
  ])
  const { rows } = await db.executeSql(
    'SELECT operation, target, result FROM workflow_requests WHERE tenant_id = $1 AND request_key = $2',
    [scope.tenantId, key],
  )
  const row = rows[0]
  if (!row) return null
  if (row.operation !== operation || row.target !== target) {
    throw new OperationError(
      'request_key_conflict',
      `request key "${key}" was used for a ${row.operation} of ${row.target}, not a ${operation} of ${target}`,
    )
  }
  return row.result as T
}

/** Stores the answer under the key (no key: nothing), in the operation's transaction. */
export async function storeAnswer(
  db: Db,
  scope: TenantScope,
  request: OperatorRequest,
  operation: Operation,
  target: string,
  result: Json,
): Promise<void> {
  if (request.requestKey === undefined) return
  await db.executeSql(
    `INSERT INTO workflow_requests (tenant_id, request_key, operation, target, result, actor)
     VALUES ($1, $2, $3, $4, $5::jsonb, $6)`,
    [scope.tenantId, request.requestKey, operation, target, JSON.stringify(result), request.actor ?? null],
  )
}
