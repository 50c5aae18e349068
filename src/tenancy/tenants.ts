// Tenants: administration (create, list, suspend, resume, rotate key) on the owner connection, and
// resolution of a tenant id or API key to the transaction scope the engine runs its statements in,
// on the application connection (which may only read the tenants table).
//
// Size (just over 400 lines): the administration functions and the directory (TenantDirectory) are
// the two sides of the tenants table and share its row shapes (SCOPE_COLUMNS, scopeOfRow) and
// hashApiKey; createTenant (one procedure per isolation mode) is the longest part.
import { createHash, randomBytes } from 'node:crypto'
import pg from 'pg'
import { type ComplianceProfile, parseComplianceProfile } from '../compliance/profile.ts'
import type { IsolationMode } from '../config.ts'
import { assertStorableJson } from '../core/json.ts'
import { MIGRATION_LOCK, migrate, migrateTenantTables } from '../db/migrate.ts'
import { APP_SCHEMA, isTenantSchema } from '../db/names.ts'
import { DATABASE_NAME, newDatabaseName, type Servers, type TenantDatabase } from './placement.ts'
import { ensureDatabase } from '../db/provision.ts'
import { type TenantScope, withTransaction } from '../db/tx.ts'
import { assertTenantId } from '../core/ids.ts'
import { InvalidInputError, TenantError } from '../errors.ts'

const TIER = /^[a-z0-9][a-z0-9_-]{0,31}$/

// In core/ids.ts, so the command line can check a tenant id without loading this module.
export { assertTenantId } from '../core/ids.ts'

function assertTier(tier: string): void {
  if (!TIER.test(tier)) {
    throw new TenantError(
      'invalid_tier',
      `tier ${JSON.stringify(tier).slice(0, 40)} must be 1-32 lower-case letters, digits, '_' or '-'`,
    )
  }
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex')
}

function newApiKey(): string {
  return `eqk_${randomBytes(32).toString('base64url')}`
}

/** A fresh tenant schema name: never derived from the tenant id (see TENANT_SCHEMA_PATTERN). */
function newSchemaName(): string {
  const name = `t_${randomBytes(8).toString('hex')}`
  if (!isTenantSchema(name)) throw new Error(`generated schema name ${name} is malformed`)
  return name
}

export interface CreatedTenant {
  id: string
  name: string
  tier: string
  /** The tenant's own schema (schema-per-tenant mode), or null for the shared schema. */
  schema: string | null
  /** The tenant's own database (database-per-tenant mode), or null. */
  database: TenantDatabase | null
  /** Shown once; only its SHA-256 is stored. */
  apiKey: string
}

export interface TenantInfo {
  id: string
  name: string
  tier: string
  /** provisioning: its database is being created; creating the tenant again finishes it. */
  status: 'active' | 'suspended' | 'provisioning'
  schema: string | null
  database: TenantDatabase | null
  /** Which compliance regimes apply and the retention periods (see ComplianceProfile). */
  complianceProfile: ComplianceProfile
  createdAt: Date
}

export interface TenantSpec {
  id: string
  name?: string
  tier?: string
  /** Compliance regimes and retention periods; validated before anything is written. Default: none. */
  complianceProfile?: ComplianceProfile
  /**
   * database-per-tenant: the server (a TENANT_SERVERS name) to create the tenant's database on.
   * Default: the server with the fewest tenants.
   */
  server?: string
}

/** How database-per-tenant places new tenants: the servers, and the prefix of database names. */
export interface Placement {
  servers: Servers
  prefix: string
  /** TENANT_CONTEXT_SECRET, stored in each new database as its migration does (src/db/migrate.ts). */
  tenantContextSecret?: string | undefined
  /** TENANT_CONTEXT_VERIFIED, likewise. */
  tenantContextVerified?: boolean | undefined
}

/**
 * Creates a tenant in one transaction: its row and, in schema-per-tenant mode, its schema with every
 * tenant table migrated, so a failure leaves neither. Waits for a running migration (shared lock).
 */
