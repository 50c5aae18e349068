// What each command loads: `--help` nothing but the command-line parser, and a worker neither the
// HTTP server (fastify and its plugins, src/web) nor drizzle-orm's runtime nor the schema files,
// which only migrations and the web tier need. Each of them cost a worker seconds of CPU and
// ~100 MB at every start (and every restart after a crash or a deploy) before it ran anything.
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { afterAll, describe, expect, it } from 'vitest'
import { createTestDatabase } from '../helpers/db.ts'
import { childEnv, cliProcesses, stop, until } from './run.ts'

const db = await createTestDatabase()
const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-lean-'))
const hook = pathToFileURL(fileURLToPath(new URL('../fixtures/record-modules.ts', import.meta.url))).href
const { run, start } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'info' }),
  () => db.drop(),
)
afterAll(() => rm(dir, { recursive: true, force: true }))

let files = 0
/** A fresh file to record a process's modules in, and the environment that makes it record them. */
function recording(): { file: string; env: NodeJS.ProcessEnv } {
  const file = path.join(dir, `modules-${++files}.txt`)
  return { file, env: { RECORD_MODULES: file, NODE_OPTIONS: `--import=${hook}` } }
}

/** The modules a process loaded, as paths in this repository (node_modules/... or src/...). */
async function loaded(file: string): Promise<string[]> {
  const root = pathToFileURL(fileURLToPath(new URL('../../', import.meta.url))).href
  const urls = (await readFile(file, 'utf8')).split('\n').filter((u) => u.startsWith(root))
  return [...new Set(urls.map((u) => u.slice(root.length)))]
}

const HTTP_SERVER = /^node_modules\/(fastify|@fastify\/[^/]+)\/|^src\/web\//
const DRIZZLE_RUNTIME =
  /^node_modules\/drizzle-orm\/(node-postgres|pg-core)\/|^src\/db\/schema\/(control|tenant)\.ts$/

describe('what a command loads', () => {
  it('--help prints the commands and loads only the command-line parser', async () => {
    const { file, env } = recording()
    const result = await run(['--help'], env)
    expect(result.code).toBe(0)
    expect(result.stdout).toContain('Usage: equilateral')
    expect(result.stdout).toContain('worker')
    const modules = await loaded(file)
    expect(modules).toContain('src/cli/main.ts') // the recording works
    expect(modules.filter((m) => /^node_modules\/(?!commander\/)/.test(m))).toEqual([])
    expect(modules.filter((m) => /^src\/(engine|db|web|flow)\b/.test(m))).toEqual([])
  })

  it('a worker starts without the HTTP server, drizzle-orm or the schema files', async () => {
    const { file, env } = recording()
    const worker = start(['worker'], env)
    await until('"worker started"', () => (worker.out.stdout.includes('"worker started"') ? true : undefined))
    // Every module the command imports is loaded before its worker starts.
    await stop(worker.child, 'SIGTERM', 10_000)
    const modules = await loaded(file)
    expect(modules).toContain('src/flow/worker.ts') // the recording works
    expect(modules.filter((m) => m.startsWith('node_modules/pg-boss/')).length).toBeGreaterThan(0)
    expect(modules.filter((m) => HTTP_SERVER.test(m))).toEqual([])
    expect(modules.filter((m) => DRIZZLE_RUNTIME.test(m))).toEqual([])
  })

  it('migrate still loads drizzle-orm, which applies the control migrations', async () => {
    const { file, env } = recording()
    const result = await run(['migrate'], env)
    expect(result.code, result.stderr).toBe(0)
    expect(result.stderr).toContain('migrate: control tables migrated')
    expect(
      (await loaded(file)).filter((m) => m.startsWith('node_modules/drizzle-orm/node-postgres/')),
    ).not.toEqual([])
  })
})
