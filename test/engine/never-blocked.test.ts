// Maintenance passes never wait on another session: what another transaction holds (a worker frozen
// mid-completion) is skipped and come back to at the next pass, and the other tenants are served.
// Run-time sessions left idle inside a transaction are ended by the server (IDLE_IN_TRANSACTION_TIMEOUT_MS).
import pg from 'pg'
import { afterEach, describe, expect, it } from 'vitest'
import { loadConfig } from '../../src/config.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { Servers } from '../../src/tenancy/placement.ts'
import { checkout } from '../../src/db/tx.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

// No worker serves this agent: the tasks stay where the tests put them.
const idle = defineAgent({ id: 'never-blocked-idle', handler: async () => null })
const one = defineWorkflow({
  name: 'never-blocked-one',
  tasks: [{ key: 'only', agent: idle, maxAttempts: 5 }],
})
const once = defineWorkflow({
  name: 'never-blocked-once',
  tasks: [{ key: 'only', agent: idle, maxAttempts: 1 }],
})
const hook = defineWorkflow({
  name: 'never-blocked-wait',
  tasks: [
    { key: 'hook', event: { name: 'hook', timeoutMs: 60_000, onTimeout: { result: { timedOut: true } } } },
  ],
})

const { engine, db } = await testEngine({
  agents: [idle],
  workflows: [one, once, hook],
  config: { idleInTransactionTimeoutMs: 1000 },
})
await engine.createTenant({ id: 'acme' })
await engine.createTenant({ id: 'globex' })
const acme = await engine.tenant('acme')
const globex = await engine.tenant('globex')

/** A superuser session holding a transaction open, as a frozen worker's would be. */
const holders: pg.Client[] = []
async function holder(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  holders.push(c)
  await c.query('BEGIN')
  return c
}
afterEach(async () => {
  for (const c of holders.splice(0)) await c.end().catch(() => {})
})

async function superuser<T extends pg.QueryResultRow = Record<string, any>>(
  sql: string,
  params: unknown[] = [],
) {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    return (await c.query<T>(sql, params)).rows
  } finally {
    await c.end()
  }
}

/** The call, or a failure naming it if it has not returned after `ms` (it waits on a lock). */
async function unblocked<T>(what: string, call: Promise<T>, ms = 20_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still waits after ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([call, stuck])
  } finally {
    clearTimeout(timer)
  }
}

describe('the sweeper', () => {
  it('skips a task another transaction holds, recovers the others in every tenant, and comes back to it', async () => {
    // Queued tasks whose job is lost: each must be requeued with a new job.
    const started = [
      await acme.startWorkflow('never-blocked-one', { n: 1 }),
      await acme.startWorkflow('never-blocked-one', { n: 2 }),
      await globex.startWorkflow('never-blocked-one', { n: 3 }),
    ]
    const tasks = await superuser<{ id: string; workflow_id: string; attempt: number }>(
      `SELECT id, workflow_id, attempt FROM equilateral.agent_coordination WHERE workflow_id = ANY($1::uuid[])`,
      [started.map((s) => s.id)],
    )
    await superuser(
      `DELETE FROM pgboss.job WHERE id IN (SELECT job_id FROM equilateral.agent_coordination WHERE id = ANY($1::uuid[]))`,
      [tasks.map((t) => t.id)],
    )
    const heldTask = tasks.find((t) => t.workflow_id === started[0]!.id)!
    const h = await holder()
    await h.query('SELECT 1 FROM equilateral.agent_coordination WHERE id = $1 FOR NO KEY UPDATE', [
      heldTask.id,
    ])

    const report = await unblocked('the sweep', engine.sweep())
    expect(report).toMatchObject({ requeued: 2, skipped: 1, blocked: [], failed: [] })
    const attempts = async () =>
      new Map(
        (
          await superuser<{ id: string; attempt: number }>(
            `SELECT id, attempt FROM equilateral.agent_coordination WHERE id = ANY($1::uuid[])`,
            [tasks.map((t) => t.id)],
          )
        ).map((r) => [r.id, r.attempt]),
      )
    const after = await attempts()
    for (const t of tasks) expect(after.get(t.id)).toBe(t.id === heldTask.id ? t.attempt : t.attempt + 1)

    // Released, the skipped task is recovered by the next sweep.
    await h.query('ROLLBACK')
    expect(await engine.sweep()).toMatchObject({ requeued: 1, skipped: 0 })
    expect((await attempts()).get(heldTask.id)).toBe(heldTask.attempt + 1)
  })
})

