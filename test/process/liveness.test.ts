// Worker liveness by database session, with real processes: a SIGKILLed worker's running task is
// recovered by the liveness pass although its heartbeat threshold is 10 minutes away, while a slow
// worker that is alive keeps its task; a worker whose session drops registers again; a worker that
// shuts down gracefully leaves the registry.
import type { ChildProcess } from 'node:child_process'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { withDatabase } from '../../src/db/provision.ts'
import { createEngine } from '../../src/index.ts'
import { livenessWorkflows } from '../fixtures/liveness-registry.ts'
import { createTestDatabase, pgContext, queryOnce } from '../helpers/db.ts'
import { tenantDatabasePrefix } from '../helpers/engine.ts'
import { checkInvariants, type Expected } from '../helpers/invariants.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { untilSettled } from '../helpers/progress.ts'
import { TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'

const db = await createTestDatabase()
// Only liveness can recover a killed worker's task here: heartbeats would take 10 minutes.
const NO_HEARTBEAT_RECOVERY = { staleAfterMs: 600_000, heartbeatIntervalMs: 200 }
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  workflows: livenessWorkflows,
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  supervise: false,
  // The liveness pass at its default interval; the timed sweep far away, so it recovers nothing here.
  config: { ...NO_HEARTBEAT_RECOVERY, sweepIntervalMs: 3_600_000 },
})
const { spawn, stop } = workerProcesses(db.appUrl)
afterAll(async () => {
  await engine.close()
  await db.drop()
})

const q = <T extends Record<string, any> = Record<string, any>>(sql: string, params: unknown[] = []) =>
  queryOnce<T>(db.url, sql, params)

function worker(agent: string): Promise<ChildProcess> {
  return spawn({
    WORKER_AGENTS: agent,
    WORKER_CONFIG: JSON.stringify(NO_HEARTBEAT_RECOVERY),
    LIVENESS_GATE_URL: db.url,
  })
}

/**
 * Polls `read` until `done` holds of what it returns; fails when what it returns has not changed for
 * `stallMs` (no progress), not after a fixed time.
 */
async function until<T>(read: () => Promise<T>, done: (v: T) => boolean, what: string, stallMs = 30_000) {
  let value!: T
  await untilSettled(
    what,
    async () => {
      value = await read()
      return { done: done(value), progress: value, state: `last: ${JSON.stringify(value)}` }
    },
    { stallMs, everyMs: 100 },
  )
  return value
}

const taskOf = (workflowId: string) =>
  q<{ status: string; attempt: number; worker_id: string | null }>(
    'SELECT status, attempt, worker_id FROM equilateral.agent_coordination WHERE workflow_id = $1',
    [workflowId],
  ).then((rows) => rows[0])

const auditOf = (workflowId: string) =>
  q<{ action_type: string; details: unknown }>(
    `SELECT action_type, action_data AS details FROM equilateral.agent_audit_log
     WHERE workflow_id = $1 AND task_id IS NOT NULL ORDER BY id`,
    [workflowId],
  )

const registered = () =>
  q<{ worker_id: string; pid: number; lock_id: number }>(
    'SELECT worker_id, pid, lock_id FROM equilateral.worker_sessions ORDER BY worker_id',
  )

