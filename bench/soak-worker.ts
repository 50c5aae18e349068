// One worker process of the soak benchmark, forked by bench/soak.ts: `node bench/soak-worker.ts <url>`.
// It runs what `equilateral worker` runs (the worker, the sweeper from pg-boss's cron, the retention
// schedule, pg-boss maintenance) on the soak's agents, and answers the generator's `sample` messages
// with its memory and counters. The generator decides when it ends: SIGTERM (or the generator
// going away) closes the engine; SIGINT is left to the generator, which gets the same Ctrl-C.
import { createEngine } from '../src/index.ts'
import {
  agents,
  type GeneratorMessage,
  sampleProcess,
  soakLogger,
  type WorkerMessage,
  workflows,
} from './soak-common.ts'

const url = process.argv[2]
const name = process.argv[3] ?? `worker ${process.pid}`
if (!url || !process.send) throw new Error('usage: forked by bench/soak.ts with <database url> [name]')
const send = (message: WorkerMessage) => process.send?.(message)

const { log, warnings } = soakLogger(name)
const counts = { tasks: 0, otherOutcomes: 0, workflows: 0 }
const engine = await createEngine({ connectionString: url, agents, workflows, log })
await engine.startWorker({
  hooks: {
    taskFinished: (_task, _tenant, outcome) => {
      if (outcome === 'completed') counts.tasks++
      else counts.otherOutcomes++
    },
    workflowFinished: () => {
      counts.workflows++
    },
  },
})
await engine.startSweeper()
await engine.startRetention()

process.on('message', (message: GeneratorMessage) => {
  if (message.type !== 'sample') return
  send({ type: 'sample', seq: message.seq, process: sampleProcess(), ...counts, warnings: warnings() })
})
send({ type: 'ready' })

let closing = false
const stop = () => {
  if (closing) return
  closing = true
  engine.close().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`${name}: close failed: ${String(error)}\n`)
      process.exit(1)
    },
  )
}
process.once('SIGTERM', stop)
process.on('SIGINT', () => {})
process.once('disconnect', stop)
