// Turns a workflow definition and an input into the rows to insert: ids, dependency edges in both
// directions, remaining-dependency counts, and which tasks are ready at once. Pure.
import { InvalidInputError } from '../errors.ts'
import {
  checkStartAfter,
  type ResolvedTaskSpec,
  type WaitSpec,
  type WorkflowDefinition,
} from './definition.ts'
import { assertStorableJson, type Json, type JsonLimits } from './json.ts'

export interface PlannedTask {
  id: string
  task_key: string
  agent_id: string
  task_type: string
  queue: string
  data: Json
  status: 'pending' | 'queued'
  dependencies: string[]
  depends_on: string[]
  dependents: string[]
  deps_remaining: number
  attempt: number
  max_attempts: number
  backoff_ms: number
  backoff_max_ms: number
  timeout_ms: number
  job_id: string | null
  agent_version: number | null
  wait: WaitSpec | null
  /** Durable timer: no earlier than this time (ISO 8601) ... */
  start_at: string | null
  /** ... and no earlier than this long after the task becomes ready. */
  start_delay_ms: number | null
}

export interface PlanDeps {
  newId: () => string
  queueName: (agentId: string) => string
  limits: JsonLimits
  /**
   * The workflow input, for the parts of a task computed from it when the workflow starts (an event
   * wait's match, a startAfter). Spawned tasks have none: such parts must be plain values there.
   */
  input?: { value: unknown }
}

/**
 * Plans task rows for `specs`. `existing` maps keys of tasks already in the workflow (for spawned
 * tasks) to their id and whether they count as done; `data` is each spec's data already computed.
 */
export function planTasks(
  specs: readonly ResolvedTaskSpec<any>[],
  data: readonly Json[],
  deps: PlanDeps,
  existing: ReadonlyMap<string, { id: string; done: boolean }> = new Map(),
): PlannedTask[] {
  const ids = new Map<string, string>()
  for (const s of specs) ids.set(s.key, deps.newId())
  const rows = specs.map((s, i): PlannedTask => {
    const dependsOn = s.dependsOn.map((d) => ids.get(d) ?? (existing.get(d)?.id as string))
    const remaining = s.dependsOn.filter((d) => ids.has(d) || existing.get(d)?.done === false).length
    return {
      id: ids.get(s.key) as string,
      task_key: s.key,
      agent_id: s.agentId,
      task_type: s.type,
      queue: deps.queueName(s.agentId),
      data: data[i] ?? null,
      status: remaining === 0 ? 'queued' : 'pending',
      dependencies: [...s.dependsOn],
      depends_on: dependsOn,
      dependents: [],
      deps_remaining: remaining,
      attempt: remaining === 0 ? 1 : 0,
      max_attempts: s.maxAttempts,
      backoff_ms: s.backoffMs,
      backoff_max_ms: s.backoffMaxMs,
      timeout_ms: s.timeoutMs,
      job_id: remaining === 0 ? deps.newId() : null,
      agent_version: s.agentVersion,
      wait: waitOf(s, deps),
      ...timer(s, deps),
    }
  })
  const byId = new Map(rows.map((r) => [r.id, r]))
  for (const r of rows) for (const parent of r.depends_on) byId.get(parent)?.dependents.push(r.id)
  return rows
}

/** A part of a task that may be a function of the input, computed (and checked) as `{ [name]: value }`. */
function computed<T>(
  s: ResolvedTaskSpec<any>,
  name: string,
  value: T | ((input: any) => T) | undefined,
  deps: PlanDeps,
): Record<string, T> {
  if (value === undefined) return {}
  if (typeof value !== 'function') return { [name]: value }
  if (!deps.input) {
    throw new InvalidInputError(
      `task "${s.key}" ${name} must be a value here, not a function`,
      `$.tasks.${s.key}`,
    )
  }
  let result: T
  try {
    result = (value as (input: any) => T)(deps.input.value)
  } catch (error) {
    throw new InvalidInputError(
      `task "${s.key}" ${name} could not be computed from the input: ${String(error)}`,
      `$.tasks.${s.key}`,
    )
  }
  return { [name]: result }
}

function waitOf(s: ResolvedTaskSpec<any>, deps: PlanDeps): WaitSpec | null {
  if (!s.wait) return null
  const { match: _, ...wait } = s.wait
  // Checked against the engine's own limits too, now rather than when the timeout fires.
  if (wait.onTimeout !== 'fail') {
    assertStorableJson(wait.onTimeout.result ?? null, `$.tasks.${s.key}.onTimeout.result`, deps.limits)
  }
  const match = computed(s, 'match', s.wait.match, deps).match
  if (match === undefined) return wait
  if (typeof match !== 'string' || match.length === 0 || match.length > 200) {
    throw new InvalidInputError(
      `task "${s.key}" event match must be a string of 1-200 characters`,
      `$.tasks.${s.key}.match`,
    )
  }
  assertStorableJson(match, `$.tasks.${s.key}.match`)
  return { ...wait, match }
}

function timer(
  s: ResolvedTaskSpec<any>,
  deps: PlanDeps,
): { start_at: string | null; start_delay_ms: number | null } {
  const value = computed(s, 'startAfter', s.startAfter, deps).startAfter
  if (value === undefined) return { start_at: null, start_delay_ms: null }
  try {
    checkStartAfter(value, s.key, 'startAfter')
  } catch (error) {
    throw new InvalidInputError((error as Error).message, `$.tasks.${s.key}.startAfter`)
  }
  if (typeof value === 'number') return { start_at: null, start_delay_ms: value }
  return { start_at: new Date(value).toISOString(), start_delay_ms: null }
}

/** Computes each task's data from the workflow input and checks it can be stored. */
export function taskData<TInput>(
  def: WorkflowDefinition<TInput, any>,
  input: TInput,
  limits: JsonLimits,
): Json[] {
  return def.tasks.map((t) => {
    let value: Json
    try {
      value = typeof t.data === 'function' ? t.data(input) : (t.data ?? null)
    } catch (error) {
      throw new InvalidInputError(
        `task "${t.key}" data could not be computed from the input: ${String(error)}`,
        `$.tasks.${t.key}`,
      )
    }
    assertStorableJson(value ?? null, `$.tasks.${t.key}.data`, limits)
    return value ?? null
  })
}
