// Transactions scoped to one tenant. Every statement of the engine runs inside one of these: the
// tenant id and search_path are set transaction-locally (set_config(..., true)), so a pooled
// connection never carries a tenant into its next transaction, and row-level security (or the
// tenant's own schema) decides what the statements can see.
import pg from 'pg'
import type { Db as BossDb } from 'pg-boss'
import type { TenantDatabase } from './placement.ts'

/** Anything that runs SQL: a pooled client, a caller's transaction, pg-boss's `db` option. */
export type Db = BossDb

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

const RETRYABLE = new Set(['40001', '40P01'])

function scopeSql(scope: TenantScope): string {
  return `SELECT set_config('app.tenant_id', ${pg.escapeLiteral(scope.tenantId)}, true), set_config('search_path', ${pg.escapeLiteral(scope.searchPath)}, true)`
}

/**
 * Runs `fn` in a transaction scoped to the tenant, retrying on serialization failures and
 * deadlocks (the body must be safe to run again: every engine transaction is). BEGIN and the scope
 * travel in one round trip.
 */
export async function withTenantTx<T>(
  pool: pg.Pool,
  scope: TenantScope,
  fn: (db: Db) => Promise<T>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const { client, release } = await checkout(pool)
    let broken = false
    try {
      await client.query(`BEGIN; ${scopeSql(scope)}`)
      const result = await fn(clientDb(client))
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
 * scoped to the tenant for the duration of `fn` and restored afterwards, so the caller's own
 * statements keep the settings they had.
 */
export async function withinCallerTx<T>(db: Db, scope: TenantScope, fn: (db: Db) => Promise<T>): Promise<T> {
  const { rows } = await db.executeSql(
    `SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('search_path') AS path, ` +
      `set_config('app.tenant_id', $1, true), set_config('search_path', $2, true)`,
    [scope.tenantId, scope.searchPath],
  )
  const result = await fn(db)
  await db.executeSql(`SELECT set_config('app.tenant_id', $1, true), set_config('search_path', $2, true)`, [
    rows[0]?.tenant ?? '',
    rows[0]?.path,
  ])
  return result
}

/**
 * The connection string run-time processes use: the same server and login, switched at connection
 * start to `role` (`options=-c role=...`), so every statement runs as the application role even
 * when the login is the owner. (A login that is itself only a member of the role is stronger still:
 * a compromised session cannot RESET ROLE to anything more.)
 */
export function runtimeConnectionString(url: string, role: string): string {
  if (!role) return url
  const u = new URL(url)
  const existing = u.searchParams.get('options')
  u.searchParams.set('options', `${existing ? `${existing} ` : ''}-c role=${role}`)
  return u.toString()
}
