// Applies, in order and idempotently: the control migrations (tenants), the tenant-table
// migrations into the shared `equilateral` schema, and pg-boss's own schema. Concurrent migrators
// (two `release` steps, a test and a CLI) serialise on a session advisory lock, so the second
// one waits and then finds nothing left to do.
import { fileURLToPath } from 'node:url'
import { drizzle } from 'drizzle-orm/node-postgres'
import { migrate as drizzleMigrate } from 'drizzle-orm/node-postgres/migrator'
import pg from 'pg'
import { PgBoss } from 'pg-boss'
import { APP_SCHEMA, BOSS_SCHEMA } from './names.ts'

const MIGRATION_LOCK = 0x6571_6167 // 'eqag'

export const migrationsFolder = {
  control: fileURLToPath(new URL('../../drizzle/control', import.meta.url)),
  tenant: fileURLToPath(new URL('../../drizzle/tenant', import.meta.url)),
}

export interface MigrateOptions {
  /** Called with one line per step, for the CLI and logs. */
  onStep?: (message: string) => void
}

/** Migrates a database to the current schema. Safe to run twice and from several processes at once. */
export async function migrate(connectionString: string, options: MigrateOptions = {}): Promise<void> {
  const step = options.onStep ?? (() => {})
  const client = new pg.Client({ connectionString, application_name: 'equilateral-migrate' })
  await client.connect()
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK])
    const db = drizzle(client)
    await drizzleMigrate(db, {
      migrationsFolder: migrationsFolder.control,
      migrationsSchema: 'drizzle',
      migrationsTable: '__equilateral_control_migrations',
    })
    step('control tables migrated')
    await migrateTenantTables(client, APP_SCHEMA)
    step(`tenant tables migrated in schema ${APP_SCHEMA}`)
    await migrateBoss(connectionString)
    step(`pg-boss schema ${BOSS_SCHEMA} migrated`)
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => {})
    await client.end()
  }
}

/** Applies the tenant-table migrations to one schema (the shared one, or a tenant's own). */
export async function migrateTenantTables(client: pg.Client | pg.PoolClient, schema: string): Promise<void> {
  const quoted = pg.escapeIdentifier(schema)
  await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoted}`)
  const previous = await client.query<{ search_path: string }>('SHOW search_path')
  await client.query(`SET search_path TO ${quoted}`)
  try {
    await drizzleMigrate(drizzle(client), {
      migrationsFolder: migrationsFolder.tenant,
      migrationsSchema: schema,
      migrationsTable: '__tenant_migrations',
    })
  } finally {
    await client.query(`SELECT set_config('search_path', $1, false)`, [
      previous.rows[0]?.search_path ?? 'public',
    ])
  }
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
