// The test harness itself: how it chooses a server, that the run's choice matches the environment,
// that template clones work, and (end to end) that a nested run honours TEST_DATABASE_URL.
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { describe, expect, test } from 'vitest'
import { createTestDatabase, pgContext } from '../helpers/db.ts'
import { selectServer } from '../setup/select-server.ts'

const root = fileURLToPath(new URL('../..', import.meta.url))

describe('selectServer', () => {
  const url = 'postgres://postgres@127.0.0.1:5432/postgres'

  test('TEST_DATABASE_URL wins, without probing for Docker', async () => {
    let probed = false
    const dockerAvailable = () => {
      probed = true
      return true
    }
    expect(await selectServer({ TEST_DATABASE_URL: url }, { dockerAvailable })).toEqual({
      source: 'env',
      url,
    })
    expect(probed).toBe(false)
  })

  test('a container when Docker answers, else embedded', async () => {
    expect(await selectServer({}, { dockerAvailable: () => Promise.resolve(true) })).toEqual({
      source: 'container',
    })
    expect(await selectServer({}, { dockerAvailable: () => Promise.resolve(false) })).toEqual({
      source: 'embedded',
    })
  })

  test('an empty TEST_DATABASE_URL counts as unset, and DATABASE_URL is never used for tests', async () => {
    const env = { TEST_DATABASE_URL: '  ', DATABASE_URL: url }
    expect(await selectServer(env, { dockerAvailable: () => false })).toEqual({ source: 'embedded' })
  })
})

describe('this run', () => {
  test('uses the server the environment asks for', () => {
    const { source } = pgContext()
    if (process.env.TEST_DATABASE_URL?.trim()) expect(source).toBe('env')
    else expect(['container', 'embedded']).toContain(source)
  })

  test('clones are migrated, separate, and dropped', async () => {
    const [a, b] = await Promise.all([createTestDatabase(), createTestDatabase()])
    try {
      expect(a.name).not.toBe(b.name)
      for (const db of [a, b]) {
        const client = new pg.Client({ connectionString: db.url })
        await client.connect()
        try {
          const { rows } = await client.query<{ db: string; tenants: string | null }>(
            `SELECT current_database() AS db, to_regclass('equilateral.tenants')::text AS tenants`,
          )
          expect(rows).toEqual([{ db: db.name, tenants: 'equilateral.tenants' }])
        } finally {
          await client.end()
        }
      }
    } finally {
      await Promise.all([a.drop(), b.drop()])
    }
    const admin = new pg.Client({ connectionString: pgContext().adminUrl })
    await admin.connect()
    try {
      const { rows } = await admin.query('SELECT datname FROM pg_database WHERE datname = ANY($1)', [
        [a.name, b.name],
      ])
      expect(rows).toEqual([])
    } finally {
      await admin.end()
    }
  })

  // A nested `vitest run` pointed at this run's server through TEST_DATABASE_URL: it must use it
  // (no second server), build its own template there, and clean up after itself.
  test('a nested run with TEST_DATABASE_URL uses that server', async () => {
    const { adminUrl, prefix } = pgContext()
    await mkdir(path.join(root, 'test-artifacts'), { recursive: true })
    const dir = await mkdtemp(path.join(root, 'test-artifacts', 'harness-'))
    try {
      const relative = (file: string) => path.relative(dir, file).split(path.sep).join('/')
      await writeFile(
        path.join(dir, 'probe.test.ts'),
        `import { expect, inject, test } from 'vitest'\n` +
          `import { createTestDatabase } from '${relative(path.join(root, 'test/helpers/db.ts'))}'\n` +
          `test('probe', async () => {\n` +
          `  expect(inject('pg').source).toBe('env')\n` +
          `  const db = await createTestDatabase()\n` +
          `  console.log('probe database ' + db.name)\n` +
          `  await db.drop()\n` +
          `})\n`,
      )
      const config = path.join(dir, 'vitest.config.mjs')
      await writeFile(
        config,
        `export default ${JSON.stringify({
          test: {
            root,
            include: [path.relative(root, path.join(dir, 'probe.test.ts'))],
            globalSetup: [path.join(root, 'test/setup/global.ts')],
            pool: 'forks',
            hookTimeout: 60_000,
          },
        })}\n`,
      )
      const vitest = path.join(root, 'node_modules/vitest/vitest.mjs')
      const env = { ...process.env, TEST_DATABASE_URL: adminUrl, NO_COLOR: '1', FORCE_COLOR: '0' }
      const { code, output } = await runProcess(
        process.execPath,
        [vitest, 'run', '--config', config],
        root,
        env,
      )
      expect(output).toContain('test database: TEST_DATABASE_URL (')
      expect(output).toContain('probe database eq_test_')
      expect(code, output).toBe(0)
      // Its databases use another run's prefix, and are gone.
      const nestedPrefix = /probe database (eq_test_[0-9a-f]+_)/.exec(output)?.[1]
      expect(nestedPrefix).toBeDefined()
      expect(nestedPrefix).not.toBe(prefix)
      const admin = new pg.Client({ connectionString: adminUrl })
      await admin.connect()
      try {
        const { rows } = await admin.query('SELECT datname FROM pg_database WHERE starts_with(datname, $1)', [
          nestedPrefix,
        ])
        expect(rows).toEqual([])
      } finally {
        await admin.end()
      }
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

function runProcess(
  command: string,
  args: string[],
  cwd: string,
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 45_000)
    child.once('error', reject)
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
}
