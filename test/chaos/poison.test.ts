// Poison tasks among healthy work, on real worker processes: an agent that hangs and ignores its
// signal, agents that throw values that are not Errors (some hostile to whatever reads them), and
// an agent that kills its own process. Each is retried to its limit, dead-lettered, and fails its
// workflow with a readable error; the healthy workflows beside them all complete, and no worker
// process dies except those the suicidal agent kills.
import type { ChildProcess } from 'node:child_process'
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { serializeError } from '../../src/errors.ts'
import { createEngine, type Json } from '../../src/index.ts'
import { DEAD_LETTER_QUEUE } from '../../src/queue/boss.ts'
import { POISON_ATTEMPTS, POISON_VALUES, poisonWorkflows, workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { workerProcesses } from '../helpers/processes.ts'

const HEALTHY = 90
const WORKERS = 3
const DEADLINE_MS = 120_000

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
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

async function query<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    return (await c.query(sql, params)).rows as T[]
  } finally {
    await c.end()
  }
}

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
    { timeout: 180_000 },
    async () => {
      await engine.createTenant({ id: 'acme' })
      const acme = await engine.tenant('acme')

      // Exits other than the SIGKILLs of the suicidal agent are crashes the test fails on.
      let selfKills = 0
      const crashes: string[] = []
      let stopping = false
      const keepOne = async (): Promise<void> => {
        while (!stopping) {
          let child: ChildProcess
          try {
            child = await fleet.spawn()
          } catch (error) {
            crashes.push(String(error))
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
      const began = performance.now()
      await start('poison-hang', {}, 'failed', 'hang')
      await start('poison-exit', {}, 'failed', 'exit')
      for (const kind of Object.keys(POISON_VALUES)) await start('poison-throw', { kind }, 'failed', kind)
      for (let i = 0; i < HEALTHY; i++)
        await start(['chaos-diamond', 'chaos-chain', 'chaos-fan'][i % 3] as string, { i }, 'completed')

      const deadline = Date.now() + DEADLINE_MS
      for (;;) {
        await engine.sweep()
        const [row] = await query<{ n: number }>(
          `SELECT count(*)::int AS n FROM equilateral.workflows WHERE status = 'running'`,
        )
        if (row?.n === 0) break
        if (Date.now() > deadline) throw new Error(`${row?.n} workflows still running`)
        await sleep(300)
      }
      const seconds = (performance.now() - began) / 1000
      stopping = true
      await Promise.all([...fleet.children].map((c) => fleet.stop(c, 'SIGTERM')))
      await Promise.all(supervisors)

      const report = await checkInvariants(db.url, expected)
      expect(report.violations).toEqual([])
      expect(crashes).toEqual([])

      // Every poison task used all its attempts, ended failed with a readable error, and was
      // dead-lettered once.
      const tasks = await query<{
        workflow_id: string
        id: string
        status: string
        failures: number
        error: any
      }>(
        `SELECT workflow_id, id, status, failures, error FROM equilateral.agent_coordination
       WHERE workflow_id = ANY($1::uuid[])`,
        [[...poison.keys()]],
      )
      const dead = await query<{ k: string; n: number }>(
        `SELECT data->>'k' AS k, count(*)::int AS n FROM pgboss.job WHERE name = $1 GROUP BY 1`,
        [DEAD_LETTER_QUEUE],
      )
      const deadLettered = new Map(dead.map((d) => [d.k, d.n]))
      const errors: Record<string, string> = {}
      for (const t of tasks) {
        const label = poison.get(t.workflow_id) as string
        expect({ label, status: t.status, failures: t.failures, dead: deadLettered.get(t.id) }).toEqual({
          label,
          status: 'failed',
          failures: POISON_ATTEMPTS,
          dead: 1,
        })
        expect(typeof t.error?.message).toBe('string')
        errors[label] = `${t.error.name}: ${String(t.error.message).slice(0, 40)}`
      }
      expect(errors.hang).toMatch(/^TimeoutError/)
      expect(errors.exit).toMatch(/^WorkerLost/)
      expect(errors.number).toBe('NonErrorThrown: 42')
      expect(errors.unstorableText).toBe('Error: NUL \\u0000 and a lone surrogate \ufffd')
      expect(selfKills).toBe(POISON_ATTEMPTS)

      console.log(
        [
          `poison summary: ${HEALTHY} healthy workflows completed beside ${poison.size} poison tasks in ${seconds.toFixed(1)} s`,
          `  worker processes killed by the suicidal agent: ${selfKills}, other exits: ${crashes.length}`,
          ...Object.entries(errors).map(
            ([label, e]) => `  ${label.padEnd(26)} failed after ${POISON_ATTEMPTS} attempts: ${e}`,
          ),
          ...describeReport(report),
        ].join('\n'),
      )
    },
  )
})
