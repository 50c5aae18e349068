// The task an attempt runs, as its claim returns it: the types the claim, the completion, the
// worker and the unserved-task handling share (a module of its own, so none of them imports another
// for a type).
import type { Json } from '../core/json.ts'
import type { AttemptState } from '../core/retry.ts'
import type { EncryptionError } from '../errors.ts'

export interface FetchedJob {
  queue: string
  /**
   * The pg-boss job the task was fetched with; null when the task was claimed by local
   * continuation (see LOCAL_CLAIM): it never had a job, and its task row's job_id is null.
   */
  jobId: string | null
  retryCount: number
  taskId: string
  workflowId: string
  attempt: number
}

export interface ClaimedTask extends AttemptState {
  job: FetchedJob
  taskId: string
  workflowId: string
  workflowType: string
  taskKey: string
  agentId: string
  taskType: string
  /** The agent version the task needs; null: any (the worker runs its highest). */
  agentVersion: number | null
  data: Json
  input: Json
  results: Record<string, Json>
  correlationId: string
  /** From the task becoming ready (queued_at) to this claim, on the database's clock. */
  queueWaitMs: number
  /** performance.now() when the claim returned: dispatch latency = queueWaitMs + (agent start - claimedAt). */
  claimedAt: number
  /**
   * Set when the task's data, the workflow input or a parent's result could not be decrypted (a
   * missing or wrong key): the worker records it as the attempt's failure instead of running the
   * agent, and data, input and results are empty.
   */
  payloadError?: EncryptionError
  /** The data key the task's payloads are under when it is a data subject's: what it writes goes under it too. */
  sealKey?: string
}

/** A ready task this worker may claim in the completion's transaction, with its agent's versions. */
export interface LocalCandidate {
  queue: string
  taskId: string
  attempt: number
  /** The versions of the task's agent this worker has. */
  versions: readonly number[]
}
