// `equilateral migrate` in database-per-tenant mode: every tenant database the directory names is
// brought up to this build, a bounded number at once, page by page; a database already current is
// skipped, one migrated by a newer release (ahead), missing, unreachable, on an unknown server or
// holding another tenant is reported and left alone, and one database's problem stops no other.
// Pending migrations are made honestly: a migration's tracking row is deleted and what it did undone,
// so applying it again is exactly what `migrate` does on a database a release behind.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { bossSchemaVersion, latestMigrations } from '../../src/db/migrate.ts'
import {
  describeTenantDatabases,
  migrateTenantDatabases,
  type TenantDatabasesReport,
} from '../../src/db/migrate-tenant-databases.ts'
import { Servers } from '../../src/tenancy/placement.ts'
import { withDatabase } from '../../src/db/provision.ts'
import { createEngine, defineAgent, defineWorkflow } from '../../src/index.ts'
import { childEnv, cliProcesses, messages } from '../cli/run.ts'
import { createTestDatabase, pgContext, queryOnce } from '../helpers/db.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

const { adminUrl, prefix } = pgContext()
const tenantDatabasePrefix = `${prefix}t_`
const control = await createTestDatabase()
const engine = await createEngine({
  connectionString: control.appUrl,
  adminConnectionString: control.url,
  agents: [echo],
  workflows: [single],
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  supervise: false,
  config: { isolationMode: 'database-per-tenant', tenantDatabasePrefix },
})
afterAll(async () => {
  await engine.close()
  await control.drop()
})

// A server nothing listens on, for `unreachable`.
const DEAD = 'postgres://postgres@127.0.0.1:1/postgres'
const servers = new Servers({
  configured: { default: withDatabase(adminUrl, 'postgres'), dead: DEAD },
  controlOwnerUrl: control.url,
  controlRuntimeUrl: control.appUrl,
  role: 'equilateral_app',
})

const TENANTS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf']
for (const id of TENANTS) await engine.createTenant({ id })
await engine.suspendTenant('golf')
const names = new Map(
  (
    await queryOnce<{ id: string; database_name: string }>(
      control.url,
      'SELECT id, database_name FROM equilateral.tenants WHERE database_name IS NOT NULL',
    )
  ).map((r) => [r.id, r.database_name]),
)

function urlOf(tenant: string): string {
  return withDatabase(adminUrl, names.get(tenant)!)
}

function keyOf(tenant: string): string {
  return `default/${names.get(tenant)}`
}

async function sql(tenant: string, text: string, params: unknown[] = []): Promise<any[]> {
  return queryOnce(urlOf(tenant), text, params)
}

/**
 * Undoes the newest tenant-table migration (0021: the console's watcher table and correlation-id
 * index) and forgets it.
 */
async function undoNewestTenantMigration(tenant: string): Promise<void> {
  await sql(
    tenant,
    `BEGIN;
     DROP TABLE equilateral.console_watchers;
     DROP INDEX equilateral.workflows_correlation_idx;
     DELETE FROM equilateral.__tenant_migrations WHERE created_at = ${latestMigrations().tenant};
     COMMIT;`,
  )
}

/** Whether the newest tenant-table migration is in place: the application role may watch a tenant. */
async function newestApplied(tenant: string): Promise<boolean> {
  const [row] = await sql(
    tenant,
    `SELECT CASE WHEN to_regclass('equilateral.console_watchers') IS NULL THEN false
       ELSE has_table_privilege('equilateral_app', 'equilateral.console_watchers', 'INSERT') END AS ok`,
  )
  return row?.ok === true
}

/** Undoes the newest control migration (0010: the maintenance role's grants) and forgets it. */
async function undoNewestControlMigration(tenant: string): Promise<void> {
  await sql(
    tenant,
    `BEGIN;
     DROP FUNCTION equilateral.maintenance_erase_members(text, uuid, uuid[]);
     REVOKE SELECT ON equilateral.tenants FROM equilateral_maintenance;
     DELETE FROM drizzle.__equilateral_control_migrations WHERE created_at = ${latestMigrations().control};
     COMMIT;`,
  )
}

async function tenantMigrations(tenant: string): Promise<string[]> {
  const rows = await sql(
    tenant,
    'SELECT hash, created_at::text FROM equilateral.__tenant_migrations ORDER BY id',
  )
  return rows.map((r) => `${r.created_at}:${r.hash}`)
}

