// Connection-pool pressure: a worker runs 32 agents at once on an engine pool of 2 connections,
// and the agents use the database themselves: each heartbeats through the engine, reads through
// the engine's own pool, and updates one hot row on a pool of its own (so they queue on a row
// lock too). Everything must complete without the sweeper's help: no deadlock, and the claim,
// heartbeat and completion path is never starved long enough for a task to look lost.
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

let enginePool: pg.Pool | null = null
const agentPool = { current: null as pg.Pool | null }

const busy = defineAgent({
  id: 'db-busy',
  handler: async (ctx) => {
    await ctx.heartbeat()
    const read = await (enginePool as pg.Pool).query<{ ok: number }>('SELECT 1 AS ok')
    const client = await (agentPool.current as pg.Pool).connect()
    try {
      await client.query('BEGIN')
      await client.query('UPDATE pressure_counter SET n = n + 1 WHERE id = 1')
      await client.query('SELECT pg_sleep(0.002)')
      await client.query('COMMIT')
    } finally {
      client.release()
    }
    await ctx.heartbeat()
    return { ok: read.rows[0]?.ok ?? 0 }
  },
})

const WIDTH = 20
const fan = defineWorkflow({
  name: 'pressure-fan',
  tasks: [
    { key: 'root', agent: busy },
    ...Array.from({ length: WIDTH }, (_, i) => ({ key: `leaf${i}`, agent: busy, dependsOn: ['root'] })),
    { key: 'join', agent: busy, dependsOn: Array.from({ length: WIDTH }, (_, i) => `leaf${i}`) },
  ],
})

const { engine, db } = await testEngine({
  agents: [busy],
  workflows: [fan],
  // Long stale threshold: a slow machine must not pass for starvation; we never sweep anyway.
  config: { dbPoolMax: 2, workerConcurrency: 32, staleAfterMs: 30_000 },
})
enginePool = engine.pool
const admin = new pg.Client({ connectionString: db.url })
await admin.connect()
await admin.query('CREATE TABLE pressure_counter (id int PRIMARY KEY, n int NOT NULL)')
await admin.query('INSERT INTO pressure_counter VALUES (1, 0)')
agentPool.current = new pg.Pool({ connectionString: db.url, max: 3 })
afterAll(async () => {
  await agentPool.current?.end()
  await admin.end()
})

describe('connection-pool pressure', () => {
  it('completes every workflow with 32 agents on 2 engine connections and agents using the database', async () => {
    await engine.createTenant({ id: 'acme' })
    await engine.createTenant({ id: 'globex' })
    const tenants = [await engine.tenant('acme'), await engine.tenant('globex')]
    await engine.startWorker()
    const ids: { tenant: (typeof tenants)[number]; id: string }[] = []
    for (let i = 0; i < 12; i++) {
      const tenant = tenants[i % 2] as (typeof tenants)[number]
      ids.push({ tenant, id: (await tenant.startWorkflow('pressure-fan')).id })
    }
    const statuses = await eventually(
      async () => {
        const views = await Promise.all(ids.map(({ tenant, id }) => tenant.getWorkflow(id)))
        return views.every((v) => v.status !== 'running') ? views.map((v) => v.status) : undefined
      },
      90_000,
      200,
      'every workflow finished',
    )
    expect(new Set(statuses)).toEqual(new Set(['completed']))

    const tasks = ids.length * (WIDTH + 2)
    const { rows } = await admin.query<{ n: number }>('SELECT n FROM pressure_counter')
    expect(rows[0]?.n).toBeGreaterThanOrEqual(tasks) // every agent did its own database work
    // Nothing looked lost, nothing was retried: the coordination path always got a connection.
    const { rows: audit } = await admin.query<{ action_type: string; n: number }>(
      `SELECT action_type, count(*)::int AS n FROM equilateral.agent_audit_log
       WHERE action_type IN ('task_started', 'task_completed', 'task_lost', 'task_failed_attempt')
       GROUP BY 1 ORDER BY 1`,
    )
    expect(audit).toEqual([
      { action_type: 'task_completed', n: tasks },
      { action_type: 'task_started', n: tasks },
    ])
    expect(engine.pool.totalCount).toBeLessThanOrEqual(2)
    expect(engine.pool.waitingCount).toBe(0)
  })
})
