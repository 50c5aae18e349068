// Wait tasks: a task that completes when something outside the workflow happens (an approver's
// decision, an external event) instead of running an agent.
//
//   ready ──> queued, a job in the wait queue (like any task: same start, completion, sweeper paths)
//         ──> a worker arms it: waiting (with a deadline if it has a timeout, and a timer job for it),
//             or completed at once by an event that arrived before it waited
//   waiting ──> completed by an event, an approval, or a timeout with a declared result
//           ──> failed by a rejection, or a timeout without one (the workflow fails with the reason)
//
// Every resolution runs in one transaction with its audit rows and its dependents' dispatch: the
// same COMPLETE statement as an agent's completion (fenced on 'waiting' instead of 'running'), or
// the same failure path. Deliveries are idempotent on the sender's event id, and are kept in the
// workflow_events inbox when no task waits yet.
//
// Race: an event delivered while its task is being armed. Both transactions lock the workflow row
// first (FOR NO KEY UPDATE), so one sees the other's commit: either the delivery finds the task
// waiting, or the arming finds the event in the inbox.
//
// Over 400 lines on purpose: arming, delivery, expiry and the sweeper's due-wait scan share the
// workflow lock order and the inbox/decision matching above; split, each file would need the same
// race reasoning restated, and a reader checking the race needs all four side by side.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { WaitSpec } from '../core/definition.ts'
import { assertStorableJson, type Json, type JsonLimits } from '../core/json.ts'
import type { TaskStatus } from '../core/task-state.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import {
  type Db,
  type TenantScope,
  type TenantTx,
  type TxTimeouts,
  withTenantTx,
  withTimeouts,
} from '../db/tx.ts'
import { InvalidInputError, NotFoundError, WaitError } from '../errors.ts'
import { insertJobsTx, type ReadyJob, WAIT_QUEUE } from '../queue/boss.ts'
import { type CompletionOutcome, writeCompletionsTx } from './complete.ts'
import type { FetchedJob } from './claim.ts'
import { failAttemptTx } from './fail.ts'

export interface WaitDeps {
  pool: pg.Pool
  boss: PgBoss
  keyRing: KeyRing
  limits: JsonLimits
}

/** An event for a workflow, as a caller delivers it. */
export interface EventDelivery {
  /** The sender's id for this event: delivering it again changes nothing. */
  eventId: string
  /** The event's name, e.g. `scan.completed`. */
  name: string
  /** Its match key, for waits declared with `match`. */
  key?: string
  payload?: Json
  /** Who delivers it, for the audit trail (e.g. the webhook's source). */
  actor?: string
}

/** An approver's decision on a workflow's approval. */
export interface ApprovalDecision {
  /** The approval's name (by default its task's key). */
  name: string
  approved: boolean
  /** Who decides; must be one of the approval's approvers when it names them. */
  approver: string
  comment?: string
  /** Idempotency id; default `<name>:<approver>:<approved|rejected>`. */
  eventId?: string
}

export interface DeliveryResult {
  eventId: string
  /**
   * `consumed`: a waiting task took it (completed, or failed by a rejection); `kept`: its task is
   * not waiting yet and takes it when it does; `duplicate`: this event id was delivered before.
   */
  status: 'consumed' | 'kept' | 'duplicate'
  /** The task it is (or was) for. */
  taskId: string | null
  /** The task's status after the delivery. */
  taskStatus: TaskStatus | null
}

/** What a resolution did that the worker's metrics and wake-ups care about. */
export interface WaitOutcome {
  /** Tasks made ready by the completions (their jobs are inserted). */
  dispatched: ReadyJob[]
  workflowsCompleted: CompletionOutcome['workflowsCompleted']
  workflowsFailed: { type: string; durationMs: number }[]
}

interface WaitingTask {
  id: string
  workflow_id: string
  agent_id: string
  task_key: string
  attempt: number
  failures: number
  max_attempts: number
  backoff_ms: number
  backoff_max_ms: number
  timeout_ms: number
  queue: string
  wait: WaitSpec
  job_id: string | null
}

