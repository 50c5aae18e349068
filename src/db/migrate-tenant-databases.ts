// database-per-tenant: every tenant database. Each is an ordinary equilateral database, migrated by
// the same `migrate` (./migrate.ts); migrateTenantDatabases walks the control database's directory
// and brings every one of them up to this build, a bounded number at once, skipping (cheaply) those
// already current and never touching one a newer release has migrated.
import pg from 'pg'
import { eachLimit } from '../core/each-limit.ts'
import { migrate } from './migrate.ts'
import {
  describePending,
  isPending,
  type MigrationState,
  migrationState,
  type PendingMigrations,
} from './migration-state.ts'
import { APP_SCHEMA } from './names.ts'
import { databaseKey, identityProblem, type Servers } from './placement.ts'

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