describe('the sweeper failing a lost task for good', () => {
  it('gives up, past its lock timeout, on a workflow another transaction holds and goes on', async () => {
    const started = [
      await acme.startWorkflow('never-blocked-once', {}),
      await globex.startWorkflow('never-blocked-once', {}),
    ]
    const ids = started.map((s) => s.id)
    // Running on a worker that stopped beating: lost, with no attempt left, so its workflow fails.
    await superuser(
      `UPDATE equilateral.agent_coordination SET status = 'running', started_at = now(),
         heartbeat_at = now() - interval '1 hour'
       WHERE workflow_id = ANY($1::uuid[])`,
      [ids],
    )
    const h = await holder()
    await h.query('SELECT 1 FROM equilateral.workflows WHERE id = $1 FOR NO KEY UPDATE', [ids[0]])

    const report = await unblocked('the sweep', engine.sweep())
    expect(report).toMatchObject({ lost: 1, skipped: 1, blocked: [], failed: [] })
    const statuses = async () =>
      (
        await superuser<{ status: string }>(
          `SELECT status FROM equilateral.workflows WHERE id = ANY($1::uuid[]) ORDER BY array_position($1::uuid[], id)`,
          [ids],
        )
      ).map((r) => r.status)
    expect(await statuses()).toEqual(['running', 'failed'])

    await h.query('ROLLBACK')
    expect(await engine.sweep()).toMatchObject({ lost: 1, skipped: 0 })
    expect(await statuses()).toEqual(['failed', 'failed'])
  })
})

describe("the sweeper's wait expiry", () => {
  it('skips a wait whose workflow another transaction holds and times out the others', async () => {
    const started = [
      await acme.startWorkflow('never-blocked-wait', {}),
      await globex.startWorkflow('never-blocked-wait', {}),
    ]
    const ids = started.map((s) => s.id)
    // Waiting past their deadline, their timer jobs lost: the sweeper's backstop must time them out.
    await superuser(
      `WITH t AS (
         UPDATE equilateral.agent_coordination SET status = 'waiting', wait_deadline = now() - interval '1 second'
         WHERE workflow_id = ANY($1::uuid[]) RETURNING job_id)
       DELETE FROM pgboss.job WHERE id IN (SELECT job_id FROM t)`,
      [ids],
    )
    const h = await holder()
    await h.query('SELECT 1 FROM equilateral.workflows WHERE id = $1 FOR NO KEY UPDATE', [ids[0]])

    expect(await unblocked('the sweep', engine.sweep())).toMatchObject({ waitsExpired: 1, blocked: [] })
    const statuses = async () =>
      (
        await superuser<{ status: string }>(
          `SELECT status FROM equilateral.workflows WHERE id = ANY($1::uuid[]) ORDER BY array_position($1::uuid[], id)`,
          [ids],
        )
      ).map((r) => r.status)
    expect(await statuses()).toEqual(['running', 'completed'])

    await h.query('ROLLBACK')
    expect(await engine.sweep()).toMatchObject({ waitsExpired: 1 })
    expect(await statuses()).toEqual(['completed', 'completed'])
  })
})

