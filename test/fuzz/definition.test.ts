// Fuzzing the definition validator (defineWorkflow, defineAgent, Engine.registerWorkflow) with
// generated DAGs and garbage: every valid DAG is accepted in an order that respects its dependencies;
// a cycle, a duplicate key or an unknown dependency is a DefinitionError naming a key involved; DAGs of
// ten thousand tasks and cycles as long are decided without overflowing the stack; and anything
// else an untyped caller can pass (non-objects, forged agents, BigInts, sparse arrays) is either a
// definition that holds up or a DefinitionError, never another exception.
import fc from 'fast-check'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { LIMITS, type WorkflowDefinition } from '../../src/core/definition.ts'
import {
  DefinitionError,
  defineAgent,
  defineWorkflow,
  Engine,
  UnknownWorkflowTypeError,
} from '../../src/index.ts'
import { fuzzSeed, nastyString } from './arbitraries.ts'

const seed = fuzzSeed('test/fuzz/definition.test.ts')
const runs = (numRuns: number) => ({ seed, numRuns })

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const KEY = /^[A-Za-z0-9][A-Za-z0-9_.:/-]*$/

const scan = defineAgent({ id: 'scan', taskTypes: ['scan', 'fix'], handler: async () => null })
const echo = defineAgent({ id: 'echo', handler: async () => null })

/** Valid task keys, some of them names every JavaScript object has. */
const taskKey = fc.oneof(
  { weight: 5, arbitrary: fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,24}$/) },
  {
    weight: 1,
    arbitrary: fc.constantFrom('constructor', 'toString', 'hasOwnProperty', 'valueOf', 'prototype'),
  },
)
const workflowName = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/)

interface Dag {
  /** Tasks in the order the definition lists them (shuffled: dependents often come first). */
  tasks: { key: string; agent: typeof scan | string; dependsOn: string[] }[]
}

/** A random DAG: each task depends on some tasks created before it, listed in a shuffled order. */
const dag: fc.Arbitrary<Dag> = fc.uniqueArray(taskKey, { minLength: 1, maxLength: 40 }).chain((keys) =>
  fc
    .record({
      deps: fc.tuple(
        ...keys.map((_, i) =>
          i === 0 ? fc.constant([]) : fc.uniqueArray(fc.nat(i - 1), { maxLength: Math.min(i, 4) }),
        ),
      ),
      order: fc.shuffledSubarray([...keys.keys()], { minLength: keys.length, maxLength: keys.length }),
      agents: fc.array(fc.constantFrom<typeof scan | string>(scan, echo, 'scan', 'remote-agent'), {
        minLength: keys.length,
        maxLength: keys.length,
      }),
    })
    .map(({ deps, order, agents }) => ({
      tasks: order.map((i) => ({
        key: keys[i]!,
        agent: agents[i]!,
        dependsOn: (deps[i] as number[]).map((j) => keys[j]!),
      })),
    })),
)

function define(tasks: readonly object[], name = 'fuzzed'): WorkflowDefinition | DefinitionError {
  try {
    return defineWorkflow({ name, tasks: tasks as never })
  } catch (error) {
    if (error instanceof DefinitionError) return error
    throw error // a TypeError, a RangeError (stack overflow), ...: the property fails with it
  }
}

/** Whether `key` can reach itself along dependencies (it is on a cycle). */
function onCycle(tasks: Dag['tasks'], key: string): boolean {
  const deps = new Map(tasks.map((t) => [t.key, t.dependsOn]))
  const seen = new Set<string>()
  const stack = [...(deps.get(key) ?? [])]
  while (stack.length > 0) {
    const next = stack.pop()!
    if (next === key) return true
    if (seen.has(next)) continue
    seen.add(next)
    stack.push(...(deps.get(next) ?? []))
  }
  return false
}

/** A value in an assertion message, whatever it is. */
function show(value: unknown): string {
  try {
    return typeof value === 'string' ? JSON.stringify(value) : `${typeof value} ${String(value)}`
  } catch {
    return typeof value // an object without a prototype has no toString
  }
}

