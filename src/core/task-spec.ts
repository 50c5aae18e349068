// Task specs, validated: what defineWorkflow (./definition.ts) and an agent's spawn (src/flow/spawn.ts)
// check of each task (its key, agent or wait, type, dependencies, retry options, timer) and of their
// order, with the limits and defaults that apply. Every problem is a DefinitionError naming the task.
// The types are declared in ./definition.ts, which re-exports what callers use from here.
import { DefinitionError } from '../errors.ts'
import type {
  AgentDefinition,
  ApprovalWait,
  EventWait,
  ResolvedTaskSpec,
  SpawnedTask,
  TaskSpec,
  WaitOptions,
} from './definition.ts'
import { assertStorableJson } from './json.ts'

/** Agent ids of wait tasks: not valid agent ids, so no agent can share them. */
export const WAIT_AGENTS = { approval: '@approval', event: '@event' } as const

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

export const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const KEY = /^[A-Za-z0-9][A-Za-z0-9_.:/-]*$/

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
export function show(value: unknown): string {
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