describe('worker liveness', () => {
  it("recovers a SIGKILLed worker's task by engine.sweep() without waiting for its heartbeat to go stale", async () => {
    await engine.createTenant({ id: 'initech' })
    const tenant = await engine.tenant('initech')
    const victim = await worker('liveness-long')
    const { id } = await tenant.startWorkflow('liveness-long')
    await until(
      () => taskOf(id),
      (t) => t?.status === 'running',
      'task claimed',
    )
    victim.kill('SIGKILL')
    await until(
      async () => ({ report: await engine.sweep(), task: await taskOf(id) }),
      ({ task }) => task?.status !== 'running',
      'killed worker noticed',
    )
    // Attempt 1 was counted lost (a new attempt queued); the threshold of 10 minutes did not matter.
    expect(await taskOf(id)).toMatchObject({ status: 'queued', attempt: 2 })
    const lost = (await auditOf(id)).filter((a) => a.action_type === 'task_lost')
    expect(lost).toHaveLength(1)
    expect(JSON.stringify(lost[0]?.details)).toContain("worker's database session ended")
    // Someone serves it again: the workflow completes, exactly once.
    const rescuer = await worker('liveness-long')
    await until(
      () => q('SELECT status FROM equilateral.workflows WHERE id = $1', [id]),
      (rows) => rows[0]?.status === 'completed',
      'workflow completed',
    )
    await stop(rescuer, 'SIGTERM')
    const report = await checkInvariants(db.url, new Map<string, Expected>([[id, 'completed']]))
    expect(report.violations).toEqual([])
  })

  it("the liveness pass restarts a killed worker's task elsewhere and leaves a live slow worker's task alone", async () => {
    await engine.createTenant({ id: 'acme' })
    const tenant = await engine.tenant('acme')
    await engine.startSweeper()
    const slowWorker = await worker('liveness-slow')
    const victim = await worker('liveness-long')
    const slow = await tenant.startWorkflow('liveness-slow')
    const long = await tenant.startWorkflow('liveness-long')
    await until(
      async () => [await taskOf(slow.id), await taskOf(long.id)],
      (ts) => ts.every((t) => t?.status === 'running'),
      'both tasks claimed',
    )
    const victimId = (await taskOf(long.id))?.worker_id
    expect(victimId).toContain(`:${victim.pid}:`)
    expect((await registered()).map((r) => r.pid)).toContain(victim.pid)

    const rescuer = await worker('liveness-long')
    victim.kill('SIGKILL')
    // Nobody calls sweep(): the pass notices the ended session and re-queues the task, the rescuer
    // runs attempt 2, and the slow agent (waiting for exactly that) then completes its own.
    await until(
      () => q('SELECT type, status FROM equilateral.workflows ORDER BY type'),
      (rows) => rows.every((r) => r.status === 'completed'),
      'both workflows completed',
    )
    expect(await taskOf(long.id)).toMatchObject({ status: 'completed', attempt: 2 })
    expect((await taskOf(long.id))?.worker_id).toContain(`:${rescuer.pid}:`)
    // The slow task ran once, on its first attempt, never taken back although it outlived passes
    // that found a dead worker.
    expect(await taskOf(slow.id)).toMatchObject({ status: 'completed', attempt: 1 })
    expect((await auditOf(slow.id)).map((a) => a.action_type)).not.toContain('task_lost')
    // The dead worker's registration is gone; the live ones are listed.
    await until(
      () => registered(),
      (rows) => !rows.some((r) => r.worker_id === victimId),
      'dead worker forgotten',
    )
    const pids = (await registered()).map((r) => r.pid)
    expect(pids).toEqual(expect.arrayContaining([slowWorker.pid, rescuer.pid]))

    const report = await checkInvariants(
      db.url,
      new Map<string, Expected>(
        (await q<{ id: string }>(`SELECT id FROM equilateral.workflows`)).map((r) => [r.id, 'completed']),
      ),
    )
    expect(report.violations).toEqual([])
    await stop(slowWorker, 'SIGTERM')
    await stop(rescuer, 'SIGTERM')
  })

  it('a worker whose liveness session drops or whose row is removed registers again, and leaves the registry when it shuts down', async () => {
    const child = await worker('liveness-long')
    const [before] = (await registered()).filter((r) => r.pid === child.pid)
    expect(before).toBeDefined()
    await q(
      `SELECT pg_terminate_backend(l.pid) FROM pg_locks l
       WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.objid = $1::int::oid`,
      [before!.lock_id],
    )
    // Registered again under a lock its new session holds.
    const held = () =>
      q<{ lock_id: number; held: boolean }>(
        `SELECT w.lock_id, EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted
           AND l.objsubid = 2 AND l.objid = w.lock_id::oid) AS held
         FROM equilateral.worker_sessions w WHERE w.worker_id = $1`,
        [before!.worker_id],
      )
    const [after] = await until(
      held,
      (rows) => rows.length === 1 && rows[0]!.held && rows[0]!.lock_id !== before!.lock_id,
      're-registered',
    )
    expect(after?.held).toBe(true)
    // A row removed behind its back (an operator, a cheating connection) is listed again.
    await q('DELETE FROM equilateral.worker_sessions WHERE worker_id = $1', [before!.worker_id])
    await until(held, (rows) => rows.length === 1 && rows[0]!.held, 'listed again')
    expect(await stop(child, 'SIGTERM')).toBe(0)
    expect(await held()).toEqual([])
  })
})

describe('worker liveness, database per tenant', () => {
  it("recovers a killed worker's task in a tenant database from the registry in the control database", async () => {
    const control = await createTestDatabase()
    const config = {
      ...NO_HEARTBEAT_RECOVERY,
      isolationMode: 'database-per-tenant' as const,
      tenantDatabasePrefix: tenantDatabasePrefix(),
      tenantRefreshMs: 200,
    }
    const dbEngine = await createEngine({
      connectionString: control.appUrl,
      adminConnectionString: control.url,
      workflows: livenessWorkflows,
      log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
      supervise: false,
      // The worker processes have no owner login: the tenant database gets the secret they hold.
      config: { ...config, sweepIntervalMs: 3_600_000, tenantContextSecret: TEST_TENANT_CONTEXT_SECRET },
    })
    const fleet = workerProcesses(control.appUrl)
    const spawnIn = () =>
      fleet.spawn({ WORKER_AGENTS: 'liveness-long', WORKER_CONFIG: JSON.stringify(config) })
    try {
      await dbEngine.createTenant({ id: 'umbrella' })
      const [row] = await queryOnce(control.url, `SELECT database_name FROM equilateral.tenants`)
      const tenantUrl = withDatabase(pgContext().adminUrl, row!.database_name)
      const task = () =>
        queryOnce<{ status: string; attempt: number }>(
          tenantUrl,
          'SELECT status, attempt FROM equilateral.agent_coordination',
        ).then((rows) => rows[0])
      await dbEngine.startSweeper()
      const victim = await spawnIn()
      const { id } = await (await dbEngine.tenant('umbrella')).startWorkflow('liveness-long')
      await until(task, (t) => t?.status === 'running', 'task claimed')
      // The worker serving the tenant database is listed in the control database.
      const listed = await queryOnce(control.url, 'SELECT pid FROM equilateral.worker_sessions')
      expect(listed.map((r) => r.pid)).toContain(victim.pid)
      await spawnIn()
      victim.kill('SIGKILL')
      await until(task, (t) => t?.status === 'completed', 'task restarted and completed')
      expect(await task()).toMatchObject({ status: 'completed', attempt: 2 })
      const report = await checkInvariants(tenantUrl, new Map<string, Expected>([[id, 'completed']]))
      expect(report.violations).toEqual([])
      expect(report.lostAttempts).toBe(1)
    } finally {
      for (const c of [...fleet.children]) await fleet.stop(c, 'SIGTERM')
      await dbEngine.close()
      await control.drop()
    }
  })
})