export async function createTenant(
  admin: pg.Pool,
  spec: TenantSpec,
  mode: IsolationMode,
  placement?: Placement,
): Promise<CreatedTenant> {
  assertTenantId(spec.id)
  const tier = spec.tier ?? 'standard'
  assertTier(tier)
  const name = spec.name ?? spec.id
  if (typeof name !== 'string') throw new InvalidInputError('$.name must be a string', '$.name')
  // PostgreSQL text cannot hold a NUL, and would store a lone surrogate altered.
  assertStorableJson(name, '$.name')
  const profile = parseComplianceProfile(spec.complianceProfile ?? {})
  if (spec.server !== undefined && mode !== 'database-per-tenant') {
    throw new InvalidInputError('$.server is only for database-per-tenant mode', '$.server')
  }
  if (mode === 'database-per-tenant') {
    if (!placement) throw new Error('database-per-tenant needs the servers to place tenants on')
    return createTenantDatabase(admin, { id: spec.id, name, tier, profile, server: spec.server }, placement)
  }
  const apiKey = newApiKey()
  const schema = mode === 'schema-per-tenant' ? newSchemaName() : null
  await withTransaction(admin, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock_shared($1)', [MIGRATION_LOCK])
    const { rowCount } = await client.query(
      `INSERT INTO ${APP_SCHEMA}.tenants (id, name, tier, schema_name, api_key_hash, compliance_profile)
         VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (id) DO NOTHING`,
      [spec.id, name, tier, schema, hashApiKey(apiKey), JSON.stringify(profile)],
    )
    if (rowCount === 0) throw new TenantError('tenant_exists', `tenant "${spec.id}" already exists`)
    if (schema) await migrateTenantTables(client, schema)
  })
  return { id: spec.id, name, tier, schema, database: null, apiKey }
}

/**
 * database-per-tenant. CREATE DATABASE cannot run in a transaction, so creation is a sequence
 * that can be resumed: (1) the directory row, `provisioning`, names the server and database; (2)
 * the database is created and migrated like any equilateral database; (3) it gets the tenant's own
 * row in its `equilateral.tenants` (compliance profile; its identity for checkIdentity); (4) the
 * directory row becomes `active` with the API key. Interrupted anywhere, creating the tenant again
 * picks up the same database and finishes; an `active` tenant is `tenant_exists` as in every mode.
 */
