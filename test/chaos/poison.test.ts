// Poison tasks among healthy work, on real worker processes: an agent that hangs and ignores its
// signal, one that blocks the event loop for good (the worker's watchdog kills the process), agents
// that throw values that are not Errors (some hostile to whatever reads them), and an agent that
// kills its own process. Each is retried to its limit, dead-lettered, and fails its
// workflow with a readable error; the healthy workflows beside them all complete, and no worker
// process dies except those the suicidal agent kills.
import type { ChildProcess } from 'node:child_process'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { serializeError } from '../../src/errors.ts'
import { createEngine, type Json } from '../../src/index.ts'
import { DEAD_LETTER_QUEUE } from '../../src/queue/boss.ts'
import { POISON_ATTEMPTS, POISON_VALUES, poisonWorkflows, workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilNoneRunning } from '../helpers/progress.ts'

const HEALTHY = 90
const WORKERS = 3

const db = await createTestDatabase()
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  workflows: [...workflows, ...poisonWorkflows],
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  supervise: false,
  config: { staleAfterMs: 1500, heartbeatIntervalMs: 200 },
})
const fleet = workerProcesses(db.appUrl)
afterAll(async () => {
  await engine.close()
  await db.drop()
})

describe('serializeError', () => {
  it.each(Object.keys(POISON_VALUES))('describes a thrown %s without throwing itself', (kind) => {
    const error = serializeError((POISON_VALUES[kind] as () => unknown)())
    expect(typeof error.name).toBe('string')
    expect(typeof error.message).toBe('string')
    expect(error.message).not.toContain('\u0000')
    expect(error.message.isWellFormed()).toBe(true)
  })
})

