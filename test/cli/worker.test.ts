// The `worker` command as an operator runs it: a second worker on a host whose metrics port is taken
// warns and goes on working, and SIGTERM ends a worker whose agent opened resources of its own once
// the agent's close hook has closed them, instead of leaving the process running.
import net from 'node:net'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine } from '../../src/engine.ts'
import { workflows } from '../fixtures/agent-pool-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { childEnv, cliProcesses, messages, stop, until } from './run.ts'

const REGISTRY = ['--registry', 'test/fixtures/agent-pool-registry.ts']
const WARN = 40

const db = await createTestDatabase()
const { start } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'info' }),
  () => db.drop(),
)
// Starts workflows and reads them; runs no worker (the worker processes do).
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  workflows,
  log: pino({ level: 'silent' }),
  supervise: false,
})
afterAll(() => engine.close())
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

function logLines(stdout: string): { level: number; msg: string; [key: string]: unknown }[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
}

/** A worker process of the fixture registry, once it runs its worker. */
async function startWorker(env: Record<string, string> = {}) {
  const worker = start(['worker', ...REGISTRY], env)
  await until('the worker to start', () => {
    if (worker.child.exitCode !== null) throw new Error(`worker exited:\n${worker.out.stderr}`)
    return logLines(worker.out.stdout).some((l) => l.msg === 'worker started') || undefined
  })
  return worker
}

/** Runs a workflow; fails at once, with its output, if the worker exits before it completed. */
async function runWorkflow(worker: Awaited<ReturnType<typeof startWorker>>): Promise<string> {
  const { id } = await acme.startWorkflow('pool-lookup')
  const wf = await until('the workflow to end', async () => {
    if (worker.child.exitCode !== null) {
      throw new Error(`worker exited (${worker.child.exitCode}):\n${worker.out.stderr}${worker.out.stdout}`)
    }
    const view = await acme.getWorkflow(id)
    return view.status === 'running' ? undefined : view
  })
  return wf.status
}

describe('worker', () => {
  it('warns once when its metrics port is taken, naming the port and METRICS_PORT, and goes on working', async () => {
    // Another process on this host (the first worker, say) holds the port.
    const holder = net.createServer()
    await new Promise<void>((resolve) => holder.listen(0, '0.0.0.0', resolve))
    const port = (holder.address() as net.AddressInfo).port
    try {
      const worker = await startWorker({ METRICS_PORT: String(port) })
      const warnings = () => logLines(worker.out.stdout).filter((l) => l.level === WARN && l.port === port)
      const [warning] = await until('the metrics port warning', () => {
        if (worker.child.exitCode !== null) throw new Error(`worker exited:\n${worker.out.stderr}`)
        return warnings().length > 0 ? warnings() : undefined
      })
      expect(warning?.msg).toContain(`metrics port ${port} is in use`)
      expect(warning?.msg).toContain('METRICS_PORT')

      expect(await runWorkflow(worker)).toBe('completed')
      expect(warnings()).toHaveLength(1)
      await stop(worker.child, 'SIGTERM', 30_000)
    } finally {
      holder.close()
    }
  })

  it("exits on SIGTERM once the agent's close hook closed the pool the agent opened", async () => {
    const worker = await startWorker()
    expect(await runWorkflow(worker)).toBe('completed')

    // Without the hook, the agent's idle connection keeps the process alive: SIGKILL after 30 s.
    const code = await stop(worker.child, 'SIGTERM', 30_000)
    const { stderr } = await worker.exited
    expect(messages(stderr)).toEqual(['agent pool closed after 1 queries'])
    expect(code).toBe(0)
  })
})
