// Operating workflows after the fact (issue 23): retry a failed or cancelled workflow from where it
// stopped, replay a workflow from one of its tasks, and redrive dead letters. Agent calls are
// counted, so "not run again" is what the agents saw, not what the rows say.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, OperationError, PermanentError } from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'

const calls = new Map<string, number>()
const callsOf = (workflowId: string, key: string) => calls.get(`${workflowId}/${key}`) ?? 0
const count = (workflowId: string, key: string) =>
  calls.set(`${workflowId}/${key}`, callsOf(workflowId, key) + 1)

/**
 * Inputs (`{ cause }`) whose `fragile` tasks fail permanently until the cause is fixed (removed from
 * here). By input, so a replay (which copies the input) sees the same cause.
 */
const broken = new Set<string>()
let causes = 0
/** Workflows whose `gate` task waits until released. */
const gates = new Map<string, () => void>()
const gateOpen = new Map<string, Promise<void>>()
const gateOf = (id: string) => {
  let p = gateOpen.get(id)
  if (!p) gateOpen.set(id, (p = new Promise<void>((resolve) => gates.set(id, resolve))))
  return p
}

const step = defineAgent({
  id: 'step',
  handler: async (ctx) => {
    count(ctx.workflowId, ctx.taskKey)
    return { step: ctx.taskKey, parents: ctx.results }
  },
})
const fragile = defineAgent({
  id: 'fragile',
  handler: async (ctx) => {
    count(ctx.workflowId, ctx.taskKey)
    if (broken.has((ctx.input as { cause: string }).cause)) throw new PermanentError('credential expired')
    return { fixed: ctx.taskKey }
  },
})
const gate = defineAgent({
  id: 'gate',
  handler: async (ctx) => {
    count(ctx.workflowId, ctx.taskKey)
    await Promise.race([
      gateOf(ctx.workflowId),
      new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
    ])
    return { passed: true }
  },
})

// root -> side -> mid (fragile) -> leaf.
const pipeline = defineWorkflow({
  name: 'pipeline',
  tasks: [
    { key: 'root', agent: step },
    { key: 'side', agent: step, dependsOn: ['root'] },
    { key: 'mid', agent: fragile, dependsOn: ['side'], maxAttempts: 3, backoffMs: 10 },
    { key: 'leaf', agent: step, dependsOn: ['mid'] },
  ],
})
// a -> b -> c, and a -> d: replaying from b runs b and c again, and neither a nor d.
const chain = defineWorkflow({
  name: 'chain',
  version: 2,
  tasks: [
    { key: 'a', agent: step },
    { key: 'b', agent: step, dependsOn: ['a'] },
    { key: 'c', agent: step, dependsOn: ['b'] },
    { key: 'd', agent: step, dependsOn: ['a'] },
  ],
})
const gated = defineWorkflow({
  name: 'gated',
  tasks: [
    { key: 'first', agent: step },
    { key: 'wait', agent: gate, dependsOn: ['first'], timeoutMs: 60_000 },
    { key: 'last', agent: step, dependsOn: ['wait'] },
  ],
})

const { engine } = await testEngine({
  agents: [step, fragile, gate],
  workflows: [pipeline, chain, gated],
})
await engine.createTenant({ id: 'acme' })
await engine.createTenant({ id: 'other' })
await engine.startWorker()
const acme = await engine.tenant('acme')
const other = await engine.tenant('other')

/** A pipeline whose `mid` failed for good; fix(id) removes the cause. */
const causeOf = new Map<string, string>()
const fix = (id: string) => broken.delete(causeOf.get(id) as string)
async function failedPipeline(): Promise<string> {
  const cause = `cause-${++causes}`
  broken.add(cause)
  const { id } = await acme.startWorkflow('pipeline', { cause })
  causeOf.set(id, cause)
  const wf = await settled(engine, 'acme', id)
  expect(wf.status).toBe('failed')
  return id
}

async function running(id: string, key: string) {
  for (;;) {
    const wf = await acme.getWorkflow(id)
    if (wf.tasks.find((t) => t.key === key)?.status === 'running') return
    await new Promise((r) => setTimeout(r, 20))
  }
}

