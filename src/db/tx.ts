// Transactions scoped to one tenant. Every statement of the engine runs inside one of these: the
// tenant (verified by the database: equilateral.enter_tenant, src/tenancy/tenant-context.ts) and
// search_path are set transaction-locally, so a pooled connection never carries a tenant into its
// next transaction, and row-level security (or the tenant's own schema) decides what the statements
// can see.
import pg from 'pg'
import type { Db as BossDb } from 'pg-boss'
import { TENANT_SEAL_SETTING, tenantContextSecret, tenantCredential } from '../tenancy/tenant-context.ts'

/**
 * Anything that runs SQL: a pooled client, a caller's transaction, pg-boss's `db` option. The
 * engine's own transactions can also run named (prepared) statements: see executeNamed.
 */
export type Db = BossDb & {
  executeNamed?: (name: string, text: string, values: unknown[]) => Promise<{ rows: any[] }>
}

/** A tenant database: a server (TENANT_SERVERS name) and a database name on it. */
export interface TenantDatabase {
  readonly server: string
  readonly name: string
}

export interface TenantScope {
  readonly tenantId: string
  /** search_path for the tenant's tables: the shared schema, or the tenant's own. */
  readonly searchPath: string
  /** Fairness tier (pg-boss group tier). */
  readonly tier: string
  /**
   * database-per-tenant: the database the tenant's tables and queues are in; null when they are in
   * the control database (row-level or schema-per-tenant). Decides only where a transaction runs.
   */
  readonly database?: TenantDatabase | null
}

export function clientDb(client: pg.ClientBase): Db {
  return { executeSql: (text, values) => client.query(text, values as unknown[]) }
}

/** The engine's own transactions' Db: a pooled connection of the engine's, so it may prepare statements. */
function engineDb(client: pg.ClientBase): Db {
  return {
    executeSql: (text, values) => client.query(text, values as unknown[]),
    executeNamed: (name, text, values) => client.query({ name, text, values }),
  }
}

/**
 * Runs one of the hot path's statements as a named prepared statement when the transaction is the
 * engine's own (parsed and planned once per connection instead of on every call: the big CTEs
 * cost ~0.5-1 ms to plan), else as a plain one (a caller's transaction). `name` must be unique per
 * text: a connection keeps what it prepared under that name.
 */
export function executeNamed(
  db: Db,
  name: string,
  text: string,
  values: unknown[],
): Promise<{ rows: any[] }> {
  return db.executeNamed ? db.executeNamed(name, text, values) : db.executeSql(text, values)
}

const RETRYABLE = new Set(['40001', '40P01'])

/**
 * Server-side limits of a maintenance transaction (sweeper, sealer, wait expiry, scheduler,
 * retention), set transaction-locally: a lock it waits for longer than `lockTimeoutMs` (a frozen
 * worker's open transaction) fails the statement instead of holding the pass, and no statement runs
 * longer than `statementTimeoutMs`. 0 leaves the server's setting.
 */
export interface TxTimeouts {
  lockTimeoutMs: number
  statementTimeoutMs: number
}

/**
 * The scope of an engine transaction, one statement after BEGIN: enter_tenant() checks the tenant's
 * credential and seals the transaction to the tenant (drizzle/tenant/0016: row-level security
 * compares with the sealed tenant, not with a setting anyone may change), then search_path, the
 * plan cache mode and a maintenance pass's limits. Every value is a bind parameter: the credential
 * never appears in the statement's text (pg_stat_activity, the server's statement log). One text for
 * every scope, so a connection prepares it once ($4/$5 NULL keep the server's timeouts).
 */
const SCOPE_SQL =
  `SELECT equilateral.enter_tenant($1, $2), set_config('search_path', $3, true), ` +
  // The hot statements are prepared (executeNamed): plan them once per connection, whatever the
  // parameters, instead of again for each call until PostgreSQL judges the generic plan cheaper
  // (it kept re-planning CLAIM, 0.25-0.4 ms a call). Their generic plans find tasks and workflows
  // by primary key. Statements sent unprepared (all others) are planned as before.
  `set_config('plan_cache_mode', 'force_generic_plan', true), ` +
  `set_config('lock_timeout', coalesce($4, current_setting('lock_timeout')), true), ` +
  `set_config('statement_timeout', coalesce($5, current_setting('statement_timeout')), true)`

