// Applies, in order and idempotently: the control migrations (tenants, enterprise runs, the
// application role), the tenant-table migrations into the shared `equilateral` schema, pg-boss's
// own schema and the application role's grants on it, and finally the tenant-table migrations into
// every tenant schema (schema-per-tenant mode), one transaction per schema, in bounded pages, so an
// interrupted run resumes where it stopped. Concurrent migrators (two `release` steps, a test and a
// CLI) serialise on a session advisory lock; tenant creation takes the same lock shared, so a new
// tenant schema is never created half-way through a migration.
//
// database-per-tenant: each tenant database is an ordinary equilateral database, migrated by the same
// `migrate`; ./migrate-tenant-databases.ts brings every one of them up to this build. Where a
// database stands against this build (what is pending, what is ahead): ./migration-state.ts.
// drizzle-orm/migrator only reads the migration files; drizzle's runtime (drizzle-orm/node-postgres,
// ~0.4 s and ~100 MB to load) is imported by migrate() alone, so a worker never loads it.
import { type MigrationMeta, readMigrationFiles } from 'drizzle-orm/migrator'
import { createRequire } from 'node:module'
import pg from 'pg'
import { PgBoss } from 'pg-boss'
import { packagePath } from '../paths.ts'
import { APP_ROLE, APP_SCHEMA, BOSS_SCHEMA, isTenantSchema } from './names.ts'
import { secretBytes } from './tenant-context.ts'

export const MIGRATION_LOCK = 0x6571_6167 // 'eqag'

export const migrationsFolder = {
  control: packagePath('drizzle', 'control'),
  tenant: packagePath('drizzle', 'tenant'),
}

export interface MigrateOptions {
  /** Called with one line per step, for the CLI and logs. */
  onStep?: (message: string) => void
  /** Tenant schemas read per page (each is migrated in its own transaction). */
  tenantBatchSize?: number
  /**
   * Stored as the database's tenant context secret (owner-only), replacing the one its migration
   * generated, so engines configured with it can scope transactions without the owner's login.
   * Default: TENANT_CONTEXT_SECRET from the environment; unset keeps the database's own.
   */
  tenantContextSecret?: string
  /**
   * false: the tenant tables' policies compare with app.tenant_id, as before migration 0016 (cheaper;
   * injected SQL can choose a tenant); true: with the verified tenant (equilateral.current_tenant()).
   * Default: TENANT_CONTEXT_VERIFIED from the environment, else false. Rewrites every schema's
   * policies when it differs from what the database has.
   */
  tenantContextVerified?: boolean
}

export interface MigrateReport {
  /** Tenant schemas examined, and those that had migrations to apply. */
  tenantSchemas: number
  tenantSchemasMigrated: number
}

/** Migrates a database to the current schema. Safe to run twice and from several processes at once. */
export async function migrate(
  connectionString: string,
  options: MigrateOptions = {},
): Promise<MigrateReport> {
  const step = options.onStep ?? (() => {})
  const client = new pg.Client({ connectionString, application_name: 'equilateral-migrate' })
  await client.connect()
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
    const [{ drizzle }, { migrate: drizzleMigrate }] = await Promise.all([
      import('drizzle-orm/node-postgres'),
      import('drizzle-orm/node-postgres/migrator'),
    ])
    await drizzleMigrate(drizzle(client), {
      migrationsFolder: migrationsFolder.control,
      migrationsSchema: 'drizzle',
      migrationsTable: '__equilateral_control_migrations',
    })
    step('control tables migrated')
    await inTransaction(client, () => migrateTenantTables(client, APP_SCHEMA))
    step(`tenant tables migrated in schema ${APP_SCHEMA}`)
    const secret = options.tenantContextSecret ?? (process.env.TENANT_CONTEXT_SECRET || undefined)
    if (secret !== undefined) {
      const { rowCount } = await client.query(
        `UPDATE ${APP_SCHEMA}.tenant_context_key SET secret = $1, created_at = now() WHERE secret <> $1`,
        [secretBytes(secret)],
      )
      if (rowCount) step('tenant context secret set from TENANT_CONTEXT_SECRET')
    }
    await migrateBoss(connectionString)
    await grantBoss(client)
    step(`pg-boss schema ${BOSS_SCHEMA} migrated`)
    const report = await migrateTenantSchemas(client, options.tenantBatchSize ?? 100, step)
    const verified = options.tenantContextVerified ?? envBoolean(process.env.TENANT_CONTEXT_VERIFIED) ?? false
    if (await inTransaction(client, () => applyTenantContextMode(client, verified))) {
      step(
        `tenant context ${verified ? 'verified' : 'NOT verified (TENANT_CONTEXT_VERIFIED=false)'}: policies rewritten`,
      )
    }
    if (report.tenantSchemas > 0) {
      step(
        `${report.tenantSchemasMigrated} of ${report.tenantSchemas} tenant schemas had migrations to apply`,
      )
    }
    return report
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {})
    await client.end()
  }
}

let tenantMigrations: MigrationMeta[] | undefined
let controlMigrations: MigrationMeta[] | undefined

/**
 * The folder timestamps of the newest control and tenant-table migrations this build ships; a
 * database whose tracking tables have reached both is current (see Engine.readiness()).
 */
export function latestMigrations(): { control: number; tenant: number } {
  const { control, tenant } = shippedMigrations()
  return { control: control.at(-1) ?? 0, tenant: tenant.at(-1) ?? 0 }
}

/** The folder timestamps of every control and tenant-table migration this build ships, in order. */
export function shippedMigrations(): { control: number[]; tenant: number[] } {
  tenantMigrations ??= readMigrationFiles({ migrationsFolder: migrationsFolder.tenant })
  controlMigrations ??= readMigrationFiles({ migrationsFolder: migrationsFolder.control })
  return {
    control: controlMigrations.map((m) => m.folderMillis),
    tenant: tenantMigrations.map((m) => m.folderMillis),
  }
}

