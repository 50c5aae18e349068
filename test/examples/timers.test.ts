// Durable timers tested with the test kit: an hour-long startAfter, a snooze and a retry's backoff
// pass in a moment with kit.advance() / kit.fireTimers(), judged by the database clock like in
// production, and nothing runs before its time.
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { createTestKit } from '../../src/testing.ts'
import { createTestDatabase } from '../helpers/db.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE

const draft = defineAgent({ id: 'draft-writer', handler: async () => ({ draft: 'release notes' }) })
const notify = defineAgent({
  id: 'notifier',
  handler: async (ctx) => ({ reminded: ctx.results['draft'] ?? null }),
})
// Waits for a quota to reset: the first attempt snoozes ten minutes, which costs no attempt.
const quota = defineAgent({
  id: 'quota-checker',
  handler: async (ctx) => {
    if (ctx.attempt === 1) return ctx.snooze(10 * MINUTE)
    return { ranOnAttempt: ctx.attempt }
  },
})
// Fails once (a flaky upstream), then succeeds; its task retries after a 5-minute backoff.
let calls = 0
const flaky = defineAgent({
  id: 'flaky-upstream',
  handler: async (ctx) => {
    calls++
    if (ctx.attempt === 1) throw new Error('upstream returned 503')
    return { ok: true, attempt: ctx.attempt }
  },
})

const reminder = defineWorkflow({
  name: 'reminder',
  tasks: [
    { key: 'draft', agent: draft },
    // An hour after the draft is written, remind the reviewer.
    { key: 'remind', agent: notify, dependsOn: ['draft'], startAfter: HOUR },
  ],
})
const quotaWait = defineWorkflow({ name: 'quota-wait', tasks: [{ key: 'call', agent: quota }] })
const retried = defineWorkflow({
  name: 'retried',
  tasks: [{ key: 'fetch', agent: flaky, maxAttempts: 3, backoffMs: 5 * MINUTE }],
})

const db = await createTestDatabase()
const kit = await createTestKit({
  databaseUrl: db.url,
  agents: [draft, notify, quota, flaky],
  workflows: [reminder, quotaWait, retried],
})
afterAll(async () => {
  await kit.close()
  await db.drop()
})

describe('durable timers with the test kit', () => {
  it('runs a task an hour after it became ready, once the hour has passed, and not before', async () => {
    const { id } = await kit.start('reminder', null)
    const ready = await kit.waitFor(id, {
      until: (wf) => wf.tasks.some((t) => t.key === 'remind' && t.status === 'queued'),
    })
    expect(ready.tasks.find((t) => t.key === 'draft')?.status).toBe('completed')
    const [timer] = await kit.pendingTimers(id)
    expect(timer).toMatchObject({ taskKey: 'remind', kind: 'start' })
    expect(timer?.dueInMs).toBeGreaterThan(59 * MINUTE)

    // Half an hour on: held back still, half an hour to go.
    expect(await kit.advance(30 * MINUTE)).toEqual({ fired: 0, pending: 1 })
    const half = await kit.get(id)
    expect(half.status).toBe('running')
    expect(half.tasks.find((t) => t.key === 'remind')).toMatchObject({ status: 'queued', attempt: 1 })
    const [left] = await kit.pendingTimers(id)
    expect(left?.dueInMs).toBeGreaterThan(29 * MINUTE)
    expect(left?.dueInMs).toBeLessThanOrEqual(30 * MINUTE)
    expect((await kit.audit(id)).count('task_started', 'remind')).toBe(0)

    // The rest of the hour: it runs at once.
    expect(await kit.advance(30 * MINUTE)).toEqual({ fired: 1, pending: 0 })
    const wf = await kit.waitFor(id, { status: 'completed' })
    expect(wf.output['remind']).toEqual({ reminded: { draft: 'release notes' } })
    const audit = await kit.audit(id)
    audit.expectSequence([
      'task_completed:draft',
      'task_queued:remind',
      'task_started:remind',
      'workflow_completed',
    ])
    expect(audit.expectExactlyOnce('task_queued', 'remind').data).toMatchObject({
      startAfter: expect.any(String),
    })
    expect(await kit.pendingTimers()).toEqual([])
  })

  it('wakes a snoozed agent when its time comes, without spending an attempt', async () => {
    const { id } = await kit.start('quota-wait', null)
    const snoozed = await kit.waitFor(id, {
      until: (wf) => wf.tasks[0]?.status === 'queued' && wf.tasks[0].attempt === 2,
    })
    expect(snoozed.tasks[0]).toMatchObject({ failures: 0 })
    const [timer] = await kit.pendingTimers(id)
    expect(timer?.dueInMs).toBeGreaterThan(9 * MINUTE)

    expect(await kit.fireTimers()).toEqual({ fired: 1, pending: 0 })
    const wf = await kit.waitFor(id, { status: 'completed' })
    expect(wf.output['call']).toEqual({ ranOnAttempt: 2 })
    expect(wf.tasks[0]).toMatchObject({ attempt: 2, failures: 0 })
    const audit = await kit.audit(id)
    expect(audit.expectExactlyOnce('task_snoozed').data).toMatchObject({ reason: 'snoozed for 600000 ms' })
    expect(audit.count('task_failed_attempt')).toBe(0)
  })

  it('holds a failed attempt’s retry back for its backoff', async () => {
    calls = 0
    const { id } = await kit.start('retried', null)
    await kit.waitFor(id, { until: (wf) => wf.tasks[0]?.status === 'queued' && wf.tasks[0].failures === 1 })
    expect(await kit.advance(4 * MINUTE)).toEqual({ fired: 0, pending: 1 })
    expect((await kit.get(id)).tasks[0]).toMatchObject({ status: 'queued', attempt: 2 })
    expect(calls).toBe(1)

    expect(await kit.advance(MINUTE)).toEqual({ fired: 1, pending: 0 })
    const wf = await kit.waitFor(id, { status: 'completed' })
    expect(wf.output['fetch']).toEqual({ ok: true, attempt: 2 })
    expect(calls).toBe(2)
    ;(await kit.audit(id)).expectSequence([
      'task_failed_attempt:fetch',
      'task_started:fetch',
      'task_completed:fetch',
    ])
    await kit.verifyAuditChain()
  })
})
