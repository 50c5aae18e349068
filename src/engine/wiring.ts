// The control database's side of an engine, as its constructor opens it: the run-time pool and
// pg-boss (their connection errors go to the outage-aware warning), the tenant directory, the
// metrics (observing the pools), and the stores, which open tenant databases' pools on first use.
import pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import { Metrics } from '../metrics.ts'
import { createBoss } from '../queue/boss.ts'
import { CONTROL_STORE, Stores } from '../tenancy/stores.ts'
import { provideTenantContextSecret } from '../tenancy/tenant-context.ts'
import { TenantDirectory } from '../tenancy/tenants.ts'
import { type Connections, connectionError } from './connections.ts'
import type { EngineOptions } from './types.ts'

export interface ControlSide {
  pool: pg.Pool
  boss: PgBoss
  tenants: TenantDirectory
  metrics: Metrics
  stores: Stores
}

export function openControl(
  options: EngineOptions,
  config: Readonly<Config>,
  log: Logger,
  connections: Connections,
  hooks: {
    warn: (details: object, error: unknown, msg: string) => void
    /** A store opened: its pg-boss needs the agents' queues. */
    ensureQueues: (boss: PgBoss) => Promise<void>
    /** A store closed (an idle tenant database). */
    storeClosed: (key: string) => void
  },
): ControlSide {
  const pool = new pg.Pool({
    connectionString: connections.connectionString,
    max: config.dbPoolMax,
    application_name: 'equilateral',
  })
  provideTenantContextSecret(pool, () => connections.tenantContextSecret(null))
  // pg attaches the whole client to an idle connection's error: log what matters, not the socket.
  pool.on('error', (error) => hooks.warn(connectionError(error), error, 'idle database connection lost'))
  const boss = createBoss({
    connectionString: connections.connectionString,
    supervise: options.supervise ?? true,
    schedule: options.supervise ?? true,
  })
  // pg attaches its whole client to connection errors: log the message and code, not the client.
  boss.on('error', (error) => hooks.warn(connectionError(error), error, 'pg-boss error'))
  const tenants = new TenantDirectory(pool)
  const metrics = new Metrics({
    tenantLabel: config.metricsTenantLabel,
    databaseLabel: config.isolationMode === 'database-per-tenant',
  })
  metrics.observeResources(pool, boss, 'app', CONTROL_STORE)
  const unobserve = new Map<string, () => void>()
  const stores = new Stores({
    control: {
      key: CONTROL_STORE,
      pool: pool,
      boss: boss,
      connectionString: connections.connectionString,
      database: null,
    },
    servers: connections.servers,
    log: log,
    poolMax: config.tenantDbPoolMax,
    maxOpen: config.maxTenantDatabases,
    idleMs: config.tenantDbIdleMs,
    supervise: options.supervise ?? true,
    onOpen: async (store) => {
      provideTenantContextSecret(store.pool, () => connections.tenantContextSecret(store.database))
      await hooks.ensureQueues(store.boss)
      unobserve.set(store.key, metrics.observeResources(store.pool, store.boss, 'app', store.key))
    },
    onClose: (store) => {
      unobserve.get(store.key)?.()
      unobserve.delete(store.key)
      hooks.storeClosed(store.key)
    },
  })
  return { pool, boss, tenants, metrics, stores }
}
