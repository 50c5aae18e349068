// Applies, in order and idempotently: the control migrations (tenants, enterprise runs, the
// application role), the tenant-table migrations into the shared `equilateral` schema, pg-boss's
// own schema and the application role's grants on it, and finally the tenant-table migrations into
// every tenant schema (schema-per-tenant mode), one transaction per schema, in bounded pages, so an
// interrupted run resumes where it stopped. Concurrent migrators (two `release` steps, a test and a
// CLI) serialise on a session advisory lock; tenant creation takes the same lock shared, so a new
// tenant schema is never created half-way through a migration.
import { drizzle } from 'drizzle-orm/node-postgres'
import { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator'
import { type MigrationMeta, readMigrationFiles } from 'drizzle-orm/migrator'
import pg from 'pg'
import { PgBoss } from 'pg-boss'
import { packagePath } from '../paths.ts'
import { APP_ROLE, APP_SCHEMA, BOSS_SCHEMA, isTenantSchema } from './names.ts'

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
    await drizzleMigrate(drizzle(client), {
      migrationsFolder: migrationsFolder.control,
      migrationsSchema: 'drizzle',
      migrationsTable: '__equilateral_control_migrations',
    })
    step('control tables migrated')
    await inTransaction(client, () => migrateTenantTables(client, APP_SCHEMA))
    step(`tenant tables migrated in schema ${APP_SCHEMA}`)
    await migrateBoss(connectionString)
    await grantBoss(client)
    step(`pg-boss schema ${BOSS_SCHEMA} migrated`)
    const report = await migrateTenantSchemas(client, options.tenantBatchSize ?? 100, step)
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

/**
 * The folder timestamps of the newest control and tenant-table migrations this build ships; a
 * database whose tracking tables have reached both is current (see Engine.readiness()).
 */
export function latestMigrations(): { control: number; tenant: number } {
  tenantMigrations ??= readMigrationFiles({ migrationsFolder: migrationsFolder.tenant })
  const control = readMigrationFiles({ migrationsFolder: migrationsFolder.control })
  return { control: control.at(-1)?.folderMillis ?? 0, tenant: tenantMigrations.at(-1)?.folderMillis ?? 0 }
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
