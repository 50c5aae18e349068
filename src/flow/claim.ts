// Step 3: a worker fetched jobs; before running agents it claims their tasks. One transaction per
// tenant marks the fetched tasks running (fenced on status and attempt), writes their audit rows and
// reads what each agent needs: task data, workflow input, and its dependencies' results. Jobs whose
// task can no longer run (completed, cancelled, a newer attempt exists) are completed as dropped.
// Encrypted payloads are decrypted after the commit: CPU only, and one that cannot be decrypted fails
// its own task (see payloadError), not the batch.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Json } from '../core/json.ts'
import { attemptStateOf } from '../core/retry.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { executeNamed, type TenantScope, type TenantTx, withTenantTx } from '../db/tx.ts'
import { EncryptionError } from '../errors.ts'
import { failpoint } from '../failpoints.ts'
import type { JobRow } from '../queue/boss.ts'
import { insertJobsCte } from '../queue/direct.ts'
import { READY_CHANNEL } from './channels.ts'
import { holdTasksTx } from '../usage/holds.ts'
import { NOT_BUDGET_HELD } from '../usage/sql.ts'
import type { ClaimedTask, FetchedJob, LocalCandidate } from './claimed.ts'
import { handleUnservedTx, type UnservedOutcome, type UnservedTask } from './unserved.ts'
import type { VersionPolicy } from './versions.ts'

export type { ClaimedTask, FetchedJob, LocalCandidate } from './claimed.ts'

// A task whose agent version ($5: the versions of the agent this worker has) is not among them is
// not claimed: the same UPDATE only stamps unserved_since (the first time) and returns it with
// served = false, for claimTasks to leave it in the queue or, past AGENT_VERSION_WAIT_MS, fail it,
// in this transaction. A served task's stamp is cleared. The common case costs no extra statement.
// $5 NULL: the caller runs any version (tests, tools).
const SERVED = `(t.agent_version IS NULL OR $5::int[] IS NULL OR t.agent_version = ANY($5::int[]))`

/**
 * A status condition the planner cannot match to the partial in-flight index
 * (agent_coordination_inflight_idx, status IN ('queued', 'running'), kept for the sweeper). Given
 * `t.status IN (...)` the planner may read a few tasks by id through that index with only the
 * tenant as index condition: the index looks tiny to it (few tasks are in flight when statistics
 * are taken), but holds the entries of every task that passed through since the last vacuum, and
 * a claim then walked thousands of dead entries (5-8 ms for one task of a 12,000-task tenant in a
 * prepared statement's generic plan). Behind a CASE the tasks are found by primary key.
 */
export function UNINDEXED_STATUS(condition: string): string {
  return `(CASE WHEN ${condition} THEN true ELSE false END)`
}

