// Where a tenant's transactions run: a Store is a database with its pool and its pg-boss instance.
// Row-level and schema-per-tenant tenants all use the engine's own store (the control database);
// in database-per-tenant mode each tenant database gets a store of its own, opened on first use and
// closed when idle, suspended or moved, with at most MAX_TENANT_DATABASES open in a process. The
// engine's code path is the same in every mode: it asks for the tenant's store and runs there.
import pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import { TenantError } from '../errors.ts'
import { createBoss } from '../queue/boss.ts'
import { databaseKey, identityProblem, type Servers, type TenantDatabase } from './placement.ts'
import type { TenantScope } from '../db/tx.ts'

export interface Store {
  /** `control` for the engine's own database; `server/database` for a tenant database. */
  readonly key: string
  readonly pool: pg.Pool
  readonly boss: PgBoss
  /** The run-time connection string (a worker's LISTEN connection). */
  readonly connectionString: string
  /** The tenant database (null for the control database). */
  readonly database: TenantDatabase | null
}

export const CONTROL_STORE = 'control'

export interface StoresOptions {
  control: Store
  servers: Servers
  log: Logger
  /** Run-time connections of one tenant database's pool (pg-boss shares it). */
  poolMax: number
  /** Tenant databases open at once at most. */
  maxOpen: number
  /** A store no caller has used this long (and no worker holds) is closed. */
  idleMs: number
  /** Runs pg-boss maintenance and cron on the tenant databases (worker processes). */
  supervise: boolean
  /** Called once a store is open, before anyone uses it (queues, metrics). */
  onOpen: (store: Store) => Promise<void>
  /** Called when a store is closed (metrics). */
  onClose: (store: Store) => void
}

interface Entry {
  opening: Promise<Store>
  store: Store | null
  /** Workers (and other long-lived users) holding the store open. */
  holds: number
  lastUsed: number
}

/** The stores of one process: the control database's, and the tenant databases opened so far. */
export class Stores {
  readonly control: Store
  readonly #o: StoresOptions
  readonly #open = new Map<string, Entry>()
  readonly #owners = new Map<string, pg.Pool>()
  readonly #idleTimer: NodeJS.Timeout
  #closed = false

  constructor(options: StoresOptions) {
    this.#o = options
    this.control = options.control
    this.#idleTimer = setInterval(() => void this.#closeIdle(), Math.min(options.idleMs, 30_000))
    this.#idleTimer.unref()
  }

  /** The store a tenant's transactions run in, opening its database on first use. */
  async of(scope: TenantScope): Promise<Store> {
    if (!scope.database) return this.control
    const entry = this.#entry(scope)
    entry.lastUsed = Date.now()
    return entry.store ?? entry.opening
  }

  /**
   * Holds a tenant's store open until the returned release is called (a worker serving it): an
   * idle store is closed only when nobody holds it.
   */
  async hold(scope: TenantScope): Promise<{ store: Store; release: () => Promise<void> }> {
    if (!scope.database) return { store: this.control, release: async () => {} }
    const entry = this.#entry(scope)
    entry.holds++
    try {
      const store = await entry.opening
      let released = false
      return {
        store,
        release: async () => {
          if (released) return
          released = true
          entry.holds--
          entry.lastUsed = Date.now()
        },
      }
    } catch (error) {
      entry.holds--
      throw error
    }
  }

  /**
   * The maintenance pool on the tenant's database (retention, erasure; Servers.maintenanceUrl), or
   * `control` for a tenant in the control database. Small, and closed with the stores.
   */
  maintenance(scope: TenantScope, control: pg.Pool): pg.Pool {
    if (!scope.database) return control
    const key = databaseKey(scope.database)
    let pool = this.#owners.get(key)
    if (!pool) {
      pool = new pg.Pool({
        connectionString: this.#o.servers.maintenanceUrl(scope.database),
        max: 2,
        idleTimeoutMillis: 10_000,
        application_name: 'equilateral-maintenance',
      })
      pool.on('error', (error) =>
        this.#o.log.warn({ database: key, err: error.message }, 'idle maintenance connection lost'),
      )
      this.#owners.set(key, pool)
    }
    return pool
  }

  /** Closes a tenant database's store now (the tenant moved or was suspended); the next use reopens. */
  async close(database: TenantDatabase): Promise<void> {
    const key = databaseKey(database)
    const entry = this.#open.get(key)
    this.#open.delete(key)
    const owner = this.#owners.get(key)
    this.#owners.delete(key)
    await owner?.end().catch(() => {})
    if (!entry) return
    const store = await entry.opening.catch(() => null)
    if (store) await this.#shut(store)
  }

