// database-per-tenant: where a tenant database is (a server named in TENANT_SERVERS and a database on
// it), what it is called, and the connection strings that reach it. The directory row in the control
// database holds the names; credentials stay in the configuration, never in a table.
import { randomBytes } from 'node:crypto'
import type pg from 'pg'
import { TenantError } from '../errors.ts'
import { APP_SCHEMA, MAINTENANCE_ROLE } from '../db/names.ts'
import { withDatabase } from '../db/provision.ts'
import { runtimeConnectionString, type SessionLimits, type TenantDatabase } from '../db/tx.ts'

// TenantDatabase is declared next to TenantScope (db/tx.ts), which holds one: db/tx.ts importing
// this file back made an import cycle.
export type { TenantDatabase }

/** The name of the server of the control database when TENANT_SERVERS is empty. */
export const DEFAULT_SERVER = 'default'

/** A plain lower-case identifier: safe to quote into SQL, never truncated by PostgreSQL. */
export const DATABASE_NAME = /^[a-z_][a-z0-9_]{0,62}$/

/** `server/database`: how metrics, logs and the store registry name a tenant database. */
export function databaseKey(db: TenantDatabase): string {
  return `${db.server}/${db.name}`
}

/**
 * A fresh database name for a tenant: the prefix, the tenant id made into a lower-case identifier
 * (readable in psql and pg_dump), and 6 random hex digits, so a tenant created again after its old
 * database was kept (or two ids that only differ in case) never lands in an existing database.
 */
export function newDatabaseName(prefix: string, tenantId: string): string {
  const readable = tenantId
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, '_')
    .slice(0, 63 - prefix.length - 7)
  const name = `${prefix}${readable}_${randomBytes(3).toString('hex')}`
  if (!DATABASE_NAME.test(name)) throw new Error(`generated database name ${name} is malformed`)
  return name
}

/** The servers tenant databases may be placed on, and how to reach a database on each. */
export class Servers {
  readonly #owner: ReadonlyMap<string, string>
  readonly #runtime: ReadonlyMap<string, string>
  /** The maintenance logins by server, or null: maintenance runs as the owner. */
  readonly #maintenance: ReadonlyMap<string, string> | null
  readonly #role: string
  readonly #session: SessionLimits

  /**
   * `configured`: TENANT_SERVERS (owner URLs). Without it there is one server, `default`: the control
   * database's, reached with the engine's own owner and run-time logins.
   */
  constructor(options: {
    configured: Readonly<Record<string, string>>
    controlOwnerUrl: string
    controlRuntimeUrl: string
    /**
     * MAINTENANCE_DATABASE_URL: the control database's maintenance login (undefined: maintenance
     * runs as the owner). A configured server's owner login is switched to the maintenance role.
     */
    controlMaintenanceUrl?: string | undefined
    role: string
    /** Limits of the run-time sessions (see SessionLimits). */
    session?: SessionLimits
  }) {
    const entries = Object.entries(options.configured)
    this.#owner = new Map(
      entries.length > 0 ? entries : [[DEFAULT_SERVER, options.controlOwnerUrl] as [string, string]],
    )
    // A configured server's login is used at run time too, switched to the application role.
    this.#runtime = new Map(
      entries.length > 0 ? entries : [[DEFAULT_SERVER, options.controlRuntimeUrl] as [string, string]],
    )
    this.#maintenance = options.controlMaintenanceUrl
      ? new Map(
          entries.length > 0
            ? entries
            : [[DEFAULT_SERVER, options.controlMaintenanceUrl] as [string, string]],
        )
      : null
    this.#role = options.role
    this.#session = options.session ?? {}
  }

  get names(): string[] {
    return [...this.#owner.keys()].sort()
  }

  has(server: string): boolean {
    return this.#owner.has(server)
  }

  /** The owner's connection to a database on the server (CREATE DATABASE, migrations, purges). */
  ownerUrl(server: string, database = 'postgres'): string {
    return withDatabase(this.#url(this.#owner, server), database)
  }

  /** The run-time connection to a tenant database: switched to the application role. */
  runtimeUrl(db: TenantDatabase): string {
    return runtimeConnectionString(
      withDatabase(this.#url(this.#runtime, db.server), db.name),
      this.#role,
      this.#session,
    )
  }

  /**
   * The maintenance connection to a tenant database (retention purge, erasure): switched to the
   * maintenance role when there is a maintenance login, else the owner's, as before the role existed.
   */
  maintenanceUrl(db: TenantDatabase): string {
    if (!this.#maintenance) return this.ownerUrl(db.server, db.name)
    return runtimeConnectionString(
      withDatabase(this.#url(this.#maintenance, db.server), db.name),
      MAINTENANCE_ROLE,
      this.#session,
    )
  }

  #url(map: ReadonlyMap<string, string>, server: string): string {
    const url = map.get(server)
    if (!url) {
      throw new TenantError(
        'unknown_server',
        `server "${server}" is not in TENANT_SERVERS (${this.names.join(', ')}): every process needs the same list`,
      )
    }
    return url
  }
}

/**
 * Why the database is not this tenant's, or undefined when it is: a tenant database holds exactly its
 * own tenant's row (createTenantDatabase wrote it). Migrating another database, or one that is not
 * an equilateral database at all, because a directory row was edited or a name reused, would be wrong.
 */
export async function identityProblem(
  client: Pick<pg.ClientBase, 'query'>,
  tenant: string,
): Promise<string | undefined> {
  const { rows: found } = await client.query(`SELECT to_regclass($1) IS NOT NULL AS present`, [
    `${APP_SCHEMA}.tenants`,
  ])
  if (!found[0]?.present) return `it has no ${APP_SCHEMA}.tenants table: not an equilateral database`
  const { rows } = await client.query<{ id: string }>(
    `SELECT id FROM ${APP_SCHEMA}.tenants ORDER BY id LIMIT 3`,
  )
  const ids = rows.map((r) => r.id)
  if (ids.length === 1 && ids[0] === tenant) return undefined
  const holds = ids.length === 0 ? 'no tenant' : ids.map((id) => JSON.stringify(id)).join(', ')
  return `its ${APP_SCHEMA}.tenants holds ${holds}${ids.length === 3 ? ', ...' : ''}, not only "${tenant}"`
}