const TASK_COLUMNS = `t.id, t.workflow_id, t.agent_id, t.task_key, t.attempt, t.failures, t.max_attempts, t.backoff_ms,
  t.backoff_max_ms, t.timeout_ms, t.queue, t.wait, t.job_id`

const ARM = `
WITH x AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, attempt int)),
t AS (
  UPDATE agent_coordination t
  SET status = 'waiting', started_at = now(), updated_at = now(),
    wait_deadline = CASE WHEN t.wait ? 'timeoutMs'
      THEN now() + (t.wait->>'timeoutMs')::bigint * interval '1 millisecond' END,
    job_id = CASE WHEN t.wait ? 'timeoutMs' THEN gen_random_uuid() END
  FROM x
  WHERE t.tenant_id = $1 AND t.id = x.id AND t.attempt = x.attempt AND t.status = 'queued' AND t.wait IS NOT NULL
    AND EXISTS (SELECT 1 FROM workflows w WHERE w.tenant_id = $1 AND w.id = t.workflow_id AND w.status = 'running')
  RETURNING ${TASK_COLUMNS}, t.wait_deadline::text AS deadline
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, t.workflow_id, t.id, t.agent_id, 'task_waiting',
    jsonb_strip_nulls(jsonb_build_object('attempt', t.attempt, 'for', t.wait->>'type', 'name', t.wait->>'name',
      'deadline', t.deadline)),
    w.correlation_id
  FROM t JOIN workflows w ON w.tenant_id = $1 AND w.id = t.workflow_id
)
SELECT * FROM t`

// The event kept for this task before it waited (an early one). It was kept for this task, whose
// approvers and match it was checked against: another task of the same name never takes it.
const EARLY_EVENT = `
SELECT id, event_id, kind, payload, actor FROM workflow_events
WHERE tenant_id = $1 AND workflow_id = $2 AND task_id = $3 AND consumed_at IS NULL
ORDER BY id LIMIT 1 FOR UPDATE`

/** Locks the workflows' rows, in id order: deliveries and wait resolutions of one workflow serialize. */
async function lockWorkflowsTx(
  db: Db,
  scope: TenantScope,
  ids: readonly string[],
  skipLocked = false,
): Promise<Map<string, string>> {
  const { rows } = await db.executeSql(
    `SELECT id, status FROM workflows WHERE tenant_id = $1 AND id = ANY($2::uuid[]) ORDER BY id FOR NO KEY UPDATE${skipLocked ? ' SKIP LOCKED' : ''}`,
    [scope.tenantId, [...new Set(ids)]],
  )
  return new Map(rows.map((r) => [r.id as string, r.status as string]))
}

/**
 * Arms the wait tasks whose jobs a worker fetched from the wait queue: each becomes waiting (with
 * its timeout's timer job) or, when its event arrived early, completes at once. One transaction;
 * the fetched jobs are completed in it.
 */
export async function armWaits(
  deps: WaitDeps,
  scope: TenantScope,
  jobs: readonly FetchedJob[],
): Promise<WaitOutcome> {
  return withTenantTx(deps.pool, scope, async (db) => {
    const outcome: WaitOutcome = { dispatched: [], workflowsCompleted: [], workflowsFailed: [] }
    await lockWorkflowsTx(
      db,
      scope,
      jobs.map((j) => j.workflowId),
    )
    const { rows } = await db.executeSql(ARM, [
      scope.tenantId,
      JSON.stringify(jobs.map((j) => ({ id: j.taskId, attempt: j.attempt }))),
    ])
    const timers: ReadyJob[] = []
    for (const task of rows as (WaitingTask & { deadline: string | null })[]) {
      const early = await db.executeSql(EARLY_EVENT, [scope.tenantId, task.workflow_id, task.id])
      const event = early.rows[0]
      if (event) {
        await db.executeSql(
          'UPDATE workflow_events SET task_id = $3, consumed_at = now() WHERE tenant_id = $1 AND id = $2',
          [scope.tenantId, event.id, task.id],
        )
        await deps.keyRing.prepareFor(db, scope, [event.payload])
        const payload = deps.keyRing.decrypt(scope.tenantId, 'event.payload', event.payload)
        await resolveTx(
          db,
          deps,
          scope,
          task,
          resolution(task.wait, event.kind, payload, event.actor),
          outcome,
        )
      } else if (task.deadline && task.job_id) {
        timers.push({
          queue: WAIT_QUEUE,
          jobId: task.job_id,
          workflowId: task.workflow_id,
          taskId: task.id,
          attempt: task.attempt,
          timeoutMs: task.timeout_ms,
          startAfter: task.deadline,
          timeout: true,
        })
      }
    }
    await insertJobsTx({ db, boss: deps.boss, scope }, timers)
    await completeWaitJobsTx(db, deps.boss, jobs)
    return outcome
  })
}

