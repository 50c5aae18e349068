// Awaiting a workflow's end: result() resolves with the outputs or rejects with a typed error, and
// is woken by the NOTIFY of the statement that ended the workflow, not by polling: the fallback
// re-read is set to run once in 24 days here, so a wait that ends at all was woken.
import { describe, expect, it } from 'vitest'
import {
  type Json,
  defineAgent,
  defineWorkflow,
  NotFoundError,
  PermanentError,
  ResultWaitError,
  WorkflowCancelledError,
  WorkflowFailedError,
} from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

/** Tasks of `gate` wait until the test opens (or breaks) their workflow's gate. */
const gates = new Map<string, { open: (v: unknown) => void; fail: (e: Error) => void }>()
const gate = defineAgent({
  id: 'result-gate',
  handler: (ctx) =>
    new Promise<Json>((resolve, reject) => {
      gates.set(ctx.workflowId, { open: (v) => resolve(v as Json), fail: reject })
      ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))
    }),
})
const echo = defineAgent({ id: 'result-echo', handler: async (ctx) => ({ got: ctx.input }) })
const gated = defineWorkflow({
  name: 'gated',
  tasks: [
    { key: 'first', agent: echo },
    { key: 'held', agent: gate, dependsOn: ['first'], maxAttempts: 1 },
    { key: 'side', agent: echo },
  ],
})
const quick = defineWorkflow({ name: 'quick', tasks: [{ key: 'only', agent: echo }] })

const NEVER = 2_000_000_000
const { engine, db } = await testEngine({
  agents: [gate, echo],
  workflows: [gated, quick],
  // No fallback re-read while the LISTEN connection is up: only a notification can end a wait.
  config: { resultRecheckMs: NEVER },
})
await engine.createTenant({ id: 'acme' })
await engine.createTenant({ id: 'other' })
const acme = await engine.tenant('acme')
const other = await engine.tenant('other')
await engine.startWorker()

const gateOf = (id: string) => eventually(() => gates.get(id), 20_000, 25, `the gate of ${id}`)