/** Everything an accepted definition promises the engine, whatever the caller passed. */
function expectSound(def: WorkflowDefinition): void {
  expect(def.kind).toBe('workflow')
  expect(def.name).toMatch(NAME)
  expect(Number.isInteger(def.version) && def.version >= 1, `version ${show(def.version)}`).toBe(true)
  expect(def.tasks.length).toBeGreaterThanOrEqual(1)
  expect(def.tasks.length).toBeLessThanOrEqual(LIMITS.maxTasksPerWorkflow)
  const keys = new Set(def.tasks.map((t) => t.key))
  expect(keys.size).toBe(def.tasks.length)
  for (const t of def.tasks) {
    const what = `task ${show(t.key)}`
    expect(typeof t.key === 'string' && t.key.length <= LIMITS.maxKeyLength && KEY.test(t.key), what).toBe(
      true,
    )
    expect(typeof t.agentId === 'string' && NAME.test(t.agentId), `${what} agent ${show(t.agentId)}`).toBe(
      true,
    )
    expect(typeof t.type === 'string' && NAME.test(t.type), `${what} type ${show(t.type)}`).toBe(true)
    const deps = t.dependsOn.every((d) => typeof d === 'string' && keys.has(d) && d !== t.key)
    expect(deps, `${what} dependsOn ${show(t.dependsOn)}`).toBe(true)
    for (const n of [t.maxAttempts, t.backoffMs, t.backoffMaxMs, t.timeoutMs]) {
      expect(Number.isSafeInteger(n) && n >= 0, `${what} option ${show(n)}`).toBe(true)
    }
  }
  // The order lists every task once, each after its dependencies.
  expect([...def.order].sort()).toEqual([...keys].sort())
  const position = new Map(def.order.map((k, i) => [k, i]))
  for (const t of def.tasks)
    for (const d of t.dependsOn) expect(position.get(d)!).toBeLessThan(position.get(t.key)!)
}

describe('generated DAGs', () => {
  it('accepts every DAG, ordering each task after its dependencies', () => {
    fc.assert(
      fc.property(dag, ({ tasks }) => {
        const def = define(tasks)
        if (def instanceof DefinitionError) throw def
        expectSound(def)
        expect(def.tasks.map((t) => [t.key, t.dependsOn])).toEqual(tasks.map((t) => [t.key, t.dependsOn]))
      }),
      runs(300),
    )
  })

  it('refuses a DAG with one edge turned back into a cycle, naming a task on the cycle', () => {
    const withCycle = dag.chain(({ tasks }) =>
      fc.nat(tasks.length - 1).map((i) => {
        // Close a cycle: make an ancestor of task i depend on i (or i on itself, if it has none).
        const byKey = new Map(tasks.map((t) => [t.key, t]))
        const target = tasks[i]!
        const ancestors = target.dependsOn.slice()
        for (let k = 0; k < ancestors.length; k++) {
          for (const d of byKey.get(ancestors[k]!)!.dependsOn) if (!ancestors.includes(d)) ancestors.push(d)
        }
        const from = byKey.get(ancestors.at(-1) ?? target.key)!
        const cyclic = tasks.map((t) => (t === from ? { ...t, dependsOn: [...t.dependsOn, target.key] } : t))
        return { tasks: cyclic }
      }),
    )
    fc.assert(
      fc.property(withCycle, ({ tasks }) => {
        const error = define(tasks)
        expect(error).toBeInstanceOf(DefinitionError)
        const key = (error as DefinitionError).key!
        expect(onCycle(tasks, key), `${key} is on a cycle`).toBe(true)
      }),
      runs(300),
    )
  })

  it('refuses a dependency on an unknown key, or a key used twice, naming the task', () => {
    const broken = dag.chain(({ tasks }) =>
      fc.oneof(
        fc
          .tuple(fc.nat(tasks.length - 1), nastyString)
          .filter(([, unknown]) => !tasks.some((t) => t.key === unknown))
          .map(([i, unknown]) => ({
            tasks: tasks.map((t, j) => (j === i ? { ...t, dependsOn: [...t.dependsOn, unknown] } : t)),
            key: tasks[i]!.key,
            message: /depends on unknown task/,
          })),
        fc.tuple(fc.nat(tasks.length - 1), fc.nat(tasks.length)).map(([i, at]) => {
          const copy = { ...tasks[i]!, dependsOn: [] }
          return {
            tasks: [...tasks.slice(0, at), copy, ...tasks.slice(at)],
            key: copy.key,
            message: /duplicate task key/,
          }
        }),
      ),
    )
    fc.assert(
      fc.property(broken, ({ tasks, key, message }) => {
        const error = define(tasks)
        expect(error).toBeInstanceOf(DefinitionError)
        expect((error as DefinitionError).message).toMatch(message)
        expect((error as DefinitionError).key).toBe(key)
      }),
      runs(200),
    )
  })
})

