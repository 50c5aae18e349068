// The test kit itself: two kits (two tenants) on one database, where firing or advancing one kit's
// timers leaves the other's exactly where they were (rows and pg-boss jobs, as the database owner
// sees them); the sweeper pass of a kit is its tenant's; and the kit's failures say what happened.
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { createTestKit } from '../../src/testing.ts'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE

const step = defineAgent({ id: 'kit-step', handler: async (ctx) => ({ ran: ctx.taskKey }) })
const held = defineWorkflow({ name: 'held', tasks: [{ key: 'later', agent: step, startAfter: HOUR }] })
const gate = defineWorkflow({
  name: 'gate',
  tasks: [
    { key: 'ok', approval: { timeoutMs: HOUR, onTimeout: { result: { approved: 'by default' } } } },
    { key: 'after', agent: step, dependsOn: ['ok'] },
  ],
})
const options = { agents: [step], workflows: [held, gate] }

const db = await createTestDatabase()
// One kit on the owner's login (switched to the application role), one on the application's login.
const a = await createTestKit({ databaseUrl: db.url, ...options })
const b = await createTestKit({ databaseUrl: db.url, runtimeDatabaseUrl: db.appUrl, ...options })
afterAll(async () => {
  await Promise.all([a.close(), b.close()])
  await db.drop()
})

/** A tenant's delayed jobs and timer rows, as the database owner sees them (behind the kit's back). */
async function timersOf(tenantId: string) {
  const [jobs] = await queryOnce(
    db.url,
    `SELECT count(*)::int AS n, min(extract(epoch FROM start_after - now()) * 1000)::float8 AS min_ms
     FROM pgboss.job WHERE data->>'t' = $1 AND state = 'created' AND start_after > now()`,
    [tenantId],
  )
  const [rows] = await queryOnce(
    db.url,
    `SELECT count(*)::int AS n FROM equilateral.agent_coordination
     WHERE tenant_id = $1 AND ((status = 'queued' AND queued_at > now()) OR (status = 'waiting' AND wait_deadline > now()))`,
    [tenantId],
  )
  return {
    jobs: jobs?.n as number,
    rows: rows?.n as number,
    soonestMs: (jobs?.min_ms as number | null) ?? null,
  }
}

