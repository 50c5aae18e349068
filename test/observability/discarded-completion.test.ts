// An agent that returns after its task was recovered from it (the sweeper took it back while the
// agent still ran) has its result discarded by the completion's fence. The log says so, as a warning
// with the task, its attempt and the reason, never as `task completed`; the metrics count the same
// attempt as lease_lost.
import { Writable } from 'node:stream'
import pg from 'pg'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { parseExposition, sample } from '../helpers/prometheus.ts'

const lines: Record<string, unknown>[] = []
const sink = new Writable({
  write(chunk: Buffer, _encoding, done) {
    for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line))
    done()
  },
})

// The first attempt waits until the test lets it return; a later attempt returns at once.
let releaseFirst: () => void = () => {}
const firstReturns = new Promise<void>((resolve) => (releaseFirst = resolve))
let firstStarted: (taskId: string) => void = () => {}
const firstRunning = new Promise<string>((resolve) => (firstStarted = resolve))
const slow = defineAgent({
  id: 'slow',
  handler: async (ctx) => {
    if (ctx.attempt === 1) {
      firstStarted(ctx.taskId)
      await firstReturns
      return { from: 'the first attempt' }
    }
    return { from: `attempt ${ctx.attempt}` }
  },
})
const flow = defineWorkflow({ name: 'one-slow-step', tasks: [{ key: 'x', agent: slow }] })

// Heartbeats far apart: the late attempt must reach its completion, not be aborted by a heartbeat first.
const { engine, db } = await testEngine({
  agents: [slow],
  workflows: [flow],
  log: pino({ level: 'debug' }, sink),
  config: { heartbeatIntervalMs: 60_000, staleAfterMs: 300_000 },
})
await engine.startWorker()
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

describe('a completion fenced out', () => {
  it('is logged as discarded with task, attempt and reason, and counted as lease_lost', async () => {
    const { id } = await acme.startWorkflow('one-slow-step')
    const taskId = await firstRunning
    // The worker looks dead to the sweeper (its heartbeat is an hour old): attempt 2 is queued.
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    try {
      await owner.query(
        `UPDATE equilateral.agent_coordination SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`,
        [taskId],
      )
    } finally {
      await owner.end()
    }
    expect((await engine.sweep()).lost).toBe(1)
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.output).toEqual({ x: { from: 'attempt 2' } })

    releaseFirst()
    const finished = (outcome: string, s: Map<string, number>) =>
      sample(s, 'equilateral_tasks_finished_total', { agent: 'slow', outcome })
    const s = await eventually(async () => {
      const samples = parseExposition((await engine.metrics.expose()).body)
      return finished('lease_lost', samples) === 1 ? samples : undefined
    })
    expect(finished('completed', s)).toBe(1)

    // The attempt the metrics count as lease_lost is the one the log reports as discarded.
    const discarded = lines.filter((l) => l.msg === 'task completion discarded: lease lost')
    expect(discarded).toEqual([
      expect.objectContaining({ level: 40, task: taskId, attempt: 1, reason: 'lease_lost' }),
    ])
    const completed = lines.filter((l) => l.msg === 'task completed' && l.task === taskId)
    expect(completed.map((l) => l.attempt)).toEqual([2])
  })
})
