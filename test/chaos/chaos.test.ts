// Chaos: real worker processes run a mixed load (diamonds, chains, fan-out/fan-in, planned retries,
// planned failures) for three tenants while the test SIGKILLs a random worker every few seconds
// (starting a replacement) and restarts PostgreSQL once. Starts go on through the outage, retried
// with the same idempotency key. Afterwards the database must show the promise kept: every
// workflow in its expected terminal state, every task completed at most once (exactly once in a
// completed workflow), nothing stuck, an unbroken audit history, no job left active, and every
// completion preceded by its attempt's side effect. The worker processes must survive the outage.
import type { ChildProcess } from 'node:child_process'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine } from '../../src/index.ts'
import { chaosLoad, workflows } from '../fixtures/chaos-registry.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { queryOnce } from '../helpers/db.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilSettled, workProgress } from '../helpers/progress.ts'
import { ownServer } from '../helpers/server.ts'

const WORKFLOWS = Number(process.env.CHAOS_WORKFLOWS ?? 300)
const WORKERS = 4
const LOAD_SECONDS = 40
const KILL_EVERY_MS = [1500, 3500] as const
const OUTAGE_AT_MS = 10_000
const OUTAGE_MS = 3_000
const TENANTS = ['acme', 'globex', 'initech']
/** Starts of one worker in a row that may fail (the outage) before the test gives up. */
const SPAWN_ATTEMPTS = 10

const server = await ownServer()
await queryOnce(server.url, 'CREATE TABLE chaos_effects (key text PRIMARY KEY, runs int NOT NULL DEFAULT 1)')
const engine = await createEngine({
  connectionString: server.appUrl,
  adminConnectionString: server.url,
  workflows,
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  supervise: false,
  config: { staleAfterMs: 1500, heartbeatIntervalMs: 200 },
})
const fleet = workerProcesses(server.appUrl)
afterAll(() => engine.close())

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const between = ([lo, hi]: readonly [number, number]) => lo + Math.random() * (hi - lo)

