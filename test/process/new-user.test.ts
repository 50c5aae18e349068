// Issue 22's acceptance, played as a new user: `equilateral init` in an empty folder against the
// packed tarball, `npm install`, a second agent that depends on the first, `npm start` (the config
// file, no --registry), a workflow started over HTTP and its result awaited, then the project's own
// `npm test`. Nothing reads stdin; CI=true as in CI. The fleet and the project's test use a fresh
// database on the test run's server (TEST_DATABASE_URL's, or the embedded or container one the
// global setup started).
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { afterAll, describe, expect, it } from 'vitest'
import { findFreePort } from '../../src/db/provision.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { npmInstall, packedTarball } from '../helpers/package.ts'
import { until } from '../cli/run.ts'

const execFileAsync = promisify(execFile)
const BIN = path.resolve(import.meta.dirname, '../../bin/equilateral.js')

const db = await createTestDatabase()
const root = await mkdtemp(path.join(tmpdir(), 'eq-new-user-'))
await chmod(root, 0o755)
const app = path.join(root, 'my-agents')
let fleet: ChildProcess | undefined

afterAll(async () => {
  if (fleet) await stopGroup(fleet)
  await db.drop()
  await rm(root, { recursive: true, force: true })
})

const env: NodeJS.ProcessEnv = { ...process.env, CI: 'true', NO_COLOR: '1', METRICS_PORT: '0' }
for (const name of ['DATABASE_URL', 'MIGRATION_DATABASE_URL', 'EQUILATERAL_CONFIG', 'ADMIN_TOKEN', 'HOST']) {
  delete env[name]
}
delete env.TEST_DATABASE_URL // the project's test gets the test database below, explicitly

// What the user adds: an agent that takes the greeter's result, and a task for it in the workflow.
const SHOUTER = `
/** Shouts the greeting of the task it depends on. */
export const shouter = defineAgent({
  id: 'shouter',
  handler: async (ctx) => ({ shout: (ctx.results.greet as { greeting: string }).greeting.toUpperCase() }),
})
`

describe('a new user, from an empty folder to a workflow of their own', () => {
  it('init, npm install, a second agent, npm start, a workflow over HTTP, npm test', async () => {
    const tarball = await packedTarball()
    const began = performance.now()
    const times: Record<string, number> = {}
    const lap = (name: string) => (times[name] = Math.round(performance.now() - began))

    const { stdout: initOut } = await execFileAsync(
      process.execPath,
      [BIN, 'init', app, '--package', tarball],
      {
        cwd: root,
        env,
      },
    )
    expect(initOut).toMatch(/^init: wrote equilateral\.config\.ts, /)
    lap('init')
    await npmInstall(app)
    lap('npm install')

    await writeFile(
      path.join(app, 'src/agents.ts'),
      (await readFile(path.join(app, 'src/agents.ts'), 'utf8')) + SHOUTER,
    )
    const workflows = path.join(app, 'src/workflows.ts')
    await writeFile(
      workflows,
      (await readFile(workflows, 'utf8'))
        .replace("import { greeter } from './agents.ts'", "import { greeter, shouter } from './agents.ts'")
        .replace(
          "tasks: [{ key: 'greet', agent: greeter, data: (input) => ({ name: input?.name ?? 'world' }) }],",
          `tasks: [
    { key: 'greet', agent: greeter, data: (input) => ({ name: input?.name ?? 'world' }) },
    { key: 'shout', agent: shouter, dependsOn: ['greet'] },
  ],`,
        ),
    )

    // npm start: `equilateral dev` from the package.json init wrote, on the test database.
    const port = await findFreePort()
    const out = { stderr: '' }
    fleet = spawn('npm', ['start'], {
      cwd: app,
      env: { ...env, DATABASE_URL: db.url, PORT: String(port), LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true, // its own process group: npm, sh and node stop together
    })
    fleet.stderr!.setEncoding('utf8').on('data', (chunk: string) => (out.stderr += chunk))
    const exited = new Promise<number | null>((resolve) => fleet!.once('exit', resolve))
    const key = await until(
      'npm start prints the API key',
      () => {
        if (fleet!.exitCode !== null) throw new Error(`npm start exited ${fleet!.exitCode}:\n${out.stderr}`)
        return /API key: +(eqk_\S+)/.exec(out.stderr)?.[1]
      },
      120_000,
    )
    lap('npm start ready')
    expect(out.stderr).toContain(`Start a hello workflow`)

    const api = `http://127.0.0.1:${port}`
    const auth = { authorization: `Bearer ${key}` }
    const started = await fetch(`${api}/v1/workflows`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'hello', input: { name: 'Ada' } }),
    })
    expect(started.status).toBe(201)
    const { id } = (await started.json()) as { id: string }
    const done = await workflowResultOverHttp(api, auth, id)
    lap('workflow completed')
    expect(done).toMatchObject({
      status: 'completed',
      output: { shout: { shout: 'HELLO, ADA!' } },
    })

    // Ctrl-C, as the user stops it (npm itself reports the signal, not an exit code).
    await stopGroup(fleet)
    await exited
    expect(out.stderr).not.toContain('shutdown failed')
    fleet = undefined

    // The project's own test, brought up to date with the new last task, as the user would.
    const test = path.join(app, 'test/hello.test.ts')
    await writeFile(
      test,
      (await readFile(test, 'utf8')).replace(
        "{ greet: { greeting: 'Hello, Ada!' } }",
        "{ shout: { shout: 'HELLO, ADA!' } }",
      ),
    )
    const { stdout: tested } = await execFileAsync('npm', ['test'], {
      cwd: app,
      env: { ...env, TEST_DATABASE_URL: db.url },
    })
    expect(tested).toMatch(/^ℹ pass 1$/m)
    expect(tested).toMatch(/^ℹ fail 0$/m)
    lap('npm test')
    console.log(`new user, ms since the empty folder: ${JSON.stringify(times)}`)
  })
})

/**
 * Reads the workflow until it ends. `GET /v1/workflows/:id?wait=30s` (a long poll woken by the
 * database) is on its way; then this becomes one request.
 */
async function workflowResultOverHttp(
  api: string,
  headers: Record<string, string>,
  id: string,
): Promise<{ status: string; output: unknown }> {
  return until('the workflow ends', async () => {
    const response = await fetch(`${api}/v1/workflows/${id}`, { headers })
    const wf = (await response.json()) as { status: string; output: unknown }
    return wf.status === 'running' ? undefined : wf
  })
}

/** SIGTERM to the process group (npm, its shell, the node process); SIGKILL if it lingers. */
async function stopGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  process.kill(-child.pid!, 'SIGTERM')
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL')
    } catch {
      // already gone
    }
  }, 30_000)
  await gone
  clearTimeout(timer)
}
