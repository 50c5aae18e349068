// Graceful shutdown of a real worker process: SIGTERM stops fetching, a task that finishes within
// the grace period completes, one that does not is released (re-queued at once, no failure counted)
// and another worker picks it up within seconds, not after the stale threshold.
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine } from '../../src/index.ts'
import { workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { eventually } from '../helpers/engine.ts'

const script = fileURLToPath(new URL('../fixtures/worker-process.ts', import.meta.url))
const db = await createTestDatabase()
const engine = await createEngine({
  connectionString: db.url,
  workflows,
  log: pino({ level: 'silent' }),
  supervise: false,
})
const children = new Set<ChildProcess>()
afterAll(async () => {
  for (const c of children) c.kill('SIGKILL')
  await engine.close()
  await db.drop()
})

function spawnWorker(env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = fork(script, [db.url], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, ...env },
  })
  children.add(child)
  child.on('exit', () => children.delete(child))
  return new Promise((resolve, reject) => {
    child.once('message', () => resolve(child))
    child.once('exit', (code) => reject(new Error(`worker exited early with ${code}`)))
  })
}

describe('graceful shutdown', () => {
  it('releases the task of an agent that outlives the grace period, and another worker finishes it', async () => {
    await engine.createTenant({ id: 'acme' })
    const acme = await engine.tenant('acme')
    const first = await spawnWorker()
    const { id } = await acme.startWorkflow('chaos-slow')
    await eventually(async () =>
      (await acme.getWorkflow(id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    const exited = new Promise<number | null>((resolve) => first.once('exit', (code) => resolve(code)))
    first.kill('SIGTERM')
    expect(await exited).toBe(0)
    const released = await acme.getWorkflow(id)
    expect(released.tasks[0]).toMatchObject({ status: 'queued', attempt: 2, failures: 0 })
    expect((await acme.history(id)).map((h) => h.action)).toContain('task_released')

    const startedAt = Date.now()
    const second = await spawnWorker({ SLOW_AGENT_MS: '50' })
    const done = await eventually(async () => {
      const wf = await acme.getWorkflow(id)
      return wf.status === 'completed' ? wf : undefined
    })
    // picked up at once (the stale threshold is 1.5 s and no sweeper runs here)
    expect(Date.now() - startedAt).toBeLessThan(10_000)
    expect(done.output).toEqual({ slow: { attempt: 2 } })
    const gone = new Promise((resolve) => second.once('exit', resolve))
    second.kill('SIGTERM')
    await gone
  })

  it('lets an agent that finishes within the grace period complete', async () => {
    const acme = await engine.tenant('acme')
    const worker = await spawnWorker({ SLOW_AGENT_MS: '600' })
    const { id } = await acme.startWorkflow('chaos-slow')
    await eventually(async () =>
      (await acme.getWorkflow(id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    const exited = new Promise<number | null>((resolve) => worker.once('exit', (code) => resolve(code)))
    worker.kill('SIGTERM')
    expect(await exited).toBe(0)
    const wf = await acme.getWorkflow(id)
    expect(wf.status).toBe('completed')
    expect(wf.tasks[0]?.attempt).toBe(1)
  })
})
