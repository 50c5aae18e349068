// Agent usage (ctx.usage) is recorded with the attempt's end, in its transaction: summed exactly once
// per attempt that completed or failed (a retried attempt's usage is spent), never for a completion
// the fence discarded (its task was recovered and run again elsewhere), and refused, as a typed
// permanent failure, for a dimension the agent does not declare.
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { UsageError } from '../../src/errors.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { parseExposition, sample } from '../helpers/prometheus.ts'

// Attempt 1 reports usage in two calls, then fails; attempt 2 reports and completes.
const flaky = defineAgent({
  id: 'flaky-llm',
  usage: ['tokens', 'costMicros'],
  handler: async (ctx) => {
    ctx.usage({ tokens: 100, costMicros: 7 })
    if (ctx.attempt === 1) {
      ctx.usage({ tokens: 20 })
      throw new Error('the model timed out')
    }
    ctx.usage({ tokens: 5, costMicros: 1 })
    return { ok: true }
  },
})

// The first attempt waits until the test lets it return, after the sweeper recovered its task.
let releaseFirst: () => void = () => {}
const firstReturns = new Promise<void>((resolve) => (releaseFirst = resolve))
let firstStarted: (taskId: string) => void = () => {}
const firstRunning = new Promise<string>((resolve) => (firstStarted = resolve))
let lateReturned: () => void = () => {}
const lateDone = new Promise<void>((resolve) => (lateReturned = resolve))
const slow = defineAgent({
  id: 'slow-llm',
  usage: ['tokens'],
  handler: async (ctx) => {
    if (ctx.attempt === 1) {
      ctx.usage({ tokens: 1000 })
      firstStarted(ctx.taskId)
      await firstReturns
      lateReturned()
      return { from: 'the first attempt' }
    }
    ctx.usage({ tokens: 3 })
    return { from: `attempt ${ctx.attempt}` }
  },
})

const sloppy = defineAgent({
  id: 'sloppy',
  usage: ['tokens'],
  handler: async (ctx) => {
    ctx.usage({ dollars: 2 })
    return null
  },
})
const silent = defineAgent({ id: 'silent', usage: ['tokens'], handler: async () => ({ quiet: true }) })

const retried = defineWorkflow({
  name: 'retried',
  tasks: [
    { key: 'a', agent: flaky, maxAttempts: 3, backoffMs: 1, backoffMaxMs: 1 },
    { key: 'b', agent: silent, dependsOn: ['a'] },
  ],
})
const fenced = defineWorkflow({ name: 'fenced', tasks: [{ key: 'x', agent: slow }] })
const undeclared = defineWorkflow({
  name: 'undeclared',
  tasks: [{ key: 'u', agent: sloppy, maxAttempts: 3 }],
})

const { engine, db } = await testEngine({
  agents: [flaky, slow, sloppy, silent],
  workflows: [retried, fenced, undeclared],
  // Heartbeats far apart: the late attempt must reach its completion, not be aborted by a heartbeat.
  config: { heartbeatIntervalMs: 60_000, staleAfterMs: 300_000 },
})
await engine.startWorker()
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

async function rows(workflowId: string) {
  return queryOnce(
    db.url,
    `SELECT attempt, dimension, amount::int, outcome, agent_id FROM equilateral.agent_usage
     WHERE workflow_id = $1 ORDER BY attempt, dimension`,
    [workflowId],
  )
}

describe('agent usage', () => {
  it("counts a failed attempt's usage as spent and each attempt's exactly once, summed per call", async () => {
    const { id } = await acme.startWorkflow('retried')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(await rows(id)).toEqual([
      { attempt: 1, dimension: 'costMicros', amount: 7, outcome: 'failed', agent_id: 'flaky-llm' },
      { attempt: 1, dimension: 'tokens', amount: 120, outcome: 'failed', agent_id: 'flaky-llm' },
      { attempt: 2, dimension: 'costMicros', amount: 8, outcome: 'completed', agent_id: 'flaky-llm' },
      { attempt: 2, dimension: 'tokens', amount: 105, outcome: 'completed', agent_id: 'flaky-llm' },
    ])
    const usage = await acme.usage({ workflowId: id })
    expect(usage.totals.sort((x, y) => x.dimension.localeCompare(y.dimension))).toEqual([
      { dimension: 'costMicros', amount: 15 },
      { dimension: 'tokens', amount: 225 },
    ])
    expect(usage.byWorkflowType).toContainEqual({ workflowType: 'retried', dimension: 'tokens', amount: 225 })
    // The agent that reported nothing wrote nothing: no row, no extra statement.
    expect(usage.byAgent.filter((u) => u.agent === 'silent')).toEqual([])

    const s = parseExposition((await engine.metrics.expose()).body)
    expect(sample(s, 'equilateral_agent_usage_total', { agent: 'flaky-llm', dimension: 'tokens' })).toBe(225)
    expect(sample(s, 'equilateral_agent_usage_total', { agent: 'flaky-llm', dimension: 'costMicros' })).toBe(
      15,
    )
  })

  it('does not count a completion the fence discarded: only the attempt that completed', async () => {
    const { id } = await acme.startWorkflow('fenced')
    const taskId = await firstRunning
    // The worker looks dead to the sweeper: attempt 1 is lost (a failure, no usage: its worker is
    // gone as far as the engine knows), and attempt 2 runs and completes.
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
    expect(wf.output).toEqual({ x: { from: 'attempt 2' } })
    // Attempt 1 returns now, with its 1000 tokens: its completion is fenced out, and so is its usage.
    releaseFirst()
    await lateDone
    await eventually(async () => {
      const s = parseExposition((await engine.metrics.expose()).body)
      return sample(s, 'equilateral_tasks_finished_total', { agent: 'slow-llm', outcome: 'lease_lost' }) === 1
        ? true
        : undefined
    })
    expect(await rows(id)).toEqual([
      { attempt: 2, dimension: 'tokens', amount: 3, outcome: 'completed', agent_id: 'slow-llm' },
    ])
    const s = parseExposition((await engine.metrics.expose()).body)
    expect(sample(s, 'equilateral_agent_usage_total', { agent: 'slow-llm', dimension: 'tokens' })).toBe(3)
  })

  it('refuses an undeclared dimension with a typed error that fails the task for good', async () => {
    const { id } = await acme.startWorkflow('undeclared')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    const task = wf.tasks[0]!
    expect(task.attempt).toBe(1) // permanent: no retry
    expect(task.error).toMatchObject({ name: 'UsageError', code: 'invalid_input' })
    expect(JSON.stringify(task.error)).toContain('dollars')
    expect(await rows(id)).toEqual([])
    expect(() => new UsageError('x', 'y')).not.toThrow()
  })

  it('refuses an invalid declaration when the agent is defined', () => {
    expect(() => defineAgent({ id: 'bad', usage: ['no spaces allowed'], handler: async () => null })).toThrow(
      /invalid usage dimension/,
    )
  })
})
