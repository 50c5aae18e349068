// Fairness between tenants, in milliseconds: how long tenant B's single-task workflows wait to start
// while tenant A floods the same agent queue, with and without per-tenant limits (TENANT_CONCURRENCY).
// B's latency is from the startWorkflow call to the first line of B's agent. Each row runs on a fresh
// database with one worker process; A's flood is queued before the worker starts, then B starts a
// workflow every GAP_MS.
// Usage: DATABASE_URL=<admin url> node bench/fairness.ts [floodTasks=10000] [bWorkflows=20]
import type { GroupConcurrencyConfig } from 'pg-boss'
import pg from 'pg'
import { pino } from 'pino'
import { createEngine, defineAgent, defineWorkflow, migrate } from '../src/index.ts'

const adminUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const FLOOD_TASKS = Number(process.argv[2] ?? 10_000)
const B_WORKFLOWS = Number(process.argv[3] ?? 20)
const TASK_MS = 20
const GAP_MS = 100
const CONCURRENCY = 16
const WORKFLOW_TASKS = 1000
const LIMITS: GroupConcurrencyConfig = { default: 8, tiers: { enterprise: 32 } }

let bEnqueuedAt: number[] = []
let bStartedAt: number[] = []
const a = { started: 0, running: 0, peak: 0 }

const work = defineAgent({
  id: 'work',
  handler: async (ctx) => {
    if (ctx.tenantId === 'b') bStartedAt[(ctx.input as { i: number }).i] = performance.now()
    else {
      a.started++
      a.peak = Math.max(a.peak, ++a.running)
    }
    try {
      await new Promise((r) => setTimeout(r, TASK_MS))
    } finally {
      if (ctx.tenantId !== 'b') a.running--
    }
    return null
  },
})
const flood = defineWorkflow({
  name: 'flood',
  tasks: Array.from({ length: WORKFLOW_TASKS }, (_, i) => ({ key: `t${i}`, agent: work })),
})
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: work }] })

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function run(floodTasks: number, limits: GroupConcurrencyConfig | undefined) {
  bEnqueuedAt = []
  bStartedAt = []
  Object.assign(a, { started: 0, running: 0, peak: 0 })
  const dbName = `eq_bench_fairness_${process.pid}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
  await admin.query(`CREATE DATABASE ${dbName}`)
  const url = new URL(adminUrl)
  url.pathname = `/${dbName}`
  try {
    await migrate(url.href)
    const engine = await createEngine({
      connectionString: url.href,
      agents: [work],
      workflows: [flood, single],
      log: pino({ level: 'warn' }),
      supervise: false,
      config: { workerConcurrency: CONCURRENCY, tenantConcurrency: limits, dbPoolMax: 20 },
    })
    try {
      await engine.createTenant({ id: 'a', tier: 'standard' })
      await engine.createTenant({ id: 'b', tier: 'standard' })
      const tenantA = await engine.tenant('a')
      const tenantB = await engine.tenant('b')
      for (let n = 0; n < floodTasks; n += WORKFLOW_TASKS) await tenantA.startWorkflow('flood')
      await engine.startWorker()
      // Let A's tasks flow before B arrives.
      while (floodTasks > 0 && a.started < 4 * CONCURRENCY) await sleep(5)
      const aStartedBefore = a.started
      const t0 = performance.now()
      const starts: Promise<unknown>[] = []
      for (let i = 0; i < B_WORKFLOWS; i++) {
        bEnqueuedAt[i] = performance.now()
        starts.push(tenantB.startWorkflow('single', { i }))
        await sleep(GAP_MS)
      }
      await Promise.all(starts)
      while (bStartedAt.filter((t) => t !== undefined).length < B_WORKFLOWS) await sleep(5)
      const windowMs = Math.max(...bStartedAt) - t0
      const latencies = bStartedAt.map((t, i) => t - (bEnqueuedAt[i] as number)).sort((x, y) => x - y)
      return {
        p50: percentile(latencies, 0.5),
        p95: percentile(latencies, 0.95),
        max: latencies.at(-1) as number,
        aPerSecond: ((a.started - aStartedBefore) / windowMs) * 1000,
        aPeak: a.peak,
      }
    } finally {
      await engine.close()
      // pg's Pool.end() resolves before its connections are closed; let them go before the drop.
      await sleep(200)
    }
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
    await admin.end()
  }
}

function percentile(sorted: number[], q: number): number {
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] as number
}

const rows = [
  { mode: 'no flood', flood: 0, limits: undefined },
  { mode: 'flood, no tenant limits', flood: FLOOD_TASKS, limits: undefined },
  { mode: `flood, tenant limit ${LIMITS.default}`, flood: FLOOD_TASKS, limits: LIMITS },
]
console.log(
  `tenant A floods ${FLOOD_TASKS} tasks of ${TASK_MS} ms; tenant B starts ${B_WORKFLOWS} single-task ` +
    `workflows, one every ${GAP_MS} ms; one worker, concurrency ${CONCURRENCY}\n`,
)
const header = ['mode', 'B p50 ms', 'B p95 ms', 'B max ms', 'A tasks/s', 'A peak running']
const table: string[][] = []
for (const row of rows) {
  const r = await run(row.flood, row.limits)
  table.push([
    row.mode,
    r.p50.toFixed(1),
    r.p95.toFixed(1),
    r.max.toFixed(1),
    row.flood ? Math.round(r.aPerSecond).toString() : '-',
    row.flood ? r.aPeak.toString() : '-',
  ])
}
const widths = header.map((h, c) => Math.max(h.length, ...table.map((t) => (t[c] as string).length)))
const line = (cells: string[]) =>
  cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] as number) : cell.padStart(widths[c] as number)))
console.log(line(header).join('  '))
for (const t of table) console.log(line(t).join('  '))
