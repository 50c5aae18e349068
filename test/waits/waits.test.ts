// Wait tasks on a real database: approvals (approve, reject, time out), events (early, duplicate,
// matched by key, timed out with a declared result), and the refusals that write nothing.
import { readFileSync } from 'node:fs'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import {
  createEngine,
  DefinitionError,
  defineAgent,
  defineWorkflow,
  type Json,
  WaitError,
} from '../../src/index.ts'
import { heldAgent } from '../fixtures/workflows.ts'
import { agents, workflows } from '../../workers/registry.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

const example = JSON.parse(
  readFileSync(new URL('../../examples/deploy-feature.json', import.meta.url), 'utf8'),
) as Json

// A gate the test opens: the `slow` agent's task does not end until then.
let openGate: () => void = () => {}
let gate = new Promise<void>((r) => (openGate = r))
const slow = defineAgent({
  id: 'slow-step',
  handler: async () => {
    await gate
    return { slow: true }
  },
})
const echo = defineAgent({
  id: 'echo',
  handler: async (ctx) => ({ saw: ctx.results }),
})

const scanFlow = defineWorkflow<{ repo: string }>({
  name: 'scan-and-report',
  tasks: [
    { key: 'prepare', agent: slow },
    { key: 'scan', event: { name: 'scan.completed', match: (i) => i.repo }, dependsOn: ['prepare'] },
    { key: 'report', agent: echo, dependsOn: ['scan'] },
  ],
})
const twoScans = defineWorkflow<{ a: string; b: string }>({
  name: 'two-scans',
  tasks: [
    { key: 'scan-a', event: { name: 'scan.completed', match: (i) => i.a } },
    { key: 'scan-b', event: { name: 'scan.completed', match: (i) => i.b } },
    { key: 'report', agent: echo, dependsOn: ['scan-a', 'scan-b'] },
  ],
})
const quota = defineWorkflow({
  name: 'quota-wait',
  tasks: [
    {
      key: 'quota',
      event: { name: 'quota.reset', timeoutMs: 60_000, onTimeout: { result: { quota: 'default' } } },
    },
    { key: 'report', agent: echo, dependsOn: ['quota'] },
  ],
})
const guarded = defineWorkflow({
  name: 'guarded',
  tasks: [{ key: 'ok', approval: { approvers: ['alice', 'bob'] } }],
})

// Two approvals of one name, each with its own approver, each behind a step the test releases.
const holdA = heldAgent('hold-a')
const holdB = heldAgent('hold-b')
const twoGates = defineWorkflow({
  name: 'two-gates',
  tasks: [
    { key: 'before-a', agent: holdA.agent },
    { key: 'before-b', agent: holdB.agent },
    { key: 'a', approval: { name: 'gate', approvers: ['alice'] }, dependsOn: ['before-a'] },
    { key: 'b', approval: { name: 'gate', approvers: ['bob'] }, dependsOn: ['before-b'] },
  ],
})
// A wait for one key, and one for any key, of the same event.
const keyed = defineWorkflow({
  name: 'keyed',
  tasks: [
    { key: 'any', event: { name: 'build.done' } },
    { key: 'web', event: { name: 'build.done', match: 'web' } },
  ],
})
// A declared timeout result that is fine when defined, but over a smaller payload limit.
const bulky = defineWorkflow({
  name: 'bulky-default',
  tasks: [
    { key: 'w', event: { name: 'never', timeoutMs: 1, onTimeout: { result: { pad: 'x'.repeat(4000) } } } },
  ],
})

const { engine, db } = await testEngine({
  agents: [...agents, slow, echo, holdA.agent, holdB.agent],
  workflows: [...workflows, scanFlow, twoScans, quota, guarded, twoGates, keyed, bulky],
})
await engine.createTenant({ id: 'acme' })
await engine.createTenant({ id: 'umbrella' })
await engine.startWorker()
const acme = await engine.tenant('acme')

async function taskStatus(workflowId: string, key: string): Promise<string | undefined> {
  const wf = await acme.getWorkflow(workflowId)
  return wf.tasks.find((t) => t.key === key)?.status
}

