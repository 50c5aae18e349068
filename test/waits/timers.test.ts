// Durable timers on a real database: startAfter (a delay from becoming ready, or a time), a timer
// that outlives the worker process that set it, snooze (no attempt spent), and retry backoff, all
// judged by the database clock: the times below are the database's own timestamps.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { queueName } from '../../src/queue/boss.ts'
import { timerFlow } from '../fixtures/chaos-registry.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { workerProcesses } from '../helpers/processes.ts'

const step = defineAgent({ id: 'chaos-step', handler: async (ctx) => ({ key: ctx.taskKey }) })
const sleepy = defineAgent({
  id: 'sleepy',
  handler: async (ctx) => {
    if (ctx.attempt < 3) return ctx.snooze(400)
    return { attempt: ctx.attempt, version: ctx.agentVersion }
  },
})
const flaky = defineAgent({
  id: 'flaky-once',
  handler: async (ctx) => {
    if (ctx.attempt === 1) throw new Error('first attempt fails')
    return { attempt: ctx.attempt }
  },
})

const delayed = defineWorkflow({
  name: 'delayed',
  tasks: [
    { key: 'first', agent: step },
    { key: 'later', agent: step, dependsOn: ['first'], startAfter: 1500 },
  ],
})
const atTime = defineWorkflow<{ at: string }>({
  name: 'at-time',
  tasks: [{ key: 'then', agent: step, startAfter: (i) => i.at }],
})
const snoozing = defineWorkflow({ name: 'snoozing', tasks: [{ key: 'nap', agent: sleepy }] })
// Two dependents on timers: an hour after becoming ready, and at a time two hours out. Their
// parent's agent is one no worker runs while the sweeper test does (the worker process the first
// test leaves running has the chaos registry's agents), so its completion cannot race the test.
const later = defineAgent({ id: 'timer-later', handler: async () => null })
const parent = defineAgent({ id: 'timer-parent', handler: async () => null })
const timedDependents = defineWorkflow<{ at: string }>({
  name: 'timed-dependents',
  tasks: [
    { key: 'a', agent: parent },
    { key: 'in-an-hour', agent: later, dependsOn: ['a'], startAfter: 3_600_000 },
    { key: 'at-a-time', agent: later, dependsOn: ['a'], startAfter: (i) => i.at },
  ],
})
const localSnoozer = defineAgent({
  id: 'local-snoozer',
  handler: async (ctx) => ctx.snooze({ until: '2099-12-01T09:00:00' }),
})
const snoozingLocally = defineWorkflow({
  name: 'snoozing-locally',
  tasks: [{ key: 'nap', agent: localSnoozer }],
})
const retrying = defineWorkflow({
  name: 'retrying',
  tasks: [{ key: 'try', agent: flaky, backoffMs: 700 }],
})

const { engine, db } = await testEngine({
  agents: [step, sleepy, flaky, later, localSnoozer, parent],
  workflows: [delayed, atTime, snoozing, snoozingLocally, retrying, timerFlow, timedDependents],
})
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')
const workers = workerProcesses(db.appUrl)

/** The tasks' rows as the database has them (its own timestamps). */
async function rows(workflowId: string) {
  const list = await queryOnce(
    db.url,
    `SELECT task_key, status, attempt, failures, queued_at, started_at, completed_at, job_id, queue
     FROM equilateral.agent_coordination WHERE workflow_id = $1`,
    [workflowId],
  )
  return Object.fromEntries(list.map((r) => [r.task_key as string, r]))
}

/** The task's current job: its state, and whether it is held until exactly the task's start time. */
async function jobOf(workflowId: string, key: string) {
  const [job] = await queryOnce(
    db.url,
    `SELECT j.state, j.start_after = t.queued_at AS on_timer, j.start_after > now() AS pending,
       j.started_on >= j.start_after AS started_after
     FROM equilateral.agent_coordination t JOIN pgboss.job j ON j.name = t.queue AND j.id = t.job_id
     WHERE t.workflow_id = $1 AND t.task_key = $2`,
    [workflowId, key],
  )
  return job
}

describe('a timer set by a worker process that is killed', () => {
  it('fires on the next worker, no earlier than set, without a retry', async () => {
    const first = await workers.spawn()
    const { id } = await acme.startWorkflow('chaos-timer', null)
    await eventually(async () => ((await rows(id))['first']?.status === 'completed' ? true : undefined))
    // The dependent became ready in first's completion, with its timer 2 s out; kill the process now.
    await workers.stop(first, 'SIGKILL')
    const before = await rows(id)
    expect(before['later']).toMatchObject({ status: 'queued', attempt: 1 })
    expect(await jobOf(id, 'later')).toMatchObject({ state: 'created', on_timer: true, pending: true })
    await workers.spawn()
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const after = await rows(id)
    expect(after['later']).toMatchObject({ attempt: 1, failures: 0 })
    const waited =
      (after['later']?.queued_at as Date).getTime() - (after['first']?.completed_at as Date).getTime()
    expect(waited).toBeGreaterThanOrEqual(2000)
    expect((after['later']?.started_at as Date).getTime()).toBeGreaterThanOrEqual(
      (after['later']?.queued_at as Date).getTime(),
    )
  })
})