async function createTenantDatabase(
  admin: pg.Pool,
  t: { id: string; name: string; tier: string; profile: ComplianceProfile; server: string | undefined },
  placement: Placement,
): Promise<CreatedTenant> {
  const { servers } = placement
  if (t.server !== undefined && !servers.has(t.server)) {
    throw new TenantError('unknown_server', `server "${t.server}" is not one of ${servers.names.join(', ')}`)
  }
  const database = await withTransaction(admin, async (client): Promise<TenantDatabase> => {
    const { rows } = await client.query(
      `SELECT status, database_server, database_name FROM ${APP_SCHEMA}.tenants WHERE id = $1 FOR UPDATE`,
      [t.id],
    )
    const found = rows[0]
    if (found) {
      if (found.status === 'provisioning' && found.database_server) {
        return { server: found.database_server, name: found.database_name }
      }
      throw new TenantError('tenant_exists', `tenant "${t.id}" already exists`)
    }
    const db = {
      server: t.server ?? (await leastUsedServer(client, servers)),
      name: newDatabaseName(placement.prefix, t.id),
    }
    const { rowCount } = await client.query(
      `INSERT INTO ${APP_SCHEMA}.tenants (id, name, tier, status, database_server, database_name, compliance_profile)
       VALUES ($1, $2, $3, 'provisioning', $4, $5, $6::jsonb) ON CONFLICT (id) DO NOTHING`,
      [t.id, t.name, t.tier, db.server, db.name, JSON.stringify(t.profile)],
    )
    if (rowCount === 0) throw new TenantError('tenant_provisioning', `tenant "${t.id}" is being created`)
    return db
  })
  await ensureDatabase(servers.ownerUrl(database.server), database.name)
  await migrate(servers.ownerUrl(database.server, database.name), {
    tenantContextSecret: placement.tenantContextSecret,
    tenantContextVerified: placement.tenantContextVerified,
  })
  await withTenantDatabase(servers, database, async (client) => {
    const { rows } = await client.query(`SELECT id FROM ${APP_SCHEMA}.tenants WHERE id <> $1`, [t.id])
    if (rows.length > 0) {
      throw new TenantError(
        'tenant_database_mismatch',
        `database ${database.server}/${database.name} already holds tenant "${rows[0].id}"`,
      )
    }
    await client.query(
      `INSERT INTO ${APP_SCHEMA}.tenants (id, name, tier, compliance_profile) VALUES ($1, $2, $3, $4::jsonb)
       ON CONFLICT (id) DO UPDATE SET name = excluded.name, tier = excluded.tier,
         compliance_profile = excluded.compliance_profile, updated_at = now()`,
      [t.id, t.name, t.tier, JSON.stringify(t.profile)],
    )
  })
  const apiKey = newApiKey()
  const { rowCount } = await admin.query(
    `UPDATE ${APP_SCHEMA}.tenants SET status = 'active', api_key_hash = $2, name = $3, tier = $4,
       compliance_profile = $5::jsonb, updated_at = now()
     WHERE id = $1 AND status = 'provisioning'`,
    [t.id, hashApiKey(apiKey), t.name, t.tier, JSON.stringify(t.profile)],
  )
  // Another creation of the same tenant, resumed at the same time, finished first.
  if (rowCount === 0) throw new TenantError('tenant_exists', `tenant "${t.id}" already exists`)
  return { id: t.id, name: t.name, tier: t.tier, schema: null, database, apiKey }
}

/** The configured server holding the fewest tenant databases (ties: the first by name). */
async function leastUsedServer(client: pg.ClientBase, servers: Servers): Promise<string> {
  const { rows } = await client.query<{ server: string; n: string }>(
    `SELECT database_server AS server, count(*) AS n FROM ${APP_SCHEMA}.tenants
     WHERE database_server = ANY($1::text[]) GROUP BY 1`,
    [servers.names],
  )
  const count = new Map(rows.map((r) => [r.server, Number(r.n)]))
  let best = servers.names[0] as string
  for (const name of servers.names) if ((count.get(name) ?? 0) < (count.get(best) ?? 0)) best = name
  return best
}

/** Runs `fn` on an owner connection to a tenant database. */
export async function withTenantDatabase<T>(
  servers: Servers,
  database: TenantDatabase,
  fn: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client({
    connectionString: servers.ownerUrl(database.server, database.name),
    application_name: 'equilateral-admin',
  })
  client.on('error', () => {})
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end().catch(() => {})
  }
}

export async function listTenants(admin: pg.Pool): Promise<TenantInfo[]> {
  const { rows } = await admin.query(
    `SELECT id, name, tier, status, schema_name, database_server, database_name, compliance_profile, created_at
     FROM ${APP_SCHEMA}.tenants ORDER BY id`,
  )
  return rows.map((r) => ({
    id: r.id,
    name: r.name,
    tier: r.tier,
    status: r.status,
    schema: r.schema_name,
    database: r.database_server ? { server: r.database_server, name: r.database_name } : null,
    complianceProfile: r.compliance_profile,
    createdAt: r.created_at,
  }))
}

/**
 * Replaces the tenant's compliance profile. Compliance events written from now on follow it;
 * events already written keep the retention they were given.
 */