  async closeAll(): Promise<void> {
    this.#closed = true
    clearInterval(this.#idleTimer)
    const entries = [...this.#open.values()]
    this.#open.clear()
    const owners = [...this.#owners.values()]
    this.#owners.clear()
    await Promise.allSettled([
      ...entries.map(async (e) => {
        const store = await e.opening.catch(() => null)
        if (store) await this.#shut(store)
      }),
      ...owners.map((p) => p.end()),
    ])
  }

  #entry(scope: TenantScope): Entry {
    const database = scope.database as TenantDatabase
    const key = databaseKey(database)
    const found = this.#open.get(key)
    if (found) return found
    if (this.#closed) throw new Error('the engine is closed')
    if (this.#open.size >= this.#o.maxOpen && !this.#evictOne()) {
      throw new TenantError(
        'too_many_databases',
        `this process has ${this.#open.size} tenant databases open (MAX_TENANT_DATABASES) and none idle to close`,
      )
    }
    const entry: Entry = {
      opening: undefined as unknown as Promise<Store>,
      store: null,
      holds: 0,
      lastUsed: Date.now(),
    }
    entry.opening = this.#openStore(scope.tenantId, database).then(
      (store) => {
        entry.store = store
        return store
      },
      (error: unknown) => {
        // Not kept: the next use tries again (the database may be back by then).
        if (this.#open.get(key) === entry) this.#open.delete(key)
        throw error
      },
    )
    this.#open.set(key, entry)
    return entry
  }

  async #openStore(tenantId: string, database: TenantDatabase): Promise<Store> {
    const key = databaseKey(database)
    const connectionString = this.#o.servers.runtimeUrl(database)
    const pool = new pg.Pool({ connectionString, max: this.#o.poolMax, application_name: 'equilateral' })
    // One warning per outage of this database; the worker and the requests report their own failures.
    let warned = false
    pool.on('error', (error) => {
      if (warned) return
      warned = true
      this.#o.log.warn({ database: key, err: { message: error.message } }, 'tenant database connection lost')
    })
    pool.on('connect', () => {
      warned = false
    })
    // pg-boss runs its statements through this pool: one pool per tenant database, not two.
    const boss = createBoss({
      connectionString,
      db: { executeSql: (text, values) => pool.query(text, values as unknown[]) },
      supervise: this.#o.supervise,
      schedule: this.#o.supervise,
    })
    boss.on('error', (error) =>
      this.#o.log.debug({ database: key, err: { message: error.message } }, 'pg-boss error'),
    )
    const store: Store = { key, pool, boss, connectionString, database }
    try {
      await checkIdentity(pool, tenantId, key)
      await boss.start()
      await this.#o.onOpen(store)
      this.#o.log.info({ database: key }, 'tenant database opened')
      return store
    } catch (error) {
      await boss.stop({ graceful: false, close: true }).catch(() => {})
      await pool.end().catch(() => {})
      throw error
    }
  }

  async #shut(store: Store): Promise<void> {
    this.#o.onClose(store)
    await store.boss.stop({ graceful: false, close: true }).catch(() => {})
    await store.pool.end().catch(() => {})
    this.#o.log.info({ database: store.key }, 'tenant database closed')
  }

  /** Closes the least recently used store nobody holds; false when every open store is held. */
  #evictOne(): boolean {
    let victim: [string, Entry] | undefined
    for (const e of this.#open) {
      if (e[1].holds === 0 && e[1].store && (!victim || e[1].lastUsed < victim[1].lastUsed)) victim = e
    }
    if (!victim) return false
    const store = victim[1].store as Store
    void this.close(store.database as TenantDatabase)
    return true
  }

  async #closeIdle(): Promise<void> {
    const cutoff = Date.now() - this.#o.idleMs
    for (const e of [...this.#open.values()]) {
      if (e.holds === 0 && e.store && e.lastUsed < cutoff)
        await this.close(e.store.database as TenantDatabase)
    }
  }
}

/** A directory entry switched to the wrong database (a mistyped move) is refused, never mixed. */
async function checkIdentity(pool: pg.Pool, tenantId: string, key: string): Promise<void> {
  const problem = await identityProblem(pool, tenantId)
  if (problem)
    throw new TenantError(
      'tenant_database_mismatch',
      `database ${key} is not tenant "${tenantId}"'s: ${problem}`,
    )
}
