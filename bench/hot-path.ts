// Counts the hot path's cost per task: SQL statements this process sends (every pg query call,
// pg-boss's included), database transactions (pg_stat_database), and tasks per second, for W
// diamond workflows with no-op agents on one worker process.
// Usage: node bench/hot-path.ts <admin database url> [workflows=300] [concurrency=16]
// BENCH_WITHOUT_AUDIT=1 discards the audit rows (see below). BENCH_AGENTS=n (1-4) spreads the
// diamond over n agents, so n queues.
// BENCH_PAYLOAD_BYTES=n gives every input, task data and result a random string of n bytes
// (default: no payloads); with ENCRYPTION_KEYS set (e.g. k1:$(openssl rand -base64 32)) they are
// encrypted. Random, so both runs store incompressible bytes: ciphertext defeats TOAST compression,
// which would otherwise dominate the comparison for compressible payloads.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { pino } from 'pino'
import { createEngine, defineAgent, defineWorkflow, migrate } from '../src/index.ts'
import { statementsSentSoFar } from './lib/stats.ts'

const adminUrl = process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const W = Number(process.argv[3] ?? 300)
const concurrency = Number(process.argv[4] ?? 16)
const dbName = `eq_bench_${process.pid}`

statementsSentSoFar() // counts every statement this process sends from here on

const admin = new pg.Client({ connectionString: adminUrl })
await admin.connect()
await admin.query(`CREATE DATABASE ${dbName}`)
const url = new URL(adminUrl)
url.pathname = `/${dbName}`
await migrate(url.href)
// BENCH_WITHOUT_AUDIT=1 discards audit rows with a BEFORE INSERT trigger (a measurement only: the
// engine itself cannot run without its audit trail), to price the audit writes.
if (process.env.BENCH_WITHOUT_AUDIT === '1') {
  const bench = new pg.Client({ connectionString: url.href })
  await bench.connect()
  await bench.query(`
    CREATE FUNCTION equilateral.bench_discard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
    CREATE TRIGGER bench_discard BEFORE INSERT ON equilateral.agent_audit_log
      FOR EACH ROW EXECUTE FUNCTION equilateral.bench_discard();`)
  await bench.end()
}

const payloadBytes = Number(process.env.BENCH_PAYLOAD_BYTES ?? 0)
const blob = payloadBytes > 0 ? randomBytes(payloadBytes).toString('base64').slice(0, payloadBytes) : null
const data = () => (blob === null ? null : { blob })
// BENCH_AGENTS=n: the diamond's four tasks run on n different agents (n queues), round robin.
const agentCount = Math.max(1, Math.min(4, Number(process.env.BENCH_AGENTS ?? 1)))
// BENCH_USAGE=1: every agent reports usage (ctx.usage, two dimensions), to price recording it;
// BENCH_BUDGET=1 also gives the tenant a hard budget on it that the run never reaches.
const usage = process.env.BENCH_USAGE === '1' || process.env.BENCH_BUDGET === '1'
const noops = Array.from({ length: agentCount }, (_, i) =>
  defineAgent({
    id: i === 0 ? 'noop' : `noop${i}`,
    usage: ['tokens', 'costMicros'],
    handler: async (ctx) => {
      if (usage) ctx.usage({ tokens: 1200, costMicros: 3400 })
      return data()
    },
  }),
)
const agentOf = (i: number) => noops[i % agentCount] as (typeof noops)[number]
const diamond = defineWorkflow({
  name: 'diamond',
  tasks: [
    { key: 'a', agent: agentOf(0), data },
    { key: 'b', agent: agentOf(1), dependsOn: ['a'], data },
    { key: 'c', agent: agentOf(2), dependsOn: ['a'], data },
    { key: 'd', agent: agentOf(3), dependsOn: ['b', 'c'], data },
  ],
})
const engine = await createEngine({
  connectionString: url.href,
  agents: noops,
  workflows: [diamond],
  log: pino({ level: 'warn' }),
  supervise: false,
  config: { workerConcurrency: concurrency, dbPoolMax: 20 },
})
// BENCH_COMPLIANCE_PROFILE='{"GDPR":{"retentionDays":30},"SOX":{"retentionDays":2555}}' gives the
// tenant a compliance profile: every task change then also writes one compliance event per regime.
const complianceProfile = process.env.BENCH_COMPLIANCE_PROFILE
await engine.createTenant({
  id: 'bench',
  ...(complianceProfile ? { complianceProfile: JSON.parse(complianceProfile) as object } : {}),
})
const tenant = await engine.tenant('bench')
if (process.env.BENCH_BUDGET === '1')
  await engine.setBudget('bench', { dimension: 'tokens', period: 'month', limit: 1e15, hard: true })

// Backends report their counters to pg_stat_database when idle, at most once a second: wait for it.
const xacts = async () => {
  await new Promise((r) => setTimeout(r, 1500))
  return readXacts()
}
const readXacts = async () =>
  Number(
    (await admin.query('SELECT xact_commit FROM pg_stat_database WHERE datname = $1', [dbName])).rows[0]
      .xact_commit,
  )

