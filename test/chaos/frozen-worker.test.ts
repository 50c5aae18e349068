// A worker frozen in the middle of a completion (SIGSTOP while its transaction is open, as a stopped
// container or a stalled machine leaves it) holds its task's rows until its session ends. The sweeper
// must pass over what it holds and recover everything else, in that tenant and the others, on time;
// once the frozen session is ended (by the server's idle_in_transaction_session_timeout, here by
// hand), the frozen task is recovered too, and when the worker wakes its completion is fenced out.
import { readFileSync } from 'node:fs'
import type { ChildProcess } from 'node:child_process'
import pg from 'pg'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { createEngine, type Engine } from '../../src/index.ts'
import { frozenWorkflows, slowFirst, worker } from '../fixtures/chaos-registry.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { checkInvariants, describeReport, type Expected } from '../helpers/invariants.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilSettled } from '../helpers/progress.ts'

const VICTIMS_PER_TENANT = 3
/** Fail when nothing moved for this long (a blocked sweeper moves nothing). */
const STALL_MS = 30_000

/** Polls `state` until it says done; fails when its progress has not changed for STALL_MS. */
function untilDone(what: string, state: () => Promise<{ done: boolean; progress: string }>) {
  return untilSettled(
    what,
    async () => {
      const s = await state()
      return { ...s, state: s.progress }
    },
    { stallMs: STALL_MS, everyMs: 100 },
  )
}

/** Whether the process is stopped (Linux: state T in /proc/<pid>/stat). */
function stopped(child: ChildProcess): boolean {
  try {
    return readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]?.startsWith('T') ?? false
  } catch {
    return false
  }
}