describe('the audit sealer', () => {
  it('leaves a tenant another sealer holds to its next pass and seals the others', async () => {
    await acme.startWorkflow('never-blocked-one', { n: 4 })
    await globex.startWorkflow('never-blocked-one', { n: 5 })
    const h = await holder()
    await h.query(`SELECT pg_advisory_xact_lock(hashtextextended('equilateral.seal:' || $1, 0))`, ['acme'])

    const unsealed = async () => new Map((await engine.verifyAudit()).map((r) => [r.tenantId, r.unsealed]))
    // Rows are sealed once every older transaction of the server has ended (the sealer's horizon):
    // passes until globex's are, while acme's sealer lock stays held.
    const before = await eventually(
      async () => {
        await unblocked('the sealer', engine.sealAudit())
        const u = await unsealed()
        return u.get('globex') === 0 ? u : undefined
      },
      20_000,
      100,
      "globex's audit rows sealed",
    )
    expect(before.get('acme')).toBeGreaterThan(0)

    await h.query('ROLLBACK')
    await eventually(
      async () => {
        await engine.sealAudit()
        return (await unsealed()).get('acme') === 0 || undefined
      },
      20_000,
      100,
      "acme's audit rows sealed",
    )
  })
})

describe('run-time sessions', () => {
  it('are ended by the server when they idle inside a transaction, releasing their locks', async () => {
    const { client, release } = await checkout(engine.pool)
    try {
      expect((await client.query('SHOW idle_in_transaction_session_timeout')).rows[0]).toEqual({
        idle_in_transaction_session_timeout: '1s',
      })
      // A transaction holding a lock, then nothing more from its process (frozen).
      await client.query('BEGIN')
      await client.query('SELECT pg_advisory_xact_lock(7226)')
      await eventually(
        async () =>
          (await superuser<{ ok: boolean }>('SELECT pg_try_advisory_lock(7226) AS ok'))[0]?.ok || undefined,
        20_000,
        100,
        'the lock released',
      )
      await expect(client.query('SELECT 1')).rejects.toThrow()
    } finally {
      release(true)
    }
    // pg-boss's own connections are run-time sessions too.
    const boss = await engine.boss.getDb().executeSql('SHOW idle_in_transaction_session_timeout', [])
    expect(boss.rows[0]).toEqual({ idle_in_transaction_session_timeout: '1s' })
  })

  it('of tenant databases get the same limit', () => {
    const servers = new Servers({
      configured: {},
      controlOwnerUrl: 'postgres://owner@db:5432/control',
      controlRuntimeUrl: 'postgres://app@db:5432/control',
      role: 'equilateral_app',
      session: { idleInTransactionTimeoutMs: 60_000 },
    })
    const url = new URL(servers.runtimeUrl({ server: 'default', name: 'tenant_acme_abc123' }))
    expect(url.pathname).toBe('/tenant_acme_abc123')
    expect(url.searchParams.get('options')).toBe(
      '-c role=equilateral_app -c idle_in_transaction_session_timeout=60000',
    )
  })
})

describe('configuration', () => {
  it('has server-side limits by default, 0 for the server setting, and refuses a timeout too short', () => {
    expect(loadConfig({})).toMatchObject({
      idleInTransactionTimeoutMs: 60_000,
      maintenanceLockTimeoutMs: 2000,
      maintenanceStatementTimeoutMs: 60_000,
    })
    expect(
      loadConfig({
        IDLE_IN_TRANSACTION_TIMEOUT_MS: '0',
        MAINTENANCE_LOCK_TIMEOUT_MS: '0',
        MAINTENANCE_STATEMENT_TIMEOUT_MS: '0',
      }),
    ).toMatchObject({
      idleInTransactionTimeoutMs: 0,
      maintenanceLockTimeoutMs: 0,
      maintenanceStatementTimeoutMs: 0,
    })
    expect(() => loadConfig({ IDLE_IN_TRANSACTION_TIMEOUT_MS: '500' })).toThrow(
      /IDLE_IN_TRANSACTION_TIMEOUT_MS must be 0 .* or at least 1000/,
    )
    expect(() => loadConfig({ MAINTENANCE_LOCK_TIMEOUT_MS: '-1' })).toThrow(/MAINTENANCE_LOCK_TIMEOUT_MS/)
  })
})
