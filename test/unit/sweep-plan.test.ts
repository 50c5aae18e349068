// The sweeper's pure decision (src/core/sweep-plan.ts): for a running task whose worker's database
// session ended (worker liveness), lost at once, whatever its heartbeat says; and, over every
// combination of what a scan can see, which action each status may get. No database here.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { decideSweep, type SweepCandidate } from '../../src/core/sweep-plan.ts'

const running: SweepCandidate = {
  tenantId: 'acme',
  taskId: '00000000-0000-0000-0000-000000000001',
  workflowId: '00000000-0000-0000-0000-000000000002',
  status: 'running',
  queue: 'eq.agent',
  agentId: 'agent',
  jobId: '00000000-0000-0000-0000-000000000003',
  jobState: 'active',
  jobStale: false,
  heartbeatStale: false,
  workerDead: false,
  attempt: 1,
  failures: 0,
  maxAttempts: 3,
  backoffMs: 1000,
  backoffMaxMs: 300_000,
  timeoutMs: 300_000,
}

describe('decideSweep and dead workers', () => {
  it('takes a running task of a dead worker as lost although its heartbeat is fresh', () => {
    expect(decideSweep({ ...running, workerDead: true })).toEqual({
      kind: 'lost_worker',
      reason: "worker's database session ended",
    })
  })

  it('leaves a running task of a live worker alone while its heartbeat is fresh, however long it runs', () => {
    expect(decideSweep(running)).toEqual({ kind: 'none' })
    // Heartbeats stay the fallback: a hung worker whose session lives on is still found.
    expect(decideSweep({ ...running, heartbeatStale: true })).toEqual({
      kind: 'lost_worker',
      reason: 'heartbeat stale',
    })
  })

  it('keeps the reasons that say more about the job', () => {
    expect(decideSweep({ ...running, workerDead: true, jobState: null })).toEqual({
      kind: 'lost_worker',
      reason: 'job gone while the task was running',
    })
  })

  it('judges a locally claimed task (no job by design) by its worker and heartbeat only', () => {
    const local = { ...running, jobId: null, jobState: null }
    expect(decideSweep(local)).toEqual({ kind: 'none' })
    expect(decideSweep({ ...local, workerDead: true })).toEqual({
      kind: 'lost_worker',
      reason: "worker's database session ended",
    })
    expect(decideSweep({ ...local, heartbeatStale: true })).toEqual({
      kind: 'lost_worker',
      reason: 'heartbeat stale',
    })
  })

  it('does not apply to tasks that are not running (a queued task has no worker yet)', () => {
    expect(decideSweep({ ...running, status: 'queued', jobState: 'created', workerDead: true })).toEqual({
      kind: 'none',
    })
  })
})

const JOB_STATES = ['created', 'retry', 'active', 'completed', 'cancelled', 'failed', null] as const
const FINISHED = new Set(['completed', 'cancelled', 'failed'])

/**
 * Any candidate a scan can produce: every status, job state and flag. A task without a job id
 * (local continuation, or a pending task) has no job state: the scan joins the job by that id.
 */
const candidate = fc
  .record({
    status: fc.constantFrom<SweepCandidate['status'][]>('pending', 'queued', 'running'),
    jobId: fc.constantFrom(null, running.jobId),
    jobState: fc.constantFrom(...JOB_STATES),
    jobStale: fc.boolean(),
    heartbeatStale: fc.boolean(),
    workerDead: fc.boolean(),
  })
  .map((c) => (c.jobId === null ? { ...c, jobState: null } : c))

describe('decideSweep over every combination a scan can see', () => {
  it('fails only running tasks (their attempt was lost), and requeues only pending and queued ones', () => {
    fc.assert(
      fc.property(candidate, (seen) => {
        const action = decideSweep({ ...running, ...seen })
        if (seen.status === 'running') expect(action.kind).not.toBe('requeue')
        else expect(action.kind).not.toBe('lost_worker')
        // A ready task without a job is always given one.
        if (seen.status === 'pending') expect(action.kind).toBe('requeue')
      }),
    )
  })

  it('leaves a running task alone exactly while its job is live, its worker alive and its heartbeat fresh', () => {
    fc.assert(
      fc.property(candidate, (seen) => {
        const c = { ...running, ...seen, status: 'running' as const }
        // A locally claimed task (no job id) has no job to lose.
        const jobLive = c.jobId === null || (c.jobState !== null && !FINISHED.has(c.jobState))
        const healthy = jobLive && !c.workerDead && !c.heartbeatStale
        expect(decideSweep(c).kind).toBe(healthy ? 'none' : 'lost_worker')
      }),
    )
  })

  it('requeues a queued task whose job is gone, finished, or fetched long ago and never started', () => {
    fc.assert(
      fc.property(candidate, (seen) => {
        const c = { ...running, ...seen, status: 'queued' as const }
        const stuck =
          c.jobState === null || FINISHED.has(c.jobState) || (c.jobState === 'active' && c.jobStale)
        expect(decideSweep(c).kind).toBe(stuck ? 'requeue' : 'none')
      }),
    )
  })

  it('gives every action a reason', () => {
    fc.assert(
      fc.property(candidate, (seen) => {
        const action = decideSweep({ ...running, ...seen })
        if (action.kind !== 'none') expect(action.reason).toMatch(/\w/)
      }),
    )
  })
})
