// Agents and workflow types: what users define, validated when defined so that a bad DAG fails at
// boot with an error naming the offending key, never at run time. Each task is checked, and the
// tasks ordered, by ./task-spec.ts.
import type { Logger } from 'pino'
import { DefinitionError } from '../errors.ts'
import {
  type InputSchema,
  type InputValidator,
  inputValidator,
  type SchemaInput,
  type SchemaOutput,
} from './input-schema.ts'
import type { Json } from './json.ts'
import { LIMITS, NAME, resolveTask, show, topologicalOrder } from './task-spec.ts'

export {
  checkStartAfter,
  isZonedTime,
  LIMITS,
  NO_ZONE,
  resolveTask,
  TASK_DEFAULTS,
  topologicalOrder,
  WAIT_AGENTS,
} from './task-spec.ts'

/** What an agent's handler gets for one attempt of one task. */
export interface AgentContext<TData = Json> {
  tenantId: string
  workflowId: string
  workflowType: string
  taskId: string
  taskKey: string
  taskType: string
  /** Dispatch generation of this task, starting at 1. */
  attempt: number
  /**
   * Stable key for the agent's own external side effects in this attempt (`<taskId>:<attempt>`).
   * An attempt can run again after a crash; the same key tells an external system it is a repeat.
   */
  idempotencyKey: string
  correlationId: string
  data: TData
  /** The workflow's input. */
  input: Json
  /** Results of the tasks this one depends on, by task key. */
  results: Record<string, Json>
  /** Logger bound to tenant, workflow, task, agent, attempt and correlation ids. */
  log: Logger
  /** Aborted on timeout, cancellation of the workflow, or worker shutdown past its grace period. */
  signal: AbortSignal
  /** Tells the engine the agent is alive; long-running agents call it periodically. */
  heartbeat(): Promise<void>
  /**
   * Adds tasks to this workflow. They are validated and inserted in the same transaction that
   * completes this task, and dispatched when their dependencies are done.
   */
  spawn(tasks: SpawnedTask | SpawnedTask[]): void
  /**
   * Ends this attempt without spending one: the task is queued again to run after `delay` (ms, or
   * `{ until }` a time), judged by the database clock. Throws a Snooze, which the worker catches:
   * call it as `return ctx.snooze(60_000)` or `throw ...`, and do not catch it yourself.
   */
  snooze(delay: number | { until: Date | string }): never
  /** The version of this agent that runs the attempt. */
  agentVersion: number
}

export type AgentHandler<TData = Json, TResult extends Json = Json> = (
  ctx: AgentContext<TData>,
) => Promise<TResult>

export interface AgentDefinition<TData = Json, TResult extends Json = Json> {
  readonly kind: 'agent'
  readonly id: string
  /**
   * The agent's version (default 1). A workflow run records the version of each of its agents when
   * it starts and runs every task on that version: a worker without it leaves the task to one that
   * has it. Raise it when a change must not apply to runs already in flight.
   */
  readonly version: number
  /** Task types this agent handles. */
  readonly taskTypes: readonly string[]
  /** Most tasks of this agent one worker process runs at once (default: the worker's concurrency). */
  readonly concurrency: number | undefined
  readonly handler: AgentHandler<TData, TResult>
  /**
   * Closes what the agent itself opened (a pool, a client, a timer), so that it does not keep the
   * process alive after shutdown. Called once when the engine closes, after its workers stopped
   * (running agents finished, or were released past the grace period); given at most
   * SHUTDOWN_GRACE_MS. Errors are logged, not thrown. One function shared by several agents runs once.
   */
  readonly close: (() => void | Promise<void>) | undefined
}

export interface RetryOptions {
  /** Attempts in all, including the first (default 3). */
  maxAttempts?: number
  /** Delay before the first retry, doubled per failure, with jitter (default 1000 ms). */
  backoffMs?: number
  /** Upper bound of the retry delay (default 5 minutes). */
  backoffMaxMs?: number
}

export interface TaskOptions extends RetryOptions {
  /** The agent is aborted through its signal after this long (default 5 minutes). */
  timeoutMs?: number
}

/** When a task may start: a delay (ms) from when it becomes ready, or a time (Date or ISO 8601). */
export type StartAfter = number | Date | string