describe('timers in one process', () => {
  it('starts a task startAfter ms after it became ready, and says so in the audit trail', async () => {
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('delayed', null)
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      const r = await rows(id)
      const ready = (r['first']?.completed_at as Date).getTime()
      expect((r['later']?.queued_at as Date).getTime() - ready).toBeGreaterThanOrEqual(1500)
      expect((r['later']?.started_at as Date).getTime()).toBeGreaterThanOrEqual(
        (r['later']?.queued_at as Date).getTime(),
      )
      const queued = (await acme.history(id)).find(
        (h) =>
          h.action === 'task_queued' && h.taskId !== null && (h.data as { key?: string }).key === 'later',
      )
      expect(queued?.data).toMatchObject({ key: 'later', startAfter: expect.any(String) })
    } finally {
      await worker.stop()
    }
  })

  it('starts a task no earlier than a time computed from the input', async () => {
    const worker = await engine.startWorker()
    try {
      const [now] = await queryOnce(db.url, `SELECT (now() + interval '1200 milliseconds') AS at`)
      const at = (now?.at as Date).toISOString()
      const { id } = await acme.startWorkflow('at-time', { at })
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      const r = await rows(id)
      expect((r['then']?.started_at as Date).getTime()).toBeGreaterThanOrEqual(new Date(at).getTime())
    } finally {
      await worker.stop()
    }
  })

  it('lets an agent snooze without spending an attempt', async () => {
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('snoozing', null)
      const wf = await settled(engine, 'acme', id)
      expect(wf.status).toBe('completed')
      expect(wf.output['nap']).toEqual({ attempt: 3, version: 1 })
      // The default maxAttempts is 3: two snoozes and a run would exhaust it if they counted.
      expect(wf.tasks[0]).toMatchObject({ attempt: 3, failures: 0 })
      const history = await acme.history(id)
      const snoozes = history.filter((h) => h.action === 'task_snoozed')
      expect(snoozes).toHaveLength(2)
      expect(snoozes[0]?.data).toMatchObject({ attempt: 2, reason: 'snoozed for 400 ms' })
      expect(history.filter((h) => h.action.startsWith('task_failed'))).toHaveLength(0)
    } finally {
      await worker.stop()
    }
  })

  it('refuses a snooze until a time without a zone: the task fails, saying why', async () => {
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('snoozing-locally', null)
      // Snoozed (queued for its second attempt) or failed, whichever it does.
      const nap = await eventually(async () => {
        const r = (await rows(id))['nap']
        return r?.status === 'failed' || (r?.status === 'queued' && r.attempt === 2) ? r : undefined
      })
      expect(nap).toMatchObject({ status: 'failed', attempt: 1 })
      const wf = await acme.getWorkflow(id)
      expect(wf.status).toBe('failed')
      expect(wf.tasks[0]?.error).toMatchObject({
        code: 'invalid_input',
        message: expect.stringMatching(/"2099-12-01T09:00:00" has no time zone: a time needs a zone/),
      })
    } finally {
      await worker.stop()
    }
  })

  it('holds a retry back by its backoff on the database clock', async () => {
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('retrying', null)
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      const r = await rows(id)
      expect(r['try']).toMatchObject({ attempt: 2, failures: 1 })
      // The retry's job was held until exactly the time the database computed for the task.
      expect(await jobOf(id, 'try')).toMatchObject({
        state: 'completed',
        on_timer: true,
        started_after: true,
      })
    } finally {
      await worker.stop()
    }
  })
})

describe('the sweeper and timers', () => {
  it('queues a ready task that has no job no earlier than its startAfter', async () => {
    const at = new Date(Date.now() + 2 * 3600_000).toISOString()
    const { id } = await acme.startWorkflow('timed-dependents', { at })
    // Ready without a job (what the sweeper is there for): the dependents' count reaches 0 without
    // the transition that queues them.
    await queryOnce(
      db.url,
      `UPDATE equilateral.agent_coordination SET deps_remaining = 0 WHERE workflow_id = $1 AND task_key <> 'a'`,
      [id],
    )
    await engine.sweep()
    const r = await rows(id)
    expect(r['in-an-hour']).toMatchObject({ status: 'queued', failures: 0 })
    expect(r['at-a-time']).toMatchObject({ status: 'queued', failures: 0 })
    // Their jobs wait for their timers: none is runnable now.
    expect(await engine.boss.fetch(queueName('timer-later'))).toEqual([])
    expect(await jobOf(id, 'in-an-hour')).toMatchObject({ state: 'created', on_timer: true, pending: true })
    expect(await jobOf(id, 'at-a-time')).toMatchObject({ state: 'created', on_timer: true, pending: true })
    const [held] = await queryOnce(
      db.url,
      `SELECT bool_and(queued_at > now() + interval '59 minutes') AS an_hour_out,
         bool_or(queued_at = $2::timestamptz) AS at_the_time
       FROM equilateral.agent_coordination WHERE workflow_id = $1 AND task_key <> 'a'`,
      [id, at],
    )
    expect(held).toEqual({ an_hour_out: true, at_the_time: true })
    await acme.cancelWorkflow(id)
  })
})
