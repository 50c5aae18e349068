// Agents and workflow types: what users define, validated when defined so that a bad DAG fails at
// boot with an error naming the offending key, never at run time.
import type { Logger } from 'pino'
import { DefinitionError } from '../errors.ts'
import {
  type InputSchema,
  type InputValidator,
  inputValidator,
  type SchemaInput,
  type SchemaOutput,
} from './input-schema.ts'
import { assertStorableJson, type Json } from './json.ts'

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
  /**
   * Reports what this attempt spent, in the dimensions the agent declares (`usage` in defineAgent),
   * as non-negative integers (money in micro-units: `costMicros`). May be called several times: the
   * amounts are summed. Recorded with the attempt's end, in its transaction: a completed or failed
   * attempt's usage counts; a result discarded (lease lost) is not. See docs/usage-and-budgets.md.
   * Throws UsageError for an undeclared dimension or an amount that is not such an integer.
   */
  usage(amounts: Readonly<Record<string, number>>): void
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
  /** The usage dimensions the agent reports through ctx.usage (e.g. `tokens`, `costMicros`). */
  readonly usage: readonly string[]
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

interface WaitOptions {
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

/** Agent ids of wait tasks: not valid agent ids, so no agent can share them. */
export const WAIT_AGENTS = { approval: '@approval', event: '@event' } as const

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

export const TASK_DEFAULTS = {
  maxAttempts: 3,
  backoffMs: 1000,
  backoffMaxMs: 5 * 60_000,
  timeoutMs: 5 * 60_000,
} as const

export const LIMITS = {
  /** Tasks one workflow definition (or one workflow, with spawned tasks) may have. */
  maxTasksPerWorkflow: 10_000,
  maxDependencies: 1_000,
  maxKeyLength: 200,
  maxAttempts: 100,
  maxTimeoutMs: 7 * 24 * 3600_000,
} as const

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const KEY = /^[A-Za-z0-9][A-Za-z0-9_.:/-]*$/

export function defineAgent<TData = Json, TResult extends Json = Json>(spec: {
  id: string
  version?: number
  taskTypes?: readonly string[]
  concurrency?: number
  handler: AgentHandler<TData, TResult>
  close?: () => void | Promise<void>
  /** Usage dimensions the agent reports (ctx.usage): names like agent ids, at most 32. */
  usage?: readonly string[]
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
  const usage = spec.usage ?? []
  if (!Array.isArray(usage) || usage.length > 32) {
    throw new DefinitionError(`agent "${spec.id}" usage must be a list of at most 32 dimensions`, spec.id)
  }
  for (const d of usage) {
    if (typeof d !== 'string' || !NAME.test(d)) {
      throw new DefinitionError(`agent "${spec.id}" has an invalid usage dimension ${show(d)}`, spec.id)
    }
  }
  return Object.freeze({
    kind: 'agent',
    id: spec.id,
    version,
    taskTypes: Object.freeze([...taskTypes]),
    concurrency: spec.concurrency,
    handler: spec.handler,
    close: spec.close,
    usage: Object.freeze([...new Set(usage)]),
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

/** Validates one task spec and fills in its defaults. */
export function resolveTask<TInput>(
  t: TaskSpec<TInput> | SpawnedTask,
  where: string,
): ResolvedTaskSpec<TInput> {
  if (t === null || typeof t !== 'object') throw new DefinitionError(`${where}: a task is not an object`)
  const key = t.key
  if (typeof key !== 'string' || key.length === 0 || key.length > LIMITS.maxKeyLength || !KEY.test(key)) {
    throw new DefinitionError(
      `${where}: task key ${show(key)} must be 1-${LIMITS.maxKeyLength} characters of letters, digits, '_', '.', ':', '/', '-'`,
      typeof key === 'string' ? key : undefined,
    )
  }
  const kinds = (['agent', 'approval', 'event'] as const).filter((k) => t[k] !== undefined)
  if (kinds.length > 1) {
    throw new DefinitionError(`${where}: task "${key}" has ${kinds.join(' and ')}: give exactly one`, key)
  }
  const wait = resolveWait(t, key, where)
  const agent = wait ? undefined : t.agent
  const agentId = wait
    ? WAIT_AGENTS[wait.type]
    : typeof agent === 'string'
      ? agent
      : isAgent(agent)
        ? agent.id
        : undefined
  if (agentId === undefined || (!wait && !NAME.test(agentId))) {
    throw new DefinitionError(`${where}: task "${key}" has no valid agent (or approval, or event)`, key)
  }
  const startAfter = t.startAfter
  if (startAfter !== undefined && typeof startAfter !== 'function') checkStartAfter(startAfter, key, where)
  let type = wait ? wait.type : t.type
  if (typeof agent === 'object') {
    type ??= agent.taskTypes[0]
    if (type === undefined || !agent.taskTypes.includes(type)) {
      throw new DefinitionError(
        `${where}: task "${key}" has type ${show(type)}, which agent "${agentId}" does not handle`,
        key,
      )
    }
  }
  type ??= agentId
  if (typeof type !== 'string' || !NAME.test(type))
    throw new DefinitionError(`${where}: task "${key}" has an invalid type ${show(type)}`, key)
  const dependsOn = t.dependsOn ?? []
  if (!Array.isArray(dependsOn) || dependsOn.some((d) => typeof d !== 'string')) {
    throw new DefinitionError(`${where}: task "${key}" dependsOn must be an array of task keys`, key)
  }
  if (dependsOn.length > LIMITS.maxDependencies) {
    throw new DefinitionError(
      `${where}: task "${key}" has more than ${LIMITS.maxDependencies} dependencies`,
      key,
    )
  }
  if (dependsOn.includes(key)) throw new DefinitionError(`${where}: task "${key}" depends on itself`, key)
  if (new Set(dependsOn).size !== dependsOn.length) {
    throw new DefinitionError(`${where}: task "${key}" lists a dependency twice`, key)
  }
  const maxAttempts = intOption(
    t.maxAttempts,
    TASK_DEFAULTS.maxAttempts,
    1,
    LIMITS.maxAttempts,
    'maxAttempts',
    key,
    where,
  )
  const backoffMs = intOption(
    t.backoffMs,
    TASK_DEFAULTS.backoffMs,
    0,
    LIMITS.maxTimeoutMs,
    'backoffMs',
    key,
    where,
  )
  const backoffMaxMs = intOption(
    t.backoffMaxMs,
    Math.max(TASK_DEFAULTS.backoffMaxMs, backoffMs),
    backoffMs,
    LIMITS.maxTimeoutMs,
    'backoffMaxMs',
    key,
    where,
  )
  const timeoutMs = intOption(
    t.timeoutMs,
    TASK_DEFAULTS.timeoutMs,
    1,
    LIMITS.maxTimeoutMs,
    'timeoutMs',
    key,
    where,
  )
  return {
    key,
    agentId,
    agentVersion: isAgent(agent) && Number.isInteger(agent.version) ? agent.version : null,
    wait,
    startAfter,
    type,
    dependsOn: [...dependsOn],
    data: t.data,
    maxAttempts,
    backoffMs,
    backoffMaxMs,
    timeoutMs,
  }
}

function resolveWait<TInput>(
  t: TaskSpec<TInput> | SpawnedTask,
  key: string,
  where: string,
): ResolvedTaskSpec<TInput>['wait'] {
  const spec = t.approval ?? t.event
  if (spec === undefined) return null
  const type = t.approval !== undefined ? 'approval' : 'event'
  if (spec === null || typeof spec !== 'object') {
    throw new DefinitionError(`${where}: task "${key}" ${type} must be an object`, key)
  }
  const name = (spec as { name?: unknown }).name ?? (type === 'approval' ? key : undefined)
  if (typeof name !== 'string' || name.length === 0 || name.length > LIMITS.maxKeyLength || !KEY.test(name)) {
    throw new DefinitionError(
      `${where}: task "${key}" ${type} name ${show(name)} must be 1-${LIMITS.maxKeyLength} characters of letters, digits, '_', '.', ':', '/', '-'`,
      key,
    )
  }
  const wait: NonNullable<ResolvedTaskSpec<TInput>['wait']> = { type, name, onTimeout: 'fail' }
  if (type === 'event') {
    const match = (spec as EventWait<TInput>).match
    if (match !== undefined) {
      if (
        typeof match !== 'function' &&
        (typeof match !== 'string' || match.length === 0 || match.length > 200)
      ) {
        throw new DefinitionError(
          `${where}: task "${key}" event match must be a string of 1-200 characters`,
          key,
        )
      }
      if (typeof match === 'string') storable(match, 'event match', key, where)
      wait.match = match
    }
  } else {
    const approvers = (spec as ApprovalWait).approvers
    if (approvers !== undefined) {
      if (
        !Array.isArray(approvers) ||
        approvers.length === 0 ||
        approvers.some((a) => typeof a !== 'string' || a.length === 0 || a.length > 200)
      ) {
        throw new DefinitionError(`${where}: task "${key}" approvers must be a non-empty list of names`, key)
      }
      storable(approvers, 'approvers', key, where)
      wait.approvers = [...approvers]
    }
  }
  const timeoutMs = (spec as WaitOptions).timeoutMs
  if (timeoutMs !== undefined) {
    wait.timeoutMs = intOption(timeoutMs, 0, 1, 365 * 24 * 3600_000, `${type} timeoutMs`, key, where)
  }
  const onTimeout = (spec as WaitOptions).onTimeout
  if (onTimeout !== undefined) {
    const ok =
      onTimeout === 'fail' ||
      (typeof onTimeout === 'object' &&
        onTimeout !== null &&
        !Array.isArray(onTimeout) &&
        'result' in onTimeout)
    if (!ok) {
      throw new DefinitionError(`${where}: task "${key}" onTimeout must be 'fail' or { result }`, key)
    }
    if (wait.timeoutMs === undefined) {
      throw new DefinitionError(`${where}: task "${key}" has onTimeout but no timeoutMs`, key)
    }
    if (onTimeout !== 'fail') storable(onTimeout.result ?? null, 'onTimeout.result', key, where)
    wait.onTimeout = onTimeout === 'fail' ? 'fail' : { result: onTimeout.result ?? null }
  }
  return wait
}

/**
 * A value the wait stores (in the task's row) must be one PostgreSQL can store: checked when the
 * workflow is defined, not when a timeout fires (see assertStorableJson; the engine's own payload
 * limit is checked again at start).
 */
function storable(value: unknown, label: string, key: string, where: string): void {
  try {
    assertStorableJson(value, label)
  } catch (error) {
    throw new DefinitionError(`${where}: task "${key}" ${(error as Error).message}`, key)
  }
}

/** Checks a startAfter value (a delay in ms, or a time); throws a DefinitionError naming the task. */
export function checkStartAfter(value: unknown, key: string, where: string): void {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0 || value > 365 * 24 * 3600_000) {
      throw new DefinitionError(
        `${where}: task "${key}" startAfter must be a delay of 0 to 365 days in milliseconds, or a time`,
        key,
      )
    }
    return
  }
  const time = value instanceof Date ? value.getTime() : typeof value === 'string' ? Date.parse(value) : NaN
  if (!Number.isFinite(time) || (typeof value === 'string' && !/^\d{4}-\d\d-\d\d/.test(value))) {
    throw new DefinitionError(
      `${where}: task "${key}" startAfter ${show(value)} is neither a delay in milliseconds nor an ISO 8601 time`,
      key,
    )
  }
  if (typeof value === 'string' && !isZonedTime(value)) {
    throw new DefinitionError(`${where}: task "${key}" startAfter ${show(value)} ${NO_ZONE}`, key)
  }
}

const ZONED_TIME = /^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)$/i

/** Why a time string without a zone is refused (startAfter, snooze until). */
export const NO_ZONE = 'has no time zone: a time needs a zone (Z or ±hh:mm), e.g. 2026-12-01T09:00:00Z'

/**
 * Whether a time string is an ISO 8601 date and time that says its zone. Without one
 * ('2026-12-01T09:00:00') JavaScript reads it in the process's own time zone, so servers in
 * different zones would start the task at different times; a date alone is as ambiguous.
 */
export function isZonedTime(value: string): boolean {
  return ZONED_TIME.test(value)
}

/**
 * Whether a value is an agent as defineAgent makes them. Definitions also come from plain
 * JavaScript, where anything can be passed: `kind` alone does not make an agent.
 */
function isAgent(value: unknown): value is AgentDefinition<any, any> {
  const a = value as Partial<AgentDefinition> | null
  return (
    typeof a === 'object' &&
    a !== null &&
    a.kind === 'agent' &&
    typeof a.id === 'string' &&
    Array.isArray(a.taskTypes)
  )
}

/** A value as an error message shows it: never throws (on a BigInt, a Symbol, a cycle). */
function show(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value)
  } catch {
    return Object.prototype.toString.call(value)
  }
}

