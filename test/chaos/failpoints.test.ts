// Crash points: for each named failpoint of the hot path (src/failpoints.ts), worker processes run
// the chaos mix with that point armed, so they SIGKILL themselves there again and again; each dead
// worker is replaced at once and the sweeper runs as the cron would. Afterwards the database must
// show the same promise as after the chaos test (test/helpers/invariants.ts).
import type { ChildProcess } from 'node:child_process'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { createEngine, type Engine } from '../../src/index.ts'
import { FAILPOINTS, type Failpoint, parseFailpoints } from '../../src/failpoints.ts'
import { chaosLoad, workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilNoneRunning } from '../helpers/progress.ts'

const WORKFLOWS = 25
const MAX_ROUNDS = 6
const WORKERS = 2
const MIN_CRASHES = 8
// How often an armed point fires when met: claims and completions are met once per batch, the
// failure paths only by the planned failures of the mix.
const PROBABILITY: Record<Failpoint, number> = {
  'claim.before-commit': 0.1,
  'claim.after-commit': 0.1,
  'agent.after-return': 0.04,
  'complete.after-dependents': 0.12,
  'complete.before-commit': 0.12,
  'complete.after-commit': 0.12,
  'local.after-commit': 0.15,
  'fail.before-commit': 0.35,
  'fail.after-commit': 0.35,
}
// The points run side by side (each on a database of its own), two at a time: the heavy project
// of vitest.config.ts sets maxConcurrency, since each point keeps its own worker processes booting
// and working. A point fails when its work stops moving (test/helpers/progress.ts); the timeout
// only bounds a run that moves without end.
describe.concurrent('crash points', () => {
  it.each(FAILPOINTS)('%s: nothing lost, nothing completed twice', { timeout: 300_000 }, async (point) => {
    const db = await createTestDatabase()
    const engine: Engine = await createEngine({
      connectionString: db.appUrl,
      adminConnectionString: db.url,
      workflows,
      log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
      supervise: false,
      config: { staleAfterMs: 1500, heartbeatIntervalMs: 200 },
    })
    const fleet = workerProcesses(db.appUrl)
    try {
      await engine.createTenant({ id: 'acme' })
      await engine.createTenant({ id: 'globex' })
      const tenants = [await engine.tenant('acme'), await engine.tenant('globex')]

      // Deaths at the point are SIGKILLs the worker sent itself; any other exit is a bug.
      let crashes = 0
      const otherExits: string[] = []
      let stopping = false
      const armed = { EQUILATERAL_FAILPOINTS: `${point}=${PROBABILITY[point]}` }
      const keepOne = async (): Promise<void> => {
        for (;;) {
          let child: ChildProcess
          try {
            child = await fleet.spawn(armed)
          } catch {
            crashes++ // it died at the point before it said it was ready
            continue
          }
          if (stopping) {
            child.kill('SIGTERM')
            return
          }
          const exit = await new Promise<NodeJS.Signals | number | null>((resolve) =>
            child.once('exit', (code, signal) => resolve(signal ?? code)),
          )
          if (stopping) return
          if (exit === 'SIGKILL') crashes++
          else otherExits.push(`worker exited with ${exit}`)
        }
      }
      const supervisors = Array.from({ length: WORKERS }, keepOne)

      // Rounds of the chaos mix until the point has fired often enough (it fires at random).
      const expected = new Map<string, Expected>()
      for (let round = 0; crashes < MIN_CRASHES; round++) {
        if (round === MAX_ROUNDS) throw new Error(`${point} fired ${crashes} times in ${round} rounds`)
        for (let i = 0; i < WORKFLOWS; i++) {
          const kind = chaosLoad[i % chaosLoad.length] as (typeof chaosLoad)[number]
          const { id } = await (tenants[i % 2] as (typeof tenants)[number]).startWorkflow(kind.type, { i })
          expected.set(id, kind.expect)
        }
        await untilNoneRunning(db.url, `${point}, round ${round + 1} (${crashes} crashes)`, () =>
          engine.sweep(),
        )
      }
      stopping = true
      await Promise.all([...fleet.children].map((c) => fleet.stop(c, 'SIGTERM')))
      await Promise.all(supervisors)

      const report = await checkInvariants(db.url, expected)
      console.log(
        [
          `${point}: ${crashes} crashes, ${expected.size} workflows, ${report.lostAttempts} attempts recovered`,
          ...describeReport(report),
        ].join('\n'),
      )
      expect(report.violations).toEqual([])
      expect(otherExits).toEqual([])
    } finally {
      for (const c of fleet.children) c.kill('SIGKILL')
      await engine.close()
      await db.drop()
    }
  })
})

describe('EQUILATERAL_FAILPOINTS', () => {
  it('arms the named points with their probability or stop, and refuses what it does not know', () => {
    expect(parseFailpoints(undefined)).toBeNull()
    expect(parseFailpoints(' ')).toBeNull()
    expect(parseFailpoints('claim.after-commit, complete.before-commit=0.25')).toEqual(
      new Map([
        ['claim.after-commit', 1],
        ['complete.before-commit', 0.25],
      ]),
    )
    // stop: SIGSTOP once, where it is met (test/chaos/frozen-worker.test.ts).
    expect(parseFailpoints('complete.before-commit=stop')).toEqual(
      new Map([['complete.before-commit', 'stop']]),
    )
    expect(() => parseFailpoints('complete.before-commit=halt')).toThrow(/between 0 and 1, or stop/)
    expect(() => parseFailpoints('complete.befor-commit')).toThrow(/unknown point "complete.befor-commit"/)
    expect(() => parseFailpoints('claim.after-commit=2')).toThrow(/between 0 and 1/)
    expect(() => parseFailpoints('claim.after-commit=often')).toThrow(/between 0 and 1/)
  })
})