async function waitingFor(workflowId: string, key: string): Promise<void> {
  await eventually(
    async () => ((await taskStatus(workflowId, key)) === 'waiting' ? true : undefined),
    20_000,
    25,
    `task ${key} waiting`,
  )
}

/** Brings every timer of the test database due now: what the test kit's fireTimers() does. */
async function fireTimers(): Promise<void> {
  await queryOnce(
    db.url,
    `UPDATE equilateral.agent_coordination SET wait_deadline = now() WHERE status = 'waiting' AND wait_deadline > now()`,
  )
  await queryOnce(
    db.url,
    `UPDATE pgboss.job SET start_after = now() WHERE state = 'created' AND start_after > now()`,
  )
}

describe('approvals: deploy-feature-approved', () => {
  it('deploys once the release manager approves, with the decision in the audit trail', async () => {
    const { id } = await acme.startWorkflow('deploy-feature-approved', example)
    await waitingFor(id, 'release')
    expect(await taskStatus(id, 'deploy')).toBe('pending')
    const decided = await acme.decide(id, {
      name: 'release',
      approved: true,
      approver: 'release-manager@acme.test',
      comment: 'scan and tests are clean',
    })
    expect(decided).toMatchObject({ status: 'consumed', taskStatus: 'completed' })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const release = wf.tasks.find((t) => t.key === 'release')
    expect(release?.result).toEqual({
      approved: true,
      approver: 'release-manager@acme.test',
      comment: 'scan and tests are clean',
    })
    expect(wf.output['deploy']).toMatchObject({ service: 'storefront-text', environment: 'staging' })
    const history = await acme.history(id)
    const decision = history.find((h) => h.action === 'approval_decided')
    expect(decision).toMatchObject({
      actor: 'release-manager@acme.test',
      taskId: release?.id,
      data: { name: 'release', approved: true, consumed: true },
    })
    // The decision, the approval's completion and the deploy being queued: one transaction.
    const actions = history.map((h) => h.action)
    expect(actions.indexOf('approval_decided')).toBeLessThan(actions.lastIndexOf('task_completed'))
    const [tx] = await queryOnce(
      db.url,
      `SELECT count(DISTINCT txid)::int AS n FROM equilateral.agent_audit_log
       WHERE workflow_id = $1 AND (action_type = 'approval_decided'
         OR (action_type = 'task_completed' AND task_id = $2)
         OR (action_type = 'task_queued' AND task_id = $3))`,
      [id, release?.id, wf.tasks.find((t) => t.key === 'deploy')?.id],
    )
    expect(tx?.n).toBe(1)
  })

  it('fails the workflow with the approver’s reason on a rejection, and never deploys', async () => {
    const { id } = await acme.startWorkflow('deploy-feature-approved', example)
    await waitingFor(id, 'release')
    await acme.decide(id, { name: 'release', approved: false, approver: 'cto', comment: 'code freeze' })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(wf.error).toMatchObject({
      error: {
        name: 'ApprovalRejected',
        code: 'approval_rejected',
        message: 'approval "release" rejected by cto: code freeze',
      },
    })
    expect(wf.tasks.find((t) => t.key === 'deploy')?.status).toBe('skipped')
    // A rejection is a decision, not a poison task: nothing goes to the dead-letter queue.
    const dead = await queryOnce(
      db.url,
      `SELECT 1 FROM pgboss.job WHERE name = 'eq/dead-letter' AND data->>'w' = $1`,
      [id],
    )
    expect(dead).toHaveLength(0)
  })

  it('fails the workflow when nobody decides before the timeout (its declared outcome)', async () => {
    const { id } = await acme.startWorkflow('deploy-feature-approved', example)
    await waitingFor(id, 'release')
    const [row] = await queryOnce(
      db.url,
      `SELECT extract(epoch FROM wait_deadline - started_at)::int AS seconds
       FROM equilateral.agent_coordination WHERE workflow_id = $1 AND task_key = 'release'`,
      [id],
    )
    expect(row?.seconds).toBe(24 * 3600)
    await fireTimers()
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    expect(wf.error).toMatchObject({
      error: { name: 'WaitTimedOut', message: 'approval "release" got no decision within 86400000 ms' },
    })
    expect((await acme.history(id)).map((h) => h.action)).toContain('task_wait_timed_out')
    // A decision after the timeout is refused: the workflow has ended.
    await expect(
      acme.decide(id, { name: 'release', approved: true, approver: 'late' }),
    ).rejects.toMatchObject({
      code: 'workflow_not_running',
    })
  })

  it('takes decisions only from the named approvers', async () => {
    const { id } = await acme.startWorkflow('guarded', null)
    await waitingFor(id, 'ok')
    await expect(acme.decide(id, { name: 'ok', approved: true, approver: 'mallory' })).rejects.toBeInstanceOf(
      WaitError,
    )
    expect(await taskStatus(id, 'ok')).toBe('waiting')
    await acme.decide(id, { name: 'ok', approved: true, approver: 'bob' })
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
  })
})