function intOption(
  value: unknown,
  fallback: number,
  min: number,
  max: number,
  name: string,
  key: string,
  where: string,
): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new DefinitionError(`${where}: task "${key}" ${name} must be an integer from ${min} to ${max}`, key)
  }
  return value
}

/**
 * Orders tasks so each comes after its dependencies (Kahn's algorithm). `existing` holds keys that
 * are already satisfied references (tasks already in the workflow, for spawned tasks). Throws on
 * duplicate keys, unknown dependencies and cycles, naming a key involved.
 */
export function topologicalOrder(
  tasks: readonly { key: string; dependsOn: readonly string[] }[],
  existing: ReadonlySet<string>,
  where: string,
): string[] {
  const byKey = new Map<string, { key: string; dependsOn: readonly string[] }>()
  for (const t of tasks) {
    if (byKey.has(t.key) || existing.has(t.key))
      throw new DefinitionError(`${where}: duplicate task key "${t.key}"`, t.key)
    byKey.set(t.key, t)
  }
  const indegree = new Map<string, number>()
  const children = new Map<string, string[]>()
  for (const t of tasks) {
    let n = 0
    for (const d of t.dependsOn) {
      if (byKey.has(d)) {
        n++
        let list = children.get(d)
        if (!list) children.set(d, (list = []))
        list.push(t.key)
      } else if (!existing.has(d)) {
        throw new DefinitionError(`${where}: task "${t.key}" depends on unknown task "${d}"`, t.key)
      }
    }
    indegree.set(t.key, n)
  }
  const order: string[] = []
  const ready = tasks.filter((t) => indegree.get(t.key) === 0).map((t) => t.key)
  while (ready.length > 0) {
    const key = ready.pop() as string
    order.push(key)
    for (const child of children.get(key) ?? []) {
      const n = (indegree.get(child) as number) - 1
      indegree.set(child, n)
      if (n === 0) ready.push(child)
    }
  }
  if (order.length !== tasks.length) {
    // Walk back along unresolved dependencies: after as many steps as there are tasks, we are on the cycle.
    const stuck = (key: string) => (indegree.get(key) ?? 0) > 0
    let key = (tasks.find((t) => stuck(t.key)) as { key: string }).key
    for (let i = 0; i < tasks.length; i++) {
      key = (byKey.get(key) as { dependsOn: readonly string[] }).dependsOn.find(stuck) as string
    }
    throw new DefinitionError(`${where}: task "${key}" is part of a dependency cycle`, key)
  }
  return order
}
