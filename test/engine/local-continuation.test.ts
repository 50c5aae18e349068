// Local continuation: a completion that makes tasks ready claims some of them for its own worker in
// the same transaction, with no job. They must stay as recoverable and fenced as any claimed task,
// and leave part of a fan-out to other workers.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { claimTasks } from '../../src/flow/claim.ts'
import { completeTasks, type LocalContinuation } from '../../src/flow/complete.ts'
import { queueName, type TaskJobData } from '../../src/queue/boss.ts'
import { queryOnce } from '../helpers/db.ts'
import { fetchJob, settled, testEngine } from '../helpers/engine.ts'

const seen: Record<string, Record<string, unknown>> = {}
const step = defineAgent({
  id: 'step',
  handler: async (ctx) => {
    seen[`${ctx.workflowId}/${ctx.taskKey}`] = ctx.results
    return { key: ctx.taskKey }
  },
})
// Used only without a worker: its queue is fetched by hand.
const manual = defineAgent({ id: 'manual', handler: async () => null })

const chain = defineWorkflow({
  name: 'chain',
  tasks: [
    { key: 'a', agent: step },
    { key: 'b', agent: step, dependsOn: ['a'] },
    { key: 'c', agent: step, dependsOn: ['b'] },
  ],
})
const fan = defineWorkflow({
  name: 'fan',
  tasks: [
    { key: 'root', agent: step },
    ...['w', 'x', 'y', 'z'].map((key) => ({ key, agent: step, dependsOn: ['root'] })),
  ],
})
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'a', agent: manual },
    { key: 'b', agent: manual, dependsOn: ['a'] },
  ],
})

const { engine, db } = await testEngine({
  agents: [step, manual],
  workflows: [chain, fan, pair],
  // No heartbeat during these tests' few seconds: the sweeper is driven by hand.
  config: { heartbeatIntervalMs: 60_000 },
})
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

/** The workflow's task ids that ever had a pg-boss job. */
async function tasksWithJobs(workflowId: string): Promise<Set<string>> {
  const jobs = await engine.boss.findJobs<TaskJobData>(queueName('step'), { data: { w: workflowId } })
  return new Set(jobs.map((j) => j.data.k))
}

describe('without a worker running', () => {
  // Claims everything it is offered: the engine's side of the contract, the worker's choice aside.
  const takeAll: LocalContinuation = {
    workerId: 'local-worker',
    take: (ready) =>
      ready.map((r) => ({ queue: r.queue, taskId: r.taskId, attempt: r.attempt, versions: [1] })),
    giveBack: () => {},
  }

  it('fences the late completion of a locally claimed task the sweeper recovered', async () => {
    const { id } = await acme.startWorkflow('pair')
    const fetched = await fetchJob(engine, 'manual', id)
    await claimTasks(engine, acme.scope, [fetched], 'local-worker')
    const done = await completeTasks(
      engine,
      acme.scope,
      [{ job: fetched, taskId: fetched.taskId, workflowId: id, attempt: fetched.attempt, result: 'a' }],
      takeAll,
    )
    // b was claimed in a's completion: running for the worker, with no job at all.
    const [child] = done.claimedLocally
    if (!child) throw new Error('b was not claimed locally')
    expect(done.dispatched).toEqual([])
    expect(child).toMatchObject({ taskKey: 'b', results: { a: 'a' }, job: { jobId: null } })
    const [row] = await queryOnce(
      db.url,
      `SELECT status, worker_id, job_id, attempt FROM equilateral.agent_coordination WHERE id = $1`,
      [child.taskId],
    )
    expect(row).toEqual({
      status: 'running',
      worker_id: 'local-worker',
      job_id: null,
      attempt: child.attempt,
    })
    const jobs = await engine.boss.findJobs<TaskJobData>(queueName('manual'), { data: { w: id } })
    expect(jobs.map((j) => j.data.k)).toEqual([fetched.taskId])

    // While its worker keeps it alive, the sweeper leaves it alone although it has no job ...
    expect((await engine.sweep()).lost).toBe(0)
    expect((await acme.getWorkflow(id)).tasks[1]).toMatchObject({ status: 'running' })
    // ... and once its heartbeat goes stale (the worker hung), it is recovered with a new attempt.
    await queryOnce(
      db.url,
      `UPDATE equilateral.agent_coordination SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`,
      [child.taskId],
    )
    expect((await engine.sweep()).lost).toBe(1)
    const recovered = (await acme.getWorkflow(id)).tasks[1]
    expect(recovered).toMatchObject({ status: 'queued', attempt: child.attempt + 1, failures: 1 })

    // The hung worker's completion comes late: fenced, nothing written, nothing made ready.
    const late = await completeTasks(engine, acme.scope, [
      { job: child.job, taskId: child.taskId, workflowId: id, attempt: child.attempt, result: 'late' },
    ])
    expect(late.completed.size).toBe(0)
    const history = await acme.history(id)
    expect(history.filter((h) => h.taskId === child.taskId).map((h) => h.action)).toEqual([
      'task_created',
      'task_queued',
      'task_started',
      'task_lost',
      'task_retry_queued',
    ])
    expect((await acme.getWorkflow(id)).tasks[1]).toMatchObject({ status: 'queued', result: null })
    // The new attempt has a job like any retry (due after its backoff), and runs through the queue.
    const retries = await engine.boss.findJobs<TaskJobData>(queueName('manual'), { data: { w: id } })
    expect(retries.filter((j) => j.data.k === child.taskId).map((j) => j.data.a)).toEqual([child.attempt + 1])
  })
})

