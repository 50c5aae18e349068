// The sweeper's decisions, pure: given what one scan saw of an in-flight task and its job, what to
// do with it. The flow/sweep.ts side reads and writes; this side only decides.

import type { AttemptState } from './retry.ts'

export interface SweepCandidate extends AttemptState {
  tenantId: string
  taskId: string
  workflowId: string
  status: 'pending' | 'queued' | 'running'
  queue: string
  agentId: string
  jobId: string | null
  /** pg-boss state of the task's current job, or null when the job does not exist. */
  jobState: 'created' | 'retry' | 'active' | 'completed' | 'cancelled' | 'failed' | null
  /** The job was fetched longer ago than the stale threshold (by the database clock). */
  jobStale: boolean
  /** The task's heartbeat is older than the stale threshold (by the database clock). */
  heartbeatStale: boolean
  /**
   * The task's worker is registered as dead (its database session ended: src/flow/liveness.ts), and
   * the attempt started before that was seen. False when the liveness registry is not consulted.
   */
  workerDead: boolean
}

export type SweepAction =
  /** The attempt's worker is gone: count a failure (retry or fail for good). */
  | { kind: 'lost_worker'; reason: string }
  /** The task is ready but has no runnable job: queue a new attempt. */
  | { kind: 'requeue'; reason: string }
  | { kind: 'none' }

const FINISHED_JOB = new Set(['completed', 'cancelled', 'failed'])

export function decideSweep(c: SweepCandidate): SweepAction {
  switch (c.status) {
    case 'running':
      // A task claimed by local continuation runs without a job (job_id null): its worker's session
      // and its heartbeat are its lease. Otherwise its job ending first means its worker is gone.
      if (c.jobId !== null && c.jobState === null)
        return { kind: 'lost_worker', reason: 'job gone while the task was running' }
      if (c.jobState !== null && FINISHED_JOB.has(c.jobState))
        return { kind: 'lost_worker', reason: `job ${c.jobState} while the task was running` }
      if (c.workerDead) return { kind: 'lost_worker', reason: "worker's database session ended" }
      if (c.heartbeatStale) return { kind: 'lost_worker', reason: 'heartbeat stale' }
      return { kind: 'none' }
    case 'queued':
      if (c.jobState === null) return { kind: 'requeue', reason: 'job gone' }
      if (FINISHED_JOB.has(c.jobState))
        return { kind: 'requeue', reason: `job ${c.jobState} before the task started` }
      if (c.jobState === 'active' && c.jobStale)
        return { kind: 'requeue', reason: 'job fetched but never started' }
      return { kind: 'none' }
    case 'pending':
      return { kind: 'requeue', reason: 'ready without a job' }
  }
}
