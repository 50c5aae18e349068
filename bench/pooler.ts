// npm run bench:pooler: the engine directly on PostgreSQL and behind a real PgBouncer in transaction
// mode (Debian's pgbouncer; a server pool of POOL connections for the whole fleet), in the same run on
// the same server, so the figures compare:
//   - direct: DATABASE_URL is the server;
//   - pooler + direct URL: DATABASE_POOLER=transaction, the pools through PgBouncer, LISTEN and the
//     liveness session on DIRECT_DATABASE_URL;
//   - pooler only: no direct URL, so no LISTEN: workers and result waiters poll (POLL_INTERVAL_MS).
// For each: diamonds as fast as they go (throughput), diamonds paced (dispatch and start latency),
// result() waits from a web-like process (the end of a workflow reaching a waiter), and the
// connections each process kind held at most (its equilateral_db_connections metric) next to the
// server connections the database saw (pg_stat_activity) and the pooler held (SHOW POOLS).
// The worker processes run what the `worker` command runs (worker, sweeper, scheduler).
// DATABASE_URL: a superuser URL of the server to use; unset, an embedded PostgreSQL (temporary).
// BENCH_QUICK=1 runs everything smaller. Output: a table on stdout and bench/results/pooler-<time>.json.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { pino } from 'pino'
import type { Config } from '../src/config.ts'
import { provisionDatabase } from '../src/db/provision.ts'
import { createEngine, type Engine, migrate } from '../src/index.ts'
import { startPgBouncer } from '../test/helpers/pgbouncer.ts'
import { agents, workflows } from './defs.ts'
import { percentiles, scratchDatabase, wallMs } from './lib/stats.ts'
import { runWorkload, startFleet, type WorkloadResult } from './workloads.ts'

const quick = process.env.BENCH_QUICK === '1'
const scale = (n: number) => (quick ? Math.max(1, Math.round(n / 10)) : n)
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4)
const POOL = Number(process.env.BENCH_POOL ?? 4)
const POLL_MS = 250
const log = (line: string) => console.error(`[bench:pooler] ${line}`)

const tempDir = process.env.DATABASE_URL ? null : await mkdtemp(path.join(tmpdir(), 'equilateral-bench-'))
const server = await provisionDatabase(tempDir ? { dataDir: path.join(tempDir, 'postgres') } : {})
const db = await scratchDatabase(server.url, 'eq_bench_pooler')
await migrate(db.url)
const bouncer = await startPgBouncer({ urls: [db.url], poolSize: POOL })
const pooled = bouncer.through(db.url)

interface Mode {
  name: string
  url: string
  env: Record<string, string>
  config: Partial<Config>
}
const modes: Mode[] = [
  { name: 'direct', url: db.url, env: {}, config: {} },
  {
    name: `PgBouncer (pool ${POOL}) + DIRECT_DATABASE_URL`,
    url: pooled,
    env: { DATABASE_POOLER: 'transaction', DIRECT_DATABASE_URL: db.url },
    config: { databasePooler: 'transaction', directDatabaseUrl: db.url },
  },
  {
    name: `PgBouncer (pool ${POOL}), polling every ${POLL_MS} ms`,
    url: pooled,
    env: { DATABASE_POOLER: 'transaction', POLL_INTERVAL_MS: String(POLL_MS) },
    config: { databasePooler: 'transaction', pollIntervalMs: POLL_MS },
  },
]

