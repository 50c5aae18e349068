// Graceful shutdown of a real worker process: SIGTERM stops fetching, a task that finishes within
// the grace period completes, one that does not is released (re-queued at once, no failure counted)
// and another worker picks it up within seconds, not after the stale threshold.
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine } from '../../src/index.ts'
import { workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { eventually } from '../helpers/engine.ts'
import { workerProcesses } from '../helpers/processes.ts'

const db = await createTestDatabase()
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  workflows,
  log: pino({ level: 'silent' }),
  supervise: false,
})
const { spawn: spawnWorker, stop } = workerProcesses(db.appUrl)
afterAll(async () => {
  await engine.close()
  await db.drop()
})

describe('graceful shutdown', () => {
  it('releases the task of an agent that outlives the grace period, and another worker finishes it', async () => {
    await engine.createTenant({ id: 'acme' })
    const acme = await engine.tenant('acme')
    const first = await spawnWorker()
    const { id } = await acme.startWorkflow('chaos-slow')
    await eventually(async () =>
      (await acme.getWorkflow(id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    expect(await stop(first, 'SIGTERM')).toBe(0)
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
    await stop(second, 'SIGTERM')
  })

  it('lets an agent that finishes within the grace period complete', async () => {
    const acme = await engine.tenant('acme')
    const worker = await spawnWorker({ SLOW_AGENT_MS: '600' })
    const { id } = await acme.startWorkflow('chaos-slow')
    await eventually(async () =>
      (await acme.getWorkflow(id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    expect(await stop(worker, 'SIGTERM')).toBe(0)
    const wf = await acme.getWorkflow(id)
    expect(wf.status).toBe('completed')
    expect(wf.tasks[0]?.attempt).toBe(1)
  })
})