describe('enormous DAGs', () => {
  /** n tasks shaped as a chain, a fan-out/fan-in, or a chain with random extra edges; optionally closed into a cycle. */
  function bigDag(n: number, shape: 'chain' | 'wide' | 'random', cycle: boolean, salt: number) {
    let state = salt >>> 0
    const random = (below: number) => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0
      return state % below
    }
    const key = (i: number) => `t${i}`
    const tasks = Array.from({ length: n }, (_, i) => {
      let dependsOn: string[] = []
      if (shape === 'chain') dependsOn = i > 0 ? [key(i - 1)] : []
      if (shape === 'wide') {
        // The first task fans out to every task but the last, which waits for as many as it may.
        if (i > 0 && i < n - 1) dependsOn = [key(0)]
        if (i === n - 1) {
          dependsOn = Array.from({ length: Math.min(n - 2, LIMITS.maxDependencies) }, (_, j) =>
            key(n - 2 - j),
          )
        }
      }
      if (shape === 'random' && i > 0) {
        dependsOn = [...new Set([key(i - 1), ...Array.from({ length: random(4) }, () => key(random(i)))])]
      }
      return { key: key(i), agent: echo, dependsOn }
    })
    // Close the cycle: the first task waits for the last, which (transitively) waits for the first.
    if (cycle) tasks[0]!.dependsOn = [key(n - 1)]
    return random(2) === 0 ? tasks.reverse() : tasks
  }

  it('decides DAGs and cycles of up to the task limit without overflowing the stack', () => {
    const big = fc.record({
      n: fc.oneof(
        fc.integer({ min: 3, max: LIMITS.maxTasksPerWorkflow }),
        fc.constant(LIMITS.maxTasksPerWorkflow + 1),
      ),
      shape: fc.constantFrom('chain' as const, 'wide' as const, 'random' as const),
      cycle: fc.boolean(),
      salt: fc.integer(),
    })
    fc.assert(
      fc.property(big, ({ n, shape, cycle, salt }) => {
        const tasks = bigDag(n, shape, cycle, salt)
        const def = define(tasks)
        if (n > LIMITS.maxTasksPerWorkflow) {
          expect((def as DefinitionError).message).toMatch(/over the limit/)
        } else if (cycle) {
          expect(def).toBeInstanceOf(DefinitionError)
          expect(onCycle(tasks, (def as DefinitionError).key!)).toBe(true)
        } else {
          if (def instanceof DefinitionError) throw def
          expect(def.order).toHaveLength(n)
        }
      }),
      runs(12),
    )
  })

  it('refuses a task with more dependencies than the limit', () => {
    const tasks = Array.from({ length: LIMITS.maxDependencies + 2 }, (_, i) => ({
      key: `t${i}`,
      agent: echo,
    }))
    const error = define([...tasks.slice(1), { ...tasks[0]!, dependsOn: tasks.slice(1).map((t) => t.key) }])
    expect((error as DefinitionError).message).toMatch(/more than 1000 dependencies/)
  })
})

