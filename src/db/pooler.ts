// Running behind a pooler in transaction mode (PgBouncer pool_mode=transaction, the pooled URL of a
// managed service). Consecutive transactions of one client connection may run on different server
// connections, and a server connection serves many clients in turn, so nothing may outlive a
// transaction on a pooled connection:
// - named prepared statements (a statement prepared on one server connection is unknown to the next,
//   or already known under that name): PgBouncer before 1.21 does not track them, so the pools of
//   an engine behind a pooler strip the names (UnpreparedClient) and every statement is parsed and
//   planned as an unnamed one;
// - session advisory locks (a lock taken in one transaction stays with the server connection, held
//   for whichever client gets it next): the sweeper's and the liveness pass's turns are
//   transaction-scoped (withTurn), which is right with or without a pooler;
// - LISTEN and the liveness registry's lock need a session of their own: they use
//   DIRECT_DATABASE_URL, or are off (polling, heartbeats) without it;
// - settings: every engine transaction sets its tenant, search_path and limits transaction-locally
//   (set_config(..., true): src/db/tx.ts), and the startup `options` (`-c role=`) PgBouncer refuses
//   are not sent (the login is the run-time role itself).
import pg from 'pg'
import type { Config } from '../config.ts'
import { checkout } from './tx.ts'

/**
 * A pg client that sends every statement unnamed: the `name` of a query config (a prepared
 * statement, src/db/tx.ts executeNamed) is dropped. The pools of an engine behind a transaction
 * pooler use it (pg.Pool's `Client` option), so no code path can leave a prepared statement on a
 * shared server connection.
 */
export class UnpreparedClient extends pg.Client {
  override query(...args: unknown[]): any {
    const [config] = args
    if (
      config &&
      typeof config === 'object' &&
      typeof (config as { name?: unknown }).name === 'string' &&
      typeof (config as { submit?: unknown }).submit !== 'function'
    ) {
      const { name: _name, ...unnamed } = config as Record<string, unknown>
      args[0] = unnamed
    }
    return (super.query as (...a: unknown[]) => unknown)(...args)
  }
}

/** Whether the engine's DATABASE_URL reaches a pooler in transaction mode. */
export function behindPooler(config: Pick<Config, 'databasePooler'>): boolean {
  return config.databasePooler === 'transaction'
}

/** The pg.Pool options that make a pool safe behind the configured pooler. */
export function poolerPoolOptions(config: Pick<Config, 'databasePooler'>): pg.PoolConfig {
  return behindPooler(config) ? { Client: UnpreparedClient } : {}
}

/**
 * Runs `fn` if this caller gets the turn named `key` (a transaction-scoped advisory try-lock, held by
 * an open transaction on one pooled connection while `fn` runs its own transactions on others), and
 * returns whether it ran. The lock ends with that transaction, so behind a transaction pooler it
 * cannot stay with a server connection, and a connection lost meanwhile releases it.
 */
export async function withTurn(
  pool: pg.Pool,
  key: readonly [number, number] | number,
  fn: () => Promise<void>,
): Promise<boolean> {
  const { client, release } = await checkout(pool)
  let broken = false
  try {
    await client.query('BEGIN')
    const { rows } = await (typeof key === 'number'
      ? client.query('SELECT pg_try_advisory_xact_lock($1) AS ok', [key])
      : client.query('SELECT pg_try_advisory_xact_lock($1, $2) AS ok', [key[0], key[1]]))
    if (!rows[0]?.ok) return false
    await fn()
    return true
  } finally {
    // The turn's transaction wrote nothing: ending it releases the lock. A connection that cannot
    // end it (lost, or ended by idle_in_transaction_session_timeout during a long fn) is discarded.
    await client.query('ROLLBACK').catch(() => (broken = true))
    release(broken)
  }
}
