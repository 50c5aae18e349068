// The benchmark's agents and workflow shapes, shared by the orchestrator (bench/run.ts) and its
// worker processes (bench/bench-worker.ts). BENCH_AGENT_MS > 0 makes every agent sleep that long.
import { defineAgent, defineWorkflow } from '../src/index.ts'

const agentMs = Number(process.env.BENCH_AGENT_MS ?? 0)

export const noop = defineAgent({
  id: 'noop',
  handler: async () => {
    if (agentMs > 0) await new Promise((r) => setTimeout(r, agentMs))
    return null
  },
})

const task = (key: string, dependsOn: string[] = []) => ({ key, agent: noop, dependsOn })

export const shapes = {
  /** A -> B, A -> C, {B, C} -> D */
  diamond: defineWorkflow({
    name: 'diamond',
    tasks: [task('a'), task('b', ['a']), task('c', ['a']), task('d', ['b', 'c'])],
  }),
  /** s0 -> s1 -> ... -> s9 */
  chain10: defineWorkflow({
    name: 'chain10',
    tasks: Array.from({ length: 10 }, (_, i) => task(`s${i}`, i === 0 ? [] : [`s${i - 1}`])),
  }),
  /** root -> 100 leaves -> join */
  fan100: defineWorkflow({
    name: 'fan100',
    tasks: [
      task('root'),
      ...Array.from({ length: 100 }, (_, i) => task(`leaf${i}`, ['root'])),
      task(
        'join',
        Array.from({ length: 100 }, (_, i) => `leaf${i}`),
      ),
    ],
  }),
  single: defineWorkflow({ name: 'single', tasks: [task('only')] }),
} as const

export type Shape = keyof typeof shapes

/** Each task key's parents, per shape (dispatch latency runs from the last parent's commit). */
export function parentsOf(shape: Shape): Map<string, string[]> {
  return new Map(shapes[shape].tasks.map((t) => [t.key, [...(t.dependsOn ?? [])]]))
}

export const workflows = Object.values(shapes)
export const agents = [noop]
