// database-per-tenant: each tenant database's schedules are run by the schedulers serving that
// database (startScheduler through the tenant fleet), and the workflows land in that database.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ got: ctx.input }) })
const ping = defineWorkflow({ name: 'ping', tasks: [{ key: 'only', agent: echo }] })

const { engine } = await testEngine({
  agents: [echo],
  workflows: [ping],
  config: { isolationMode: 'database-per-tenant', schedulerIntervalMs: 100 },
})

describe('cron schedules in database-per-tenant mode', () => {
  it("starts a tenant database's schedule from the scheduler serving that database", async () => {
    await engine.createTenant({ id: 'solo' })
    const solo = await engine.tenant('solo')
    const { nextSlot } = await solo.putSchedule({ id: 'pulse', workflowType: 'ping', cron: '* * * * * *' })
    await engine.startScheduler()
    const page = await eventually(async () => {
      const p = await solo.listWorkflows()
      return p.workflows.length >= 2 ? p : undefined
    })
    expect(page.workflows.every((w) => w.type === 'ping')).toBe(true)
    const history = await solo.history(page.workflows.at(-1)?.id as string)
    expect(history[0]).toMatchObject({ action: 'workflow_started', actor: 'schedule:pulse' })
    const [schedule] = await solo.listSchedules()
    expect(schedule?.lastSlot?.getTime()).toBeGreaterThanOrEqual(nextSlot.getTime() + 1000)
  })
})