/**
 * Times out waits whose deadline has passed (by the database clock): the timer jobs a worker
 * fetched, or, from the sweeper, waits whose timer job was lost. A wait resolved meanwhile is left
 * alone (fenced on 'waiting' and the attempt). Completes the fetched jobs. With `maintenance` (the
 * sweeper's backstop, no jobs), a wait whose workflow or task another transaction holds is skipped
 * instead of waited for (the next sweep comes back to it), under the maintenance timeouts.
 */
export async function expireWaits(
  deps: WaitDeps,
  scope: TenantScope,
  due: readonly { taskId: string; workflowId: string; attempt: number }[],
  jobs: readonly FetchedJob[] = [],
  maintenance?: TxTimeouts,
): Promise<WaitOutcome & { expired: number }> {
  const skip = maintenance !== undefined
  return withTimeouts(maintenance)(deps.pool, scope, async (db) => {
    const outcome: WaitOutcome = { dispatched: [], workflowsCompleted: [], workflowsFailed: [] }
    const locked = await lockWorkflowsTx(
      db,
      scope,
      due.map((d) => d.workflowId),
      skip,
    )
    const mine = skip ? due.filter((d) => locked.has(d.workflowId)) : due
    const { rows } = await db.executeSql(
      `SELECT ${TASK_COLUMNS} FROM agent_coordination t
       JOIN jsonb_to_recordset($2::jsonb) AS x(id uuid, attempt int) ON t.id = x.id AND t.attempt = x.attempt
       WHERE t.tenant_id = $1 AND t.status = 'waiting' AND t.wait_deadline <= now()
       ORDER BY t.id FOR UPDATE OF t${skip ? ' SKIP LOCKED' : ''}`,
      [scope.tenantId, JSON.stringify(mine.map((d) => ({ id: d.taskId, attempt: d.attempt })))],
    )
    for (const task of rows as WaitingTask[]) {
      await db.executeSql(
        `INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
         SELECT $1, $2, $3, $4, 'task_wait_timed_out', jsonb_build_object('attempt', $5::int, 'timeoutMs', $6::bigint),
           correlation_id FROM workflows WHERE tenant_id = $1 AND id = $2`,
        [scope.tenantId, task.workflow_id, task.id, task.agent_id, task.attempt, task.wait.timeoutMs ?? null],
      )
      const onTimeout = task.wait.onTimeout
      await resolveTx(
        db,
        deps,
        scope,
        task,
        onTimeout === 'fail'
          ? {
              kind: 'fail',
              error: {
                name: 'WaitTimedOut',
                code: 'wait_timed_out',
                message: `${task.wait.type} "${task.wait.name}" got no ${task.wait.type === 'approval' ? 'decision' : 'event'} within ${task.wait.timeoutMs} ms`,
              },
            }
          : timeoutResult(task.wait, onTimeout.result, deps.limits),
        outcome,
        // The timer job is the one being handled: completed below, not cancelled.
        false,
      )
    }
    await completeWaitJobsTx(db, deps.boss, jobs)
    return { ...outcome, expired: rows.length }
  })
}