/** Exported for the benchmark's EXPLAIN of the hot path (bench/growth.ts). */
export const CLAIM = `
WITH j AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS j(id uuid, attempt int)),
claimed AS (
  UPDATE agent_coordination t
  SET status = CASE WHEN ${SERVED} THEN 'running' ELSE t.status END,
    started_at = CASE WHEN ${SERVED} THEN now() ELSE t.started_at END,
    heartbeat_at = CASE WHEN ${SERVED} THEN now() ELSE t.heartbeat_at END,
    worker_id = CASE WHEN ${SERVED} THEN $3 ELSE t.worker_id END,
    unserved_since = CASE WHEN ${SERVED} THEN NULL ELSE coalesce(t.unserved_since, now()) END,
    updated_at = now()
  FROM j, workflows w
  WHERE t.tenant_id = $1 AND t.id = ANY($4::uuid[]) AND t.id = j.id AND t.attempt = j.attempt
    AND ${UNINDEXED_STATUS("t.status IN ('queued', 'running')")}
    AND w.tenant_id = $1 AND w.id = t.workflow_id AND w.status = 'running' AND ${NOT_BUDGET_HELD}
  RETURNING t.id, t.workflow_id, t.task_key, t.agent_id, t.task_type, t.attempt, t.failures, t.max_attempts,
    t.backoff_ms, t.backoff_max_ms, t.timeout_ms, t.data, t.depends_on, w.type AS workflow_type, w.input, w.correlation_id,
    greatest(0, extract(epoch FROM clock_timestamp() - t.queued_at) * 1000)::float8 AS queue_wait_ms,
    t.agent_version, t.unserved_since IS NULL AS served, t.status,
    -- Not served: whether this claim stamped it (the first leave), and for how long it has been unserved.
    t.unserved_since = now() AS first_left,
    extract(epoch FROM now() - t.unserved_since) * 1000 AS unserved_ms
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, c.workflow_id, c.id, c.agent_id, 'task_started',
    jsonb_strip_nulls(jsonb_build_object('attempt', c.attempt, 'worker', $3::text, 'agentVersion', c.agent_version)),
    c.correlation_id
  FROM claimed c WHERE c.served
)
SELECT c.*, CASE WHEN c.served THEN (
  SELECT coalesce(jsonb_object_agg(p.task_key, p.result), '{}'::jsonb)
  FROM agent_coordination p WHERE p.tenant_id = $1 AND p.id = ANY(c.depends_on)
) END AS results
FROM claimed c`

/** A row CLAIM returns (LOCAL_CLAIM too, served always, with `notified`). */
interface ClaimRow {
  id: string
  workflow_id: string
  task_key: string
  agent_id: string
  task_type: string
  attempt: number
  failures: number
  max_attempts: number
  backoff_ms: number
  backoff_max_ms: number
  timeout_ms: number
  data: Json
  depends_on: string[]
  workflow_type: string
  input: Json
  correlation_id: string
  queue_wait_ms: number | null
  agent_version: number | null
  served: boolean
  status: 'queued' | 'running'
  first_left: boolean | null
  unserved_ms: number | null
  results: Record<string, Json> | null
}

export interface ClaimOutcome {
  claimed: ClaimedTask[]
  /** Jobs whose task was not claimable; already completed as dropped in the same transaction. */
  dropped: FetchedJob[]
  /**
   * Tasks that need an agent version this worker lacks: left in the queue for a worker that has
   * it, or failed for good once unserved for too long, in the same transaction (see unserved.ts).
   */
  unserved: UnservedOutcome[]
}

export async function claimTasks(
  deps: { pool: pg.Pool; boss: PgBoss; keyRing: KeyRing },
  scope: TenantScope,
  jobs: readonly FetchedJob[],
  workerId: string,
  /**
   * The versions of the jobs' agent this worker has, and what to do with tasks needing another;
   * absent: every task is claimed, whatever version it needs.
   */
  versions?: VersionPolicy,
): Promise<ClaimOutcome> {
  const outcome = await withTenantTx(deps.pool, scope, async (db) => {
    const { rows } = await executeNamed<ClaimRow>(db, 'eq_claim', CLAIM, [
      scope.tenantId,
      JSON.stringify(jobs.map((j) => ({ id: j.taskId, attempt: j.attempt }))),
      workerId,
      jobs.map((j) => j.taskId),
      versions?.versions ?? null,
    ])
    const byTask = new Map(rows.map((r) => [r.id, r]))
    const claimed: ClaimedTask[] = []
    const dropped: FetchedJob[] = []
    const unserved: UnservedTask[] = []
    for (const job of jobs) {
      const r = byTask.get(job.taskId)
      if (!r || r.attempt !== job.attempt) {
        dropped.push(job)
        continue
      }
      byTask.delete(job.taskId) // a job delivered twice in one batch runs once
      const task = claimedTaskOf(job, r)
      if (r.served) claimed.push(task)
      else {
        unserved.push({
          task: { ...task, data: null, input: null },
          status: r.status,
          // Not served: the claim filled these (a task that takes any version is always served).
          agentVersion: r.agent_version as number,
          firstLeft: r.first_left as boolean,
          unservedMs: Number(r.unserved_ms),
        })
      }
    }
    // Tasks not claimed because the tenant's hard budget is exhausted wait without a job.
    if (dropped.length > 0) await holdTasksTx({ db, scope }, dropped)
    const byQueue = Map.groupBy(dropped, (j) => j.queue)
    for (const [queue, list] of byQueue) {
      await deps.boss.complete(
        queue,
        list.map((j) => ({ id: j.jobId as string, retryCount: j.retryCount })),
        { dropped: 'task no longer runnable for this attempt' },
        { db },
      )
    }
    const left =
      unserved.length > 0 && versions
        ? await handleUnservedTx({ db, boss: deps.boss, scope }, unserved, versions)
        : []
    failpoint('claim.before-commit')
    return { claimed, dropped, unserved: left }
  })
  failpoint('claim.after-commit')
  // Per-tenant data keys the payloads are under: cached after first use (no round trip then).
  await deps.keyRing
    .prepareFor(
      deps.pool,
      scope,
      outcome.claimed.flatMap((t) => [t.data, t.input, ...Object.values(t.results)]),
    )
    .catch(() => undefined) // a key that cannot be loaded fails its own task in openPayloads (key_not_loaded)
  openClaimed(deps.keyRing, scope, outcome.claimed)
  return outcome
}