describe('events', () => {
  it('keeps an event that arrives before its task waits, and consumes it when the task starts waiting', async () => {
    gate = new Promise((r) => (openGate = r))
    const { id } = await acme.startWorkflow('scan-and-report', { repo: 'storefront' })
    await eventually(async () => ((await taskStatus(id, 'prepare')) === 'running' ? true : undefined))
    const early = await acme.sendEvent(id, {
      eventId: 'scan-1',
      name: 'scan.completed',
      key: 'storefront',
      payload: { findings: 0 },
      actor: 'scanner-webhook',
    })
    expect(early).toMatchObject({ status: 'kept', taskStatus: 'pending' })
    openGate()
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.tasks.find((t) => t.key === 'scan')?.result).toEqual({ findings: 0 })
    expect(wf.output['report']).toEqual({ saw: { scan: { findings: 0 } } })
    const history = await acme.history(id)
    expect(history.find((h) => h.action === 'event_received')).toMatchObject({
      actor: 'scanner-webhook',
      data: { eventId: 'scan-1', name: 'scan.completed', key: 'storefront', consumed: false },
    })
    // It never waited: armed and completed by the kept event in one step.
    expect(history.filter((h) => h.action === 'task_waiting')).toHaveLength(1)
  })

  it('delivers a duplicate event once, and refuses the same id with other contents', async () => {
    gate = Promise.resolve()
    const { id } = await acme.startWorkflow('scan-and-report', { repo: 'api' })
    await waitingFor(id, 'scan')
    const event = { eventId: 'scan-7', name: 'scan.completed', key: 'api', payload: { findings: 2 } }
    // Ten deliveries at once, as a retrying webhook might.
    const results = await Promise.all(Array.from({ length: 10 }, () => acme.sendEvent(id, event)))
    expect(results.filter((r) => r.status === 'consumed')).toHaveLength(1)
    expect(results.filter((r) => r.status === 'duplicate')).toHaveLength(9)
    expect(new Set(results.map((r) => r.taskId)).size).toBe(1)
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const again = await acme.sendEvent(id, event)
    expect(again).toMatchObject({ status: 'duplicate', taskStatus: 'completed' })
    await expect(acme.sendEvent(id, { ...event, payload: { findings: 3 } })).rejects.toMatchObject({
      code: 'event_conflict',
    })
    const history = await acme.history(id)
    expect(history.filter((h) => h.action === 'event_received')).toHaveLength(1)
    expect(
      history.filter((h) => h.action === 'task_completed' && h.taskId === results[0]?.taskId),
    ).toHaveLength(1)
  })

  it('routes events by their match key', async () => {
    const { id } = await acme.startWorkflow('two-scans', { a: 'web', b: 'db' })
    await waitingFor(id, 'scan-a')
    await waitingFor(id, 'scan-b')
    await acme.sendEvent(id, { eventId: 'b', name: 'scan.completed', key: 'db', payload: { repo: 'db' } })
    expect(await taskStatus(id, 'scan-b')).toBe('completed')
    expect(await taskStatus(id, 'scan-a')).toBe('waiting')
    await expect(
      acme.sendEvent(id, { eventId: 'c', name: 'scan.completed', key: 'mobile', payload: null }),
    ).rejects.toMatchObject({ code: 'no_such_wait' })
    await acme.sendEvent(id, { eventId: 'a', name: 'scan.completed', key: 'web', payload: { repo: 'web' } })
    const wf = await settled(engine, 'acme', id)
    expect(wf.output['report']).toEqual({ saw: { 'scan-a': { repo: 'web' }, 'scan-b': { repo: 'db' } } })
  })

  it('completes a timed-out wait with its declared result', async () => {
    const { id } = await acme.startWorkflow('quota-wait', null)
    await waitingFor(id, 'quota')
    await fireTimers()
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.output['report']).toEqual({ saw: { quota: { quota: 'default' } } })
  })

  it('times out a wait whose timer job was lost, from the sweeper', async () => {
    const { id } = await acme.startWorkflow('quota-wait', null)
    await waitingFor(id, 'quota')
    await queryOnce(db.url, `DELETE FROM pgboss.job WHERE name = 'eq/wait' AND data->>'w' = $1`, [id])
    await queryOnce(
      db.url,
      `UPDATE equilateral.agent_coordination SET wait_deadline = now() - interval '1 second' WHERE workflow_id = $1 AND task_key = 'quota'`,
      [id],
    )
    const report = await engine.sweep()
    expect(report.waitsExpired).toBe(1)
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
  })

  it('refuses what nothing waits for, leaving no trace; another tenant cannot even see the workflow', async () => {
    const { id } = await acme.startWorkflow('two-scans', { a: 'x', b: 'y' })
    await waitingFor(id, 'scan-a')
    await waitingFor(id, 'scan-b')
    const before = await acme.history(id)
    await expect(
      acme.sendEvent(id, { eventId: 'e', name: 'deploy.done', payload: null }),
    ).rejects.toMatchObject({
      code: 'no_such_wait',
    })
    await expect(acme.decide(id, { name: 'scan-a', approved: true, approver: 'x' })).rejects.toMatchObject({
      code: 'no_such_wait',
    })
    await expect(acme.sendEvent(id, { eventId: '', name: 'scan.completed', key: 'x' })).rejects.toMatchObject(
      {
        code: 'invalid_input',
      },
    )
    const umbrella = await engine.tenant('umbrella')
    await expect(
      umbrella.sendEvent(id, { eventId: 'u', name: 'scan.completed', key: 'x', payload: null }),
    ).rejects.toMatchObject({ code: 'not_found' })
    expect(await acme.history(id)).toEqual(before)
    const kept = await queryOnce(db.url, 'SELECT 1 FROM equilateral.workflow_events WHERE workflow_id = $1', [
      id,
    ])
    expect(kept).toHaveLength(0)
    await acme.cancelWorkflow(id)
  })
})