describe('retryWorkflow', () => {
  it('runs a permanently failed workflow again from where it stopped: completed tasks do not run again', async () => {
    const id = await failedPipeline()
    const before = await acme.getWorkflow(id)
    expect(Object.fromEntries(before.tasks.map((t) => [t.key, t.status]))).toEqual({
      root: 'completed',
      side: 'completed',
      mid: 'failed',
      leaf: 'skipped',
    })
    fix(id)

    const result = await acme.retryWorkflow(id, { actor: 'ops@acme', requestKey: 'retry-1' })
    expect(result).toEqual({
      id,
      status: 'running',
      previousStatus: 'failed',
      tasksRetried: 2,
      tasksQueued: 1,
    })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.error).toBeNull()
    expect(wf.output).toEqual({ leaf: expect.objectContaining({ step: 'leaf' }) })
    // root and side ran once, in the first run; mid once per run; leaf once, in the retry.
    expect([callsOf(id, 'root'), callsOf(id, 'side'), callsOf(id, 'mid'), callsOf(id, 'leaf')]).toEqual([
      1, 1, 2, 1,
    ])
    const mid = wf.tasks.find((t) => t.key === 'mid')
    // A fresh attempt budget, and the attempt number goes on (earlier attempts stay fenced out).
    expect(mid).toMatchObject({ status: 'completed', failures: 0, attempt: 2 })
    expect(wf.tasks.find((t) => t.key === 'root')?.attempt).toBe(1)

    // The same request again answers the same and retries nothing (the workflow is completed now).
    expect(await acme.retryWorkflow(id, { actor: 'ops@acme', requestKey: 'retry-1' })).toEqual(result)
    const history = await acme.history(id)
    const retried = history.filter((h) => h.action === 'workflow_retried')
    expect(retried).toHaveLength(1)
    expect(retried[0]).toMatchObject({
      actor: 'ops@acme',
      data: { previousStatus: 'failed', tasks: 2, requestKey: 'retry-1' },
    })
    const taskRetries = history.filter((h) => h.action === 'task_retried')
    expect(taskRetries.map((h) => [h.data, h.actor])).toEqual(
      expect.arrayContaining([
        [{ key: 'mid', previousStatus: 'failed', attempt: 2, status: 'queued' }, 'ops@acme'],
        [{ key: 'leaf', previousStatus: 'skipped', attempt: 0, status: 'pending' }, 'ops@acme'],
      ]),
    )
    expect(taskRetries).toHaveLength(2)
    // The workflow's history reads in order: failed, retried, completed.
    const order = history.map((h) => h.action).filter((a) => a.startsWith('workflow_'))
    expect(order).toEqual(['workflow_started', 'workflow_failed', 'workflow_retried', 'workflow_completed'])
  })

  it('refuses a running or a completed workflow, and an unknown or another tenant’s one', async () => {
    const { id } = await acme.startWorkflow('gated')
    await running(id, 'wait')
    const refused = await acme.retryWorkflow(id, { actor: 'ops' }).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(OperationError)
    expect(refused).toMatchObject({ code: 'workflow_not_retryable', status: 'running' })
    gates.get(id)?.()
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
    expect(await errorCode(acme.retryWorkflow(id))).toBe('workflow_not_retryable')
    expect(
      (await acme.history(id)).filter((h) => h.action === 'workflow_retried' || h.action === 'task_retried'),
    ).toEqual([])

    expect(await errorCode(acme.retryWorkflow('00000000-0000-4000-8000-000000000000'))).toBe('not_found')
    const failed = await failedPipeline()
    expect(await errorCode(other.retryWorkflow(failed, { actor: 'intruder' }))).toBe('not_found')
    expect((await acme.getWorkflow(failed)).status).toBe('failed')
  })

  it('retries a cancelled workflow: the cancelled tasks run again, the completed one does not', async () => {
    const { id } = await acme.startWorkflow('gated')
    await running(id, 'wait')
    await acme.cancelWorkflow(id, { actor: 'ops' })
    const result = await acme.retryWorkflow(id, { actor: 'ops' })
    expect(result).toMatchObject({ previousStatus: 'cancelled', tasksRetried: 2, tasksQueued: 1 })
    await running(id, 'wait')
    gates.get(id)?.()
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect([callsOf(id, 'first'), callsOf(id, 'wait'), callsOf(id, 'last')]).toEqual([1, 2, 1])
  })

  it('two retries at once: with one request key both get the one retry; without, the second is refused', async () => {
    const keyed = await failedPipeline()
    const plain = await failedPipeline()
    const [a, b] = await Promise.all([
      acme.retryWorkflow(keyed, { actor: 'ann', requestKey: 'same-click' }),
      acme.retryWorkflow(keyed, { actor: 'ann', requestKey: 'same-click' }),
    ])
    expect(a).toEqual(b)
    const outcomes = await Promise.allSettled([
      acme.retryWorkflow(plain, { actor: 'ann' }),
      acme.retryWorkflow(plain, { actor: 'bob' }),
    ])
    expect(outcomes.map((o) => o.status).sort()).toEqual(['fulfilled', 'rejected'])
    expect(outcomes.find((o) => o.status === 'rejected')).toMatchObject({
      reason: { code: 'workflow_not_retryable', status: 'running' },
    })
    for (const id of [keyed, plain]) {
      const retried = (await acme.history(id)).filter((h) => h.action === 'workflow_retried')
      expect(retried).toHaveLength(1)
    }
    // Still broken when retried: both fail again, each having run mid once more.
    for (const id of [keyed, plain]) {
      expect((await settled(engine, 'acme', id)).status).toBe('failed')
      expect(callsOf(id, 'mid')).toBe(2)
    }
  })

  it('a request key names one request: reused for another workflow it is refused', async () => {
    const one = await failedPipeline()
    const two = await failedPipeline()
    await acme.retryWorkflow(one, { requestKey: 'shared-key' })
    expect(await errorCode(acme.retryWorkflow(two, { requestKey: 'shared-key' }))).toBe(
      'request_key_conflict',
    )
    expect((await acme.getWorkflow(two)).status).toBe('failed')
    fix(one)
    await settled(engine, 'acme', one)
  })
})