function claimedTaskOf(job: FetchedJob, r: ClaimRow): ClaimedTask {
  return {
    job,
    taskId: r.id,
    workflowId: r.workflow_id,
    workflowType: r.workflow_type,
    taskKey: r.task_key,
    agentId: r.agent_id,
    taskType: r.task_type,
    agentVersion: r.agent_version,
    ...attemptStateOf(r),
    data: r.data,
    input: r.input,
    results: r.results ?? {},
    correlationId: r.correlation_id,
    queueWaitMs: r.queue_wait_ms ?? 0,
    claimedAt: 0,
  }
}

/** After the claim's commit: stamps the claim time and decrypts the payloads (CPU only). */
export function openClaimed(keyRing: KeyRing, scope: TenantScope, tasks: readonly ClaimedTask[]): void {
  const claimedAt = performance.now()
  for (const task of tasks) {
    task.claimedAt = claimedAt
    openPayloads(keyRing, scope.tenantId, task)
  }
}

// Local continuation (step 5 feeding step 3 in one transaction): a completion made these tasks
// ready, and the completing worker has free agent slots and serves their agents, so it claims them
// in the completion's own transaction, with no job: no job insert, fetch, claim transaction or job
// completion. The task row is exactly a claimed task's (running, attempt, heartbeat, worker id) with
// job_id NULL, which is how the sweeper tells a job-less running task from one whose job was lost:
// it recovers it when its worker's session ends or its heartbeat goes stale, like any running task.
// The queues of the ready tasks this statement does not claim (given in $5) are notified here,
// after the choice, so other workers are not woken for tasks already taken.
export const LOCAL_CLAIM = `
WITH j AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS j(id uuid, attempt int, versions int[])),
claimed AS (
  UPDATE agent_coordination t
  SET status = 'running', started_at = now(), heartbeat_at = now(), worker_id = $3, job_id = NULL,
    unserved_since = NULL, updated_at = now()
  FROM j, workflows w
  WHERE t.tenant_id = $1 AND t.id = ANY($4::uuid[]) AND t.id = j.id AND t.attempt = j.attempt
    AND ${UNINDEXED_STATUS("t.status = 'queued'")} AND (t.agent_version IS NULL OR t.agent_version = ANY(j.versions))
    AND w.tenant_id = $1 AND w.id = t.workflow_id AND w.status = 'running' AND ${NOT_BUDGET_HELD}
  RETURNING t.id, t.workflow_id, t.task_key, t.agent_id, t.task_type, t.attempt, t.failures, t.max_attempts,
    t.backoff_ms, t.backoff_max_ms, t.timeout_ms, t.data, t.depends_on, w.type AS workflow_type, w.input,
    w.correlation_id, t.agent_version, t.queue
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, c.workflow_id, c.id, c.agent_id, 'task_started',
    jsonb_strip_nulls(jsonb_build_object('attempt', c.attempt, 'worker', $3::text, 'agentVersion', c.agent_version)),
    c.correlation_id
  FROM claimed c
),
${insertJobsCte(
  'queued_jobs',
  `(SELECT * FROM jsonb_to_recordset($6::jsonb) AS s(job_id uuid, queue text, workflow_id uuid, task_id uuid,
    attempt int, timeout_ms int, start_after text))`,
  '$1',
  '$7',
)},
notified AS (SELECT count(pg_notify('${READY_CHANNEL}', q)) AS n FROM unnest($5::text[]) AS q)
-- One row at least, so the notifications are sent when nothing is claimed (a row without id).
SELECT c.*, (
  SELECT coalesce(jsonb_object_agg(p.task_key, p.result), '{}'::jsonb)
  FROM agent_coordination p WHERE p.tenant_id = $1 AND p.id = ANY(c.depends_on)
) AS results, n.n AS notified
FROM notified n LEFT JOIN claimed c ON true`