/**
 * A timed-out wait's declared result, or, if it can no longer be stored (checked when the workflow
 * started, but MAX_PAYLOAD_BYTES may have been lowered since), the task's failure: a timeout that
 * throws would leave the task waiting and fail its timer job, and the sweeper's, forever.
 */
function timeoutResult(wait: WaitSpec, result: Json, limits: JsonLimits): Resolution {
  try {
    assertStorableJson(result ?? null, '$.onTimeout.result', limits)
  } catch (error) {
    return {
      kind: 'fail',
      error: {
        name: 'InvalidTimeoutResult',
        code: 'invalid_result',
        message: `${wait.type} "${wait.name}" timed out, and its declared result cannot be stored: ${(error as Error).message}`,
      },
    }
  }
  return { kind: 'complete', result }
}

/** Waiting tasks past their deadline (the sweeper's backstop for lost timer jobs), oldest first. */
export async function dueWaitsTx(
  { db, scope }: Pick<TenantTx, 'db' | 'scope'>,
  limit: number,
): Promise<{ taskId: string; workflowId: string; attempt: number }[]> {
  const { rows } = await db.executeSql(
    `SELECT id, workflow_id, attempt FROM agent_coordination
     WHERE tenant_id = $1 AND status = 'waiting' AND wait_deadline <= now()
     ORDER BY wait_deadline LIMIT $2`,
    [scope.tenantId, limit],
  )
  return rows.map((r) => ({ taskId: r.id, workflowId: r.workflow_id, attempt: r.attempt }))
}

type Resolution =
  | { kind: 'complete'; result: Json }
  | { kind: 'fail'; error: { name: string; message: string; code?: string } }

/** What an event or a decision does to the task that waits for it. */
function resolution(wait: WaitSpec, kind: string, payload: Json, actor: string | null): Resolution {
  if (kind !== 'approval') return { kind: 'complete', result: payload }
  const decision = (payload ?? {}) as { approved?: boolean; comment?: string }
  const comment = typeof decision.comment === 'string' ? decision.comment : undefined
  if (decision.approved === true) {
    return { kind: 'complete', result: { approved: true, approver: actor, ...(comment ? { comment } : {}) } }
  }
  return {
    kind: 'fail',
    error: {
      name: 'ApprovalRejected',
      code: 'approval_rejected',
      message: `approval "${wait.name}" rejected by ${actor}${comment ? `: ${comment}` : ''}`,
    },
  }
}

/** Completes or fails a waiting task in the caller's transaction, with its dependents' dispatch. */
async function resolveTx(
  db: Db,
  deps: WaitDeps,
  scope: TenantScope,
  task: WaitingTask,
  r: Resolution,
  outcome: WaitOutcome,
  cancelTimer = true,
): Promise<TaskStatus> {
  if (cancelTimer && task.job_id && task.wait.timeoutMs !== undefined) {
    await deps.boss.cancel(WAIT_QUEUE, task.job_id, { db })
  }
  if (r.kind === 'complete') {
    assertStorableJson(r.result ?? null, '$.result', deps.limits)
    await deps.keyRing.prepare(deps.pool, scope)
    const written = await writeCompletionsTx({ db, boss: deps.boss, scope }, [
      {
        taskId: task.id,
        workflowId: task.workflow_id,
        attempt: task.attempt,
        result: deps.keyRing.encrypt(scope.tenantId, 'task.result', r.result ?? null, '$.result'),
        waiting: true,
      },
    ])
    outcome.dispatched.push(...written.dispatched)
    outcome.workflowsCompleted.push(...written.workflowsCompleted)
    return 'completed'
  }
  const failed = await failAttemptTx(
    { db, boss: deps.boss, scope },
    {
      taskId: task.id,
      workflowId: task.workflow_id,
      queue: task.queue,
      agentId: task.agent_id,
      attempt: task.attempt,
      failures: task.failures,
      maxAttempts: task.max_attempts,
      backoffMs: task.backoff_ms,
      backoffMaxMs: task.backoff_max_ms,
      timeoutMs: task.timeout_ms,
      error: r.error,
      permanent: true,
      waiting: true,
      deadLetter: r.error.code !== 'approval_rejected',
    },
  )
  if (failed.kind === 'failed' && failed.workflow) outcome.workflowsFailed.push(failed.workflow)
  return 'failed'
}