/**
 * The pg-boss schema version the installed pg-boss migrates to. pg-boss exports no accessor for it
 * without a connection; its package.json carries it (its own CLI reads it there). undefined if a
 * later pg-boss moves it: then every database is taken to need pg-boss's migration (correct, slower).
 */
export function bossSchemaVersion(): number | undefined {
  const manifest = createRequire(import.meta.url)('pg-boss/package.json') as { pgboss?: { schema?: unknown } }
  const version = manifest.pgboss?.schema
  return typeof version === 'number' && Number.isInteger(version) ? version : undefined
}

/**
 * Applies the tenant-table migrations to one schema (the shared one, or a tenant's own), inside the
 * caller's transaction, so creating a tenant and its tables is one atomic step. Progress is kept in
 * `<schema>.__tenant_migrations`, in drizzle's own format (hash, created_at = the migration's
 * folder timestamp). Returns the number of migrations applied.
 */
export async function migrateTenantTables(client: pg.ClientBase, schema: string): Promise<number> {
  if (schema !== APP_SCHEMA && !isTenantSchema(schema)) {
    throw new Error(`refusing to migrate schema ${JSON.stringify(schema)}: not a tenant schema`)
  }
  tenantMigrations ??= readMigrationFiles({ migrationsFolder: migrationsFolder.tenant })
  const quoted = pg.escapeIdentifier(schema)
  await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`)
  await client.query(`SELECT set_config('search_path', $1, true)`, [quoted])
  await client.query(
    `CREATE TABLE IF NOT EXISTS ${quoted}."__tenant_migrations" (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)`,
  )
  const { rows } = await client.query<{ created_at: string }>(
    `SELECT created_at FROM ${quoted}."__tenant_migrations" ORDER BY created_at DESC LIMIT 1`,
  )
  const last = rows[0] ? Number(rows[0].created_at) : -1
  let applied = 0
  for (const m of tenantMigrations) {
    if (m.folderMillis <= last) continue
    for (const statement of m.sql) if (statement.trim()) await client.query(statement)
    await client.query(`INSERT INTO ${quoted}."__tenant_migrations" (hash, created_at) VALUES ($1, $2)`, [
      m.hash,
      m.folderMillis,
    ])
    applied++
  }
  return applied
}

export async function inTransaction<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query('BEGIN')
  try {
    const result = await fn()
    await client.query('COMMIT')
    return result
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {})
    throw error
  }
}

async function migrateTenantSchemas(
  client: pg.Client,
  batchSize: number,
  step: (message: string) => void,
): Promise<MigrateReport> {
  const report: MigrateReport = { tenantSchemas: 0, tenantSchemasMigrated: 0 }
  let cursor = ''
  for (;;) {
    const { rows } = await client.query<{ schema_name: string }>(
      `SELECT schema_name FROM ${APP_SCHEMA}.tenants
       WHERE schema_name > $1 AND schema_name ~ '^t_[0-9a-f]{16}$' ORDER BY schema_name LIMIT $2`,
      [cursor, batchSize],
    )
    for (const { schema_name: schema } of rows) {
      const applied = await inTransaction(client, () => migrateTenantTables(client, schema))
      report.tenantSchemas++
      if (applied > 0) report.tenantSchemasMigrated++
    }
    if (rows.length < batchSize) return report
    cursor = rows[rows.length - 1]!.schema_name
    step(`tenant schemas: ${report.tenantSchemas} examined so far`)
  }
}

/**
 * Rewrites the policies of the shared schema and of every tenant schema when `verified` differs from
 * the database's flag (drizzle/tenant/0016, equilateral.tenant_policies); returns whether it did.
 */
async function applyTenantContextMode(client: pg.Client, verified: boolean): Promise<boolean> {
  const { rowCount } = await client.query(
    `UPDATE ${APP_SCHEMA}.tenant_context_key SET verified = $1 WHERE verified <> $1`,
    [verified],
  )
  if (!rowCount) return false
  await client.query(
    `SELECT ${APP_SCHEMA}.tenant_policies(s) FROM (
       SELECT $1::text AS s UNION ALL
       SELECT schema_name FROM ${APP_SCHEMA}.tenants WHERE schema_name ~ '^t_[0-9a-f]{16}$') schemas`,
    [APP_SCHEMA],
  )
  return true
}

/** 'true'/'1'/'yes', 'false'/'0'/'no', or undefined (unset, empty or anything else). */
function envBoolean(raw: string | undefined): boolean | undefined {
  if (raw === undefined) return undefined
  if (['true', '1', 'yes'].includes(raw)) return true
  if (['false', '0', 'no'].includes(raw)) return false
  return undefined
}

/** The application role may use pg-boss's tables and functions, but not change its schema. */
async function grantBoss(client: pg.Client): Promise<void> {
  const s = pg.escapeIdentifier(BOSS_SCHEMA)
  await client.query(`
    GRANT USAGE ON SCHEMA ${s} TO ${APP_ROLE};
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ${s} TO ${APP_ROLE};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ${s} TO ${APP_ROLE};
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ${s} TO ${APP_ROLE};`)
}

async function migrateBoss(connectionString: string): Promise<void> {
  const boss = new PgBoss({
    connectionString,
    schema: BOSS_SCHEMA,
    max: 2,
    supervise: false,
    schedule: false,
    migrate: true,
    registerInstance: false,
  })
  boss.on('error', () => {})
  await boss.start()
  await boss.stop({ graceful: false })
}