describe('a worker frozen in the middle of a completion', () => {
  it(
    'blocks no recovery, in its tenant or another, and its completion is fenced out when it wakes',
    { timeout: 240_000 },
    async () => {
      const db = await createTestDatabase()
      const engine: Engine = await createEngine({
        connectionString: db.appUrl,
        adminConnectionString: db.url,
        workflows: frozenWorkflows,
        log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
        supervise: false,
        // The sweeper's timer, fast here.
        config: { staleAfterMs: 1500, heartbeatIntervalMs: 200, sweepIntervalMs: 250 },
      })
      const fleet = workerProcesses(db.appUrl)
      const superuser = new pg.Client({ connectionString: db.url })
      await superuser.connect()
      const q = async <T extends pg.QueryResultRow = Record<string, any>>(
        sql: string,
        params: unknown[] = [],
      ) => (await superuser.query<T>(sql, params)).rows
      try {
        await engine.createTenant({ id: 'acme' })
        await engine.createTenant({ id: 'globex' })
        const tenants = [await engine.tenant('acme'), await engine.tenant('globex')]
        const expected = new Map<string, Expected>()

        // Victims in both tenants, claimed by the worker that will freeze: their first attempt runs
        // for 10 s, so they are running (and go stale) while it is frozen.
        const victims: string[] = []
        for (const tenant of tenants) {
          for (let i = 0; i < VICTIMS_PER_TENANT; i++) {
            const { id } = await tenant.startWorkflow('chaos-slow-first', { i })
            victims.push(id)
            expected.set(id, 'completed')
          }
        }
        // Its session keeps its transaction open however long it is frozen (no server timeout):
        // what the sweeper recovers meanwhile, it recovers past the frozen transaction's locks.
        // No heartbeats from it: a heartbeat transaction the freeze caught open would hold its
        // tenant's victims too (the sweeper rightly passes over them until the session ends), which
        // is not the freeze this test is about; CI saw it once under load. Its tasks go stale anyway.
        const frozen = await fleet.spawn({
          EQUILATERAL_FAILPOINTS: 'complete.before-commit=stop',
          IDLE_IN_TRANSACTION_TIMEOUT_MS: '0',
          WORKER_CONFIG: JSON.stringify({ heartbeatIntervalMs: 600_000 }),
        })
        const running = async () =>
          (
            await q<{ n: number }>(
              `SELECT count(*)::int AS n FROM equilateral.agent_coordination WHERE status = 'running'`,
            )
          )[0]!.n
        await untilDone('the first worker claims the victims', async () => {
          const n = await running()
          return { done: n === victims.length, progress: String(n) }
        })
        // A quick task in acme: its completion freezes the worker, transaction open.
        const trigger = await tenants[0]!.startWorkflow('chaos-quick', {})
        expected.set(trigger.id, 'completed')
        await untilDone('the worker freezes in its completion', async () => ({
          done: stopped(frozen),
          progress: String(await running()),
        }))
        const frozenAt = Date.now()
        const [task] = await q<{ id: string; status: string }>(
          `SELECT id, status FROM equilateral.agent_coordination WHERE workflow_id = $1`,
          [trigger.id],
        )
        const held = async () => {
          // The frozen transaction's lock on the trigger's task row, as a NOWAIT lock attempt sees it.
          await superuser.query('BEGIN')
          try {
            await superuser.query(
              'SELECT 1 FROM equilateral.agent_coordination WHERE id = $1 FOR NO KEY UPDATE NOWAIT',
              [task!.id],
            )
            return false
          } catch (error) {
            if ((error as { code?: string }).code === '55P03') return true
            throw error
          } finally {
            await superuser.query('ROLLBACK')
          }
        }
        expect(task?.status).toBe('running')
        expect(await held()).toBe(true)

        // The sweeper starts once every task the frozen worker holds is stale, the trigger's too, as
        // its first pass after a freeze finds them in production (not before: a victim recovered
        // before the freeze would be run again, quickly, by the only worker there is). A healthy
        // worker (in this process: no boot to wait for) runs what it recovers; every victim's
        // workflow completes while the frozen transaction still holds its rows.
        await untilDone("the frozen worker's tasks go stale", async () => {
          const [r] = await q<{ n: number }>(
            `SELECT count(*)::int AS n FROM equilateral.agent_coordination
             WHERE status = 'running' AND heartbeat_at < now() - interval '1500 milliseconds'`,
          )
          return { done: r!.n === victims.length + 1, progress: String(r!.n) }
        })
        await engine.startSweeper()
        const healthy = await engine.startWorker({ agents: [slowFirst, worker] })
        const finished = async (ids: string[]) =>
          (
            await q<{ n: number }>(
              `SELECT count(*)::int AS n FROM equilateral.workflows WHERE id = ANY($1::uuid[]) AND status = 'completed'`,
              [ids],
            )
          )[0]!.n
        const lost = async () =>
          (
            await q<{ n: number }>(
              `SELECT count(*)::int AS n FROM equilateral.agent_audit_log WHERE action_type IN ('task_lost', 'task_recovered')`,
            )
          )[0]!.n
        let recoveredAt = 0
        await untilDone('the sweeper recovers the victims in both tenants', async () => {
          const [done, recovered] = [await finished(victims), await lost()]
          if (recovered >= victims.length && recoveredAt === 0) recoveredAt = Date.now()
          return { done: done === victims.length, progress: `${done} completed, ${recovered} recovered` }
        })
        const completedAt = Date.now()
        expect(await held()).toBe(true)
        const perTenant = await q<{ tenant_id: string; n: number }>(
          `SELECT tenant_id, count(*)::int AS n FROM equilateral.agent_audit_log
           WHERE action_type = 'task_lost' GROUP BY tenant_id ORDER BY tenant_id`,
        )
        expect(perTenant).toEqual([
          { tenant_id: 'acme', n: VICTIMS_PER_TENANT },
          { tenant_id: 'globex', n: VICTIMS_PER_TENANT },
        ])

        // The server ends the frozen session (as idle_in_transaction_session_timeout does): its
        // transaction rolls back, the sweeper recovers the trigger's task and the healthy worker runs it.
        const [xmax] = await q<{ xmax: string }>(
          'SELECT xmax::text FROM equilateral.agent_coordination WHERE id = $1',
          [task!.id],
        )
        const ended = await q<{ ok: boolean }>(
          `SELECT pg_terminate_backend(pid) AS ok FROM pg_locks
           WHERE locktype = 'transactionid' AND transactionid::text = $1 AND mode = 'ExclusiveLock' AND granted`,
          [xmax!.xmax],
        )
        expect(ended).toEqual([{ ok: true }])
        await untilDone('the frozen task is recovered once its session ended', async () => {
          const done = await finished([trigger.id])
          return { done: done === 1, progress: String(await lost()) }
        })

        // Woken, the frozen worker's completion finds its attempt gone: discarded, not written.
        frozen.kill('SIGCONT')
        await untilDone('the woken worker goes on', async () => ({
          done: !stopped(frozen),
          progress: '',
        }))
        expect(await fleet.stop(frozen, 'SIGTERM')).toBe(0)
        await healthy.stop()

        const [final] = await q<{ attempt: number; completions: number }>(
          `SELECT t.attempt, (SELECT count(*)::int FROM equilateral.agent_audit_log a
             WHERE a.task_id = t.id AND a.action_type = 'task_completed') AS completions
           FROM equilateral.agent_coordination t WHERE t.id = $1`,
          [task!.id],
        )
        expect(final).toEqual({ attempt: 2, completions: 1 })
        const report = await checkInvariants(db.url, expected)
        console.log(
          [
            `frozen worker: victims recovered ${recoveredAt - frozenAt} ms and their workflows completed ` +
              `${completedAt - frozenAt} ms after the freeze (stale after 1500 ms, sweep every 250 ms)`,
            ...describeReport(report),
          ].join('\n'),
        )
        expect(report.violations).toEqual([])
      } finally {
        // A frozen worker's session would hold its locks (and a blocked sweep its connection).
        for (const c of fleet.children) c.kill('SIGKILL')
        await superuser.end().catch(() => {})
        await engine.close()
        await db.drop()
      }
    },
  )
})