describe('several waits of one name', () => {
  it('keeps a decision for the approval it was decided for: another approval of the same name never takes it', async () => {
    const { id } = await acme.startWorkflow('two-gates', null)
    // Alice decides early: only task a names her, so the decision is kept for a.
    const kept = await acme.decide(id, { name: 'gate', approved: true, approver: 'alice' })
    const a = (await acme.getWorkflow(id)).tasks.find((t) => t.key === 'a')
    expect(kept).toMatchObject({ status: 'kept', taskId: a?.id })
    // b starts waiting first; it does not take alice's decision, which is not hers to give.
    holdB.release()
    await waitingFor(id, 'b')
    // a already has alice's decision, and she is no approver of b: refused, and b still waits.
    await expect(
      acme.decide(id, { name: 'gate', approved: true, approver: 'alice', eventId: 'again' }),
    ).rejects.toMatchObject({ code: 'not_an_approver' })
    expect(await taskStatus(id, 'b')).toBe('waiting')
    // Carol is nobody's approver.
    await expect(acme.decide(id, { name: 'gate', approved: true, approver: 'carol' })).rejects.toMatchObject({
      code: 'not_an_approver',
    })
    // a waits at last, and takes the decision kept for it; bob decides b.
    holdA.release()
    await eventually(async () => ((await taskStatus(id, 'a')) === 'completed' ? true : undefined))
    expect(await acme.decide(id, { name: 'gate', approved: true, approver: 'bob' })).toMatchObject({
      status: 'consumed',
      taskStatus: 'completed',
    })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(
      Object.fromEntries(wf.tasks.filter((t) => t.key.length === 1).map((t) => [t.key, t.result])),
    ).toEqual({
      a: { approved: true, approver: 'alice' },
      b: { approved: true, approver: 'bob' },
    })
  })

  it('gives a keyed event to the wait for that key before the wait that takes any key', async () => {
    for (let i = 0; i < 5; i++) {
      const { id } = await acme.startWorkflow('keyed', null)
      await waitingFor(id, 'any')
      await waitingFor(id, 'web')
      const web = (await acme.getWorkflow(id)).tasks.find((t) => t.key === 'web')
      expect(
        await acme.sendEvent(id, { eventId: `w${i}`, name: 'build.done', key: 'web', payload: { i } }),
      ).toMatchObject({ status: 'consumed', taskId: web?.id })
      expect(await taskStatus(id, 'any')).toBe('waiting')
      await acme.cancelWorkflow(id)
    }
  })
})

