// How long a SIGKILLed worker's running tasks wait (issue 21), with the default settings:
//  after:  worker liveness on (LIVENESS_INTERVAL_MS=1000, the default);
//  before: LIVENESS_INTERVAL_MS=0, so only heartbeats find them (STALE_AFTER_MS=30 s, the sweeper
//          on its pg-boss cron, every minute): the path every kill took before.
// Each round starts two worker processes (worker + sweeper, as the `worker` command runs),
// starts T one-task workflows whose first attempt runs until it is killed, starts a third worker
// once every task runs, SIGKILLs the first two, and waits for every workflow to complete on the
// third. Per task, from the kill (database clock, just before the signal): `requeued` is the
// task_lost audit row (the sweep that took the attempt back), `restarted` the new attempt's claim.
// The restarted attempt also waits for the retry backoff (1 s, the default) and the worker's poll
// (POLL_INTERVAL_MS, 2 s by default: a delayed retry is not announced by NOTIFY).
// The tasks of one round are taken back by one pass or sweep: a round is one sample of the
// detection delay, its tasks show the spread of the recovery work.
// Usage: DATABASE_URL=<admin url> node bench/recovery.ts [after rounds=20] [before rounds=3]
//   [tasks per round=3] [max minutes=15]   (a mode stops after the round that passes its share)
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { pino } from 'pino'
import { createEngine, migrate } from '../src/index.ts'
import { recoveryFlow } from './recovery-defs.ts'
import { percentiles, scratchDatabase } from './lib/stats.ts'

const adminUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const AFTER = Number(process.argv[2] ?? 20)
const BEFORE = Number(process.argv[3] ?? 3)
const T = Number(process.argv[4] ?? 3)
const MAX_MS = Number(process.argv[5] ?? 15) * 60_000
const ROUND_MS = 240_000 // a round that has not finished by then is a failure of the benchmark
const script = fileURLToPath(new URL('./recovery-worker.ts', import.meta.url))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

function spawnWorker(url: string, env: Record<string, string>): Promise<ChildProcess> {
  const child = fork(script, [url], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, ...env },
  })
  return new Promise((resolve, reject) => {
    child.once('message', () => resolve(child))
    child.once('exit', (code, signal) => reject(new Error(`worker exited early with ${signal ?? code}`)))
  })
}

function exited(child: ChildProcess): Promise<void> {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => child.once('exit', () => r()))
}

async function measure(mode: 'after' | 'before', rounds: number, budgetMs: number) {
  const env: Record<string, string> = mode === 'before' ? { LIVENESS_INTERVAL_MS: '0' } : {}
  const db = await scratchDatabase(adminUrl, `eq_bench_recovery_${process.pid}_${mode}`)
  const children = new Set<ChildProcess>()
  const client = new pg.Client({ connectionString: db.url })
  const requeued: number[] = []
  const restarted: number[] = []
  const began = Date.now()
  let done = 0
  try {
    await migrate(db.url)
    const engine = await createEngine({
      connectionString: db.url,
      workflows: [recoveryFlow],
      log: pino({ level: 'error' }),
      // Also a process of the fleet running the sweeper (and in `after`, the liveness pass), whose
      // timers tick at their own phase, as the surviving processes of a real fleet do.
      config: { livenessIntervalMs: mode === 'after' ? 1000 : 0 },
    })
    await engine.startSweeper()
    await client.connect()
    try {
      await engine.createTenant({ id: 'acme' })
      const acme = await engine.tenant('acme')
      for (let round = 0; round < rounds && Date.now() - began < budgetMs; round++) {
        const victims = await Promise.all([spawnWorker(db.url, env), spawnWorker(db.url, env)])
        for (const v of victims) children.add(v)
        const ids: string[] = []
        for (let i = 0; i < T; i++) ids.push((await acme.startWorkflow('bench-recovery', { round, i })).id)
        const started = Date.now()
        for (;;) {
          const { rows } = await client.query(
            `SELECT count(*)::int AS n FROM equilateral.agent_coordination
             WHERE workflow_id = ANY($1::uuid[]) AND status = 'running'`,
            [ids],
          )
          if (rows[0].n === T) break
          if (Date.now() - started > ROUND_MS) throw new Error('tasks not claimed')
          await sleep(50)
        }
        const rescuer = await spawnWorker(db.url, env)
        children.add(rescuer)
        const {
          rows: [{ at: killedAt }],
        } = await client.query(`SELECT clock_timestamp() AS at`)
        for (const v of victims) v.kill('SIGKILL')
        await Promise.all(victims.map(exited))
        for (;;) {
          const { rows } = await client.query(
            `SELECT count(*)::int AS n FROM equilateral.workflows WHERE id = ANY($1::uuid[]) AND status = 'completed'`,
            [ids],
          )
          if (rows[0].n === T) break
          if (Date.now() - started > ROUND_MS)
            throw new Error(`round ${round}: ${T - rows[0].n} not completed`)
          await sleep(50)
        }
        const { rows } = await client.query(
          `SELECT extract(epoch FROM (SELECT min(a.timestamp) FROM equilateral.agent_audit_log a
                    WHERE a.task_id = t.id AND a.action_type = 'task_lost') - $2::timestamptz) * 1000 AS requeued,
                  extract(epoch FROM t.started_at - $2::timestamptz) * 1000 AS restarted
           FROM equilateral.agent_coordination t WHERE t.workflow_id = ANY($1::uuid[])`,
          [ids, killedAt],
        )
        for (const r of rows) {
          requeued.push(Number(r.requeued))
          restarted.push(Number(r.restarted))
        }
        rescuer.kill('SIGTERM')
        await exited(rescuer)
        children.clear()
        const own = percentiles(rows.map((r) => Number(r.requeued)))
        console.error(
          `  ${mode} round ${round + 1}: ${rows.length} tasks requeued after ${own.p50}-${own.max} ms`,
        )
        done++
      }
    } finally {
      await client.end().catch(() => {})
      await engine.close()
    }
  } finally {
    for (const c of children) c.kill('SIGKILL')
    await Promise.all([...children].map(exited))
    await db.drop()
  }
  return { rounds: done, requeued: percentiles(requeued), restarted: percentiles(restarted) }
}

const results: Record<string, unknown> = {}
const t0 = Date.now()
// The heartbeat path takes 30-90 s a round: it gets what the liveness rounds leave of the budget.
results.after = await measure('after', AFTER, MAX_MS / 3)
results.before = await measure('before', BEFORE, MAX_MS - (Date.now() - t0))
const fmt = (p: { n: number; p50: number; p99: number; max: number }) =>
  `tasks=${p.n} p50 ${(p.p50 / 1000).toFixed(2)} s, p99 ${(p.p99 / 1000).toFixed(2)} s, max ${(p.max / 1000).toFixed(2)} s`
for (const [mode, r] of Object.entries(results) as [string, Awaited<ReturnType<typeof measure>>][]) {
  console.log(`${mode === 'after' ? 'liveness (defaults)' : 'heartbeats only    '}  ${r.rounds} kills`)
  console.log(
    `${mode === 'after' ? 'liveness (defaults)' : 'heartbeats only    '}  kill -> requeued:  ${fmt(r.requeued)}`,
  )
  console.log(
    `${mode === 'after' ? 'liveness (defaults)' : 'heartbeats only    '}  kill -> restarted: ${fmt(r.restarted)}`,
  )
}
console.log(JSON.stringify(results))
