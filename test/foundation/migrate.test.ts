// The migrator against real PostgreSQL: from an empty database, a second time, and from two
// processes at once.
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { afterAll, describe, expect, test } from 'vitest'
import { pino } from 'pino'
import { migrate, migrationsFolder } from '../../src/db/migrate.ts'
import { createEngine, defineAgent, defineWorkflow, SetupError } from '../../src/index.ts'
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts'

const run = promisify(execFile)
const migrateModule = new URL('../../src/db/migrate.ts', import.meta.url).href

const TABLES = [
  'equilateral.tenants',
  'equilateral.workflows',
  'equilateral.agent_coordination',
  'equilateral.agent_audit_log',
  'equilateral.compliance_events',
]

const databases: TestDatabase[] = []
afterAll(async () => {
  await Promise.all(databases.map((db) => db.drop()))
})

async function emptyDatabase(): Promise<TestDatabase> {
  const db = await createTestDatabase({ migrated: false })
  databases.push(db)
  return db
}

async function query<T extends pg.QueryResultRow>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return (await client.query<T>(sql, params)).rows
  } finally {
    await client.end()
  }
}

async function missingTables(url: string): Promise<string[]> {
  const rows = await query<{ name: string; found: string | null }>(
    url,
    'SELECT name, to_regclass(name)::text AS found FROM unnest($1::text[]) AS name',
    [TABLES],
  )
  return rows.filter((row) => row.found === null).map((row) => row.name)
}

async function schemaExists(url: string, schema: string): Promise<boolean> {
  const rows = await query(url, 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema])
  return rows.length === 1
}

async function migrationCounts(url: string): Promise<{ control: number; tenant: number }> {
  const [row] = await query<{ control: number; tenant: number }>(
    url,
    `SELECT (SELECT count(*) FROM drizzle.__equilateral_control_migrations)::int AS control,
            (SELECT count(*) FROM equilateral.__tenant_migrations)::int AS tenant`,
  )
  if (!row) throw new Error('no counts')
  return row
}

async function journalLength(folder: string): Promise<number> {
  const journal = JSON.parse(await readFile(path.join(folder, 'meta', '_journal.json'), 'utf8')) as {
    entries: unknown[]
  }
  return journal.entries.length
}

/** Every column of the migrated schemas, to compare two databases or two points in time. */
async function schemaFingerprint(url: string): Promise<string[]> {
  const rows = await query<{ c: string }>(
    url,
    `SELECT table_schema || '.' || table_name || '.' || column_name || ':' || data_type AS c
       FROM information_schema.columns
      WHERE table_schema IN ('equilateral', 'pgboss', 'drizzle')
      ORDER BY 1`,
  )
  return rows.map((row) => row.c)
}

describe('migrate', () => {
  test('applies to an empty database, and a second run is a no-op', async () => {
    const db = await emptyDatabase()
    expect(await schemaExists(db.url, 'equilateral')).toBe(false)

    const steps: string[] = []
    await migrate(db.url, { onStep: (step) => steps.push(step) })
    expect(steps).toHaveLength(3)
    expect(await missingTables(db.url)).toEqual([])
    expect(await schemaExists(db.url, 'pgboss')).toBe(true)
    const counts = await migrationCounts(db.url)
    expect(counts).toEqual({
      control: await journalLength(migrationsFolder.control),
      tenant: await journalLength(migrationsFolder.tenant),
    })
    const fingerprint = await schemaFingerprint(db.url)

    await migrate(db.url)
    expect(await migrationCounts(db.url)).toEqual(counts)
    expect(await schemaFingerprint(db.url)).toEqual(fingerprint)
  })

  test('two processes migrating one empty database at once both succeed', async () => {
    const db = await emptyDatabase()
    const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-migrate-'))
    try {
      const script = path.join(dir, 'migrate-child.mjs')
      await writeFile(
        script,
        `import { migrate } from ${JSON.stringify(migrateModule)}\n` +
          `await migrate(process.argv[2], { onStep: (step) => console.log(step) })\n` +
          `console.log('done')\n`,
      )
      // Node >= 22.18 strips types by default; 22.12 (the minimum) needs the flag.
      const flags = process.features.typescript ? [] : ['--experimental-strip-types']
      const results = await Promise.all(
        [1, 2].map(() => run(process.execPath, [...flags, script, db.url], { timeout: 60_000 })),
      )
      for (const { stdout } of results) expect(stdout.trim().split('\n').at(-1)).toBe('done')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
    expect(await missingTables(db.url)).toEqual([])
    expect(await schemaExists(db.url, 'pgboss')).toBe(true)
    expect(await migrationCounts(db.url)).toEqual({
      control: await journalLength(migrationsFolder.control),
      tenant: await journalLength(migrationsFolder.tenant),
    })
  })

  test('the template clone a test gets is fully migrated', async () => {
    const db = await createTestDatabase()
    databases.push(db)
    expect(await missingTables(db.url)).toEqual([])
    const fresh = await emptyDatabase()
    await migrate(fresh.url)
    expect(await schemaFingerprint(db.url)).toEqual(await schemaFingerprint(fresh.url))
  })
})

describe('an engine on a database that was never migrated', () => {
  const quiet = pino({ level: 'silent' })

  test('refuses to start with one line naming `equilateral migrate`', async () => {
    const db = await emptyDatabase()
    const failure = await createEngine({
      connectionString: db.url,
      log: quiet,
      config: { databaseRole: '' },
    }).then(
      (engine) => engine.close().then(() => undefined),
      (error: unknown) => error,
    )
    expect(failure).toBeInstanceOf(SetupError)
    expect(failure).toMatchObject({ code: 'not_migrated' })
    expect((failure as Error).message).toMatch(/is not migrated: run `equilateral migrate`/)
    expect((failure as Error).message).not.toMatch(/\n|pg-boss/)
    // Nothing was created behind the user's back.
    expect(await schemaExists(db.url, 'pgboss')).toBe(false)
  })

  test('migrates it first with createEngine({ migrate: true }), then runs a workflow', async () => {
    const db = await emptyDatabase()
    const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
    const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })
    const engine = await createEngine({
      connectionString: db.url,
      log: quiet,
      migrate: true,
      agents: [echo],
      workflows: [single],
      supervise: false,
      config: { databaseRole: '' },
    })
    try {
      expect(await missingTables(db.url)).toEqual([])
      await engine.createTenant({ id: 'acme' })
      const worker = await engine.startWorker()
      const { id } = await (await engine.tenant('acme')).startWorkflow('single', 7)
      for (let i = 0; i < 200; i++) {
        const wf = await (await engine.tenant('acme')).getWorkflow(id)
        if (wf.status === 'completed') break
        await new Promise((r) => setTimeout(r, 50))
      }
      expect((await (await engine.tenant('acme')).getWorkflow(id)).output).toEqual({ only: { echoed: 7 } })
      await worker.stop()
    } finally {
      await engine.close()
    }
  })
})