describe('result()', () => {
  it('resolves with the outputs when the workflow completes, woken by its end', async () => {
    const started = await acme.startWorkflow('gated', { n: 1 })
    expect(JSON.parse(JSON.stringify(started))).toEqual({ id: started.id, created: true, status: 'running' })
    const result = started.result()
    await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
    ;(await gateOf(started.id)).open({ done: 'yes' })
    // The final tasks' results, by key; `first` has a dependent, so it is not an output.
    await expect(result).resolves.toEqual({ held: { done: 'yes' }, side: { got: { n: 1 } } })
    expect(engine.resultWaiters).toBe(0)
  })

  it('resolves at once for a workflow that completed before the call', async () => {
    const { id } = await acme.startWorkflow('quick', 'x')
    await acme.result(id)
    await expect(acme.result(id, { timeoutMs: 0 })).resolves.toEqual({ only: { got: 'x' } })
  })

  it('rejects with the failure when the workflow fails', async () => {
    const { id } = await acme.startWorkflow('gated', null)
    const result = acme.result(id)
    ;(await gateOf(id)).fail(new PermanentError('the gate broke'))
    const error = await result.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(WorkflowFailedError)
    expect(error).toMatchObject({
      code: 'workflow_failed',
      workflowId: id,
      error: { task: expect.any(String), agent: 'result-gate', error: { message: 'the gate broke' } },
    })
    // Ended before the call: the same rejection at once.
    await expect(acme.result(id, { timeoutMs: 0 })).rejects.toBeInstanceOf(WorkflowFailedError)
  })

  it('rejects with the reason when the workflow is cancelled', async () => {
    const { id } = await acme.startWorkflow('gated', null)
    const result = acme.result(id)
    await gateOf(id)
    await acme.cancelWorkflow(id, { reason: 'changed my mind' })
    const error = await result.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(WorkflowCancelledError)
    expect(error).toMatchObject({ code: 'workflow_cancelled', workflowId: id, reason: 'changed my mind' })
  })

  it('times out with a typed error and leaves the workflow running', async () => {
    const { id } = await acme.startWorkflow('gated', null)
    const g = await gateOf(id)
    const error = await acme.result(id, { timeoutMs: 50 }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ResultWaitError)
    expect(error).toMatchObject({ code: 'result_timeout', workflowId: id })
    expect((await acme.getWorkflow(id)).status).toBe('running')
    g.open('late')
    await expect(acme.result(id)).resolves.toMatchObject({ held: 'late' })
  })

  it('stops waiting when its signal aborts, and the workflow goes on', async () => {
    const { id } = await acme.startWorkflow('gated', null)
    const g = await gateOf(id)
    const controller = new AbortController()
    const result = acme.result(id, { signal: controller.signal })
    await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
    controller.abort(new Error('user left'))
    const error = await result.catch((e: unknown) => e)
    expect(error).toBeInstanceOf(ResultWaitError)
    expect(error).toMatchObject({ code: 'result_aborted', cause: new Error('user left') })
    expect(engine.resultWaiters).toBe(0)
    expect((await acme.getWorkflow(id)).status).toBe('running')
    await expect(acme.result(id, { signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'result_aborted',
    })
    g.open(null)
    await acme.result(id)
  })

  it('shares one LISTEN connection among all waiters', async () => {
    const runs = await Promise.all([1, 2, 3, 4, 5].map(() => acme.startWorkflow('gated', null)))
    const results = runs.map((r) => r.result())
    await eventually(() => (engine.resultWaiters === 5 ? true : undefined))
    const listening = await queryOnce<{ n: number }>(
      db.url,
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'equilateral-results'`,
    )
    expect(listening[0]?.n).toBe(1)
    for (const r of runs) (await gateOf(r.id)).open(r.id)
    const outputs = await Promise.all(results)
    expect(outputs.map((o) => o.held)).toEqual(runs.map((r) => r.id))
  })

  it("is not found for another tenant's workflow, or no workflow", async () => {
    const { id } = await acme.startWorkflow('quick', null)
    await expect(other.result(id, { timeoutMs: 1000 })).rejects.toBeInstanceOf(NotFoundError)
    await expect(acme.result('00000000-0000-4000-8000-000000000000')).rejects.toBeInstanceOf(NotFoundError)
    await expect(acme.result(id, { timeoutMs: -1 })).rejects.toMatchObject({ code: 'invalid_input' })
  })
})

// An engine whose waiters read again only when the LISTEN connection comes back: no periodic
// re-read, no polling while it is down.
const lonely = await testEngine({
  agents: [gate, echo],
  workflows: [gated, quick],
  config: { resultRecheckMs: NEVER, pollIntervalMs: NEVER },
})
await lonely.engine.createTenant({ id: 'acme' })
await lonely.engine.startWorker()

describe('result() when its LISTEN connection is lost', () => {
  it('reads again once the connection is back, so an end it did not hear still resolves the wait', async () => {
    const tenant = await lonely.engine.tenant('acme')
    const run = await tenant.startWorkflow('gated', null)
    const result = run.result()
    const { open } = await gateOf(run.id)
    await eventually(() => (lonely.engine.resultWaiters === 1 ? true : undefined))
    const database = new URL(lonely.db.url).pathname.slice(1)
    const listener = `SELECT pid FROM pg_stat_activity WHERE application_name = 'equilateral-results' AND datname = $1`
    await queryOnce(lonely.db.url, `SELECT pg_terminate_backend(pid) FROM (${listener}) l`, [database])
    await eventually(async () =>
      (await queryOnce(lonely.db.url, listener, [database])).length === 0 ? true : undefined,
    )
    // The workflow ends while nobody listens (the connection is tried again after a second).
    open('unheard')
    await expect(result).resolves.toMatchObject({ held: 'unheard' })
  })
})