describe('replayWorkflow', () => {
  it('re-runs exactly the task and its descendants in a new workflow linked to the original', async () => {
    const { id } = await acme.startWorkflow('chain')
    const original = await settled(engine, 'acme', id)
    expect(original.status).toBe('completed')

    const replay = await acme.replayWorkflow(id, { from: 'b', actor: 'ops@acme', requestKey: 'replay-1' })
    expect(replay).toMatchObject({
      status: 'running',
      replayOf: id,
      from: 'b',
      type: 'chain',
      version: 2,
    })
    expect(replay.rerun.sort()).toEqual(['b', 'c'])
    expect(replay.reused.sort()).toEqual(['a', 'd'])
    expect(replay.id).not.toBe(id)
    const wf = await settled(engine, 'acme', replay.id)
    expect(wf).toMatchObject({ status: 'completed', type: 'chain', version: 2, replayOf: id })
    expect([
      callsOf(replay.id, 'a'),
      callsOf(replay.id, 'b'),
      callsOf(replay.id, 'c'),
      callsOf(replay.id, 'd'),
    ]).toEqual([0, 1, 1, 0])
    // The reused results are the original's, and b ran again with a's result as its parent.
    const byKey = (v: typeof wf, key: string) => v.tasks.find((t) => t.key === key)
    expect(byKey(wf, 'a')?.result).toEqual(byKey(original, 'a')?.result)
    expect(byKey(wf, 'd')?.result).toEqual(byKey(original, 'd')?.result)
    expect(byKey(wf, 'b')?.result).toEqual(byKey(original, 'b')?.result)
    expect(wf.output).toEqual(original.output)

    const history = await acme.history(replay.id)
    expect(history.find((h) => h.action === 'workflow_started')).toMatchObject({
      actor: 'ops@acme',
      data: { replayOf: id, from: 'b', type: 'chain', version: 2 },
    })
    const reused = history.filter((h) => h.action === 'task_reused')
    expect(reused.map((h) => [(h.data as { key: string }).key, h.actor]).sort()).toEqual([
      ['a', 'ops@acme'],
      ['d', 'ops@acme'],
    ])
    expect(reused.find((h) => (h.data as { key: string }).key === 'a')?.data).toMatchObject({
      reusedFrom: byKey(original, 'a')?.id,
    })
    expect((await acme.history(id)).filter((h) => h.action === 'workflow_replayed')).toEqual([
      expect.objectContaining({
        actor: 'ops@acme',
        data: { replay: replay.id, from: 'b', requestKey: 'replay-1' },
      }),
    ])
    // The same request answers the same workflow; no second replay.
    expect(await acme.replayWorkflow(id, { from: 'b', actor: 'ops@acme', requestKey: 'replay-1' })).toEqual(
      replay,
    )
    expect((await acme.listWorkflows({ type: 'chain' })).workflows).toHaveLength(2)
  })

  it('replays a failed workflow from its failed task', async () => {
    const id = await failedPipeline()
    fix(id)
    const replay = await acme.replayWorkflow(id, { from: 'mid', actor: 'ops' })
    expect(replay.rerun.sort()).toEqual(['leaf', 'mid'])
    expect(replay.reused.sort()).toEqual(['root', 'side'])
    const wf = await settled(engine, 'acme', replay.id)
    expect(wf.status).toBe('completed')
    expect([callsOf(replay.id, 'root'), callsOf(replay.id, 'mid'), callsOf(replay.id, 'leaf')]).toEqual([
      0, 1, 1,
    ])
    expect((await acme.getWorkflow(id)).status).toBe('failed')
  })

  it('refuses an unknown task key, an unknown workflow and another tenant’s workflow', async () => {
    const { id } = await acme.startWorkflow('chain')
    await settled(engine, 'acme', id)
    const chains = async () => (await acme.listWorkflows({ type: 'chain' })).workflows.length
    const before = await chains()
    const refused = await acme.replayWorkflow(id, { from: 'nope' }).catch((e: unknown) => e)
    expect(refused).toBeInstanceOf(OperationError)
    expect(refused).toMatchObject({ code: 'unknown_task' })
    expect(await errorCode(acme.replayWorkflow('00000000-0000-4000-8000-000000000000', { from: 'a' }))).toBe(
      'not_found',
    )
    expect(await errorCode(other.replayWorkflow(id, { from: 'b' }))).toBe('not_found')
    expect(await chains()).toBe(before) // nothing was started
    expect((await acme.history(id)).filter((h) => h.action === 'workflow_replayed')).toEqual([])
  })
})

