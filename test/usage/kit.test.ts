// The test kit exposes usage and budgets to agent authors: what their agents reported, a hard
// budget holding the kit's tenant, and the period rolled without waiting for the day to end.
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { createTestKit } from '../../src/testing.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { eventually } from '../helpers/engine.ts'

const summarize = defineAgent({
  id: 'summarize',
  usage: ['tokens', 'costMicros'],
  handler: async (ctx) => {
    ctx.usage({ tokens: 1200, costMicros: 3400 })
    return { summary: `summary of ${ctx.taskKey}` }
  },
})
const twice = defineWorkflow({
  name: 'twice',
  tasks: [
    { key: 'first', agent: summarize },
    { key: 'second', agent: summarize, dependsOn: ['first'] },
  ],
})

const db = await createTestDatabase()
const kit = await createTestKit({ databaseUrl: db.url, agents: [summarize], workflows: [twice] })
afterAll(async () => {
  await kit.close()
  await db.drop()
})

describe('the test kit: usage and budgets', () => {
  it("reports the agents' usage, holds on a hard budget and runs again once the period rolls", async () => {
    // Set first: the period starts at the budget (day start, UTC) and holds every usage below.
    await kit.setBudget({ dimension: 'costMicros', period: 'day', limit: 10_000, hard: true })
    const { id } = await kit.start('twice')
    await kit.waitFor(id, { status: 'completed' })
    expect((await kit.usage({ workflowId: id })).byAgent).toEqual(
      expect.arrayContaining([
        { agent: 'summarize', dimension: 'tokens', amount: 2400 },
        { agent: 'summarize', dimension: 'costMicros', amount: 6800 },
      ]),
    )

    const held = await kit.start('twice')
    // 6800 + 3400 reaches 10 000: the second task waits.
    await eventually(async () => ((await kit.usage()).heldTasks === 1 ? true : undefined))
    expect((await kit.get(held.id)).tasks.find((t) => t.key === 'second')?.holdReason).toBe(
      'budget_exhausted',
    )
    expect((await kit.budgets())[0]).toMatchObject({ used: 10_200, exhausted: true })

    expect(await kit.rollBudgetPeriods()).toEqual({ rolled: 1, released: 1 })
    await kit.waitFor(held.id, { status: 'completed' })
    expect((await kit.budgetAudit()).map((a) => a.action)).toEqual([
      'budget_period_rolled',
      'budget_exhausted',
      'budget_set',
    ])
  })
})