function scopeValues(scope: TenantScope, secret: Buffer, timeouts?: TxTimeouts): unknown[] {
  return [
    scope.tenantId,
    tenantCredential(secret, scope.tenantId),
    scope.searchPath,
    timeouts?.lockTimeoutMs ? `${timeouts.lockTimeoutMs}ms` : null,
    timeouts?.statementTimeoutMs ? `${timeouts.statementTimeoutMs}ms` : null,
  ]
}

/**
 * BEGIN and the scope in one round trip: the two are written together (node-postgres's pipeline
 * mode, for these two queries only), so the scope's bind parameters cost no extra round trip over
 * the single `BEGIN; SELECT ...` string this replaced. Both answers are awaited before the client
 * leaves pipeline mode.
 */
async function beginScoped(
  client: pg.ClientBase,
  scope: TenantScope,
  secret: Buffer,
  timeouts?: TxTimeouts,
): Promise<void> {
  const c = client as pg.ClientBase & { pipeline: boolean }
  c.pipeline = true
  let settled: PromiseSettledResult<unknown>[]
  try {
    settled = await Promise.allSettled([
      client.query('BEGIN'),
      client.query({ name: 'eq_scope', text: SCOPE_SQL, values: scopeValues(scope, secret, timeouts) }),
    ])
  } finally {
    c.pipeline = false
  }
  for (const s of settled) if (s.status === 'rejected') throw s.reason
}

/** A lock not granted within lock_timeout (55P03), or a statement cancelled by statement_timeout (57014). */
export function isTimedOut(error: unknown): boolean {
  const code = (error as { code?: string } | null)?.code
  return code === '55P03' || code === '57014'
}

/**
 * Runs `fn` under a savepoint of the caller's transaction; if a lock it needs is not granted in
 * time (lock_timeout, see TxTimeouts), rolls back to the savepoint and returns `skipped`: what it
 * would have changed is left for the next pass, and the rest of the transaction goes on.
 */
export async function unlessLocked<T, S>(db: Db, skipped: S, fn: () => Promise<T>): Promise<T | S> {
  await db.executeSql('SAVEPOINT unless_locked', [])
  try {
    const result = await fn()
    await db.executeSql('RELEASE SAVEPOINT unless_locked', [])
    return result
  } catch (error) {
    if ((error as { code?: string }).code !== '55P03') throw error
    await db.executeSql('ROLLBACK TO SAVEPOINT unless_locked', [])
    return skipped
  }
}

/**
 * Runs `fn` in a transaction scoped to the tenant, retrying on serialization failures and
 * deadlocks (the body must be safe to run again: every engine transaction is). BEGIN and the scope
 * travel in one round trip, with the `timeouts` of a maintenance pass if given.
 */
export async function withTenantTx<T>(
  pool: pg.Pool,
  scope: TenantScope,
  fn: (db: Db) => Promise<T>,
  timeouts?: TxTimeouts,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const secret = await tenantContextSecret(pool)
    const { client, release } = await checkout(pool)
    let broken = false
    try {
      await beginScoped(client, scope, secret, timeouts)
      const result = await fn(engineDb(client))
      await client.query('COMMIT')
      return result
    } catch (error) {
      try {
        await client.query('ROLLBACK')
      } catch {
        broken = true
      }
      const code = (error as { code?: string }).code
      if (code && RETRYABLE.has(code) && attempt < 5) {
        await new Promise((r) => setTimeout(r, 5 * 2 ** attempt * (0.5 + Math.random())))
        continue
      }
      throw error
    } finally {
      release(broken)
    }
  }
}

