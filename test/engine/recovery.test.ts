// Duplicate delivery, late completion, the sweeper, and tasks added at run time.
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { claimTasks } from '../../src/flow/claim.ts'
import { completeTasks } from '../../src/flow/complete.ts'
import { queueName, type TaskJobData } from '../../src/queue/boss.ts'
import { eventually, fetchJob, settled, testEngine } from '../helpers/engine.ts'

const ran: string[] = []
// One agent (so one queue) per scenario, so that fetching by hand in one test cannot take another's jobs.
const stepAgent = (id: string) =>
  defineAgent({
    id,
    handler: async (ctx) => {
      ran.push(`${ctx.workflowId}/${ctx.taskKey}`)
      return { key: ctx.taskKey, parents: Object.keys(ctx.results).sort() }
    },
  })
const step = stepAgent('step')
const dup = stepAgent('dup')
const gone = stepAgent('gone')
const lost = stepAgent('lost')
const planner = defineAgent<{ parts: number }>({
  id: 'planner',
  handler: async (ctx) => {
    const parts = Array.from({ length: ctx.data.parts }, (_, i) => `part-${i}`)
    ctx.spawn(parts.map((key) => ({ key, agent: 'step', dependsOn: ['plan'], data: { part: key } })))
    ctx.spawn({ key: 'merge', agent: 'step', dependsOn: parts })
    return { planned: parts.length }
  },
})
const badPlanner = defineAgent({
  id: 'bad-planner',
  handler: async (ctx) => {
    ctx.spawn([
      { key: 'loop-a', agent: 'step', dependsOn: ['loop-b'] },
      { key: 'loop-b', agent: 'step', dependsOn: ['loop-a'] },
    ])
    return null
  },
})

const pair = (agent: typeof step) =>
  defineWorkflow({
    name: `pair-${agent.id}`,
    tasks: [
      { key: 'a', agent },
      { key: 'b', agent, dependsOn: ['a'] },
    ],
  })
const planned = defineWorkflow({
  name: 'planned',
  tasks: [{ key: 'plan', agent: planner, data: { parts: 3 } }],
})
const badPlan = defineWorkflow({
  name: 'bad-plan',
  tasks: [{ key: 'plan', agent: badPlanner, maxAttempts: 3 }],
})

const { engine, db } = await testEngine({
  agents: [step, dup, gone, lost, planner, badPlanner],
  workflows: [pair(dup), pair(gone), pair(lost), planned, badPlan],
})
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

async function owner<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

describe('without a worker running', () => {
  it('makes a duplicate delivery and a late completion harmless', async () => {
    const { id } = await acme.startWorkflow('pair-dup')
    const fetched = await fetchJob(engine, 'dup', id)
    // two workers receive the same job
    const first = await claimTasks(engine, acme.scope, [fetched], 'worker-1')
    const second = await claimTasks(engine, acme.scope, [fetched], 'worker-2')
    expect(first.claimed).toHaveLength(1)
    expect(second.claimed).toHaveLength(1)
    const complete = (result: string) =>
      completeTasks(engine, acme.scope, [
        { job: fetched, taskId: fetched.taskId, workflowId: id, attempt: fetched.attempt, result },
      ])
    const a = await complete('first')
    const b = await complete('second')
    expect(a.completed.has(fetched.taskId)).toBe(true)
    expect(b.completed.has(fetched.taskId)).toBe(false)
    expect(a.dispatched).toHaveLength(1)
    expect(b.dispatched).toHaveLength(0)
    // a third delivery after completion cannot claim it any more
    expect((await claimTasks(engine, acme.scope, [fetched], 'worker-3')).claimed).toHaveLength(0)
    const wf = await acme.getWorkflow(id)
    expect(wf.tasks.find((t) => t.key === 'a')?.result).toBe('first')
    const history = await acme.history(id)
    expect(history.filter((h) => h.action === 'task_completed')).toHaveLength(1)
    expect(history.filter((h) => h.action === 'task_queued' && h.taskId === wf.tasks[1]?.id)).toHaveLength(1)
    const jobs = await engine.boss.findJobs<TaskJobData>(queueName('dup'), { data: { w: id } })
    expect(jobs.filter((j) => j.data.k === wf.tasks[1]?.id)).toHaveLength(1)
  })

  it('sweeper: re-queues a queued task whose job was deleted', async () => {
    const { id } = await acme.startWorkflow('pair-gone')
    const wf = await acme.getWorkflow(id)
    const a = wf.tasks[0]
    await owner((c) =>
      c.query(`DELETE FROM pgboss.job WHERE name = $1 AND data->>'k' = $2`, [queueName('gone'), a?.id]),
    )
    const report = await engine.sweep()
    expect(report.requeued).toBeGreaterThanOrEqual(1)
    const after = await acme.getWorkflow(id)
    expect(after.tasks[0]).toMatchObject({ status: 'queued', attempt: 2, failures: 0 })
    const recovered = (await acme.history(id)).filter((h) => h.action === 'task_recovered')
    expect(recovered).toHaveLength(1)
    expect(recovered[0]?.data).toMatchObject({ attempt: 2, reason: 'job gone' })
    // a second sweep finds nothing more to do for it
    await engine.sweep()
    expect((await acme.getWorkflow(id)).tasks[0]?.attempt).toBe(2)
  })

  it('sweeper: recovers a running task whose worker stopped heartbeating, counting a failure', async () => {
    const { id } = await acme.startWorkflow('pair-lost')
    const fetched = await fetchJob(engine, 'lost', id)
    await claimTasks(engine, acme.scope, [fetched], 'doomed-worker')
    // the worker dies: no heartbeat for longer than the threshold
    await owner((c) =>
      c.query(
        `UPDATE equilateral.agent_coordination SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`,
        [fetched.taskId],
      ),
    )
    const report = await engine.sweep()
    expect(report.lost).toBeGreaterThanOrEqual(1)
    expect((await acme.getWorkflow(id)).tasks[0]).toMatchObject({ status: 'queued', attempt: 2, failures: 1 })
    // the dead worker's late completion is fenced out
    const late = await completeTasks(engine, acme.scope, [
      { job: fetched, taskId: fetched.taskId, workflowId: id, attempt: fetched.attempt, result: 'late' },
    ])
    expect(late.completed.size).toBe(0)
    expect((await acme.history(id)).map((h) => h.action)).toContain('task_lost')
  })
})