/**
 * Claims `candidates` in the caller's (completion) transaction, inserts `jobs` (rows as jobRow
 * makes them: the ready tasks not picked, where our statements write pg-boss's jobs) and notifies
 * `notify`'s queues; returns the claimed tasks, payloads still sealed (openClaimed after the
 * commit). A candidate not returned stays queued (it needs an agent version this worker lacks):
 * the caller inserts its job.
 */
export async function claimLocallyTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  workerId: string,
  candidates: readonly LocalCandidate[],
  notify: readonly string[],
  jobs: readonly JobRow[],
): Promise<ClaimedTask[]> {
  const { rows } = await executeNamed<
    (ClaimRow & { queue: string; notified: number }) | { id: null; notified: number }
  >(db, 'eq_local_claim', LOCAL_CLAIM, [
    scope.tenantId,
    JSON.stringify(candidates.map((c) => ({ id: c.taskId, attempt: c.attempt, versions: c.versions }))),
    workerId,
    candidates.map((c) => c.taskId),
    notify,
    JSON.stringify(jobs),
    scope.tier,
  ])
  return rows.flatMap((r) =>
    r.id === null
      ? []
      : claimedTaskOf(
          {
            queue: r.queue,
            jobId: null,
            retryCount: 0,
            taskId: r.id,
            workflowId: r.workflow_id,
            attempt: r.attempt,
          },
          r,
        ),
  )
}

/** Decrypts the task's payloads in place, or sets payloadError. */
function openPayloads(keyRing: KeyRing, tenantId: string, task: ClaimedTask): void {
  try {
    // What the task writes (its result, spawned data) goes under its workflow's subject key, when
    // its payloads are under one; a value of another subject's than the others' does not decrypt.
    let sealKey: string | undefined
    const subjects = new Set<string>()
    for (const v of [task.input, task.data, ...Object.values(task.results)]) {
      const subject = keyRing.subjectOf(tenantId, v)
      if (!subject) continue
      subjects.add(subject)
      sealKey ??= (v as { k: string }).k
    }
    if (subjects.size > 1) {
      throw new EncryptionError(
        'decryption_failed',
        `a task of tenant "${tenantId}" has values under several data subjects' keys`,
      )
    }
    task.sealKey = sealKey
    const data = keyRing.decrypt(tenantId, 'task.data', task.data)
    const input = keyRing.decrypt(tenantId, 'workflow.input', task.input)
    const results: Record<string, Json> = {}
    for (const [key, value] of Object.entries(task.results)) {
      results[key] = keyRing.decrypt(tenantId, 'task.result', value)
    }
    task.data = data
    task.input = input
    task.results = results
  } catch (error) {
    task.payloadError = error as EncryptionError
    task.data = null
    task.input = null
    task.results = {}
  }
}