describe('chaos', () => {
  it(
    'keeps the promise through SIGKILLed workers and a PostgreSQL restart',
    // The wait below fails when the work stops moving; this only bounds a run that moves without end.
    { timeout: 600_000 },
    async () => {
      for (const id of TENANTS) await engine.createTenant({ id })
      const tenants = await Promise.all(TENANTS.map((id) => engine.tenant(id)))

      // Our kills are expected; any other exit of a worker is a crash the test fails on.
      const killedByUs = new WeakSet<ChildProcess>()
      const crashes: string[] = []
      const spawnWorker = async (): Promise<void> => {
        for (let failures = 1; ; failures++) {
          try {
            const child = await fleet.spawn({ CHAOS_EFFECTS_URL: server.url })
            child.once('exit', (code, signal) => {
              if (!killedByUs.has(child)) crashes.push(`worker ${child.pid} exited (${code ?? signal})`)
            })
            return
          } catch (error) {
            // The database is down: start it again shortly. A worker that cannot start at all
            // fails the test now rather than at its timeout.
            if (failures === SPAWN_ATTEMPTS) throw error
            await sleep(300)
          }
        }
      }
      await Promise.all(Array.from({ length: WORKERS }, spawnWorker))

      const started = performance.now()
      const elapsed = () => performance.now() - started
      const expected = new Map<string, Expected>()
      let startRetries = 0
      let loadDone = false
      let finished = false

      // The load: WORKFLOWS starts spread over LOAD_SECONDS; a start that fails (the outage) is
      // retried with the same idempotency key, so it creates the workflow at most once.
      const load = (async () => {
        for (let i = 0; i < WORKFLOWS; i++) {
          const kind = chaosLoad[i % chaosLoad.length] as (typeof chaosLoad)[number]
          const tenant = tenants[i % tenants.length] as (typeof tenants)[number]
          for (;;) {
            try {
              const { id } = await tenant.startWorkflow(kind.type, { i }, { idempotencyKey: `chaos-${i}` })
              expected.set(id, kind.expect)
              break
            } catch {
              startRetries++
              await sleep(200)
            }
          }
          const due = ((i + 1) / WORKFLOWS) * LOAD_SECONDS * 1000
          if (due > elapsed()) await sleep(due - elapsed())
        }
        loadDone = true
      })()

      // The sweeper, as the cron would run it (more often, to keep the test short).
      let sweeps = 0
      const sweeper = (async () => {
        while (!finished) {
          await engine.sweep().then(
            () => sweeps++,
            () => {},
          )
          await sleep(400)
        }
      })()

      // The killer: a random worker every few seconds, replaced at once; PostgreSQL restarts once.
      let kills = 0
      let restarts = 0
      const replacements: Promise<void>[] = []
      const chaos = (async () => {
        while (!finished) {
          await sleep(between(KILL_EVERY_MS))
          if (finished) break
          if (restarts === 0 && elapsed() > OUTAGE_AT_MS) {
            await server.stop()
            await sleep(OUTAGE_MS)
            await server.start()
            restarts++
            continue
          }
          // A random worker among those running agents right now (any worker if none is), so
          // that kills hit work in flight rather than idle processes.
          const busy = await queryOnce<{ pid: number }>(
            server.url,
            `SELECT DISTINCT split_part(worker_id, ':', 2)::int AS pid FROM equilateral.agent_coordination
               WHERE status = 'running' AND worker_id IS NOT NULL`,
          ).then(
            (rows) => new Set(rows.map((row) => row.pid)),
            () => new Set<number>(),
          )
          const all = [...fleet.children]
          const victims = all.some((c) => busy.has(c.pid as number))
            ? all.filter((c) => busy.has(c.pid as number))
            : all
          const victim = victims[Math.floor(Math.random() * victims.length)]
          if (!victim) continue
          killedByUs.add(victim)
          victim.kill('SIGKILL')
          kills++
          replacements.push(spawnWorker()) // starts while the others work
        }
      })()

      // Done when the load is in and no workflow runs any more.
      try {
        await untilSettled(
          'chaos',
          async () => {
            if (!server.running) throw new Error('PostgreSQL is down')
            const { running, events } = await workProgress(server.url)
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
      await Promise.all([load, sweeper, chaos, ...replacements])
      // A clean stop: workers finish or release what they hold, so no job can be left active.
      await Promise.all([...fleet.children].map((c) => (killedByUs.add(c), fleet.stop(c, 'SIGTERM'))))

      const report = await checkInvariants(server.url, expected, { effectsTable: 'chaos_effects' })
      const counts = {
        workflows: await queryOnce<{ type: string; status: string; n: number }>(
          server.url,
          `SELECT type, status, count(*)::int AS n FROM equilateral.workflows GROUP BY 1, 2 ORDER BY 1, 2`,
        ),
        tasks: (
          await queryOnce<{ n: number; attempts: number }>(
            server.url,
            `SELECT count(*)::int AS n, sum(attempt)::int AS attempts FROM equilateral.agent_coordination`,
          )
        )[0],
      }
      console.log(
        [
          `chaos summary (${(elapsed() / 1000).toFixed(0)} s):`,
          `  workflows: ${expected.size} (${counts.workflows.map((r) => `${r.type} ${r.status} ${r.n}`).join(', ')})`,
          `  tasks: ${counts.tasks?.n}, attempts: ${counts.tasks?.attempts}, attempts lost with a worker: ${report.lostAttempts}, side effects repeated: ${report.repeatedEffects}`,
          `  worker processes: ${WORKERS} at a time, SIGKILLs: ${kills}, crashes: ${crashes.length}`,
          `  PostgreSQL restarts: ${restarts}, starts retried through the outage: ${startRetries}, sweeps: ${sweeps}`,
          `  invariants:`,
          ...describeReport(report),
        ].join('\n'),
      )

      expect(report.violations).toEqual([])
      expect(crashes).toEqual([])
      expect(expected.size).toBe(WORKFLOWS)
      expect(restarts).toBe(1)
      expect(kills).toBeGreaterThanOrEqual(8)
      // The kills hit work in flight: the sweeper took attempts back from lost workers.
      expect(report.lostAttempts).toBeGreaterThan(0)
    },
  )
})