describe('poison tasks', () => {
  it(
    'retries, dead-letters and fails each poison task while the healthy work completes',
    // Each wave fails when its work stops moving; this only bounds a run that moves without end.
    { timeout: 300_000 },
    async () => {
      await engine.createTenant({ id: 'acme' })
      const acme = await engine.tenant('acme')

      // Exits other than the SIGKILLs of the suicidal agent and the watchdog are crashes.
      let selfKills = 0
      const crashes: string[] = []
      let stopping = false
      const keepOne = async (): Promise<void> => {
        while (!stopping) {
          let child: ChildProcess
          try {
            child = await fleet.spawn({ WATCHDOG_MS: '1500' })
          } catch (error) {
            if (stopping) return // stopped by the test while it was starting
            // Killed before it said it was ready: it had claimed a poison task at once.
            if (String(error).endsWith('SIGKILL')) selfKills++
            else crashes.push(String(error))
            continue
          }
          const exit = await new Promise<NodeJS.Signals | number | null>((resolve) =>
            child.once('exit', (code, signal) => resolve(signal ?? code)),
          )
          if (stopping) return
          if (exit === 'SIGKILL') selfKills++
          else crashes.push(`worker exited with ${exit}`)
        }
      }
      const supervisors = Array.from({ length: WORKERS }, keepOne)

      const expected = new Map<string, Expected>()
      const poison = new Map<string, string>() // workflow id -> what it does
      const start = async (
        type: string,
        input: { [key: string]: Json },
        expect: Expected,
        label?: string,
      ) => {
        const { id } = await acme.startWorkflow(type, input)
        expected.set(id, expect)
        if (label) poison.set(id, label)
      }
      const settle = (what: string) => untilNoneRunning(db.url, `poison, ${what}`, () => engine.sweep())
      const healthy = async (from: number) => {
        for (let i = from; i < from + HEALTHY / 2; i++)
          await start(['chaos-diamond', 'chaos-chain', 'chaos-fan'][i % 3] as string, { i }, 'completed')
      }
      // Two waves, each among healthy work: first the poison that leaves its process alive, then
      // the poison that kills it. A killed process takes the attempts of every task it held with
      // it, which would blur which poison caused which failure.
      const began = performance.now()
      await start('poison-hang', {}, 'failed', 'hang')
      for (const kind of Object.keys(POISON_VALUES)) await start('poison-throw', { kind }, 'failed', kind)
      await healthy(0)
      await settle('first wave')
      await start('poison-exit', {}, 'failed', 'exit')
      await start('poison-spin', {}, 'failed', 'spin')
      await healthy(HEALTHY / 2)
      await settle('second wave')
      const seconds = (performance.now() - began) / 1000
      stopping = true
      await Promise.all([...fleet.children].map((c) => fleet.stop(c, 'SIGTERM')))
      await Promise.all(supervisors)

      const report = await checkInvariants(db.url, expected)
      expect(report.violations).toEqual([])
      expect(crashes).toEqual([])

      // Every poison task used all its attempts, ended failed with a readable error, and was
      // dead-lettered once.
      const tasks = await queryOnce<{
        workflow_id: string
        id: string
        status: string
        failures: number
        error: any
      }>(
        db.url,
        `SELECT workflow_id, id, status, failures, error FROM equilateral.agent_coordination
       WHERE workflow_id = ANY($1::uuid[])`,
        [[...poison.keys()]],
      )
      const dead = await queryOnce<{ k: string; n: number }>(
        db.url,
        `SELECT data->>'k' AS k, count(*)::int AS n FROM pgboss.job WHERE name = $1 GROUP BY 1`,
        [DEAD_LETTER_QUEUE],
      )
      const deadLettered = new Map(dead.map((d) => [d.k, d.n]))
      // Each attempt's error, from the audit log: a poison task's attempt may also have been lost
      // with a process another poison task killed, so its final error is not always its own.
      const failures = await queryOnce<{ task_id: string; error: string }>(
        db.url,
        `SELECT task_id, (action_data->'error'->>'name') || ': ' || (action_data->'error'->>'message') AS error
         FROM equilateral.agent_audit_log WHERE action_type IN ('task_failed_attempt', 'task_lost')
           AND workflow_id = ANY($1::uuid[]) ORDER BY id`,
        [[...poison.keys()]],
      )
      const errorsOf = Map.groupBy(failures, (f) => f.task_id)
      const errors: Record<string, string[]> = {}
      for (const t of tasks) {
        const label = poison.get(t.workflow_id) as string
        expect({ label, status: t.status, failures: t.failures, dead: deadLettered.get(t.id) }).toEqual({
          label,
          status: 'failed',
          failures: POISON_ATTEMPTS,
          dead: 1,
        })
        expect(typeof t.error?.message).toBe('string')
        errors[label] = [...new Set((errorsOf.get(t.id) ?? []).map((f) => f.error.slice(0, 60)))]
      }
      expect(errors.hang).toContain('TimeoutError: task timed out after 300 ms')
      // A killed process is found by its ended database session (worker liveness); a spinning one
      // by its stale heartbeat, or by its session once the watchdog has killed it.
      const lost = ['WorkerLost: heartbeat stale', "WorkerLost: worker's database session ended"]
      expect(errors.exit).toContain("WorkerLost: worker's database session ended")
      expect(lost).toEqual(expect.arrayContaining(errors.exit as string[]))
      expect(errors.spin?.length).toBeGreaterThan(0)
      expect(lost).toEqual(expect.arrayContaining(errors.spin as string[]))
      expect(errors.number).toContain('NonErrorThrown: 42')
      expect(errors.unstorableText).toContain('Error: NUL \\u0000 and a lone surrogate \ufffd')
      expect(errors.hostileProxy).toContain('NonErrorThrown: a value that cannot be read')
      // Each kill is the suicidal agent's or the watchdog's (a process may hold one attempt of each).
      expect(selfKills).toBeGreaterThanOrEqual(POISON_ATTEMPTS)
      expect(selfKills).toBeLessThanOrEqual(2 * POISON_ATTEMPTS)

      console.log(
        [
          `poison summary: ${HEALTHY} healthy workflows completed beside ${poison.size} poison tasks in ${seconds.toFixed(1)} s`,
          `  worker processes killed by the suicidal agent or the watchdog: ${selfKills}, other exits: ${crashes.length}`,
          ...Object.entries(errors).map(
            ([label, e]) =>
              `  ${label.padEnd(26)} failed after ${POISON_ATTEMPTS} attempts: ${e.join(' | ')}`,
          ),
          ...describeReport(report),
        ].join('\n'),
      )
    },
  )
})
