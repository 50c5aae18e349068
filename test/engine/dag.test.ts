// DAG order: every task runs exactly once, after all of its dependencies, and sees their results.
import { describe, expect, it } from 'vitest'
import { dagOrder } from '../../src/core/dag-order.ts'
import { defineAgent, defineWorkflow, type Json } from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'

interface Run {
  key: string
  sawResults: Record<string, Json>
  at: number
}

const runs: Run[] = []
let clock = 0

const recorder = defineAgent({
  id: 'recorder',
  handler: async (ctx) => {
    runs.push({ key: `${ctx.workflowId}/${ctx.taskKey}`, sawResults: ctx.results, at: clock++ })
    await new Promise((r) => setTimeout(r, Math.random() * 5))
    return { key: ctx.taskKey, input: ctx.input }
  },
})

const diamond = defineWorkflow({
  name: 'diamond',
  tasks: [
    { key: 'a', agent: recorder },
    { key: 'b', agent: recorder, dependsOn: ['a'] },
    { key: 'c', agent: recorder, dependsOn: ['a'] },
    { key: 'd', agent: recorder, dependsOn: ['b', 'c'] },
  ],
})

const fan = defineWorkflow({
  name: 'fan',
  tasks: [
    { key: 'root', agent: recorder },
    ...Array.from({ length: 20 }, (_, i) => ({ key: `leaf-${i}`, agent: recorder, dependsOn: ['root'] })),
    { key: 'join', agent: recorder, dependsOn: Array.from({ length: 20 }, (_, i) => `leaf-${i}`) },
  ],
})

// A random 50-task DAG: each task depends on a random subset of earlier tasks (seeded, reproducible).
function randomDag(seed: number, n: number) {
  let s = seed
  const rand = () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31
  return defineWorkflow({
    name: 'random50',
    tasks: Array.from({ length: n }, (_, i) => ({
      key: `t${i}`,
      agent: recorder,
      dependsOn: Array.from({ length: i }, (_, j) => `t${j}`).filter(() => rand() < 3 / (i + 1)),
    })),
  })
}
const random50 = randomDag(42, 50)

const { engine } = await testEngine({ agents: [recorder], workflows: [diamond, fan, random50] })
await engine.createTenant({ id: 'acme' })
await engine.startWorker({ concurrency: 8 })

function checkOrder(def: typeof diamond, workflowId: string) {
  const mine = runs.filter((r) => r.key.startsWith(`${workflowId}/`))
  const byKey = new Map(mine.map((r) => [r.key.slice(workflowId.length + 1), r]))
  // exactly once
  expect(mine).toHaveLength(def.tasks.length)
  expect(byKey.size).toBe(def.tasks.length)
  for (const t of def.tasks) {
    const run = byKey.get(t.key)
    expect(run, t.key).toBeDefined()
    for (const dep of t.dependsOn) {
      expect((byKey.get(dep) as Run).at, `${dep} before ${t.key}`).toBeLessThan((run as Run).at)
      expect((run as Run).sawResults[dep]).toEqual({ key: dep, input: { n: 1 } })
    }
    expect(Object.keys((run as Run).sawResults).sort()).toEqual([...t.dependsOn].sort())
  }
}

describe('DAG execution', () => {
  it.each([
    ['diamond', diamond],
    ['fan-out/fan-in', fan],
    ['random 50-task DAG', random50],
  ])('runs every task of a %s exactly once, after its dependencies', async (_name, def) => {
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow(def.name, { n: 1 })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.tasks.every((t) => t.status === 'completed' && t.attempt === 1)).toBe(true)
    checkOrder(def, id)
    // Listed as people read a DAG: every task after the tasks it depends on.
    const listed = wf.tasks.map((t) => t.key)
    for (const [at, t] of wf.tasks.entries()) {
      for (const dep of t.dependsOn)
        expect(listed.indexOf(dep), `${dep} listed before ${t.key}`).toBeLessThan(at)
    }
    const history = await acme.history(id)
    const completions = history.filter((h) => h.action === 'task_completed')
    expect(completions).toHaveLength(def.tasks.length)
    expect(new Set(completions.map((c) => c.taskId)).size).toBe(def.tasks.length)
    expect(history.at(-1)?.action).toBe('workflow_completed')
  })

  it('runs many workflows concurrently, each to completion', async () => {
    const acme = await engine.tenant('acme')
    const ids = await Promise.all(Array.from({ length: 30 }, () => acme.startWorkflow('diamond', { n: 1 })))
    for (const { id } of ids) {
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      checkOrder(diamond, id)
    }
  })

  it('exposes the results of the tasks nothing depends on as the workflow output', async () => {
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow('diamond', { n: 1 })
    const wf = await settled(engine, 'acme', id)
    expect(wf.output).toEqual({ d: { key: 'd', input: { n: 1 } } })
  })
})

describe('dagOrder', () => {
  const t = (key: string, ...dependsOn: string[]) => ({ key, dependsOn })

  it('puts every task after its dependencies, keeping the listed order among tasks free to come next', () => {
    const order = dagOrder([
      t('a-report', 'z-fetch'),
      t('m-check', 'z-fetch'),
      t('z-fetch'),
      t('b-ship', 'a-report'),
    ])
    expect(order.map((x) => x.key)).toEqual(['z-fetch', 'a-report', 'm-check', 'b-ship'])
  })

  it('ignores dependencies outside the list and keeps every task once, even in a cycle', () => {
    expect(dagOrder([t('b', 'gone'), t('a')]).map((x) => x.key)).toEqual(['b', 'a'])
    expect(dagOrder([t('x', 'y'), t('y', 'x'), t('z')]).map((x) => x.key)).toEqual(['z', 'x', 'y'])
  })
})