const FUTURE = latestMigrations().tenant + 86_400_000

// The fleet the tests below examine:
//   alpha    current
//   bravo    one tenant-table migration pending
//   charlie  one control migration pending
//   delta    its database dropped                        -> missing
//   echo     a tenant-table migration from the future    -> ahead, untouched
//   foxtrot  pending, but holds another tenant's row too  -> identity, untouched
//   golf     suspended, pending                          -> migrated like any other
//   x-provisioning (being created)                       -> skipped
//   x-unknown on a server TENANT_SERVERS does not list   -> unknown_server
//   x-unreachable on a server that refuses connections   -> unreachable
await undoNewestTenantMigration('bravo')
await undoNewestControlMigration('charlie')
await queryOnce(adminUrl, `DROP DATABASE ${pg.escapeIdentifier(names.get('delta')!)} WITH (FORCE)`)
await sql(
  'echo',
  `INSERT INTO equilateral.__tenant_migrations (hash, created_at) VALUES ('from-the-future', $1)`,
  [FUTURE],
)
await undoNewestTenantMigration('foxtrot')
await sql('foxtrot', `INSERT INTO equilateral.tenants (id, name) VALUES ('intruder', 'Intruder')`)
await undoNewestTenantMigration('golf')
await queryOnce(
  control.url,
  `INSERT INTO equilateral.tenants (id, name, status, database_server, database_name) VALUES
     ('x-provisioning', 'P', 'provisioning', 'default', $1),
     ('x-unknown', 'U', 'active', 'nowhere', 'x_unknown'),
     ('x-unreachable', 'R', 'active', 'dead', 'x_unreachable')`,
  [`${tenantDatabasePrefix}never_created`],
)

const PROBLEMS = [
  { tenant: 'delta', kind: 'missing', message: expect.stringContaining('does not exist') },
  { tenant: 'echo', kind: 'ahead', message: expect.stringContaining('tenant-table migration is from') },
  { tenant: 'foxtrot', kind: 'identity', message: expect.stringContaining('"intruder"') },
  { tenant: 'x-unknown', kind: 'unknown_server', message: expect.stringContaining('"nowhere"') },
  { tenant: 'x-unreachable', kind: 'unreachable', message: expect.stringMatching(/ECONNREFUSED/) },
]

function problems(report: TenantDatabasesReport) {
  return report.problems.map(({ tenant, kind, message }) => ({ tenant, kind, message }))
}

