// The README's quickstart (examples/quickstart) as a new user runs it, outside this repository:
// copied into an empty folder, the package installed from the run's packed tarball, then
// `npm start`: a database, migrations, a tenant, a worker, one workflow started and its result
// awaited and printed.
//
// Which database it gets, on purpose:
//   - TEST_DATABASE_URL set (a server of the test run's choosing): DATABASE_URL is a new, empty
//     (never migrated) database on that server, so the quickstart's own `migrate: true` runs;
//   - TEST_DATABASE_URL unset: no DATABASE_URL at all, so the quickstart starts its own embedded
//     PostgreSQL in a temporary EQUILATERAL_DATA_DIR: a server that never saw a migration, as a
//     new user's machine (the application role does not exist yet).
import { execFile } from 'node:child_process'
import { chmod, copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts'
import { npmInstall, packedTarball } from '../helpers/package.ts'

const execFileAsync = promisify(execFile)
const example = path.resolve(import.meta.dirname, '../../examples/quickstart')
const useTestServer = Boolean(process.env.TEST_DATABASE_URL?.trim())

let dir: string
let db: TestDatabase | undefined
let env: NodeJS.ProcessEnv

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'eq-quickstart-'))
  // Run as root, the embedded server runs as `postgres`, which must be able to enter these folders.
  await chmod(dir, 0o755)
  const project = path.join(dir, 'quickstart')
  await mkdir(project)
  for (const file of ['package.json', 'quickstart.ts']) {
    await copyFile(path.join(example, file), path.join(project, file))
  }
  await npmInstall(project, [await packedTarball()])

  const base: NodeJS.ProcessEnv = { ...process.env, CI: 'true', LOG_LEVEL: 'warn' }
  for (const name of ['DATABASE_URL', 'MIGRATION_DATABASE_URL', 'EQUILATERAL_DATA_DIR', 'DATABASE_ROLE']) {
    delete base[name]
  }
  if (useTestServer) {
    db = await createTestDatabase({ migrated: false })
    env = { ...base, DATABASE_URL: db.url }
  } else {
    env = { ...base, EQUILATERAL_DATA_DIR: path.join(dir, 'data') }
  }
})

afterAll(async () => {
  await db?.drop()
  await rm(dir, { recursive: true, force: true })
})

async function npmStart(): Promise<string[]> {
  const { stdout } = await execFileAsync('npm', ['start', '--silent'], {
    cwd: path.join(dir, 'quickstart'),
    env,
    maxBuffer: 16 * 1024 * 1024,
  })
  return stdout.split('\n').filter((line) => line !== '' && !line.startsWith('{'))
}

describe(`the quickstart (${useTestServer ? 'an empty database on TEST_DATABASE_URL' : 'its own embedded PostgreSQL'})`, () => {
  it('migrates, creates its tenant, runs its workflow and prints the result; a second run gets the same workflow', async () => {
    const first = await npmStart()
    expect(first[0]).toMatch(/^tenant acme created; its API key \(shown once\): eqk_\S+$/)
    const result = first.find((line) => line.startsWith('deploy-feature '))
    expect(result).toMatch(/^deploy-feature completed: /)
    const output = JSON.parse(result!.slice('deploy-feature completed: '.length))
    expect(output).toEqual({ deploy: { deployed: true, idempotencyKey: expect.stringMatching(/:1$/) } })

    // The tenant exists and the idempotency key returns the first workflow, already completed.
    const second = await npmStart()
    expect(second).toEqual([result])
  })
})