describe('dead letters', () => {
  it('lists the tenant’s dead letters and redrives them once each', async () => {
    const ids = [await failedPipeline(), await failedPipeline()]
    const page = await acme.deadLetters({ agent: 'fragile', limit: 1 })
    expect(page.deadLetters).toHaveLength(1)
    expect(page.nextCursor).not.toBeNull()
    const rest = await acme.deadLetters({ agent: 'fragile', limit: 200, cursor: page.nextCursor as string })
    const listed = [...page.deadLetters, ...rest.deadLetters]
    for (const id of ids) {
      expect(listed).toContainEqual(
        expect.objectContaining({
          workflowId: id,
          workflowType: 'pipeline',
          taskKey: 'mid',
          agent: 'fragile',
          attempt: 1,
          error: expect.objectContaining({ message: 'credential expired' }),
        }),
      )
    }
    expect((await other.deadLetters()).deadLetters).toEqual([])
    expect(await errorCode(other.redrive({ taskId: listed[0]!.taskId }))).toBe('not_found')

    broken.clear() // every cause fixed: the earlier tests' dead letters are redriven too
    const total = listed.length
    const result = await acme.redrive({ agent: 'fragile' }, { actor: 'ops@acme' })
    expect(result.redriven).toHaveLength(total)
    expect(result.workflowsRetried).toBe(total)
    expect(result.more).toBe(false)
    // Redriving again finds nothing: each dead letter re-runs once.
    expect(await acme.redrive({ agent: 'fragile' }, { actor: 'ops@acme' })).toEqual({
      redriven: [],
      workflowsRetried: 0,
      more: false,
    })
    for (const id of ids) {
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      expect([callsOf(id, 'root'), callsOf(id, 'mid'), callsOf(id, 'leaf')]).toEqual([1, 2, 1])
      const history = await acme.history(id)
      expect(history.filter((h) => h.action === 'dead_letter_redriven')).toEqual([
        expect.objectContaining({ actor: 'ops@acme', data: { key: 'mid', attempt: 1 } }),
      ])
      expect(history.filter((h) => h.action === 'workflow_retried')).toEqual([
        expect.objectContaining({ actor: 'ops@acme' }),
      ])
    }
    expect((await acme.deadLetters({ agent: 'fragile' })).deadLetters).toEqual([])
  })

  it('redrives one dead letter by task id, idempotent on its request key', async () => {
    const id = await failedPipeline()
    const [letter] = (await acme.deadLetters({ agent: 'fragile' })).deadLetters.filter(
      (d) => d.workflowId === id,
    )
    fix(id)
    const result = await acme.redrive({ taskId: letter!.taskId }, { actor: 'ops', requestKey: 'redrive-1' })
    expect(result).toEqual({
      redriven: [{ taskId: letter!.taskId, workflowId: id }],
      workflowsRetried: 1,
      more: false,
    })
    expect(await acme.redrive({ taskId: letter!.taskId }, { actor: 'ops', requestKey: 'redrive-1' })).toEqual(
      result,
    )
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
    expect(callsOf(id, 'mid')).toBe(2)
    // No longer a dead letter: without the key, redriving it is "not found".
    expect(await errorCode(acme.redrive({ taskId: letter!.taskId }))).toBe('not_found')
    expect(await errorCode(acme.redrive({} as never))).toBe('invalid_input')
  })
})
