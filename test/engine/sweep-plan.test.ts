// The sweeper's pure decision (src/core/sweep-plan.ts) for a running task whose worker's database
// session ended (worker liveness): lost at once, whatever its heartbeat says; no database here.
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
