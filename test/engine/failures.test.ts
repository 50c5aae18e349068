// Failures: retries with backoff, final failure with skip propagation and a dead-letter job,
// timeouts through the AbortSignal, cancellation, and results PostgreSQL would reject.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { DEAD_LETTER_QUEUE } from '../../src/queue/boss.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

const calls = new Map<string, number>()
const count = (key: string) => {
  const n = (calls.get(key) ?? 0) + 1
  calls.set(key, n)
  return n
}

const flaky = defineAgent<{ failTimes: number }>({
  id: 'flaky',
  handler: async (ctx) => {
    const n = count(`${ctx.workflowId}/${ctx.taskKey}`)
    if (n <= ctx.data.failTimes) throw new Error(`boom ${n}`)
    return { ok: n, key: ctx.idempotencyKey }
  },
})
const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ ok: ctx.taskKey }) })
const permanent = defineAgent({
  id: 'permanent',
  handler: async (ctx) => {
    count(`${ctx.workflowId}/${ctx.taskKey}`)
    throw new PermanentError('no point retrying')
  },
})
const thrower = defineAgent({
  id: 'thrower',
  handler: async () => {
    throw { weird: 'not an error' } // eslint-disable-line @typescript-eslint/only-throw-error
  },
})
const aborted: string[] = []
const slow = defineAgent({
  id: 'slow',
  handler: async (ctx) => {
    await new Promise((resolve, reject) => {
      const t = setTimeout(resolve, 30_000)
      ctx.signal.addEventListener('abort', () => {
        clearTimeout(t)
        aborted.push(`${ctx.workflowId}/${ctx.taskKey}:${(ctx.signal.reason as Error).name}`)
        reject(ctx.signal.reason)
      })
    })
    return null
  },
})
const badResult = defineAgent({ id: 'bad-result', handler: async () => ({ text: 'nul \u0000 inside' }) })

const retrying = defineWorkflow({
  name: 'retrying',
  tasks: [
    { key: 'first', agent: flaky, data: { failTimes: 2 }, maxAttempts: 3, backoffMs: 10 },
    { key: 'after', agent: ok, dependsOn: ['first'] },
  ],
})
const failing = defineWorkflow({
  name: 'failing',
  tasks: [
    { key: 'root', agent: ok },
    {
      key: 'doomed',
      agent: flaky,
      data: { failTimes: 99 },
      maxAttempts: 2,
      backoffMs: 10,
      dependsOn: ['root'],
    },
    { key: 'child', agent: ok, dependsOn: ['doomed'] },
    { key: 'grandchild', agent: ok, dependsOn: ['child'] },
  ],
})
const perm = defineWorkflow({ name: 'perm', tasks: [{ key: 'p', agent: permanent, maxAttempts: 5 }] })
const weird = defineWorkflow({ name: 'weird', tasks: [{ key: 'w', agent: thrower, maxAttempts: 1 }] })
const timing = defineWorkflow({
  name: 'timing',
  tasks: [{ key: 's', agent: slow, timeoutMs: 200, maxAttempts: 1 }],
})
const cancellable = defineWorkflow({
  name: 'cancellable',
  tasks: [
    { key: 'long', agent: slow, timeoutMs: 60_000 },
    { key: 'next', agent: ok, dependsOn: ['long'] },
  ],
})
const bad = defineWorkflow({ name: 'bad', tasks: [{ key: 'b', agent: badResult, maxAttempts: 3 }] })
// `slowFail` is still running when its sibling fails the workflow; then its own attempt fails.
// The sibling fails only once slowFail runs (else slowFail would merely be skipped).
let failSlow: () => void = () => {}
let slowStarted: () => void = () => {}
const slowRunning = new Promise<void>((resolve) => (slowStarted = resolve))
const slowFailer = defineAgent({
  id: 'slow-failer',
  handler: async () => {
    const failed = new Promise<void>((resolve) => (failSlow = resolve))
    slowStarted()
    await failed
    throw new Error('late failure')
  },
})
const lateDoomed = defineAgent({
  id: 'late-doomed',
  handler: async () => {
    await slowRunning
    throw new PermanentError('no point retrying')
  },
})
const lateFailure = defineWorkflow({
  name: 'late-failure',
  tasks: [
    { key: 'slowFail', agent: slowFailer, maxAttempts: 5, backoffMs: 10 },
    { key: 'doomed', agent: lateDoomed },
    { key: 'after', agent: ok, dependsOn: ['slowFail'] },
  ],
})

const { engine } = await testEngine({
  agents: [flaky, ok, permanent, thrower, slow, badResult, slowFailer, lateDoomed],
  workflows: [retrying, failing, perm, weird, timing, cancellable, bad, lateFailure],
})
await engine.createTenant({ id: 'acme' })
await engine.startWorker()
const acme = await engine.tenant('acme')

