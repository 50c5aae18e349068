// Applies, in order and idempotently: the control migrations (tenants, enterprise runs, the
// application role), the tenant-table migrations into the shared `equilateral` schema, pg-boss's
// own schema and the application role's grants on it, and finally the tenant-table migrations into
// every tenant schema (schema-per-tenant mode), one transaction per schema, in bounded pages, so an
// interrupted run resumes where it stopped. Concurrent migrators (two `release` steps, a test and a
// CLI) serialise on a session advisory lock; tenant creation takes the same lock shared, so a new
// tenant schema is never created half-way through a migration.
//
// database-per-tenant: each tenant database is an ordinary equilateral database, migrated by the same
// `migrate`; migrateTenantDatabases walks the control database's directory and brings every one of
// them up to this build, a bounded number at once, skipping (cheaply) those already current and never
// touching one a newer release has migrated.
// drizzle-orm/migrator only reads the migration files; drizzle's runtime (drizzle-orm/node-postgres,
// ~0.4 s and ~100 MB to load) is imported by migrate() alone, so a worker never loads it.
import { type MigrationMeta, readMigrationFiles } from 'drizzle-orm/migrator'
import { createRequire } from 'node:module'
import pg from 'pg'
import { PgBoss } from 'pg-boss'
import { packagePath } from '../paths.ts'
import { APP_ROLE, APP_SCHEMA, BOSS_SCHEMA, isTenantSchema } from './names.ts'
import { databaseKey, type Servers, identityProblem } from '../tenancy/placement.ts'
import { eachLimit } from '../core/each-limit.ts'
import { secretBytes } from '../tenancy/tenant-context.ts'

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
function shippedMigrations(): { control: number[]; tenant: number[] } {
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

// ---------------------------------------------------------------------------------------------
// database-per-tenant: every tenant database

/** Migrations this build ships that a database lacks: control, tenant-table, pg-boss schema versions. */
export interface PendingMigrations {
  control: number
  tenant: number
  boss: number
}

/** Where a database stands against this build. */
export interface MigrationState {
  pending: PendingMigrations
  /** What the database has that this build does not ship (a newer release migrated it), in words. */
  ahead: string[]
}

export type TenantDatabaseProblemKind =
  /** The server did not let us in (refused, timed out, authentication failed). */
  | 'unreachable'
  /** The server has no database of that name. */
  | 'missing'
  /** The directory names a server TENANT_SERVERS does not list. */
  | 'unknown_server'
  /** Migrated by a newer release: left alone, an older build must not run on it. */
  | 'ahead'
  /** Its `equilateral.tenants` does not hold exactly this tenant's row: not this tenant's database. */
  | 'identity'
  /** Reading its state or migrating it failed. */
  | 'failed'

export interface TenantDatabaseProblem {
  tenant: string
  /** `server/database`. */
  database: string
  kind: TenantDatabaseProblemKind
  message: string
}

export interface TenantDatabasesOptions {
  /** Called once per page of the directory, for the CLI and logs. */
  onStep?: (message: string) => void
  /** Directory rows read per page (default 50). */
  batchSize?: number
  /** Tenant databases examined or migrated at once (default 4). */
  concurrency?: number
  /** Start after this tenant id: resumes an interrupted run (the step messages name the last one). */
  from?: string
  /** Change nothing: report what is pending and what has drifted. */
  check?: boolean
  /** How long to wait for a connection to a tenant database (default 10 s). */
  connectTimeoutMs?: number
}

export interface TenantDatabasesReport {
  /** Tenant databases examined (tenants being provisioned are not). */
  examined: number
  /** Databases migrated by this run (with `check`: always 0). */
  migrated: number
  /** Databases that already had everything this build ships. */
  current: number
  /** Databases that lacked migrations and were migrated (with `check`: that would be), in id order. */
  pending: { tenant: string; database: string; migrations: PendingMigrations }[]
  /** Tenants still being created: skipped, as creating the tenant again migrates its database. */
  provisioning: string[]
  /** In tenant id order; one database's problem never stops the others. */
  problems: TenantDatabaseProblem[]
  /** The last tenant id of the last page finished (`from` resumes after it); null if none was read. */
  last: string | null
}

interface DirectoryRow {
  id: string
  status: string
  database_server: string
  database_name: string
}

type Outcome =
  | { kind: 'current' | 'provisioning' }
  | { kind: 'pending' | 'migrated'; migrations: PendingMigrations }
  | { kind: TenantDatabaseProblemKind; message: string }

const INVALID_CATALOG_NAME = '3D000' // "database ... does not exist"

/**
 * Brings every tenant database the control database's directory names up to this build. Run it
 * after the control database itself is migrated (`migrate`). The directory is read a page at a time
 * in tenant id order (any status: a suspended tenant's database is migrated too), and each page's
 * databases are examined `concurrency` at a time; a database already current costs a connection and
 * two small queries, so running it again after an interruption quickly reaches where it stopped.
 */
export async function migrateTenantDatabases(
  controlOwnerUrl: string,
  servers: Servers,
  options: TenantDatabasesOptions = {},
): Promise<TenantDatabasesReport> {
  const batchSize = options.batchSize ?? 50
  const concurrency = options.concurrency ?? 4
  const step = options.onStep ?? (() => {})
  const report: TenantDatabasesReport = {
    examined: 0,
    migrated: 0,
    current: 0,
    pending: [],
    provisioning: [],
    problems: [],
    last: null,
  }
  const control = new pg.Client({
    connectionString: controlOwnerUrl,
    application_name: 'equilateral-migrate',
  })
  await control.connect()
  try {
    if (!(await hasDirectory(control))) return report
    for (let cursor = options.from ?? ''; ;) {
      const { rows } = await control.query<DirectoryRow>(
        `SELECT id, status, database_server, database_name FROM ${APP_SCHEMA}.tenants
         WHERE database_server IS NOT NULL AND id > $1 ORDER BY id LIMIT $2`,
        [cursor, batchSize],
      )
      // Page by page, so everything up to `last` is finished when a step names it.
      await eachLimit(rows, concurrency, async (row) => {
        record(report, row, await migrateTenantDatabase(row, servers, options))
      })
      if (rows.length === 0) break
      cursor = report.last = rows[rows.length - 1]!.id
      step(`tenant databases: ${report.examined} examined so far, through tenant "${cursor}"`)
      if (rows.length < batchSize) break
    }
  } finally {
    await control.end().catch(() => {})
  }
  const byTenant = (a: { tenant: string }, b: { tenant: string }) => (a.tenant < b.tenant ? -1 : 1)
  report.pending.sort(byTenant)
  report.problems.sort(byTenant)
  report.provisioning.sort()
  return report
}

/** Whether the control database has a directory of tenant databases yet (0005_tenant_databases). */
async function hasDirectory(control: pg.Client): Promise<boolean> {
  const { rows } = await control.query(
    `SELECT 1 FROM information_schema.columns
     WHERE table_schema = $1 AND table_name = 'tenants' AND column_name = 'database_server'`,
    [APP_SCHEMA],
  )
  return rows.length > 0
}

function record(report: TenantDatabasesReport, row: DirectoryRow, outcome: Outcome): void {
  const database = databaseKey({ server: row.database_server, name: row.database_name })
  if (outcome.kind === 'provisioning') {
    report.provisioning.push(row.id)
    return
  }
  report.examined++
  if ('message' in outcome) {
    report.problems.push({ tenant: row.id, database, kind: outcome.kind, message: outcome.message })
  } else if ('migrations' in outcome) {
    if (outcome.kind === 'migrated') report.migrated++
    report.pending.push({ tenant: row.id, database, migrations: outcome.migrations })
  } else report.current++
}

/** Examines one tenant database and, unless `check`, migrates it when it is behind. Never throws. */
async function migrateTenantDatabase(
  row: DirectoryRow,
  servers: Servers,
  options: TenantDatabasesOptions,
): Promise<Outcome> {
  // Creating the tenant again creates, migrates and finishes its database; there may be none yet.
  if (row.status === 'provisioning') return { kind: 'provisioning' }
  if (!servers.has(row.database_server)) {
    return {
      kind: 'unknown_server',
      message: `server "${row.database_server}" is not in TENANT_SERVERS (${servers.names.join(', ')})`,
    }
  }
  const url = servers.ownerUrl(row.database_server, row.database_name)
  const client = new pg.Client({
    connectionString: url,
    application_name: 'equilateral-migrate',
    connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
  })
  client.on('error', () => {})
  try {
    await client.connect()
  } catch (error) {
    const missing = (error as { code?: string }).code === INVALID_CATALOG_NAME
    return { kind: missing ? 'missing' : 'unreachable', message: messageOf(error) }
  }
  let state: MigrationState
  try {
    const stranger = await identityProblem(client, row.id)
    if (stranger) return { kind: 'identity', message: stranger }
    state = await migrationState(client)
  } catch (error) {
    return { kind: 'failed', message: messageOf(error) }
  } finally {
    await client.end().catch(() => {})
  }
  if (state.ahead.length > 0) return { kind: 'ahead', message: state.ahead.join('; ') }
  if (!isPending(state.pending)) return { kind: 'current' }
  if (options.check) return { kind: 'pending', migrations: state.pending }
  try {
    await migrate(url)
  } catch (error) {
    return { kind: 'failed', message: messageOf(error) }
  }
  return { kind: 'migrated', migrations: state.pending }
}

/**
 * What a database's tracking tables say against what this build ships: the newest control and
 * tenant-table migrations (drizzle's created_at is the migration's folder timestamp) and pg-boss's
 * schema version. A tracking table that does not exist yet means everything of it is pending.
 */
export async function migrationState(client: pg.ClientBase): Promise<MigrationState> {
  const tables = {
    control: 'drizzle.__equilateral_control_migrations',
    tenant: `${APP_SCHEMA}.__tenant_migrations`,
    boss: `${BOSS_SCHEMA}.version`,
  }
  const { rows: found } = await client.query<Record<keyof typeof tables, boolean>>(
    `SELECT to_regclass($1) IS NOT NULL AS control, to_regclass($2) IS NOT NULL AS tenant,
       to_regclass($3) IS NOT NULL AS boss`,
    [tables.control, tables.tenant, tables.boss],
  )
  const exists = found[0]!
  const { rows } = await client.query<Record<keyof typeof tables, string | null>>(
    `SELECT ${exists.control ? `(SELECT max(created_at) FROM ${tables.control})::text` : 'NULL'} AS control,
       ${exists.tenant ? `(SELECT max(created_at) FROM ${tables.tenant})::text` : 'NULL'} AS tenant,
       ${exists.boss ? `(SELECT max(version) FROM ${tables.boss})::text` : 'NULL'} AS boss`,
  )
  const have = rows[0]!
  const shipped = shippedMigrations()
  const state: MigrationState = { pending: { control: 0, tenant: 0, boss: 0 }, ahead: [] }
  for (const kind of ['control', 'tenant'] as const) {
    const last = have[kind] === null ? -1 : Number(have[kind])
    const newest = shipped[kind].at(-1) ?? 0
    state.pending[kind] = shipped[kind].filter((at) => at > last).length
    if (last > newest) {
      state.ahead.push(
        `its newest ${KIND_NAMES[kind]} migration is from ${new Date(last).toISOString()}, this build's from ${new Date(newest).toISOString()}`,
      )
    }
  }
  const boss = bossSchemaVersion()
  const bossHave = have.boss === null ? null : Number(have.boss)
  if (boss === undefined) state.pending.boss = 1
  else if (bossHave === null) state.pending.boss = boss
  else if (bossHave > boss) {
    state.ahead.push(`its pg-boss schema is version ${bossHave}, this build's pg-boss migrates to ${boss}`)
  } else state.pending.boss = boss - bossHave
  return state
}

/** The state of one database, on a connection of its own (the CLI's `migrate --check`). */
export async function databaseMigrationState(connectionString: string): Promise<MigrationState> {
  const client = new pg.Client({ connectionString, application_name: 'equilateral-migrate' })
  await client.connect()
  try {
    return await migrationState(client)
  } finally {
    await client.end().catch(() => {})
  }
}

const KIND_NAMES = { control: 'control', tenant: 'tenant-table', boss: 'pg-boss' } as const

export function isPending(p: PendingMigrations): boolean {
  return p.control + p.tenant + p.boss > 0
}

/** `2 tenant-table migrations, 1 pg-boss schema version`, or `current`. */
export function describePending(p: PendingMigrations): string {
  const parts = (['control', 'tenant', 'boss'] as const)
    .filter((kind) => p[kind] > 0)
    .map((kind) =>
      kind === 'boss'
        ? `${p.boss} pg-boss schema version${p.boss === 1 ? '' : 's'}`
        : `${p[kind]} ${KIND_NAMES[kind]} migration${p[kind] === 1 ? '' : 's'}`,
    )
  return parts.length > 0 ? parts.join(', ') : 'current'
}

/**
 * The report as lines for people: a summary, one line per problem, and with `check` one line per
 * database with migrations pending. Tenants being provisioned are counted, not listed.
 */
export function describeTenantDatabases(report: TenantDatabasesReport, check = false): string[] {
  const counts = [
    `${report.examined} examined`,
    check ? `${report.pending.length} with migrations pending` : `${report.migrated} migrated`,
    `${report.current} current`,
    `${report.problems.length} with problems`,
    ...(report.provisioning.length > 0 ? [`${report.provisioning.length} provisioning (skipped)`] : []),
  ]
  return [
    `tenant databases: ${counts.join(', ')}`,
    ...(check
      ? report.pending.map(
          (p) => `pending        ${p.tenant} (${p.database}): ${describePending(p.migrations)}`,
        )
      : []),
    ...report.problems.map((p) => `${p.kind.padEnd(14)} ${p.tenant} (${p.database}): ${p.message}`),
  ]
}

/** An error's message; Node's connection errors to several addresses (AggregateError) have none. */
function messageOf(error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const code = (error as { code?: unknown }).code
  return error.message || (typeof code === 'string' ? code : error.name)
}