describe('the test kit', () => {
  it('creates a tenant of its own per kit', () => {
    expect(a.tenantId).toMatch(/^test-[0-9a-f]{12}$/)
    expect(b.tenantId).not.toBe(a.tenantId)
  })

  it('fires and advances only its own tenant’s timers', async () => {
    const a1 = await a.start('held', null)
    const b1 = await b.start('held', null)
    const b2 = await b.start('gate', null)
    await b.waitFor(b2.id, { taskWaiting: 'ok' })
    expect(await timersOf(b.tenantId)).toMatchObject({ jobs: 2, rows: 2 })

    // A fires its timer: its workflow runs at once; B's two timers are untouched, an hour out.
    expect(await a.fireTimers()).toEqual({ fired: 1, pending: 0 })
    expect((await a.waitFor(a1.id, { status: 'completed' })).output).toEqual({ later: { ran: 'later' } })
    const bTimers = await timersOf(b.tenantId)
    expect(bTimers).toMatchObject({ jobs: 2, rows: 2 })
    expect(bTimers.soonestMs).toBeGreaterThan(59 * MINUTE)
    expect((await b.get(b1.id)).tasks[0]?.status).toBe('queued')

    // B moves half an hour on; a timer A sets meanwhile keeps its full hour.
    const a2 = await a.start('held', null)
    await a.waitFor(a2.id, { until: (wf) => wf.tasks[0]?.status === 'queued' })
    expect(await b.advance(30 * MINUTE)).toEqual({ fired: 0, pending: 2 })
    const [bHeld, bGate] = await b.pendingTimers()
    expect(bHeld?.dueInMs).toBeLessThanOrEqual(30 * MINUTE)
    expect(bGate?.dueInMs).toBeLessThanOrEqual(30 * MINUTE)
    expect((await timersOf(b.tenantId)).soonestMs).toBeLessThanOrEqual(30 * MINUTE)
    const aTimers = await timersOf(a.tenantId)
    expect(aTimers).toMatchObject({ jobs: 1, rows: 1 })
    expect(aTimers.soonestMs).toBeGreaterThan(59 * MINUTE)

    // B's remaining half hour: its task runs and its wait times out with the declared result.
    expect(await b.advance(30 * MINUTE)).toEqual({ fired: 2, pending: 0 })
    expect((await b.waitFor(b1.id, { status: 'completed' })).output).toEqual({ later: { ran: 'later' } })
    const gated = await b.waitFor(b2.id, { status: 'completed' })
    expect(gated.tasks.find((t) => t.key === 'ok')?.result).toEqual({ approved: 'by default' })
    expect(await timersOf(b.tenantId)).toMatchObject({ jobs: 0, rows: 0 })
    expect(await timersOf(a.tenantId)).toMatchObject({ jobs: 1, rows: 1 })
    expect((await a.get(a2.id)).tasks[0]?.status).toBe('queued')
    await a.tenant.cancelWorkflow(a2.id)
  })

  it('sweeps only its own tenant', async () => {
    const report = await a.runSweeper()
    expect(report).toMatchObject({ tenants: 1, requeued: 0, lost: 0, unreachable: [] })
  })

  it('says what a workflow is waiting for when waiting runs out of time', async () => {
    const { id } = await a.start('gate', null)
    await expect(a.waitFor(id, { status: 'completed', timeoutMs: 300 })).rejects.toThrow(
      /status completed not met within 300 ms; workflow gate .* is running; tasks: ok=waiting for approval "ok" until \S+ \(kit\.approve\/reject\/sendEvent, or kit\.fireTimers\(\)\), after=pending$/,
    )
    await a.tenant.cancelWorkflow(id)
  })

  it('fails at once, with the workflow’s error, when the workflow ends another way', async () => {
    const { id } = await a.start('gate', null)
    await a.waitFor(id, { taskWaiting: 'ok' })
    await a.reject(id, 'ok', { approver: 'qa', comment: 'not today' })
    await expect(a.waitFor(id, { status: 'completed', timeoutMs: 60_000 })).rejects.toThrow(
      'waitFor: workflow ended before status completed; workflow gate ' +
        `${id} is failed with ApprovalRejected: approval "ok" rejected by qa: not today (task ok); ` +
        'tasks: ok=failed, after=skipped',
    )
  })

  it('reports audit assertions that fail with the whole trail', async () => {
    const { id } = await a.start('held', null)
    await a.waitFor(id, { until: (wf) => wf.tasks[0]?.status === 'queued' })
    expect(await a.fireTimers()).toEqual({ fired: 1, pending: 0 })
    const wf = await a.waitFor(id, { status: 'completed' })
    const audit = await a.audit(wf.id)
    expect(audit.actions()).toEqual([
      'workflow_started',
      'task_queued',
      'task_started',
      'task_completed',
      'workflow_completed',
    ])
    expect(audit.ofTask('later').map((e) => e.action)).toEqual([
      'task_queued',
      'task_started',
      'task_completed',
    ])
    expect(() => audit.expectSequence(['task_completed:later', 'task_started:later'])).toThrow(
      /no task_started \(later\) after task_completed \(later\) at row 4 \(it is there, but earlier\); the trail:\n {2}1\. workflow_started\n {2}2\. task_queued \(later\)/,
    )
    expect(() => audit.expectExactlyOnce('task_failed')).toThrow(
      /expected task_failed exactly once, found it 0 times/,
    )
    const chain = await a.verifyAuditChain()
    expect(chain).toMatchObject({ ok: true, problem: null })
    expect(chain.rows).toBeGreaterThan(0)
  })
  it('throws when its tenant’s audit chain was tampered with', async () => {
    const { id } = await b.start('gate', null)
    await b.approve(id, 'ok', { approver: 'ana' })
    await b.waitFor(id, { status: 'completed' })
    expect(await b.verifyAuditChain()).toMatchObject({ ok: true, unsealed: 0 })
    const decision = (await b.audit(id)).expectExactlyOnce('approval_decided')
    // Behind the engine's back, past the append-only triggers: the owner rewrites who decided.
    await queryOnce(
      db.url,
      `BEGIN; SET LOCAL session_replication_role = replica;
       UPDATE equilateral.agent_audit_log SET actor = 'mallory' WHERE id = ${Number(decision.id)}; COMMIT`,
    )
    await expect(b.verifyAuditChain()).rejects.toThrow(
      new RegExp(`^audit chain of tenant ${b.tenantId} is broken: altered: `),
    )
    // The other tenant's chain is its own.
    expect(await a.verifyAuditChain()).toMatchObject({ ok: true })
  })
})
