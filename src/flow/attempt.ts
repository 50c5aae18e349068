// Step 4 of the data flow: running one attempt's agent. Builds the agent's context, runs the
// handler under the task's timeout and abort signal, and says how the attempt ended: a result to
// complete with (and the tasks it spawned), an error to record as a failure, a snooze, or an abort
// (cancelled, lease lost, shutdown) whose outcome another transaction decided. No database access:
// the heartbeat the agent may call is given, and recording the outcome is src/flow/record.ts.
import type { Logger } from 'pino'
import {
  type AgentContext,
  type AgentDefinition,
  isZonedTime,
  NO_ZONE,
  type SpawnedTask,
} from '../core/definition.ts'
import { assertStorableJson, type Json, type JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TenantScope } from '../db/tx.ts'
import { InvalidInputError, isPermanent, LeaseLostError, serializeError, Snooze } from '../errors.ts'
import { failpoint } from '../failpoints.ts'
import { type Usage, UsageMeter } from '../usage/meter.ts'
import type { ClaimedTask } from './claimed.ts'

/** Why an agent's signal was aborted, other than its task losing its lease (LeaseLostError). */
export class AbortReason extends Error {
  readonly kind: 'timeout' | 'cancelled' | 'shutdown'
  constructor(kind: 'timeout' | 'cancelled' | 'shutdown', message: string) {
    super(message)
    this.name = kind === 'timeout' ? 'TimeoutError' : 'AbortError'
    this.kind = kind
  }
}

export type AttemptEnd =
  /** The agent returned: `result` is stored as it will be (encrypted). */
  | { kind: 'returned'; result: Json; spawned: SpawnedTask[]; usage: Usage | null }
  /** The agent threw, timed out or returned what cannot be stored. */
  | {
      kind: 'threw'
      error: ReturnType<typeof serializeError>
      permanent: boolean
      cause: unknown
      usage: Usage | null
    }
  | { kind: 'snoozed'; snooze: Snooze }
  /**
   * Aborted by a decision made elsewhere (cancelled, lease lost: `lease_lost`; the worker shutting
   * down: `released`); nothing to write. `counted: false`: the agent had returned as shutdown
   * aborted it, and the release counts it.
   */
  | { kind: 'aborted'; outcome: 'lease_lost' | 'released'; counted: boolean }

export interface AttemptRun {
  agent: AgentDefinition<any, any>
  task: ClaimedTask
  scope: TenantScope
  controller: AbortController
  log: Logger
  limits: JsonLimits
  keyRing: KeyRing
  /** Stamps the task's heartbeat; false when the attempt no longer holds the task. */
  heartbeat: () => Promise<boolean>
}

/** Runs the agent of one attempt and says how the attempt ended; never throws. */
export async function runAttempt(r: AttemptRun): Promise<AttemptEnd> {
  const { task, scope, controller, agent } = r
  const spawned: SpawnedTask[] = []
  const meter = new UsageMeter(agent.id, agent.usage)
  const timer = setTimeout(
    () => controller.abort(new AbortReason('timeout', `task timed out after ${task.timeoutMs} ms`)),
    task.timeoutMs,
  )
  const ctx: AgentContext<any> = {
    tenantId: scope.tenantId,
    workflowId: task.workflowId,
    workflowType: task.workflowType,
    taskId: task.taskId,
    taskKey: task.taskKey,
    taskType: task.taskType,
    attempt: task.attempt,
    idempotencyKey: `${task.taskId}:${task.attempt}`,
    correlationId: task.correlationId,
    data: task.data,
    input: task.input,
    results: task.results,
    log: r.log,
    signal: controller.signal,
    heartbeat: async () => {
      if (!(await r.heartbeat())) {
        controller.abort(new LeaseLostError(task.taskId, task.attempt))
        throw controller.signal.reason
      }
    },
    spawn: (t) => {
      spawned.push(...(Array.isArray(t) ? t : [t]))
    },
    snooze: (delay) => {
      throw new Snooze(snoozeDelay(delay))
    },
    agentVersion: agent.version,
    usage: (amounts) => meter.add(amounts),
  }
  let end: AttemptEnd
  try {
    // A payload that could not be decrypted fails the attempt without running the agent.
    if (task.payloadError) throw task.payloadError
    // Promise.resolve: a handler written without async may return a plain value.
    const returned = await raceAbort(Promise.resolve(agent.handler(ctx)), controller.signal)
    failpoint('agent.after-return')
    assertStorableJson(returned ?? null, '$.result', r.limits)
    const result = r.keyRing.encrypt(
      scope.tenantId,
      'task.result',
      (returned ?? null) as Json,
      '$.result',
      task.sealKey,
    )
    end = { kind: 'returned', result, spawned, usage: null }
  } catch (thrown) {
    if (isSnooze(thrown) && !controller.signal.aborted) return { kind: 'snoozed', snooze: thrown }
    const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined
    if (reason instanceof LeaseLostError || (reason instanceof AbortReason && reason.kind !== 'timeout')) {
      // Cancelled, lease lost or released: another transaction already decided this task's fate.
      const kind = reason instanceof AbortReason ? reason.kind : 'lease_lost'
      r.log.info({ reason: kind }, 'agent aborted')
      return { kind: 'aborted', outcome: kind === 'shutdown' ? 'released' : 'lease_lost', counted: true }
    }
    const error = reason instanceof AbortReason ? reason : thrown
    end = {
      kind: 'threw',
      error: serializeError(error),
      permanent: isPermanent(error),
      cause: error,
      usage: null,
    }
  } finally {
    clearTimeout(timer)
  }
  const reason: unknown = controller.signal.aborted ? controller.signal.reason : undefined
  if (reason instanceof AbortReason && reason.kind === 'shutdown')
    return { kind: 'aborted', outcome: 'released', counted: false }
  // What the agent reported (ctx.usage), written with the attempt's end.
  return { ...end, usage: meter.total() ?? null }
}

/** Whether an agent threw a snooze; never throws itself (agents throw Proxies whose traps throw). */
function isSnooze(thrown: unknown): thrown is Snooze {
  try {
    return thrown instanceof Snooze
  } catch {
    return false
  }
}

/** A snooze's delay (0 to 365 days), or its time: the database computes when that is. */
function snoozeDelay(delay: number | { until: Date | string }): { delayMs: number; until?: string } {
  if (typeof delay === 'number' && Number.isFinite(delay)) {
    return { delayMs: Math.min(Math.max(0, Math.round(delay)), 365 * 24 * 3600_000) }
  }
  const given = delay !== null && typeof delay === 'object' && 'until' in delay ? delay.until : undefined
  if (typeof given === 'string' && Number.isFinite(Date.parse(given)) && !isZonedTime(given)) {
    throw new InvalidInputError(`snooze until ${JSON.stringify(given)} ${NO_ZONE}`, '$.snooze')
  }
  const until = given === undefined ? null : new Date(given)
  if (!until || !Number.isFinite(until.getTime())) {
    throw new InvalidInputError('snooze takes a delay in ms or { until: a time }', '$.snooze')
  }
  return { delayMs: 0, until: until.toISOString() }
}

/** Resolves or rejects with the promise, or rejects with the signal's reason as soon as it aborts. */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}
