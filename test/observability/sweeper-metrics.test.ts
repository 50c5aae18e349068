// What the sweeper ends, the metrics count: a one-attempt task whose worker died is failed for good
// by the sweep, and so is its workflow. The worker that would have counted them is gone, so the
// sweep must (issue 24: they were never counted).
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { claimTasks } from '../../src/flow/claim.ts'
import { fetchJob, testEngine } from '../helpers/engine.ts'

// Never run: its task is claimed by hand for a worker that then "dies".
const fragile = defineAgent({ id: 'fragile', handler: async () => null })
const once = defineWorkflow({ name: 'once', tasks: [{ key: 'x', agent: fragile, maxAttempts: 1 }] })

const { engine } = await testEngine({ agents: [fragile], workflows: [once] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

async function counter(name: string, labels: Record<string, string>): Promise<number> {
  const metric = (await engine.metrics.registry.getMetricsAsJSON()).find((m) => m.name === name)
  const value = metric?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))
  return Number(value?.value ?? 0)
}

describe('a task the sweeper fails for good', () => {
  it('is counted as dead-lettered and failed, and its workflow as failed', async () => {
    const before = {
      workflows: await counter('equilateral_workflows_finished_total', { type: 'once', status: 'failed' }),
      deadLettered: await counter('equilateral_tasks_dead_lettered_total', { agent: 'fragile' }),
      failed: await counter('equilateral_tasks_finished_total', { agent: 'fragile', outcome: 'failed' }),
      lost: await counter('equilateral_sweeper_recovered_tasks_total', { action: 'lost' }),
    }
    const { id } = await acme.startWorkflow('once')
    const fetched = await fetchJob(engine, 'fragile', id)
    await claimTasks(engine, acme.scope, [fetched], 'ghost-worker')
    // Seen dead after its claim, by the database's clock (as the liveness pass reads it).
    const [{ seenAt }] = (await engine.pool.query(`SELECT now()::text AS "seenAt"`)).rows
    // The worker's session is gone: its running task is lost, with no attempt left.
    const report = await engine.sweep({
      deadWorkers: { ids: ['ghost-worker'], seenAt, rows: [] },
    })
    expect(report.lost).toBe(1)
    expect((await acme.getWorkflow(id)).status).toBe('failed')
    expect({
      workflows: await counter('equilateral_workflows_finished_total', { type: 'once', status: 'failed' }),
      deadLettered: await counter('equilateral_tasks_dead_lettered_total', { agent: 'fragile' }),
      failed: await counter('equilateral_tasks_finished_total', { agent: 'fragile', outcome: 'failed' }),
      lost: await counter('equilateral_sweeper_recovered_tasks_total', { action: 'lost' }),
    }).toEqual({
      workflows: before.workflows + 1,
      deadLettered: before.deadLettered + 1,
      failed: before.failed + 1,
      lost: before.lost + 1,
    })
  })
})