describe('with a worker', () => {
  it('finishes what the sweeper recovered', async () => {
    await engine.startWorker()
    await eventually(async () => {
      const { rows } = await owner((c) =>
        c.query(`SELECT count(*)::int AS n FROM equilateral.workflows WHERE status = 'running'`),
      )
      return rows[0].n === 0 ? true : undefined
    })
    const { rows } = await owner((c) =>
      c.query(`SELECT status, count(*)::int AS n FROM equilateral.workflows GROUP BY status`),
    )
    expect(rows).toEqual([{ status: 'completed', n: 3 }])
  })

  it('runs tasks an agent adds to its workflow, after their dependencies', async () => {
    const { id } = await acme.startWorkflow('planned')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.tasks.map((t) => t.key).sort()).toEqual(['merge', 'part-0', 'part-1', 'part-2', 'plan'])
    expect(wf.output).toEqual({ merge: { key: 'merge', parents: ['part-0', 'part-1', 'part-2'] } })
    expect(wf.tasks.find((t) => t.key === 'part-0')?.dependsOn).toEqual(['plan'])
    const order = ran.filter((r) => r.startsWith(id)).map((r) => r.slice(id.length + 1))
    expect(order.at(-1)).toBe('merge')
    const spawned = (await acme.history(id)).filter((h) => (h.data as { spawnedBy?: string }).spawnedBy)
    expect(spawned).toHaveLength(4)
  })

  it('fails a task whose spawned tasks are invalid, adding none of them', async () => {
    const { id } = await acme.startWorkflow('bad-plan')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(wf.tasks).toHaveLength(1)
    expect(wf.tasks[0]?.error).toMatchObject({ name: 'DefinitionError' })
    expect(wf.tasks[0]?.failures).toBe(1)
  })
})

describe('a sweep over many tenants', () => {
  it('passes over a tenant whose sweep fails, names it, and sweeps the others', async () => {
    const schemas = await testEngine({
      agents: [step],
      workflows: [],
      config: { isolationMode: 'schema-per-tenant' },
    })
    for (const id of ['broken', 'healthy']) await schemas.engine.createTenant({ id })
    // Behind the engine's back, one tenant's schema loses a table (a botched manual change).
    const c = new pg.Client({ connectionString: schemas.db.url })
    await c.connect()
    try {
      const { rows } = await c.query(`SELECT schema_name FROM equilateral.tenants WHERE id = 'broken'`)
      await c.query(`DROP TABLE ${pg.escapeIdentifier(rows[0].schema_name)}.agent_coordination CASCADE`)
    } finally {
      await c.end()
    }
    const report = await schemas.engine.sweep()
    expect(report.failed).toEqual([
      { tenantId: 'broken', message: expect.stringMatching(/agent_coordination.* does not exist/) },
    ])
    expect(report).toMatchObject({ tenants: 1, unreachable: [] })
  })
})