export async function setComplianceProfile(
  admin: pg.Pool,
  id: string,
  profile: ComplianceProfile,
  servers?: Servers,
): Promise<ComplianceProfile> {
  assertTenantId(id)
  const parsed = parseComplianceProfile(profile)
  const { rows } = await admin.query(
    `UPDATE ${APP_SCHEMA}.tenants SET compliance_profile = $2::jsonb, updated_at = now() WHERE id = $1
     RETURNING database_server, database_name`,
    [id, JSON.stringify(parsed)],
  )
  if (rows.length === 0) throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
  // database-per-tenant: the compliance-event trigger reads the profile in the tenant's database.
  const r = rows[0]
  if (r.database_server && servers) {
    await withTenantDatabase(servers, { server: r.database_server, name: r.database_name }, (client) =>
      client.query(
        `UPDATE ${APP_SCHEMA}.tenants SET compliance_profile = $2::jsonb, updated_at = now() WHERE id = $1`,
        [id, JSON.stringify(parsed)],
      ),
    )
  }
  return parsed
}

/** Suspends or re-activates a tenant: a suspended tenant's keys and handles are refused, its tasks wait. */
export async function setTenantStatus(
  admin: pg.Pool,
  id: string,
  status: 'active' | 'suspended',
): Promise<void> {
  assertTenantId(id)
  const { rowCount } = await admin.query(
    `UPDATE ${APP_SCHEMA}.tenants SET status = $2, updated_at = now() WHERE id = $1`,
    [id, status],
  )
  if (rowCount === 0) throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
}

/** Replaces the tenant's API key; the old one stops working at once. Returns the new key (shown once). */
export async function rotateApiKey(admin: pg.Pool, id: string): Promise<string> {
  assertTenantId(id)
  const apiKey = newApiKey()
  const { rowCount } = await admin.query(
    `UPDATE ${APP_SCHEMA}.tenants SET api_key_hash = $2, updated_at = now() WHERE id = $1`,
    [id, hashApiKey(apiKey)],
  )
  if (rowCount === 0) throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
  return apiKey
}

/** Resolves tenants to scopes, with a short cache so a hot worker does not ask for every batch. */
export class TenantDirectory {
  readonly #pool: pg.Pool
  readonly #ttlMs: number
  readonly #cache = new Map<string, { scope: TenantScope | null; at: number }>()

  constructor(pool: pg.Pool, ttlMs = 5000) {
    this.#pool = pool
    this.#ttlMs = ttlMs
  }

  /** Forgets what it knows of a tenant (after this process changed it). */
  invalidate(id: string): void {
    this.#cache.delete(id)
  }