interface ModeResult {
  mode: string
  throughput: WorkloadResult
  paced: WorkloadResult
  /** startWorkflow -> result() resolved, from the web-like process, ms. */
  result: ReturnType<typeof percentiles>
  /** Most connections held at once, by `pool/kind`: one worker process, and the web-like one. */
  workerConnections: Record<string, number>
  webConnections: Record<string, number>
  /** Most server connections of the database at once (pg_stat_activity, all processes). */
  serverConnections: number
  /** Most server connections the pooler held for the database at once (SHOW POOLS). */
  poolerServers: number
  /** Most client connections to the pooler at once. */
  poolerClients: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const results: ModeResult[] = []
const admin = new pg.Client({ connectionString: db.url })
await admin.connect()
try {
  for (const [i, mode] of modes.entries()) {
    log(`${i + 1}/${modes.length} ${mode.name}`)
    const engine: Engine = await createEngine({
      connectionString: mode.url,
      adminConnectionString: db.url,
      agents,
      workflows,
      log: pino({ level: 'warn' }),
      supervise: false,
      setupWarnings: false,
      config: mode.config,
    })
    const tenantIds = ['t1', 't2', 't3', 't4']
    if (i === 0) for (const id of tenantIds) await engine.createTenant({ id })
    const tenants = await Promise.all(tenantIds.map((id) => engine.tenant(id)))
    const fleet = await startFleet(mode.url, WORKERS, {
      ...mode.env,
      BENCH_FULL_WORKER: '1',
      SWEEP_INTERVAL_MS: '5000',
    })
    let sampling = true
    const peaks = { server: 0, poolerServers: 0, poolerClients: 0, web: {} as Record<string, number> }
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await admin.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
        )
        peaks.server = Math.max(peaks.server, rows[0].n)
        const pools = await bouncer.pools().catch(() => [])
        const ours = pools.filter((p) => p.database === 'eq_bench_pooler')
        peaks.poolerServers = Math.max(
          peaks.poolerServers,
          ours.reduce((n, p) => n + p.servers, 0),
        )
        peaks.poolerClients = Math.max(
          peaks.poolerClients,
          ours.reduce((n, p) => n + p.clients, 0),
        )
        const metric = await engine.metrics.registry.getSingleMetric('equilateral_db_connections')?.get()
        for (const v of metric?.values ?? []) {
          const key = `${v.labels.pool}/${v.labels.kind}`
          peaks.web[key] = Math.max(peaks.web[key] ?? 0, v.value)
        }
        await sleep(100)
      }
    })()
    try {
      const common = { url: mode.url, adminUrl: db.url, fleet, tenants, shape: 'diamond' as const }
      await runWorkload({ ...common, name: `${mode.name} (warm-up)`, workflows: scale(100) })
      const throughput = await runWorkload({
        ...common,
        name: `${mode.name}: diamonds`,
        workflows: scale(1000),
      })
      log(`  ${throughput.tasksPerSecond} tasks/s, dispatch p50 ${throughput.dispatch.p50} ms`)
      const paced = await runWorkload({
        ...common,
        name: `${mode.name}: diamonds at 20/s`,
        workflows: scale(300),
        rate: 20,
      })
      log(
        `  paced: dispatch p50 ${paced.dispatch.p50} p99 ${paced.dispatch.p99}, start p50 ${paced.start.p50} ms`,
      )
      // A web process awaiting workflows' ends (GET /v1/workflows/:id?wait=), a few at a time.
      const waits: number[] = []
      for (let round = 0; round < scale(30); round++) {
        const at = wallMs()
        const started = await (tenants[round % tenants.length] as (typeof tenants)[number]).startWorkflow(
          'diamond',
          { round },
        )
        await started.result({ timeoutMs: 60_000 })
        waits.push(wallMs() - at)
      }
      const result = percentiles(waits)
      log(`  result() p50 ${result.p50} p99 ${result.p99} ms`)
      await fleet.collect()
      sampling = false
      await sampler
      const workerConnections = { ...throughput.peakWorkerConnections }
      for (const [k, n] of Object.entries(paced.peakWorkerConnections))
        workerConnections[k] = Math.max(workerConnections[k] ?? 0, n)
      results.push({
        mode: mode.name,
        throughput,
        paced,
        result,
        workerConnections,
        webConnections: peaks.web,
        serverConnections: peaks.server,
        poolerServers: peaks.poolerServers,
        poolerClients: peaks.poolerClients,
      })
    } finally {
      sampling = false
      await sampler.catch(() => {})
      await fleet.stop()
      await engine.close()
    }
  }
} finally {
  await admin.end()
  await bouncer.stop()
  await db.drop()
  await server.stop()
  if (tempDir) await rm(tempDir, { recursive: true, force: true })
}

const sum = (c: Record<string, number>, kind?: string) =>
  Object.entries(c)
    .filter(([k]) => !kind || k.endsWith(`/${kind}`))
    .reduce((n, [, v]) => n + v, 0)
const show = (c: Record<string, number>) =>
  Object.entries(c)
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')
const lines = [
  `engine direct vs behind PgBouncer ${(await import('node:child_process')).execFileSync('/usr/sbin/pgbouncer', ['--version']).toString().split('\n')[0]} (transaction mode), ${WORKERS} worker processes, diamonds of no-op agents`,
  '',
  '| mode | tasks/s | dispatch p50 / p99 ms | paced 20/s: dispatch p50 / p99, start p50 / p99 ms | result() p50 / p99 ms | server connections (max) | pooler: servers / clients (max) |',
  '|---|---|---|---|---|---|---|',
  ...results.map(
    (r) =>
      `| ${r.mode} | ${r.throughput.tasksPerSecond} | ${r.throughput.dispatch.p50} / ${r.throughput.dispatch.p99} | ${r.paced.dispatch.p50} / ${r.paced.dispatch.p99}, ${r.paced.start.p50} / ${r.paced.start.p99} | ${r.result.p50} / ${r.result.p99} | ${r.serverConnections} | ${r.poolerServers || '-'} / ${r.poolerClients || '-'} |`,
  ),
  '',
  '| mode | worker process: connections held (max), direct + pooled | web-like process: connections held (max) |',
  '|---|---|---|',
  ...results.map(
    (r) =>
      `| ${r.mode} | ${sum(r.workerConnections, 'direct')} + ${sum(r.workerConnections, 'pooled')} (${show(r.workerConnections)}) | ${sum(r.webConnections, 'direct')} + ${sum(r.webConnections, 'pooled')} (${show(r.webConnections)}) |`,
  ),
]
console.log(lines.join('\n'))
const dir = path.join(import.meta.dirname, 'results')
await mkdir(dir, { recursive: true })
await writeFile(
  path.join(dir, `pooler-${new Date().toISOString().replace(/[:.]/g, '-')}.json`),
  JSON.stringify({ quick, workers: WORKERS, pool: POOL, results }, null, 2),
)