describe('declared timeout results', () => {
  it('refuses, when the workflow is defined, a result PostgreSQL could not store', () => {
    const define = (result: Json) =>
      defineWorkflow({
        name: 'bad-default',
        tasks: [{ key: 'w', event: { name: 'e', timeoutMs: 1000, onTimeout: { result } } }],
      })
    let deep: Json = 1
    for (let i = 0; i < 70; i++) deep = { d: deep }
    expect(() => define({ note: 'a\u0000b' })).toThrow(DefinitionError)
    expect(() => define({ note: 'a\u0000b' })).toThrow(
      /task "w" onTimeout\.result\.note contains a NUL character/,
    )
    expect(() => define(deep)).toThrow(/onTimeout\.result(\.d)+ is nested deeper than 64 levels/)
    expect(() =>
      defineWorkflow({ name: 'bad-approver', tasks: [{ key: 'g', approval: { approvers: ['a\u0000'] } }] }),
    ).toThrow(/task "g" approvers\[0\] contains a NUL character/)
  })

  it('refuses to start a workflow whose declared result is over the payload limit, and fails a timeout whose result no longer fits', async () => {
    const small = await testEngine({ agents: [echo], workflows: [bulky], config: { maxPayloadBytes: 1024 } })
    await small.engine.createTenant({ id: 'acme' })
    const tiny = await small.engine.tenant('acme')
    await expect(tiny.startWorkflow('bulky-default', null)).rejects.toMatchObject({
      code: 'invalid_input',
      path: '$.tasks.w.onTimeout.result',
    })
    expect(await queryOnce(small.db.url, 'SELECT 1 FROM equilateral.workflows')).toHaveLength(0)

    // Started by a process with the default limit, timed out by one whose limit is lower (it was
    // lowered since): the task fails with a readable error instead of its timer failing for ever.
    const big = await createEngine({
      connectionString: small.db.appUrl,
      adminConnectionString: small.db.url,
      agents: [echo],
      workflows: [bulky],
      log: pino({ level: 'silent' }),
      supervise: false,
    })
    try {
      const { id } = await (await big.tenant('acme')).startWorkflow('bulky-default', null)
      await small.engine.startWorker()
      const wf = await settled(small.engine, 'acme', id)
      expect(wf.status).toBe('failed')
      expect(wf.error).toMatchObject({
        error: {
          name: 'InvalidTimeoutResult',
          code: 'invalid_result',
          message: expect.stringMatching(
            /^event "never" timed out, and its declared result cannot be stored: .* over the limit of 1024 bytes$/,
          ),
        },
      })
    } finally {
      await big.close()
    }
  })
})
