// The process's database logins: the run-time connection string (switched to the application
// role), the owner's (tenant administration, migrations) and the maintenance login's (retention,
// erasure), the pools of the last two (opened on first use), the servers tenant databases are
// placed on, and the secret each database's tenant credentials derive from.
import pg from 'pg'
import type { Config } from '../config.ts'
import { MAINTENANCE_ROLE } from '../db/names.ts'
import { runtimeConnectionString, type TenantDatabase, type TenantScope } from '../db/tx.ts'
import { Servers } from '../tenancy/placement.ts'
import type { Stores } from '../tenancy/stores.ts'
import {
  provideTenantContextSecret,
  readTenantContextSecret,
  secretBytes,
  TenantContextError,
} from '../tenancy/tenant-context.ts'
import type { EngineOptions } from './types.ts'

type Warn = (details: object, error: unknown, msg: string) => void

export class Connections {
  /** The run-time connection (switched to DATABASE_ROLE). */
  readonly connectionString: string
  readonly adminConnectionString: string
  /** The maintenance login's connection, switched to the maintenance role; null: the owner's. */
  readonly #maintenanceConnectionString: string | null
  /** database-per-tenant: the servers tenant databases are placed on. */
  readonly servers: Servers
  readonly #config: Readonly<Config>
  readonly #warn: Warn
  /** The stores, once the engine made them (maintenanceOf needs them). */
  #stores: () => Stores = () => {
    throw new Error('Connections: stores not set')
  }
  #adminPool: pg.Pool | null = null
  #maintenancePool: pg.Pool | null = null

  constructor(options: EngineOptions, config: Readonly<Config>, warn: Warn) {
    this.#config = config
    this.#warn = warn
    // Every run-time session (the pool, pg-boss's, the LISTEN connections, the tenant databases')
    // has the server end it when it idles inside a transaction: a frozen worker's locks are released.
    const session = { idleInTransactionTimeoutMs: config.idleInTransactionTimeoutMs }
    this.connectionString = runtimeConnectionString(options.connectionString, config.databaseRole, session)
    this.adminConnectionString =
      options.adminConnectionString ?? config.migrationDatabaseUrl ?? options.connectionString
    const maintenance = options.maintenanceConnectionString ?? config.maintenanceDatabaseUrl
    this.#maintenanceConnectionString = maintenance
      ? runtimeConnectionString(maintenance, MAINTENANCE_ROLE, session)
      : null
    this.servers = new Servers({
      configured: config.tenantServers,
      controlOwnerUrl: this.adminConnectionString,
      controlRuntimeUrl: options.connectionString,
      controlMaintenanceUrl: maintenance,
      role: config.databaseRole,
      session,
    })
  }

  /** Called once the engine made its stores. */
  useStores(stores: Stores): void {
    this.#stores = () => stores
  }

  /**
   * The secret a database's tenant credentials derive from (src/tenancy/tenant-context.ts): the
   * database's own, read once through the owner's connection (the run-time pools' role cannot read
   * it), else the configured TENANT_CONTEXT_SECRET (which `migrate` stores in every database).
   */
  async tenantContextSecret(database: TenantDatabase | null): Promise<Buffer> {
    try {
      if (!database) return await readTenantContextSecret(this.admin)
      const owner = new pg.Client({
        connectionString: this.servers.ownerUrl(database.server, database.name),
        application_name: 'equilateral-admin',
      })
      owner.on('error', () => {})
      await owner.connect()
      try {
        return await readTenantContextSecret(owner)
      } finally {
        await owner.end().catch(() => {})
      }
    } catch (error) {
      const configured = this.#config.tenantContextSecret
      if (!(error instanceof TenantContextError) || configured === undefined) throw error
      return secretBytes(configured)
    }
  }

  /** The owner's pool, opened on first use by a tenant administration call. */
  get admin(): pg.Pool {
    if (!this.#adminPool) {
      this.#adminPool = new pg.Pool({
        connectionString: this.adminConnectionString,
        max: 2,
        application_name: 'equilateral-admin',
      })
      this.#adminPool.on('error', (error) =>
        this.#warn(connectionError(error), error, 'idle admin connection lost'),
      )
    }
    return this.#adminPool
  }

  /**
   * The maintenance pool (retention purge, erasure), opened on first use: the maintenance login's
   * (MAINTENANCE_DATABASE_URL) when there is one, else the owner's, as before the role existed.
   */
  get maintenance(): pg.Pool {
    if (!this.#maintenanceConnectionString) return this.admin
    if (!this.#maintenancePool) {
      this.#maintenancePool = new pg.Pool({
        connectionString: this.#maintenanceConnectionString,
        max: 2,
        application_name: 'equilateral-maintenance',
      })
      this.#maintenancePool.on('error', (error) =>
        this.#warn(connectionError(error), error, 'idle maintenance connection lost'),
      )
      // The maintenance role cannot read the secret: the same source as the app's pools.
      provideTenantContextSecret(this.#maintenancePool, () => this.tenantContextSecret(null))
    }
    return this.#maintenancePool
  }

  /** The maintenance pool on the tenant's database (the control one's for a shared-database tenant). */
  maintenanceOf(scope: TenantScope): pg.Pool {
    const pool = this.#stores().maintenance(scope, this.maintenance)
    // The maintenance role cannot read the secret either: the same source as the app's pools.
    if (scope.database)
      provideTenantContextSecret(pool, () => this.tenantContextSecret(scope.database ?? null))
    return pool
  }

  async close(): Promise<void> {
    await this.#adminPool?.end().catch(() => {})
    await this.#maintenancePool?.end().catch(() => {})
  }
}

export function connectionError(error: Error): { err: { message: string; code?: string } } {
  const code = (error as { code?: string }).code
  return { err: { message: error.message, ...(code ? { code } : {}) } }
}