  /** Active tenants among `ids`, by id. Unknown and suspended tenants are absent. */
  async scopeOf(ids: string[]): Promise<Map<string, TenantScope>> {
    const now = Date.now()
    const result = new Map<string, TenantScope>()
    const missing: string[] = []
    for (const id of ids) {
      const hit = this.#cache.get(id)
      if (hit && now - hit.at < this.#ttlMs) {
        if (hit.scope) result.set(id, hit.scope)
      } else missing.push(id)
    }
    if (missing.length > 0) {
      const { rows } = await this.#pool.query(
        `SELECT ${SCOPE_COLUMNS} FROM ${APP_SCHEMA}.tenants WHERE id = ANY($1::text[])`,
        [missing],
      )
      const found = new Map(rows.map((r) => [r.id as string, r]))
      for (const id of missing) {
        const r = found.get(id)
        const scope = r && r.status === 'active' ? scopeOfRow(r) : null
        this.#cache.set(id, { scope, at: now })
        if (scope) result.set(id, scope)
      }
    }
    return result
  }

  /** Every active tenant, in id order, read a page at a time (sweeper, sealer, verify). */
  active(pageSize = 200): AsyncGenerator<TenantScope> {
    return this.#scan({ activeOnly: true, pageSize })
  }

  /**
   * Every tenant, suspended ones too (or only the tenant `id`), in id order, read a page at a time:
   * for maintenance that must reach all rows, such as re-encryption.
   */
  all(options: { id?: string; pageSize?: number } = {}): AsyncGenerator<TenantScope> {
    return this.#scan({ activeOnly: false, pageSize: options.pageSize ?? 200, id: options.id })
  }

  async *#scan(o: {
    activeOnly: boolean
    pageSize: number
    id?: string | undefined
  }): AsyncGenerator<TenantScope> {
    for (let after = ''; ;) {
      const { rows } = await this.#pool.query(
        `SELECT ${SCOPE_COLUMNS} FROM ${APP_SCHEMA}.tenants
         WHERE id > $1 AND (NOT $3 OR status = 'active') AND ($4::text IS NULL OR id = $4)
         ORDER BY id LIMIT $2`,
        [after, o.pageSize, o.activeOnly, o.id ?? null],
      )
      // A row whose schema or database name was edited by hand is passed over here (and refused by
      // require()); a tenant still being provisioned has nothing to maintain yet.
      yield* rows.filter((r) => r.status !== 'provisioning' && wellFormed(r)).map(scopeOfRow)
      if (rows.length < o.pageSize) return
      after = rows[rows.length - 1].id
    }
  }

  /** The scope of one active tenant, or a typed error saying why there is none. */
  async require(id: string): Promise<TenantScope> {
    assertTenantId(id)
    const scope = (await this.scopeOf([id])).get(id)
    if (scope) return scope
    // The cache may hold an answer older than the row (the tenant was created or resumed since,
    // here or in another process): the row, read now, decides.
    const { rows } = await this.#pool.query(
      `SELECT ${SCOPE_COLUMNS} FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
      [id],
    )
    if (rows[0]?.status === 'active') {
      const fresh = scopeOfRow(rows[0])
      this.#cache.set(id, { scope: fresh, at: Date.now() })
      return fresh
    }
    if (rows[0]?.status === 'provisioning') {
      throw new TenantError(
        'tenant_provisioning',
        `tenant "${id}" is still being created: create it again to finish`,
      )
    }
    if (rows[0]) throw new TenantError('tenant_suspended', `tenant "${id}" is suspended`)
    throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
  }

  /** The tenant an API key belongs to (never cached: a rotated key stops working at once). */
  async byApiKey(key: string): Promise<TenantScope> {
    const { rows } = await this.#pool.query(
      `SELECT ${SCOPE_COLUMNS} FROM ${APP_SCHEMA}.tenants WHERE api_key_hash = $1`,
      [hashApiKey(key)],
    )
    const r = rows[0]
    if (!r) throw new TenantError('unknown_tenant', 'unknown API key')
    if (r.status !== 'active') throw new TenantError('tenant_suspended', `tenant "${r.id}" is suspended`)
    return scopeOfRow(r)
  }
}

/** The columns scopeOfRow reads. */
export const SCOPE_COLUMNS = 'id, tier, status, schema_name, database_server, database_name'

interface ScopeRow {
  id: string
  tier: string
  schema_name: string | null
  database_server?: string | null
  database_name?: string | null
}

function wellFormed(r: ScopeRow): boolean {
  return (
    (r.schema_name === null || isTenantSchema(r.schema_name)) &&
    (r.database_name == null || DATABASE_NAME.test(r.database_name))
  )
}

/** The transaction scope of a tenants row (also for the owner's work on suspended tenants). */
export function scopeOfRow(r: ScopeRow): TenantScope {
  // The schema name is quoted into search_path: it was generated by createTenant, but a row edited by
  // hand must not smuggle a second schema (or the shared one) into the path. The database name goes
  // into connection strings: the same care.
  if (!wellFormed(r)) {
    const what = r.schema_name !== null && !isTenantSchema(r.schema_name) ? 'schema' : 'database'
    throw new Error(`tenant "${r.id}" has a malformed ${what} name; refusing to use it`)
  }
  return {
    tenantId: r.id,
    tier: r.tier,
    searchPath: pg.escapeIdentifier(r.schema_name ?? APP_SCHEMA),
    database:
      r.database_server && r.database_name ? { server: r.database_server, name: r.database_name } : null,
  }
}