/** What a wait does when its timeout passes first. */
export type WaitTimeout =
  /** The task fails, and with it the workflow (the default). */
  | 'fail'
  /** The task completes with this result, as if it had been delivered. */
  | { result: Json }

export interface WaitOptions {
  /** How long the task waits once it is waiting (default: no limit). */
  timeoutMs?: number
  onTimeout?: WaitTimeout
}

/** A human decision: the task completes when an approver approves; a rejection fails the workflow. */
export interface ApprovalWait extends WaitOptions {
  /** The name decisions are delivered under (default: the task key). */
  name?: string
  /** Who may decide (default: anyone with the tenant's credentials, who must name themselves). */
  approvers?: readonly string[]
}

/** An external event: the task completes with the event's payload as its result. */
export interface EventWait<TInput = Json> extends WaitOptions {
  /** The event's name, e.g. `scan.completed`. */
  name: string
  /** Take only an event delivered with this key (e.g. an id from the input). */
  match?: string | ((input: TInput) => string)
}

interface TaskKind<TInput> {
  /** The agent that runs the task; or, instead of an agent, one of `approval` and `event`. */
  agent?: AgentDefinition<any, any> | string
  /** A wait task completed by an approver's decision instead of an agent. */
  approval?: ApprovalWait
  /** A wait task completed by an external event instead of an agent. */
  event?: EventWait<TInput>
}

export interface TaskSpec<TInput = Json> extends TaskOptions, TaskKind<TInput> {
  key: string
  /** Task type; defaults to the agent's first task type. */
  type?: string
  dependsOn?: readonly string[]
  /** The task's data, or a function of the workflow input computed when the workflow starts. */
  data?: Json | ((input: TInput) => Json)
  /** A durable timer: the task starts no earlier than this (a function of the input: computed at start). */
  startAfter?: StartAfter | ((input: TInput) => StartAfter)
}

/** A task added at run time by an agent (see AgentContext.spawn). */
export interface SpawnedTask extends TaskOptions, TaskKind<any> {
  key: string
  type?: string
  /** Keys of tasks in the same workflow (existing or spawned in the same call). */
  dependsOn?: readonly string[]
  data?: Json
  startAfter?: StartAfter
}

/** A wait task's declaration as stored on its row (the `wait` column). */
export interface WaitSpec {
  type: 'approval' | 'event'
  name: string
  match?: string
  approvers?: string[]
  timeoutMs?: number
  onTimeout: WaitTimeout
}

/**
 * A workflow type. `TInput` is what its tasks' functions get (the validated input), `TStart` what a
 * caller passes to start it (they differ for a schema that transforms or fills in defaults).
 */
export interface WorkflowDefinition<TInput = Json, TStart = TInput> {
  readonly kind: 'workflow'
  readonly name: string
  readonly version: number
  /** The input check of `defineWorkflow({ input })`, run before anything is written; null: none. */
  readonly input: InputValidator<TStart, TInput> | null
  readonly tasks: readonly ResolvedTaskSpec<TInput>[]
  /** Task keys in an order where every task comes after its dependencies. */
  readonly order: readonly string[]
}

export interface ResolvedTaskSpec<TInput = Json> {
  key: string
  agentId: string
  /** The agent version the task needs; null: any (an agent named by id). */
  agentVersion: number | null
  /** Wait tasks: what they wait for (match may still be a function of the input). */
  wait: (Omit<WaitSpec, 'match'> & { match?: string | ((input: TInput) => string) }) | null
  startAfter: StartAfter | ((input: TInput) => StartAfter) | undefined
  type: string
  dependsOn: readonly string[]
  data: Json | ((input: TInput) => Json) | undefined
  maxAttempts: number
  backoffMs: number
  backoffMaxMs: number
  timeoutMs: number
}