describe('migrateTenantDatabases', () => {
  it('knows the pg-boss schema version it ships (else every run would migrate every database)', () => {
    expect(bossSchemaVersion()).toBeGreaterThan(0)
  })

  it('check: reports what is pending and what drifted, and changes nothing', async () => {
    const before = await Promise.all(['bravo', 'echo', 'foxtrot', 'golf'].map(tenantMigrations))
    const report = await migrateTenantDatabases(control.url, servers, { check: true })
    expect(report).toMatchObject({ examined: 9, migrated: 0, current: 1, provisioning: ['x-provisioning'] })
    expect(report.pending).toEqual([
      { tenant: 'bravo', database: keyOf('bravo'), migrations: { control: 0, tenant: 1, boss: 0 } },
      { tenant: 'charlie', database: keyOf('charlie'), migrations: { control: 1, tenant: 0, boss: 0 } },
      { tenant: 'golf', database: keyOf('golf'), migrations: { control: 0, tenant: 1, boss: 0 } },
    ])
    expect(problems(report)).toEqual(PROBLEMS)
    expect(report.problems[0]?.database).toBe(keyOf('delta'))
    expect(await Promise.all(['bravo', 'echo', 'foxtrot', 'golf'].map(tenantMigrations))).toEqual(before)
    expect(await newestApplied('bravo')).toBe(false)

    expect(describeTenantDatabases(report, true)).toEqual([
      'tenant databases: 9 examined, 3 with migrations pending, 1 current, 5 with problems, 1 provisioning (skipped)',
      `pending        bravo (${keyOf('bravo')}): 1 tenant-table migration`,
      `pending        charlie (${keyOf('charlie')}): 1 control migration`,
      `pending        golf (${keyOf('golf')}): 1 tenant-table migration`,
      expect.stringMatching(/^missing {8}delta \(default\/\S+\): .*does not exist/),
      expect.stringMatching(/^ahead {10}echo /),
      expect.stringMatching(/^identity {7}foxtrot /),
      expect.stringMatching(/^unknown_server x-unknown \(nowhere\/x_unknown\): /),
      expect.stringMatching(/^unreachable {4}x-unreachable \(dead\/x_unreachable\): /),
    ])
  })

  it('migrates the databases that are behind, suspended ones too, and touches no database with a problem', async () => {
    const echoBefore = await tenantMigrations('echo')
    const foxtrotBefore = await tenantMigrations('foxtrot')
    const report = await migrateTenantDatabases(control.url, servers, { concurrency: 3 })
    expect(report).toMatchObject({ examined: 9, migrated: 3, current: 1, last: 'x-unreachable' })
    expect(report.pending.map((p) => p.tenant)).toEqual(['bravo', 'charlie', 'golf'])
    expect(problems(report)).toEqual(PROBLEMS)

    // The undone migrations were applied again: what they create exists, their rows are back.
    for (const tenant of ['bravo', 'golf']) {
      expect(await newestApplied(tenant)).toBe(true)
      expect(await tenantMigrations(tenant)).toEqual(await tenantMigrations('alpha'))
    }
    const [controlMigration] = await sql(
      'charlie',
      `SELECT to_regprocedure('equilateral.maintenance_erase_members(text, uuid, uuid[])') IS NOT NULL AS erase,
         has_column_privilege('equilateral_maintenance', 'equilateral.tenants', 'compliance_profile', 'SELECT') AS tenants`,
    )
    expect(controlMigration).toEqual({ erase: true, tenants: true })
    // Ahead and foreign databases are exactly as they were.
    expect(await tenantMigrations('echo')).toEqual(echoBefore)
    expect(await tenantMigrations('foxtrot')).toEqual(foxtrotBefore)
    expect(await newestApplied('foxtrot')).toBe(false)
    // Nothing was created for the tenant still being provisioned.
    const created = await queryOnce(adminUrl, 'SELECT 1 FROM pg_database WHERE datname = $1', [
      `${tenantDatabasePrefix}never_created`,
    ])
    expect(created).toEqual([])
    // The migrated suspended tenant still works once resumed.
    await engine.resumeTenant('golf')
    const golf = await engine.tenant('golf')
    expect((await golf.startWorkflow('single', 1)).id).toBeTruthy()
    await engine.suspendTenant('golf')
  })

  it('a second run migrates nothing', async () => {
    const report = await migrateTenantDatabases(control.url, servers)
    expect(report).toMatchObject({ examined: 9, migrated: 0, current: 4, pending: [] })
    expect(problems(report)).toEqual(PROBLEMS)
  })

  it('reads the directory in pages of batchSize, reports each, and resumes after `from`', async () => {
    const steps: string[] = []
    const paged = await migrateTenantDatabases(control.url, servers, {
      batchSize: 2,
      concurrency: 1,
      onStep: (m) => steps.push(m),
    })
    expect(paged).toMatchObject({ examined: 9, current: 4, last: 'x-unreachable' })
    expect(steps).toEqual([
      'tenant databases: 2 examined so far, through tenant "bravo"',
      'tenant databases: 4 examined so far, through tenant "delta"',
      'tenant databases: 6 examined so far, through tenant "foxtrot"',
      'tenant databases: 7 examined so far, through tenant "x-provisioning"',
      'tenant databases: 9 examined so far, through tenant "x-unreachable"',
    ])

    // Resumed after delta: only the later tenants are examined; a pending one among them is migrated.
    await undoNewestTenantMigration('bravo')
    await undoNewestTenantMigration('golf')
    const resumed = await migrateTenantDatabases(control.url, servers, { from: 'delta', batchSize: 1 })
    expect(resumed).toMatchObject({ examined: 5, migrated: 1, current: 0, provisioning: ['x-provisioning'] })
    expect(resumed.pending.map((p) => p.tenant)).toEqual(['golf'])
    expect(problems(resumed).map((p) => p.tenant)).toEqual(['echo', 'foxtrot', 'x-unknown', 'x-unreachable'])
    expect(await newestApplied('bravo')).toBe(false)
    expect(await newestApplied('golf')).toBe(true)
    // From the start, the rest is done.
    const rest = await migrateTenantDatabases(control.url, servers, { batchSize: 1 })
    expect(rest.pending.map((p) => p.tenant)).toEqual(['bravo'])
    expect(await newestApplied('bravo')).toBe(true)
  })

  it('finds nothing to do in a control database without tenant databases', async () => {
    const other = await createTestDatabase()
    try {
      const report = await migrateTenantDatabases(other.url, servers)
      expect(report).toMatchObject({ examined: 0, migrated: 0, problems: [], last: null })
    } finally {
      await other.drop()
    }
  })
})