/** withTenantTx with a maintenance pass's timeouts. */
export function withTimeouts(
  timeouts: TxTimeouts | undefined,
): <T>(pool: pg.Pool, scope: TenantScope, fn: (db: Db) => Promise<T>) => Promise<T> {
  return (pool, scope, fn) => withTenantTx(pool, scope, fn, timeouts)
}

/**
 * A plain transaction on a pooled client, for statements outside any tenant's scope (control
 * tables). A client whose ROLLBACK failed is discarded rather than returned to the pool.
 */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const { client, release } = await checkout(pool)
  let broken = false
  try {
    await client.query('BEGIN')
    const result = await fn(client)
    await client.query('COMMIT')
    return result
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {
      broken = true
    })
    throw error
  } finally {
    release(broken)
  }
}

/**
 * pool.connect() for a client held across several statements. pg emits 'error' on a checked-out
 * client whose connection drops while no query runs on it (the server restarted between two
 * statements); without a listener that is an uncaught exception, which ends the process. Here the
 * drop is only noted: the holder sees it as the failure of its next statement, and release()
 * discards the client instead of returning it to the pool.
 */
export async function checkout(
  pool: pg.Pool,
): Promise<{ client: pg.PoolClient; release: (broken?: boolean) => void }> {
  const client = await pool.connect()
  let lost = false
  const onError = () => {
    lost = true
  }
  client.on('error', onError)
  return {
    client,
    release: (broken = false) => {
      client.off('error', onError)
      client.release(broken || lost)
    },
  }
}

/**
 * Runs `fn` inside a transaction the caller already opened (their pg client or ORM transaction),
 * scoped to the tenant for the duration of `fn` (enter_tenant(), with the credential of the
 * database `secret` belongs to) and restored afterwards, so the caller's own statements keep the
 * settings they had. The previous seal is restored with the previous tenant: it was made in this
 * same transaction, so it is still valid for that tenant (and for no other).
 */
export async function withinCallerTx<T>(
  db: Db,
  scope: TenantScope,
  secret: Buffer,
  fn: (db: Db) => Promise<T>,
): Promise<T> {
  const { rows } = await db.executeSql(
    `SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('${TENANT_SEAL_SETTING}', true) AS seal, ` +
      `current_setting('search_path') AS path, equilateral.enter_tenant($1, $2), set_config('search_path', $3, true)`,
    [scope.tenantId, tenantCredential(secret, scope.tenantId), scope.searchPath],
  )
  const result = await fn(db)
  await db.executeSql(
    `SELECT set_config('app.tenant_id', $1, true), set_config('${TENANT_SEAL_SETTING}', $2, true), ` +
      `set_config('search_path', $3, true)`,
    [rows[0]?.tenant ?? '', rows[0]?.seal ?? '', rows[0]?.path],
  )
  return result
}

/**
 * The connection string run-time processes use: the same server and login, switched at connection
 * start to `role` (`options=-c role=...`), so every statement runs as the application role even
 * when the login is the owner. (A login that is itself only a member of the role is stronger still:
 * a compromised session cannot RESET ROLE to anything more.) The session's limits travel the same way.
 */
export function runtimeConnectionString(url: string, role: string, session: SessionLimits = {}): string {
  const settings = [
    ...(role ? [`-c role=${role}`] : []),
    ...(session.idleInTransactionTimeoutMs
      ? [`-c idle_in_transaction_session_timeout=${session.idleInTransactionTimeoutMs}`]
      : []),
  ]
  if (settings.length === 0) return url
  const u = new URL(url)
  const existing = u.searchParams.get('options')
  u.searchParams.set('options', `${existing ? `${existing} ` : ''}${settings.join(' ')}`)
  return u.toString()
}

/**
 * Server-side limits of every run-time session (set at connection start, so pg-boss's and the
 * LISTEN connections have them too): a session left idle inside a transaction this long (a frozen
 * or partitioned worker) is ended by the server, which rolls its transaction back and releases its
 * locks. 0 or absent: the server's setting.
 */
export interface SessionLimits {
  idleInTransactionTimeoutMs?: number
}