// Start all workflows first (measured separately), then run them.
const s0 = statementsSentSoFar()
const x0 = await xacts()
const tStart = performance.now()
const ids: string[] = []
for (let i = 0; i < W; i++)
  ids.push((await tenant.startWorkflow('diamond', blob === null ? { i } : { i, blob })).id)
const startMs = performance.now() - tStart
const startStatements = statementsSentSoFar() - s0
const startXacts = (await xacts()) - x0

if (process.env.BENCH_ANALYZE === '1') {
  const c = new pg.Client({ connectionString: url.href })
  await c.connect()
  await c.query('ANALYZE')
  await c.end()
}
const s1 = statementsSentSoFar()
const x1 = await xacts()
// With pg_stat_statements on the server (shared_preload_libraries), the run's top statements by
// database time (planning + execution) are printed too; WAL bytes are read from the LSN either way.
const statements = await admin
  .query('SELECT pg_stat_statements_reset()')
  .then(() => true)
  .catch(() => false)
const wal0 = await walLsn()
const pgCpu0 = await serverCpu()
const nodeCpu0 = process.cpuUsage()
const t0 = performance.now()
let polls = 0
await engine.startWorker()
const check = new pg.Client({ connectionString: url.href })
await check.connect()
for (;;) {
  polls++
  const { rows } = await check.query(
    `SELECT count(*)::int AS n FROM equilateral.workflows WHERE status = 'running'`,
  )
  if (rows[0].n === 0) break
  await new Promise((r) => setTimeout(r, 20))
}
const runMs = performance.now() - t0
const nodeCpu = process.cpuUsage(nodeCpu0)
const pgCpu1 = await serverCpu()
const runStatements = statementsSentSoFar() - s1 - polls
const runXacts = (await xacts()) - x1 - polls - 1
const tasks = W * 4
const walBytes = Number(
  (await admin.query('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint AS b', [wal0])).rows[0].b,
)
const top = statements
  ? (
      await admin.query(
        `SELECT calls, round((total_plan_time + total_exec_time)::numeric, 1)::float8 AS total_ms,
           round((total_plan_time / calls)::numeric, 3)::float8 AS plan_ms,
           round((total_exec_time / calls)::numeric, 3)::float8 AS exec_ms,
           regexp_replace(left(query, 90), '\\s+', ' ', 'g') AS query
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = $1 ORDER BY total_plan_time + total_exec_time DESC LIMIT 12`,
        [dbName],
      )
    ).rows
  : null
const dbTimeMs = statements
  ? Number(
      (
        await admin.query(
          `SELECT sum(total_plan_time + total_exec_time)::float8 AS ms FROM pg_stat_statements s
           JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1`,
          [dbName],
        )
      ).rows[0].ms,
    )
  : null
console.log(
  JSON.stringify(
    {
      workflows: W,
      tasks,
      concurrency,
      payloadBytes,
      encrypted: engine.keyRing.enabled,
      start: {
        ms: Math.round(startMs),
        perWorkflow: { statements: startStatements / W, transactions: startXacts / W },
      },
      run: {
        ms: Math.round(runMs),
        tasksPerSecond: Math.round(tasks / (runMs / 1000)),
        perTask: {
          statements: +(runStatements / tasks).toFixed(2),
          transactions: +(runXacts / tasks).toFixed(2),
          walBytes: Math.round(walBytes / tasks),
          ...(dbTimeMs === null ? {} : { databaseMs: +(dbTimeMs / tasks).toFixed(3) }),
        },
      },
      // CPU seconds of the run: this process (engine and worker) and the server's processes
      // (read from /proc when the server runs on this machine; null elsewhere).
      cpu: {
        nodeSeconds: +((nodeCpu.user + nodeCpu.system) / 1e6).toFixed(2),
        postgresSeconds: pgCpu0 && pgCpu1 ? +cpuDiff(pgCpu0, pgCpu1).toFixed(2) : null,
      },
      ...(top ? { topStatements: top } : {}),
    },
    null,
    2,
  ),
)
await check.end()
await engine.close()

/** CPU seconds used so far by each process of the server (backends and background processes). */
async function serverCpu(): Promise<Map<number, number> | null> {
  const { readFile } = await import('node:fs/promises')
  const { rows } = await admin.query('SELECT pid FROM pg_stat_activity')
  const cpu = new Map<number, number>()
  for (const { pid } of rows as { pid: number }[]) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      cpu.set(pid, (Number(f[11]) + Number(f[12])) / 100)
    } catch {
      return null // not on this machine
    }
  }
  return cpu
}

function cpuDiff(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0
  for (const [pid, s] of after) sum += s - (before.get(pid) ?? 0)
  return sum
}

async function walLsn(): Promise<string> {
  return (await admin.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l
}
await admin.query(`DROP DATABASE ${dbName} WITH (FORCE)`)
await admin.end()
