// Planning (src/core/plan.ts) and ordering (src/core/dag-order.ts, topologicalOrder in
// src/core/definition.ts), pure: generated DAGs become the rows the start statement inserts, with
// edges both ways, remaining-dependency counts, and the ready tasks queued at once.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { dagOrder } from '../../src/core/dag-order.ts'
import { defineAgent, defineWorkflow, resolveTask, topologicalOrder } from '../../src/core/definition.ts'
import { planTasks, taskData } from '../../src/core/plan.ts'
import { DefinitionError } from '../../src/errors.ts'

const limits = { maxBytes: 1_000_000, maxDepth: 64 }
const agent = defineAgent({ id: 'step', handler: async () => null })

/** A DAG of 1-30 tasks: each task may depend on any of the tasks listed before it. */
const dag = fc
  .integer({ min: 1, max: 30 })
  .chain((n) =>
    fc.tuple(
      ...Array.from({ length: n }, (_, i) =>
        fc.uniqueArray(fc.integer({ min: 0, max: Math.max(0, i - 1) }), { maxLength: i }),
      ),
    ),
  )
  .map((parents) =>
    parents.map((ps, i) => ({ key: `t${i}`, dependsOn: i === 0 ? [] : ps.map((p) => `t${p}`) })),
  )

/** The same tasks in another order (definitions may list a task before its dependencies). */
const shuffled = dag.chain((tasks) => fc.shuffledSubarray(tasks, { minLength: tasks.length }))

function planOf(tasks: readonly { key: string; dependsOn: string[] }[]) {
  const def = defineWorkflow({
    name: 'generated',
    tasks: tasks.map((t) => ({ key: t.key, agent, dependsOn: t.dependsOn })),
  })
  let next = 0
  const deps = { newId: () => `id-${next++}`, queueName: (id: string) => `eq.${id}`, limits }
  return planTasks(def.tasks, taskData(def, null, limits), deps)
}

describe('planTasks', () => {
  it('queues exactly the tasks without dependencies, at attempt 1 with a job, and leaves the rest pending', () => {
    fc.assert(
      fc.property(shuffled, (tasks) => {
        for (const row of planOf(tasks)) {
          const ready = row.depends_on.length === 0
          expect(row).toMatchObject(
            ready
              ? { status: 'queued', attempt: 1, deps_remaining: 0 }
              : { status: 'pending', attempt: 0, job_id: null },
          )
          if (ready) expect(row.job_id).toEqual(expect.any(String))
          expect(row.deps_remaining).toBe(row.depends_on.length)
          expect(row.queue).toBe('eq.step')
        }
      }),
    )
  })

  it('writes each edge both ways: a task is among the dependents of each task it depends on', () => {
    fc.assert(
      fc.property(shuffled, (tasks) => {
        const rows = planOf(tasks)
        const byId = new Map(rows.map((r) => [r.id, r]))
        const edges = rows.flatMap((r) => r.depends_on.map((p) => `${p}->${r.id}`)).sort()
        const back = rows.flatMap((r) => r.dependents.map((c) => `${r.id}->${c}`)).sort()
        expect(back).toEqual(edges)
        for (const r of rows) {
          expect(r.dependencies).toEqual(r.depends_on.map((id) => byId.get(id)?.task_key))
        }
      }),
    )
  })

  it('counts only the dependencies not done yet for spawned tasks, and queues those with none left', () => {
    const spawned = [resolveTask({ key: 'child', agent, dependsOn: ['done', 'running'] }, 'spawned')]
    // A spawned task may depend on tasks already in the workflow.
    const existing = new Map([
      ['done', { id: 'id-done', done: true }],
      ['running', { id: 'id-running', done: false }],
    ])
    const deps = { newId: () => 'id-child', queueName: (id: string) => `eq.${id}`, limits }
    const [row] = planTasks(spawned, [null], deps, existing)
    expect(row).toMatchObject({ status: 'pending', deps_remaining: 1, depends_on: ['id-done', 'id-running'] })
    const [ready] = planTasks(
      spawned,
      [null],
      deps,
      new Map([...existing].map(([k, v]) => [k, { ...v, done: true }])),
    )
    expect(ready).toMatchObject({ status: 'queued', deps_remaining: 0, attempt: 1 })
  })
})

describe('task orders', () => {
  it('topologicalOrder and dagOrder put every task after its dependencies, each task once', () => {
    fc.assert(
      fc.property(shuffled, (tasks) => {
        for (const order of [topologicalOrder(tasks, new Set(), 'test'), dagOrder(tasks).map((t) => t.key)]) {
          expect([...order].sort()).toEqual(tasks.map((t) => t.key).sort())
          const at = new Map(order.map((k, i) => [k, i]))
          for (const t of tasks) for (const d of t.dependsOn) expect(at.get(d)).toBeLessThan(at.get(t.key)!)
        }
      }),
    )
  })

  it('dagOrder keeps the listed order among tasks free to come next', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 5 }), { maxLength: 20 }), (keys) => {
        const tasks = keys.map((key) => ({ key, dependsOn: [] }))
        expect(dagOrder(tasks).map((t) => t.key)).toEqual(keys)
      }),
    )
  })

  it('refuses a cycle, naming a task on it; a duplicate key; an unknown dependency', () => {
    fc.assert(
      fc.property(dag, fc.integer({ min: 2, max: 10 }), (tasks, length) => {
        // A cycle of `length` tasks added to a valid DAG.
        const ring = Array.from({ length }, (_, i) => ({ key: `c${i}`, dependsOn: [`c${(i + 1) % length}`] }))
        try {
          topologicalOrder([...tasks, ...ring], new Set(), 'test')
          expect.unreachable('a cycle was accepted')
        } catch (error) {
          expect(error).toBeInstanceOf(DefinitionError)
          expect(ring.map((t) => t.key)).toContain((error as DefinitionError).key)
        }
      }),
    )
    const task = (key: string, dependsOn: string[] = []) => ({ key, dependsOn })
    expect(() => topologicalOrder([task('a'), task('a')], new Set(), 'w')).toThrow('duplicate task key "a"')
    expect(() => topologicalOrder([task('a', ['x'])], new Set(), 'w')).toThrow('unknown task "x"')
    // A key already in the workflow is a satisfied dependency for spawned tasks, and cannot be reused.
    expect(topologicalOrder([task('b', ['a'])], new Set(['a']), 'w')).toEqual(['b'])
    expect(() => topologicalOrder([task('a')], new Set(['a']), 'w')).toThrow('duplicate task key "a"')
  })
})
