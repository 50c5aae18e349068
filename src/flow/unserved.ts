// Tasks no version of this worker can run (see src/flow/versions.ts). The claim (src/flow/claim.ts)
// returns such tasks unclaimed, stamped with unserved_since, and, in the same transaction, this
// module either leaves them in the
// queue for a worker that has the version (a new attempt AGENT_VERSION_RETRY_MS later, no failure
// counted) or, once they have been unserved for AGENT_VERSION_WAIT_MS, fails them for good with
// AgentVersionUnavailable, and their workflow with them.
//
// Audit: a task_left row on the first leave only (when unserved_since is stamped), not on each of
// the leaves that follow every AGENT_VERSION_RETRY_MS (120 in 10 minutes with the defaults), and
// the failure's rows (task_failed_attempt, task_failed, workflow_failed). A task that a worker with
// its version runs has its stamp cleared, so a later gap is audited again.
import type { TenantTx } from '../db/tx.ts'
import { AgentVersionUnavailableError, serializeError } from '../errors.ts'
import type { ClaimedTask } from './claimed.ts'
import { type FailureOutcome, failAttemptTx } from './fail.ts'
import { requeueTasksTx } from './requeue.ts'
import type { VersionPolicy } from './versions.ts'

/** A fetched task this worker does not have the agent version of. */
export interface UnservedTask {
  task: ClaimedTask
  status: 'queued' | 'running'
  /** The version the task needs (never null: a task that takes any version is always served). */
  agentVersion: number
  /** This claim stamped unserved_since: the first time the task was left. */
  firstLeft: boolean
  /** For how long, on the database clock, the task has gone unserved. */
  unservedMs: number
}

export type UnservedOutcome =
  | { task: ClaimedTask; kind: 'left'; firstLeft: boolean }
  | { task: ClaimedTask; kind: 'failed'; outcome: FailureOutcome; error: AgentVersionUnavailableError }

/** Leaves or fails the unserved tasks of one claim, in the claim's transaction. */
export async function handleUnservedTx(
  tx: TenantTx,
  unserved: readonly UnservedTask[],
  policy: VersionPolicy,
): Promise<UnservedOutcome[]> {
  const outcomes: UnservedOutcome[] = []
  const leave = unserved.filter((u) => u.unservedMs < policy.waitMs)
  if (leave.length > 0) {
    const have = policy.versions.length > 0 ? policy.versions.join(', ') : 'none'
    const requeued = await requeueTasksTx(
      tx,
      leave.map((u) => ({
        taskId: u.task.taskId,
        attempt: u.task.attempt,
        status: u.status,
        reason: `needs agent "${u.task.agentId}" version ${u.agentVersion}; this worker has version ${have}`,
        ...(u.task.job.jobId ? { oldJob: { queue: u.task.job.queue, jobId: u.task.job.jobId } } : {}),
        delayMs: policy.retryMs,
        audit: u.firstLeft,
      })),
      'task_left',
    )
    const done = new Set(requeued.map((j) => j.taskId))
    for (const u of leave) {
      if (done.has(u.task.taskId)) outcomes.push({ task: u.task, kind: 'left', firstLeft: u.firstLeft })
    }
  }
  for (const u of unserved) {
    if (u.unservedMs < policy.waitMs) continue
    const error = new AgentVersionUnavailableError(u.task.agentId, u.agentVersion, policy.waitMs)
    const outcome = await failAttemptTx(tx, {
      taskId: u.task.taskId,
      workflowId: u.task.workflowId,
      attempt: u.task.attempt,
      failures: u.task.failures,
      maxAttempts: u.task.maxAttempts,
      backoffMs: u.task.backoffMs,
      backoffMaxMs: u.task.backoffMaxMs,
      timeoutMs: u.task.timeoutMs,
      queue: u.task.job.queue,
      agentId: u.task.agentId,
      error: serializeError(error),
      permanent: true,
      ...(u.task.job.jobId ? { job: { jobId: u.task.job.jobId, retryCount: u.task.job.retryCount } } : {}),
    })
    outcomes.push({ task: u.task, kind: 'failed', outcome, error })
  }
  return outcomes
}