describe('equilateral migrate', () => {
  const { run } = cliProcesses(
    childEnv({
      DATABASE_URL: control.url,
      MIGRATION_DATABASE_URL: control.url,
      TENANT_SERVERS: `default=${withDatabase(adminUrl, 'postgres')} dead=${DEAD}`,
      LOG_LEVEL: 'warn',
    }),
  )
  const lines = (stdout: string) => stdout.split('\n').filter(Boolean)

  it('--check prints drift and what is pending, changes nothing, and exits 1', async () => {
    await undoNewestTenantMigration('bravo')
    const result = await run(['migrate', '--check'])
    expect(result.code, result.stderr).toBe(1)
    expect(lines(result.stdout)).toEqual([
      'control database: current',
      'tenant databases: 9 examined, 1 with migrations pending, 3 current, 5 with problems, 1 provisioning (skipped)',
      `pending        bravo (${keyOf('bravo')}): 1 tenant-table migration`,
      expect.stringMatching(/^missing {8}delta /),
      expect.stringMatching(/^ahead {10}echo /),
      expect.stringMatching(/^identity {7}foxtrot /),
      expect.stringMatching(/^unknown_server x-unknown /),
      expect.stringMatching(/^unreachable {4}x-unreachable /),
    ])
    expect(await newestApplied('bravo')).toBe(false)
  })

  it('migrates the control database and every tenant database, one line per problem, exit 1', async () => {
    const result = await run(['migrate', '--batch-size', '4', '--concurrency', '2'])
    expect(result.code, result.stderr).toBe(1)
    expect(messages(result.stderr)).toEqual(
      expect.arrayContaining([
        'migrate: control tables migrated',
        'migrate: tenant databases: 4 examined so far, through tenant "delta"',
        'migrate: tenant databases: 9 examined so far, through tenant "x-unreachable"',
      ]),
    )
    const out = lines(result.stdout)
    expect(out[0]).toBe(
      'tenant databases: 9 examined, 1 migrated, 3 current, 5 with problems, 1 provisioning (skipped)',
    )
    expect(out.slice(1).map((l) => l.split(/\s+/)[0])).toEqual([
      'missing',
      'ahead',
      'identity',
      'unknown_server',
      'unreachable',
    ])
    expect(await newestApplied('bravo')).toBe(true)
  })

  it('--from resumes after a tenant; exit 0 once no database has a problem', async () => {
    const resumed = await run(['migrate', '--from', 'foxtrot'])
    expect(resumed.code).toBe(1) // x-unknown, x-unreachable
    expect(lines(resumed.stdout)[0]).toMatch(
      /^tenant databases: 3 examined, 0 migrated, 1 current, 2 with problems/,
    )

    await queryOnce(
      control.url,
      `DELETE FROM equilateral.tenants WHERE id IN ('delta', 'echo', 'foxtrot', 'x-unknown', 'x-unreachable')`,
    )
    const clean = await run(['migrate'])
    expect(clean.code, clean.stderr).toBe(0)
    expect(lines(clean.stdout)).toEqual([
      'tenant databases: 4 examined, 0 migrated, 4 current, 0 with problems, 1 provisioning (skipped)',
    ])
    const checked = await run(['migrate', '--check'])
    expect(checked.code, checked.stderr).toBe(0)
    expect(lines(checked.stdout)[0]).toBe('control database: current')
  })

  it('refuses a malformed --from before connecting (exit 2)', async () => {
    const result = await run(['migrate', '--from', "x'; DROP"])
    expect(result.code).toBe(2)
    expect(messages(result.stderr)[0]).toMatch(
      /^equilateral: option '--from <tenant>' argument .* is invalid/,
    )
  })
})
