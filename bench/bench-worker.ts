// One worker process of the benchmark: `node bench/bench-worker.ts <database url>`. It runs the
// engine's worker with the benchmark's agents and records, on the shared wall clock, when each
// agent started and when each completion committed (the worker hooks fire after the commit). It
// also counts every SQL statement it sends. The orchestrator asks for the records over IPC.
import { pino } from 'pino'
import { createEngine } from '../src/index.ts'
import { agents, workflows } from './defs.ts'
import { statementsSentSoFar, wallMs } from './lib/stats.ts'

let counted = statementsSentSoFar() // statements sent before the last collect

const url = process.argv[2]
if (!url) throw new Error('usage: bench-worker.ts <database url>')
/** [task id, workflow id, task key, 's' (agent started) or 'c' (completion committed), wall ms] */
let events: [string, string, string, 's' | 'c', number][] = []
let peakRss = 0
/** The most connections this process held at once, by holder and kind (equilateral_db_connections). */
let peakConnections: Record<string, number> = {}
const sampler = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss)
  void sampleConnections()
}, 100)
let metrics: { registry: import('prom-client').Registry } | null = null
async function sampleConnections(): Promise<void> {
  const metric = await metrics?.registry.getSingleMetric('equilateral_db_connections')?.get()
  for (const v of metric?.values ?? []) {
    const key = `${v.labels.pool}/${v.labels.kind}`
    peakConnections[key] = Math.max(peakConnections[key] ?? 0, v.value)
  }
}

const engine = await createEngine({
  connectionString: url,
  agents,
  workflows,
  log: pino({ level: 'warn' }),
  supervise: false,
  config: {
    workerConcurrency: Number(process.env.BENCH_CONCURRENCY ?? 16),
    ...(process.env.BENCH_TENANT_LIMIT
      ? { tenantConcurrency: { default: Number(process.env.BENCH_TENANT_LIMIT) } }
      : {}),
  },
})
metrics = engine.metrics
// BENCH_FULL_WORKER=1: everything the `worker` command starts (the sweeper and scheduler too).
if (process.env.BENCH_FULL_WORKER === '1') {
  await engine.startSweeper()
  await engine.startScheduler()
}
await engine.startWorker({
  hooks: {
    taskStarted: (t) => void events.push([t.taskId, t.workflowId, t.taskKey, 's', wallMs()]),
    taskFinished: (t, _tenant, outcome) => {
      if (outcome === 'completed') events.push([t.taskId, t.workflowId, t.taskKey, 'c', wallMs()])
    },
  },
})

process.on('message', (m: { kind: string }) => {
  if (m.kind === 'collect') {
    const total = statementsSentSoFar()
    process.send?.({ kind: 'events', events, statements: total - counted, peakRss, peakConnections })
    peakConnections = {}
    counted = total
    events = []
    peakRss = process.memoryUsage().rss
  }
})
process.once('SIGTERM', () => {
  clearInterval(sampler)
  engine.close().then(
    () => process.exit(0),
    () => process.exit(1),
  )
})
process.send?.({ kind: 'ready' })
