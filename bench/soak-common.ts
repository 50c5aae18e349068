// What the soak benchmark's load generator (bench/soak.ts) and its worker processes
// (bench/soak-worker.ts) share: the agents (they sleep 1-5 ms and return a small result), the two
// shapes of workflow, and the memory probe with the messages that carry it.
import { Writable } from 'node:stream'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { type Logger, pino } from 'pino'
import { defineAgent, defineWorkflow } from '../src/index.ts'

const nap = () => new Promise((r) => setTimeout(r, 1 + Math.random() * 4))

export const step = defineAgent({
  id: 'soak-step',
  handler: async (ctx) => {
    await nap()
    return { key: ctx.taskKey, parents: Object.keys(ctx.results).length }
  },
})

// A second queue, so each worker runs two fetch loops as a real deployment does.
export const join = defineAgent({
  id: 'soak-join',
  handler: async (ctx) => {
    await nap()
    return { joined: Object.keys(ctx.results).sort() }
  },
})

export const diamond = defineWorkflow({
  name: 'soak-diamond',
  tasks: [
    { key: 'a', agent: step },
    { key: 'b', agent: step, dependsOn: ['a'] },
    { key: 'c', agent: step, dependsOn: ['a'] },
    { key: 'd', agent: join, dependsOn: ['b', 'c'] },
  ],
})

export const chain = defineWorkflow({
  name: 'soak-chain',
  tasks: Array.from({ length: 5 }, (_, i) => ({
    key: `s${i}`,
    agent: i === 4 ? join : step,
    dependsOn: i === 0 ? [] : [`s${i - 1}`],
  })),
})

export const agents = [step, join]
export const workflows = [diamond, chain]
/** Tasks per workflow, by type: the generator alternates the types, so 4.5 tasks per workflow. */
export const TASKS_PER_WORKFLOW = (diamond.tasks.length + chain.tasks.length) / 2

/** One process's memory and CPU, as a worker sends it to the generator. */
export interface ProcessSample {
  /** Bytes, from process.memoryUsage() right after a full garbage collection. */
  rss: number
  heapUsed: number
  heapTotal: number
  external: number
  /** CPU time (user + system) used since the process started, in milliseconds. */
  cpuMs: number
}

/** Worker -> generator. Counters are totals since the worker started. */
export type WorkerMessage =
  | { type: 'ready' }
  | {
      type: 'sample'
      seq: number
      process: ProcessSample
      /** Tasks this worker completed. */
      tasks: number
      /** Task attempts that ended otherwise (retrying, failed, lease_lost, released). */
      otherOutcomes: number
      /** Workflows whose last task this worker completed (or failed). */
      workflows: number
      /** Log lines of level warn and above. */
      warnings: number
    }

/** Generator -> worker. */
export type GeneratorMessage = { type: 'sample'; seq: number }

// A full collection before each reading makes heapUsed the live heap rather than a point on the
// allocation sawtooth, so a slope over time is growth of what is kept. The same way jest's leak
// detector reaches gc() without --expose-gc on the command line.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

export function sampleProcess(): ProcessSample {
  gc()
  const m = process.memoryUsage()
  const cpu = process.cpuUsage()
  return {
    rss: m.rss,
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
    cpuMs: (cpu.user + cpu.system) / 1000,
  }
}

/**
 * A logger for a soak process: warnings and errors go to stderr tagged with the process's name, and
 * are counted (a soak that logs more and more of them is failing slowly). The notes every bench
 * process gets at start (unencrypted payloads, a superuser login) are left out.
 */
export function soakLogger(name: string): { log: Logger; warnings: () => number } {
  let warnings = 0
  const quiet = /payloads are stored unencrypted|can bypass row-level security/
  const log = pino(
    { level: process.env.LOG_LEVEL ?? 'warn', base: { process: name } },
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        const line = chunk.toString()
        if (!quiet.test(line)) {
          warnings++
          process.stderr.write(line)
        }
        done()
      },
    }),
  )
  return { log, warnings: () => warnings }
}