async function completeWaitJobsTx(db: Db, boss: PgBoss, jobs: readonly FetchedJob[]): Promise<void> {
  if (jobs.length === 0) return
  await boss.complete(
    WAIT_QUEUE,
    jobs.flatMap((j) => (j.jobId ? [{ id: j.jobId, retryCount: j.retryCount }] : [])),
    null,
    { db },
  )
}

// The task an event or decision is for: of the workflow's tasks that wait, or will wait, for it
// ($6: a decision's approver, who must be among the approvers a task names) and hold no event kept
// for them already, one whose match is the event's key before one that takes any key, a waiting
// one before one that will wait, then the oldest. $6 NULL: any approver (to tell "not an approver"
// from "nothing waits").
const CANDIDATE = `
SELECT ${TASK_COLUMNS}, t.status FROM agent_coordination t
WHERE t.tenant_id = $1 AND t.workflow_id = $2 AND t.wait->>'type' = $3 AND t.wait->>'name' = $4
  AND ($5::text IS NULL OR t.wait->>'match' IS NULL OR t.wait->>'match' = $5)
  AND ($5::text IS NOT NULL OR t.wait->>'match' IS NULL)
  AND ($6::text IS NULL OR NOT (t.wait ? 'approvers') OR t.wait->'approvers' ? $6::text)
  AND t.status IN ('pending', 'queued', 'waiting')
  AND NOT EXISTS (
    SELECT 1 FROM workflow_events e
    WHERE e.tenant_id = $1 AND e.workflow_id = $2 AND e.task_id = t.id AND e.consumed_at IS NULL)
ORDER BY t.wait->>'match' IS NOT NULL DESC, t.status = 'waiting' DESC, t.created_at, t.id
LIMIT 1 FOR UPDATE OF t`

/**
 * Delivers an event, or an approver's decision, to a workflow. One transaction: the inbox row, its
 * audit row (with who delivered it), and, when its task is waiting, the task's completion (or
 * failure) with its dependents' dispatch. Idempotent on the event id.
 */