describe('failures', () => {
  it('retries a failing task with its policy and then carries on', async () => {
    const { id } = await acme.startWorkflow('retrying')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const first = wf.tasks.find((t) => t.key === 'first')
    expect(first).toMatchObject({ status: 'completed', attempt: 3, failures: 2 })
    // each attempt gets its own idempotency key
    expect(first?.result).toEqual({ ok: 3, key: `${first?.id}:3` })
    const actions = (await acme.history(id)).filter((h) => h.taskId === first?.id).map((h) => h.action)
    expect(actions).toEqual([
      'task_queued',
      'task_started',
      'task_failed_attempt',
      'task_retry_queued',
      'task_started',
      'task_failed_attempt',
      'task_retry_queued',
      'task_started',
      'task_completed',
    ])
  })

  it('fails the task after its last attempt, fails the workflow, skips what can no longer run, dead-letters the job', async () => {
    const { id } = await acme.startWorkflow('failing')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    const status = Object.fromEntries(wf.tasks.map((t) => [t.key, t.status]))
    expect(status).toEqual({ root: 'completed', doomed: 'failed', child: 'skipped', grandchild: 'skipped' })
    expect(calls.get(`${id}/doomed`)).toBe(2)
    expect(wf.error).toMatchObject({ error: { message: 'boom 2' } })
    const dead = await eventually(async () => {
      const jobs = await engine.boss.findJobs(DEAD_LETTER_QUEUE, { data: { w: id } })
      return jobs.length > 0 ? jobs : undefined
    })
    expect(dead[0]?.data).toMatchObject({ t: 'acme', w: id, agent: 'flaky' })
    const history = await acme.history(id)
    expect(history.filter((h) => h.action === 'task_skipped')).toHaveLength(2)
    expect(history.filter((h) => h.action === 'workflow_failed')).toHaveLength(1)
  })

  it('does not retry a PermanentError', async () => {
    const { id } = await acme.startWorkflow('perm')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(calls.get(`${id}/p`)).toBe(1)
  })

  it('records a thrown non-Error value as the error', async () => {
    const { id } = await acme.startWorkflow('weird')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(wf.tasks[0]?.error).toEqual({ name: 'NonErrorThrown', message: '{"weird":"not an error"}' })
  })

  it('aborts an agent through its signal when its task times out', async () => {
    const { id } = await acme.startWorkflow('timing')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(aborted).toContain(`${id}/s:TimeoutError`)
    expect(wf.tasks[0]?.error).toMatchObject({ name: 'TimeoutError' })
  })

  it('cancels a workflow: queued work stops, the running agent is told through its signal', async () => {
    const { id } = await acme.startWorkflow('cancellable')
    await eventually(async () =>
      (await acme.getWorkflow(id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    const result = await acme.cancelWorkflow(id, { reason: 'changed my mind', actor: 'test' })
    expect(result).toEqual({ cancelled: true, status: 'cancelled', tasksCancelled: 2 })
    await eventually(async () => (aborted.includes(`${id}/long:AbortError`) ? true : undefined))
    const wf = await acme.getWorkflow(id)
    expect(wf.tasks.map((t) => t.status)).toEqual(['cancelled', 'cancelled'])
    expect(await acme.cancelWorkflow(id)).toEqual({
      cancelled: false,
      status: 'cancelled',
      tasksCancelled: 0,
    })
    const history = await acme.history(id)
    expect(history.filter((h) => h.action === 'workflow_cancelled')[0]?.actor).toBe('test')
    expect(history.some((h) => h.action === 'task_completed')).toBe(false)
  })

  it('fails a task whose result PostgreSQL would reject, without retrying it forever', async () => {
    const { id } = await acme.startWorkflow('bad')
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(wf.tasks[0]).toMatchObject({ status: 'failed', failures: 1 })
    expect(wf.tasks[0]?.error).toMatchObject({ name: 'InvalidInputError' })
  })

  it('does not retry an attempt that fails after its workflow has failed: the task ends failed', async () => {
    const { id } = await acme.startWorkflow('late-failure')
    await eventually(async () => ((await acme.getWorkflow(id)).status === 'failed' ? true : undefined))
    failSlow()
    const wf = await eventually(async () => {
      const view = await acme.getWorkflow(id)
      return view.tasks.every((t) => ['completed', 'failed', 'skipped', 'cancelled'].includes(t.status))
        ? view
        : undefined
    })
    const status = Object.fromEntries(wf.tasks.map((t) => [t.key, t.status]))
    expect(status).toEqual({ slowFail: 'failed', doomed: 'failed', after: 'skipped' })
    expect(wf.tasks.find((t) => t.key === 'slowFail')).toMatchObject({ attempt: 1, failures: 1 })
    const actions = (await acme.history(id)).map((h) => h.action)
    expect(actions.filter((a) => a === 'workflow_failed')).toHaveLength(1)
    expect(actions).not.toContain('task_retry_queued')
  })
})