describe('garbage from untyped callers', () => {
  const junk = fc.anything({
    maxDepth: 2,
    withBigInt: true,
    withBoxedValues: true,
    withDate: true,
    withMap: true,
    withNullPrototype: true,
    withSet: true,
    withSparseArray: true,
    withTypedArray: true,
    withUnicodeString: true,
  })
  /** Not strings, but what a regular expression test turns into a valid name: `/x/.test(['scan'])` is true. */
  const coercible = fc.constantFrom<unknown>(5, true, ['scan'], 10n, { toString: () => 'scan' })
  /** Well-formed most of the time (so that validation goes deep), else anything at all. */
  const mostly = <T>(good: fc.Arbitrary<T>) =>
    fc.oneof(
      { weight: 16, arbitrary: good },
      { weight: 1, arbitrary: junk },
      { weight: 1, arbitrary: nastyString },
      { weight: 1, arbitrary: coercible },
    )
  /** Absent three times in four: the defaults are what most definitions use. */
  const seldom = <T>(value: fc.Arbitrary<T>) =>
    fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: value })
  // Few keys, so duplicates, self-dependencies, cycles and unknown keys all happen.
  const key = fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom('a', 'b', 'c', 'd') },
    {
      weight: 1,
      arbitrary: fc.constantFrom('k'.repeat(LIMITS.maxKeyLength), 'k'.repeat(LIMITS.maxKeyLength + 1)),
    },
  )
  const number = fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 1, max: 100 }) },
    { weight: 1, arbitrary: fc.integer({ min: -1, max: LIMITS.maxTimeoutMs + 1 }) },
    { weight: 1, arbitrary: fc.oneof(fc.double(), fc.bigInt(), junk) },
  )
  const forgedAgent = fc.record(
    {
      kind: fc.constant('agent'),
      id: mostly(workflowName),
      taskTypes: mostly(fc.array(mostly(workflowName), { maxLength: 3 })),
      handler: fc.constant(async () => null),
    },
    { requiredKeys: ['kind'] },
  )
  const agent = fc.oneof(fc.constantFrom<unknown>(scan, echo, 'scan'), forgedAgent, mostly(workflowName))
  const task = mostly(
    fc.record(
      {
        key: mostly(key),
        agent,
        type: seldom(mostly(fc.constantFrom('scan', 'fix', 'other'))),
        dependsOn: seldom(mostly(fc.array(mostly(key), { maxLength: 3 }))),
        data: seldom(
          fc.oneof(
            junk,
            fc.constant((input: unknown) => input),
          ),
        ),
        maxAttempts: seldom(number),
        backoffMs: seldom(number),
        backoffMaxMs: seldom(number),
        timeoutMs: seldom(number),
      },
      { requiredKeys: ['key', 'agent'] },
    ),
  )
  const sparse = fc.array(task, { minLength: 1, maxLength: 3 }).map((tasks) => {
    const holes: unknown[] = []
    tasks.forEach((t, i) => (holes[i * 2 + 1] = t))
    return holes
  })
  const workflowSpec = mostly(
    fc.record({
      name: mostly(workflowName),
      version: seldom(mostly(fc.oneof(fc.integer({ min: 1, max: 3 }), fc.constantFrom(0, -1, 1.5)))),
      tasks: fc.oneof(
        { weight: 18, arbitrary: fc.array(task, { minLength: 1, maxLength: 4 }) },
        { weight: 1, arbitrary: sparse },
        { weight: 1, arbitrary: junk },
      ),
    }),
  )

  it('turns any workflow spec into a sound definition or a DefinitionError', () => {
    fc.assert(
      fc.property(workflowSpec, (spec) => {
        let def: WorkflowDefinition
        try {
          def = defineWorkflow(spec as never)
        } catch (error) {
          expect(error).toBeInstanceOf(DefinitionError)
          return
        }
        expectSound(def)
      }),
      runs(2000),
    )
  })

  it('turns any agent spec into a sound agent or a DefinitionError', () => {
    const agentSpec = mostly(
      fc.record({
        id: mostly(workflowName),
        taskTypes: seldom(mostly(fc.array(mostly(workflowName), { maxLength: 3 }))),
        concurrency: seldom(fc.oneof(number, fc.constant(0))),
        handler: mostly(fc.constant(async () => null)),
      }),
    )
    fc.assert(
      fc.property(agentSpec, (spec) => {
        let agent: ReturnType<typeof defineAgent>
        try {
          agent = defineAgent(spec as never)
        } catch (error) {
          expect(error).toBeInstanceOf(DefinitionError)
          return
        }
        expect(agent.id).toMatch(NAME)
        expect(agent.taskTypes.length).toBeGreaterThan(0)
        for (const t of agent.taskTypes) expect(typeof t === 'string' && NAME.test(t), show(t)).toBe(true)
        const concurrency = agent.concurrency
        const positive = concurrency === undefined || (Number.isInteger(concurrency) && concurrency > 0)
        expect(positive, `concurrency ${show(concurrency)}`).toBe(true)
        expect(typeof agent.handler).toBe('function')
      }),
      runs(1000),
    )
  })
})

describe('registering with an engine', () => {
  // Never started: registration is checked in memory, no database is needed.
  const engine = new Engine({
    connectionString: 'postgres://nobody@127.0.0.1:1/none',
    agents: [scan, echo],
    log: pino({ level: 'silent' }),
    supervise: false,
  })
  afterAll(() => engine.close())
  const stranger = defineAgent({ id: 'stranger', handler: async () => null })

  it('registers a workflow only when it knows every agent, and names a task with an unknown one', () => {
    let n = 0
    const withAgents = dag.chain(({ tasks }) =>
      fc
        .array(fc.constantFrom<typeof scan | string>(scan, echo, 'echo', stranger, 'ghost'), {
          minLength: tasks.length,
          maxLength: tasks.length,
        })
        .map((agents) => tasks.map((t, i) => ({ ...t, agent: agents[i]! }))),
    )
    fc.assert(
      fc.property(withAgents, (tasks) => {
        const name = `registered-${n++}`
        const def = defineWorkflow({ name, tasks })
        const unknown = def.tasks.filter((t) => t.agentId !== 'scan' && t.agentId !== 'echo')
        try {
          engine.registerWorkflow(def)
        } catch (error) {
          expect(error).toBeInstanceOf(DefinitionError)
          expect(unknown.map((t) => t.key)).toContain((error as DefinitionError).key)
          expect(() => engine.workflow(name)).toThrow(UnknownWorkflowTypeError)
          return
        }
        expect(unknown).toEqual([])
        expect(engine.workflow(name)).toBe(def)
      }),
      runs(200),
    )
  })
})