export function defineAgent<TData = Json, TResult extends Json = Json>(spec: {
  id: string
  version?: number
  taskTypes?: readonly string[]
  concurrency?: number
  handler: AgentHandler<TData, TResult>
  close?: () => void | Promise<void>
}): AgentDefinition<TData, TResult> {
  if (spec === null || typeof spec !== 'object')
    throw new DefinitionError('an agent definition must be an object')
  if (typeof spec.id !== 'string' || !NAME.test(spec.id)) {
    throw new DefinitionError(
      `agent id ${show(spec.id)} must be 1-63 characters of letters, digits, '_', '.', '-'`,
      typeof spec.id === 'string' ? spec.id : undefined,
    )
  }
  if (typeof spec.handler !== 'function')
    throw new DefinitionError(`agent "${spec.id}" has no handler`, spec.id)
  const taskTypes = spec.taskTypes ?? [spec.id]
  if (!Array.isArray(taskTypes) || taskTypes.length === 0) {
    throw new DefinitionError(`agent "${spec.id}" handles no task type (taskTypes must be a list)`, spec.id)
  }
  for (const t of taskTypes) {
    if (typeof t !== 'string' || !NAME.test(t)) {
      throw new DefinitionError(`agent "${spec.id}" has an invalid task type ${show(t)}`, spec.id)
    }
  }
  if (spec.concurrency !== undefined && !(Number.isInteger(spec.concurrency) && spec.concurrency > 0)) {
    throw new DefinitionError(`agent "${spec.id}" concurrency must be a positive integer`, spec.id)
  }
  const version = spec.version ?? 1
  if (!Number.isInteger(version) || version < 1 || version > 1_000_000) {
    throw new DefinitionError(`agent "${spec.id}" version must be a positive integer`, spec.id)
  }
  if (spec.close !== undefined && typeof spec.close !== 'function') {
    throw new DefinitionError(`agent "${spec.id}" close must be a function`, spec.id)
  }
  return Object.freeze({
    kind: 'agent',
    id: spec.id,
    version,
    taskTypes: Object.freeze([...taskTypes]),
    concurrency: spec.concurrency,
    handler: spec.handler,
    close: spec.close,
  })
}

export interface WorkflowSpec<TInput> {
  name: string
  version?: number
  tasks: readonly TaskSpec<TInput>[]
}

/**
 * Defines a workflow type. With `input`, a Standard Schema validator (zod, valibot, arktype, ...)
 * or a JSON Schema (e.g. from TypeBox), every start is checked against it before anything is
 * written (invalid_input naming the path of the first problem), the tasks' functions get the
 * validated value, and starting it through the definition is typed by the schema.
 */
export function defineWorkflow<S extends InputSchema>(
  spec: WorkflowSpec<SchemaOutput<S>> & { input: S },
): WorkflowDefinition<SchemaOutput<S>, SchemaInput<S>>
export function defineWorkflow<TInput = Json>(
  spec: WorkflowSpec<TInput> & { input?: InputSchema },
): WorkflowDefinition<TInput>
export function defineWorkflow<TInput = Json>(
  spec: WorkflowSpec<TInput> & { input?: InputSchema },
): WorkflowDefinition<TInput> {
  if (spec === null || typeof spec !== 'object')
    throw new DefinitionError('a workflow definition must be an object')
  if (typeof spec.name !== 'string' || !NAME.test(spec.name)) {
    throw new DefinitionError(
      `workflow name ${show(spec.name)} must be 1-63 characters of letters, digits, '_', '.', '-'`,
    )
  }
  const version = spec.version ?? 1
  if (!Number.isInteger(version) || version < 1)
    throw new DefinitionError(`workflow "${spec.name}" version must be a positive integer`)
  if (!Array.isArray(spec.tasks) || spec.tasks.length === 0) {
    throw new DefinitionError(`workflow "${spec.name}" has no tasks`)
  }
  if (spec.tasks.length > LIMITS.maxTasksPerWorkflow) {
    throw new DefinitionError(
      `workflow "${spec.name}" has ${spec.tasks.length} tasks, over the limit of ${LIMITS.maxTasksPerWorkflow}`,
    )
  }
  // Array.from visits the holes of a sparse array (as undefined), which map would skip.
  const tasks = Array.from(spec.tasks, (t) => resolveTask(t, `workflow "${spec.name}"`))
  const order = topologicalOrder(tasks, new Set(), `workflow "${spec.name}"`)
  const input =
    spec.input === undefined
      ? null
      : (inputValidator(spec.input, spec.name) as InputValidator<TInput, TInput>)
  return Object.freeze({
    kind: 'workflow',
    name: spec.name,
    version,
    input,
    tasks: Object.freeze(tasks),
    order,
  })
}