describe('with a worker', () => {
  it('runs a chain past its first task without jobs, one audit row per transition', async () => {
    await engine.startWorker()
    const { id } = await acme.startWorkflow('chain')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const ids = Object.fromEntries(wf.tasks.map((t) => [t.key, t.id]))
    // Only the first task was queued as a job; each next one was claimed by its parent's completion.
    expect(await tasksWithJobs(id)).toEqual(new Set([ids.a]))
    expect(seen[`${id}/c`]).toEqual({ b: { key: 'b' } })
    const history = await acme.history(id)
    for (const key of ['b', 'c']) {
      expect(history.filter((h) => h.taskId === ids[key]).map((h) => h.action)).toEqual([
        'task_created',
        'task_queued',
        'task_started',
        'task_completed',
      ])
    }
  })

  it('leaves half of a fan-out to the queue, for other workers', async () => {
    const { id } = await acme.startWorkflow('fan')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const children = wf.tasks.filter((t) => t.key !== 'root').map((t) => t.id)
    const queued = [...(await tasksWithJobs(id))].filter((t) => children.includes(t))
    expect(queued).toHaveLength(2)
  })
})

describe('ready tasks it does not claim', async () => {
  const first = defineAgent({ id: 'first', handler: async () => 1 })
  const second = defineAgent({ id: 'second', handler: async () => 2 })
  const handoff = defineWorkflow({
    name: 'handoff',
    tasks: [
      { key: 'a', agent: first },
      { key: 'b', agent: second, dependsOn: ['a'] },
    ],
  })
  // No poll within the test: a worker waiting for work only learns of it by a notification.
  const two = await testEngine({
    agents: [first, second],
    workflows: [handoff],
    config: { pollIntervalMs: 600_000 },
  })
  await two.engine.createTenant({ id: 'acme' })

  it("wake the worker serving them at once (the completing worker does not serve b's agent)", async () => {
    await two.engine.startWorker({ agents: [second] })
    await two.engine.startWorker({ agents: [first] })
    const { id } = await (await two.engine.tenant('acme')).startWorkflow('handoff')
    const wf = await settled(two.engine, 'acme', id)
    expect(wf.tasks.map((t) => [t.key, t.status, t.result])).toEqual([
      ['a', 'completed', 1],
      ['b', 'completed', 2],
    ])
  })
})

describe('turned off', async () => {
  const off = await testEngine({
    agents: [step],
    workflows: [chain],
    config: { localContinuation: false },
  })
  await off.engine.createTenant({ id: 'acme' })

  it('queues every ready task as a job', async () => {
    await off.engine.startWorker()
    const { id } = await (await off.engine.tenant('acme')).startWorkflow('chain')
    const wf = await settled(off.engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const jobs = await off.engine.boss.findJobs<TaskJobData>(queueName('step'), { data: { w: id } })
    expect(new Set(jobs.map((j) => j.data.k))).toEqual(new Set(wf.tasks.map((t) => t.id)))
  })
})
