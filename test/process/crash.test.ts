// Crash safety with real processes: worker processes are killed with SIGKILL at random moments
// while workflows run. Afterwards every workflow has completed, every task completed exactly once
// (one completion in the audit log, a result written once), and nothing is left in flight.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { createEngine } from '../../src/index.ts'
import { workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilSettled, workProgress } from '../helpers/progress.ts'

const db = await createTestDatabase()
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  workflows,
  log: pino({ level: 'silent' }),
  supervise: false,
  config: { staleAfterMs: 1500, heartbeatIntervalMs: 200 },
})
const { children, spawn: spawnWorker } = workerProcesses(db.appUrl)
afterAll(async () => {
  await engine.close()
  await db.drop()
})

async function query<T = Record<string, unknown>>(sql: string): Promise<T[]> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    return (await c.query(sql)).rows as T[]
  } finally {
    await c.end()
  }
}

const WORKFLOWS = 240

describe('crash safety', () => {
  // The wait fails when the work stops moving; the timeout only bounds a run that moves without end.
  it('completes every workflow exactly once while workers are SIGKILLed', { timeout: 300_000 }, async () => {
    await engine.createTenant({ id: 'acme' })
    await engine.createTenant({ id: 'globex' })
    await Promise.all([spawnWorker(), spawnWorker(), spawnWorker()])
    const tenants = [await engine.tenant('acme'), await engine.tenant('globex')]
    const started: string[] = []
    for (let i = 0; i < WORKFLOWS; i++) {
      const t = tenants[i % 2] as (typeof tenants)[number]
      started.push((await t.startWorkflow(workflows[i % 3]?.name as string, { i })).id)
    }
    let kills = 0
    await untilSettled(
      'crash safety',
      async () => {
        const { running, events } = await workProgress(db.url)
        const state = {
          progress: [running, events],
          state: `${running} workflows still running (${kills} kills)`,
        }
        if (running === 0) return { done: true, ...state }
        // kill a random worker at a random moment, start a replacement; sweep like the cron would
        if (kills < 12 && children.size > 0) {
          const victims = [...children]
          const victim = victims[Math.floor(Math.random() * victims.length)]
          await new Promise((r) => setTimeout(r, 100 + Math.random() * 300))
          victim?.kill('SIGKILL')
          kills++
          void spawnWorker().catch(() => {}) // the replacement starts while the others work
        } else {
          await new Promise((r) => setTimeout(r, 300))
        }
        await engine.sweep()
        return { done: false, ...state }
      },
      { everyMs: 0 },
    )
    expect(kills).toBeGreaterThanOrEqual(5)
    // the kills hit work in flight: the sweeper had tasks to recover
    const [recovered] = await query<{ n: number }>(
      `SELECT count(*)::int AS n FROM equilateral.agent_audit_log WHERE action_type IN ('task_lost', 'task_recovered')`,
    )
    expect(recovered?.n).toBeGreaterThan(0)

    const wfs = await query<{ status: string; n: number }>(
      `SELECT status, count(*)::int AS n FROM equilateral.workflows GROUP BY status`,
    )
    expect(wfs).toEqual([{ status: 'completed', n: WORKFLOWS }])
    const notDone = await query(
      `SELECT id, status FROM equilateral.agent_coordination WHERE status <> 'completed'`,
    )
    expect(notDone).toEqual([])
    // exactly one completion per task in the audit log, and per workflow one workflow_completed
    const completions = await query<{ task_id: string; n: number }>(
      `SELECT t.id AS task_id, count(a.id)::int AS n FROM equilateral.agent_coordination t
       LEFT JOIN equilateral.agent_audit_log a ON a.task_id = t.id AND a.action_type = 'task_completed'
       GROUP BY t.id HAVING count(a.id) <> 1`,
    )
    expect(completions).toEqual([])
    const wfCompleted = await query<{ n: number }>(
      `SELECT count(*)::int AS n FROM equilateral.agent_audit_log WHERE action_type = 'workflow_completed'`,
    )
    expect(wfCompleted[0]?.n).toBe(WORKFLOWS)
    // every task's history is well-formed: no start after its completion
    const late = await query(
      `SELECT a.task_id FROM equilateral.agent_audit_log a JOIN equilateral.agent_audit_log c
         ON c.task_id = a.task_id AND c.action_type = 'task_completed' AND a.id > c.id
       WHERE a.task_id IS NOT NULL`,
    )
    expect(late).toEqual([])
    // no job of ours is left active
    const active = await query(`SELECT id FROM pgboss.job WHERE name LIKE 'eq.%' AND state = 'active'`)
    expect(active).toEqual([])
  })
})
