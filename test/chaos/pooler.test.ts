// Many workers, few connections: 8 real worker processes behind a real PgBouncer in transaction mode
// whose server pool for their login is 4 connections, running the chaos load (diamonds, chains,
// fan-out/fan-in, planned retries, planned failures) for three tenants while the test SIGKILLs a
// busy worker every few seconds and starts a replacement. DATABASE_POOLER=transaction and no
// DIRECT_DATABASE_URL: no LISTEN (workers poll), no liveness sessions (heartbeats and the sweeper
// find lost tasks), no prepared statements. Afterwards the chaos invariants hold
// (test/helpers/invariants.ts), and the pooler never held more than 4 server connections for the
// fleet's login while the fleet held many more client connections.
import type { ChildProcess } from 'node:child_process'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine, type Engine } from '../../src/index.ts'
import { chaosLoad, workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase, pgContext, queryOnce, type TestDatabase } from '../helpers/db.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { havePgBouncer, type PgBouncer, startPgBouncer, withPgBouncer } from '../helpers/pgbouncer.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilSettled, workProgress } from '../helpers/progress.ts'

const WORKFLOWS = Number(process.env.CHAOS_WORKFLOWS ?? 30)
const WORKERS = 8
const SERVER_POOL = 4
const LOAD_SECONDS = 10
// A SIGKILL every 1-2 s: at least 5 while the load is paced over LOAD_SECONDS, however fast the
// machine settles the work afterwards (at 2-4 s a quiet machine could finish after 3).
const KILL_EVERY_MS = [1000, 2000] as const
/** The kills the test asserts: the chaos goes on past the load until there were this many. */
const MIN_KILLS = 4
const TENANTS = ['acme', 'globex', 'initech']
// Four server connections carry every transaction of the fleet: the timers that run transactions
// whether or not there is work (heartbeats, polls, sweeps) are set slower than in chaos.test.ts, so
// that on a busy machine (every transaction then lasts as long as its client takes to send the next
// statement) they leave room for the work itself.
const STALE_MS = 5000
const POOLED = {
  databasePooler: 'transaction',
  pollIntervalMs: 1000,
  heartbeatIntervalMs: 1000,
  staleAfterMs: STALE_MS,
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const between = ([lo, hi]: readonly [number, number]) => lo + Math.random() * (hi - lo)

describe.skipIf(!havePgBouncer)(withPgBouncer('chaos behind PgBouncer'), () => {
  let bouncer: PgBouncer
  let db: TestDatabase
  let engine: Engine
  afterAll(async () => {
    await engine?.close()
    await bouncer?.stop()
    await db?.drop()
  })

  it(
    `keeps the promise with ${WORKERS} worker processes on ${SERVER_POOL} server connections, through SIGKILLed workers`,
    // The wait below fails when the work stops moving; this only bounds a run that moves without end.
    { timeout: 600_000 },
    async () => {
      const { adminUrl, appUser } = pgContext()
      const app = new URL(adminUrl)
      app.username = appUser.user
      app.password = appUser.password
      bouncer = await startPgBouncer({ urls: [adminUrl, app.toString()], poolSize: SERVER_POOL })
      db = await createTestDatabase()
      await queryOnce(
        db.url,
        'CREATE TABLE chaos_effects (key text PRIMARY KEY, runs int NOT NULL DEFAULT 1)',
      )
      const pooled = bouncer.through(db.appUrl)
      engine = await createEngine({
        connectionString: pooled,
        adminConnectionString: db.url,
        workflows,
        log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
        supervise: false,
        config: { staleAfterMs: STALE_MS, heartbeatIntervalMs: 1000, databasePooler: 'transaction' },
      })
      const fleet = workerProcesses(pooled)
      for (const id of TENANTS) await engine.createTenant({ id })
      const tenants = await Promise.all(TENANTS.map((id) => engine.tenant(id)))

      const killedByUs = new WeakSet<ChildProcess>()
      const crashes: string[] = []
      /** Workers that are running their worker (only those are killed: a booting one is not work in flight). */
      const ready = new Set<ChildProcess>()
      const spawnWorker = async (): Promise<void> => {
        const child = await fleet.spawn({ CHAOS_EFFECTS_URL: db.url, WORKER_CONFIG: JSON.stringify(POOLED) })
        ready.add(child)
        child.once('exit', (code, signal) => {
          ready.delete(child)
          if (!killedByUs.has(child)) crashes.push(`worker ${child.pid} exited (${code ?? signal})`)
        })
      }
      // Booted two at a time: eight at once on two cores only slows every one of them.
      for (let i = 0; i < WORKERS; i += 2) await Promise.all([spawnWorker(), spawnWorker()])

      const started = performance.now()
      const elapsed = () => performance.now() - started
      const expected = new Map<string, Expected>()
      let loadDone = false
      let finished = false

      const load = (async () => {
        for (let i = 0; i < WORKFLOWS; i++) {
          const kind = chaosLoad[i % chaosLoad.length] as (typeof chaosLoad)[number]
          const tenant = tenants[i % tenants.length] as (typeof tenants)[number]
          const { id } = await tenant.startWorkflow(kind.type, { i }, { idempotencyKey: `pooler-${i}` })
          expected.set(id, kind.expect)
          const due = ((i + 1) / WORKFLOWS) * LOAD_SECONDS * 1000
          if (due > elapsed()) await sleep(due - elapsed())
        }
        loadDone = true
      })()

      let sweeps = 0
      const sweeper = (async () => {
        while (!finished) {
          await engine.sweep().then(
            () => sweeps++,
            () => {},
          )
          await sleep(2000)
        }
      })()

      // What the pooler holds, sampled: its server connections and its clients, for the fleet's login.
      let maxServers = 0
      let maxClients = 0
      let maxWaiting = 0
      const sampler = (async () => {
        while (!finished) {
          const pools = await bouncer.pools().catch(() => [])
          const fleetPool = pools.find((p) => p.database === db.name && p.user === appUser.user)
          if (fleetPool) {
            maxServers = Math.max(maxServers, fleetPool.servers)
            maxClients = Math.max(maxClients, fleetPool.clients)
            maxWaiting = Math.max(maxWaiting, fleetPool.waiting)
          }
          await sleep(250)
        }
      })()

      let kills = 0
      const replacements: Promise<void>[] = []
      // Each kill waits for a worker that is running a task and kills one of those: a kill of an idle
      // worker loses no attempt, and a run whose kills all landed between tasks (it happened, on a
      // busy machine: 6 kills, no attempt lost) would not exercise the recovery this test is for.
      const busyWorkers = async (): Promise<ChildProcess[]> => {
        const busy = await queryOnce<{ pid: number }>(
          db.url,
          `SELECT DISTINCT split_part(worker_id, ':', 2)::int AS pid FROM equilateral.agent_coordination
             WHERE status = 'running' AND worker_id IS NOT NULL`,
        ).then(
          (rows) => new Set(rows.map((row) => row.pid)),
          () => new Set<number>(),
        )
        return [...ready].filter((c) => busy.has(c.pid as number))
      }
      // Kills go on while the load is paced, then until MIN_KILLS: every kill of a busy worker leaves
      // work to recover, so killing until everything settles kept the run going (102 s in one run).
      const killing = () => !finished && (!loadDone || kills < MIN_KILLS)
      const chaos = (async () => {
        while (killing()) {
          await sleep(between(KILL_EVERY_MS))
          if (!killing()) break
          let victims = await busyWorkers()
          while (!finished && victims.length === 0) {
            await sleep(50)
            victims = await busyWorkers()
          }
          if (finished) break
          const victim = victims[Math.floor(Math.random() * victims.length)]
          if (!victim) continue
          killedByUs.add(victim)
          victim.kill('SIGKILL')
          kills++
          replacements.push(spawnWorker())
        }
      })()

      try {
        await untilSettled(
          'chaos behind PgBouncer',
          async () => {
            const { running, events } = await workProgress(db.url)
            return {
              done: loadDone && running === 0,
              progress: [expected.size, running, events],
              state: `${expected.size} of ${WORKFLOWS} started, ${running} workflows still running`,
            }
          },
          { everyMs: 500 },
        )
      } finally {
        finished = true
      }
      await Promise.all([load, sweeper, chaos, sampler, ...replacements])
      await Promise.all([...fleet.children].map((c) => (killedByUs.add(c), fleet.stop(c, 'SIGTERM'))))

      const report = await checkInvariants(db.url, expected, { effectsTable: 'chaos_effects' })
      console.log(
        [
          `chaos behind PgBouncer summary (${(elapsed() / 1000).toFixed(0)} s):`,
          `  workflows: ${expected.size}, worker processes: ${WORKERS} at a time, SIGKILLs: ${kills}, crashes: ${crashes.length}, sweeps: ${sweeps}`,
          `  pooler, the fleet's login: at most ${maxServers} server connections for up to ${maxClients} client connections (${maxWaiting} waiting at most)`,
          `  attempts lost with a worker: ${report.lostAttempts}, side effects repeated: ${report.repeatedEffects}`,
          `  invariants:`,
          ...describeReport(report),
        ].join('\n'),
      )

      expect(report.violations).toEqual([])
      expect(crashes).toEqual([])
      expect(expected.size).toBe(WORKFLOWS)
      expect(kills).toBeGreaterThanOrEqual(MIN_KILLS)
      expect(report.lostAttempts).toBeGreaterThan(0)
      // The pool was shared: never more server connections than its size, many more clients.
      expect(maxServers).toBeLessThanOrEqual(SERVER_POOL)
      expect(maxClients).toBeGreaterThan(2 * SERVER_POOL)
    },
  )
})