export async function deliver(
  deps: WaitDeps,
  scope: TenantScope,
  workflowId: string,
  delivery: {
    kind: 'event' | 'approval'
    eventId: string
    name: string
    key: string | null
    payload: Json
    actor: string | null
  },
): Promise<DeliveryResult & { outcome: WaitOutcome }> {
  for (const [path, value] of [
    ['$.eventId', delivery.eventId],
    ['$.name', delivery.name],
    ...(delivery.key !== null ? [['$.key', delivery.key]] : []),
    ...(delivery.actor !== null ? [['$.actor', delivery.actor]] : []),
  ] as [string, unknown][]) {
    if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
      throw new InvalidInputError(`${path.slice(2)} must be a string of 1-200 characters`, path)
    }
    assertStorableJson(value, path)
  }
  assertStorableJson(delivery.payload ?? null, '$.payload', deps.limits)
  await deps.keyRing.prepare(deps.pool, scope)
  const stored = deps.keyRing.encrypt(scope.tenantId, 'event.payload', delivery.payload ?? null, '$.payload')
  return withTenantTx(deps.pool, scope, async (db) => {
    const outcome: WaitOutcome = { dispatched: [], workflowsCompleted: [], workflowsFailed: [] }
    const status = (await lockWorkflowsTx(db, scope, [workflowId])).get(workflowId)
    if (!status) throw new NotFoundError(`workflow ${workflowId}`)
    const earlier = await db.executeSql(
      `SELECT e.kind, e.name, e.match_key, e.payload, e.actor, e.task_id, t.status AS task_status
       FROM workflow_events e LEFT JOIN agent_coordination t ON t.tenant_id = $1 AND t.id = e.task_id
       WHERE e.tenant_id = $1 AND e.workflow_id = $2 AND e.event_id = $3`,
      [scope.tenantId, workflowId, delivery.eventId],
    )
    const before = earlier.rows[0]
    if (before) await deps.keyRing.prepareFor(db, scope, [before.payload])
    if (before) {
      const same =
        before.kind === delivery.kind &&
        before.name === delivery.name &&
        before.match_key === delivery.key &&
        before.actor === delivery.actor &&
        sameJson(
          deps.keyRing.decrypt(scope.tenantId, 'event.payload', before.payload),
          delivery.payload ?? null,
        )
      if (!same) {
        throw new WaitError(
          'event_conflict',
          `event id "${delivery.eventId}" was already delivered to workflow ${workflowId} with other contents`,
        )
      }
      return {
        eventId: delivery.eventId,
        status: 'duplicate',
        taskId: before.task_id,
        taskStatus: before.task_status,
        outcome,
      }
    }
    if (status !== 'running') {
      throw new WaitError(
        'workflow_not_running',
        `workflow ${workflowId} is ${status}: it takes no more events`,
      )
    }
    const candidate = (approver: string | null) =>
      db.executeSql(CANDIDATE, [
        scope.tenantId,
        workflowId,
        delivery.kind,
        delivery.name,
        delivery.key,
        approver,
      ])
    const approver = delivery.kind === 'approval' ? (delivery.actor ?? '') : null
    const found = await candidate(approver)
    const task = found.rows[0] as (WaitingTask & { status: TaskStatus }) | undefined
    if (!task) {
      if (approver !== null && (await candidate(null)).rows.length > 0) {
        throw new WaitError('not_an_approver', `${delivery.actor} is not an approver of "${delivery.name}"`)
      }
      throw new WaitError(
        'no_such_wait',
        `no task of workflow ${workflowId} waits, or will wait, for ${delivery.kind === 'approval' ? 'approval' : 'event'} "${delivery.name}"${delivery.key !== null ? ` with key "${delivery.key}"` : ''}, or it has one already`,
      )
    }
    const consume = task.status === 'waiting'
    await db.executeSql(
      `INSERT INTO workflow_events (tenant_id, workflow_id, event_id, kind, name, match_key, payload, actor, task_id, consumed_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, CASE WHEN $10 THEN now() END)`,
      [
        scope.tenantId,
        workflowId,
        delivery.eventId,
        delivery.kind,
        delivery.name,
        delivery.key,
        JSON.stringify(stored),
        delivery.actor,
        // The task it is for: a kept event is consumed when this task starts waiting.
        task.id,
        consume,
      ],
    )
    const approved =
      delivery.kind === 'approval' ? (delivery.payload as { approved?: boolean }).approved : undefined
    await db.executeSql(
      `INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
       SELECT $1, $2, $3, $4, $5, $6::jsonb, $7, correlation_id FROM workflows WHERE tenant_id = $1 AND id = $2`,
      [
        scope.tenantId,
        workflowId,
        task.id,
        task.agent_id,
        delivery.kind === 'approval' ? 'approval_decided' : 'event_received',
        JSON.stringify({
          eventId: delivery.eventId,
          name: delivery.name,
          ...(delivery.key !== null ? { key: delivery.key } : {}),
          ...(approved !== undefined ? { approved } : {}),
          consumed: consume,
        }),
        delivery.actor,
      ],
    )
    let taskStatus: TaskStatus = task.status
    if (consume) {
      taskStatus = await resolveTx(
        db,
        deps,
        scope,
        task,
        resolution(task.wait, delivery.kind, delivery.payload ?? null, delivery.actor),
        outcome,
      )
    }
    return {
      eventId: delivery.eventId,
      status: consume ? 'consumed' : 'kept',
      taskId: task.id,
      taskStatus,
      outcome,
    }
  })
}

/** JSON equality up to key order. */
function sameJson(a: unknown, b: unknown): boolean {
  return canonical(a) === canonical(b)
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    )
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`
  }
  return JSON.stringify(value ?? null)
}
