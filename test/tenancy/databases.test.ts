// database-per-tenant across two PostgreSQL servers: the test server and an embedded one of this
// file's own. Tenants are placed on both; one fleet of real worker processes serves them all (one
// process dedicated to a tenant, the other serving everyone else); each tenant's rows exist only in
// its own database; a server going down stops only its tenants' work, which resumes when it is back;
// a tenant created while the workers run is served without restarting them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createEngine, type Engine } from '../../src/index.ts'
import { withDatabase } from '../../src/db/provision.ts'
import { agents, workflows } from '../fixtures/chaos-registry.ts'
import { createTestDatabase, pgContext, queryOnce } from '../helpers/db.ts'
import { eventually, settled, tenantDatabasePrefix } from '../helpers/engine.ts'
import { workerProcesses } from '../helpers/processes.ts'
import { ownServer } from '../helpers/server.ts'
import { pino } from 'pino'

const TENANT_TABLES = ['workflows', 'agent_coordination', 'agent_audit_log', 'compliance_events'] as const

const control = await createTestDatabase()
const second = await ownServer()
const servers = { a: withDatabase(pgContext().adminUrl, 'postgres'), b: withDatabase(second.url, 'postgres') }
const config = {
  isolationMode: 'database-per-tenant' as const,
  tenantServers: servers,
  tenantDatabasePrefix: tenantDatabasePrefix(),
  tenantRefreshMs: 200,
  pollIntervalMs: 250,
  heartbeatIntervalMs: 200,
  staleAfterMs: 1500,
}
const engine: Engine = await createEngine({
  connectionString: control.appUrl,
  adminConnectionString: control.url,
  agents,
  workflows,
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  supervise: false,
  config,
})
const workers = workerProcesses(control.appUrl)
const env = {
  TENANT_ISOLATION_MODE: 'database-per-tenant',
  TENANT_SERVERS: `a=${servers.a} b=${servers.b}`,
  TENANT_DATABASE_PREFIX: config.tenantDatabasePrefix,
  TENANT_REFRESH_MS: '200',
}
afterAll(async () => {
  await engine.close()
  await control.drop()
})

/** The owner's URL of a tenant's database, from the directory. */
async function databaseUrl(tenant: string): Promise<string> {
  const rows = await queryOnce(
    control.url,
    'SELECT database_server, database_name FROM equilateral.tenants WHERE id = $1',
    [tenant],
  )
  const r = rows[0] as { database_server: 'a' | 'b'; database_name: string }
  return withDatabase(servers[r.database_server], r.database_name)
}

async function runDiamonds(tenant: string, n: number): Promise<string[]> {
  const handle = await engine.tenant(tenant)
  const ids: string[] = []
  for (let i = 0; i < n; i++) ids.push((await handle.startWorkflow('chaos-diamond', { i })).id)
  return ids
}

describe('database-per-tenant on two servers', () => {
  const tenants = ['alpha', 'beta', 'gamma', 'delta']
  const pids: Record<string, number> = {}

  beforeAll(async () => {
    await engine.createTenant({ id: 'alpha', server: 'a' })
    await engine.createTenant({ id: 'beta', server: 'b' })
    // Placed where the fewest tenants are: one more on each server.
    await engine.createTenant({ id: 'gamma' })
    await engine.createTenant({ id: 'delta' })
    // One fleet: a process dedicated to alpha, another serving everyone else.
    pids.dedicated = (await workers.spawn({ ...env, WORKER_TENANTS: 'alpha' })).pid!
    pids.shared = (await workers.spawn({ ...env, WORKER_TENANTS: '!alpha' })).pid!
  })

  it('places tenants on both servers, each in a database of its own', async () => {
    const listed = await engine.listTenants()
    const placement = Object.fromEntries(listed.map((t) => [t.id, t.database]))
    expect(placement.alpha?.server).toBe('a')
    expect(placement.beta?.server).toBe('b')
    expect([placement.gamma?.server, placement.delta?.server].sort()).toEqual(['a', 'b'])
    expect(new Set(listed.map((t) => t.database?.name)).size).toBe(4)
    for (const t of listed)
      expect(t.database?.name).toMatch(new RegExp(`^${config.tenantDatabasePrefix}${t.id}_[0-9a-f]{6}$`))
  })

  it('runs every tenant from one fleet, and each tenant rows exist only in its own database', async () => {
    const started = Object.fromEntries(
      await Promise.all(tenants.map(async (t) => [t, await runDiamonds(t, 5)])),
    )
    for (const t of tenants) {
      for (const id of started[t]) expect((await settled(engine, t, id)).status).toBe('completed')
    }
    for (const t of tenants) {
      const url = await databaseUrl(t)
      for (const table of TENANT_TABLES) {
        const rows = await queryOnce(
          url,
          `SELECT tenant_id, count(*)::int AS n FROM equilateral.${table} GROUP BY 1`,
        )
        // Only this tenant's rows; audit and tasks present (compliance events need a profile).
        expect(
          rows.every((r) => r.tenant_id === t),
          `${table} of ${t}'s database`,
        ).toBe(true)
        if (table !== 'compliance_events') expect(rows[0]?.n ?? 0).toBeGreaterThan(0)
      }
      const jobs = await queryOnce(
        url,
        `SELECT DISTINCT data->>'t' AS t FROM pgboss.job WHERE name LIKE 'eq.%'`,
      )
      expect(jobs.map((r) => r.t)).toEqual([t])
    }
    // The control database holds the directory, not tenant data.
    for (const table of TENANT_TABLES) {
      const rows = await queryOnce(control.url, `SELECT count(*)::int AS n FROM equilateral.${table}`)
      expect(rows[0]?.n, `control ${table}`).toBe(0)
    }
    const ourJobs = await queryOnce(
      control.url,
      `SELECT count(*)::int AS n FROM pgboss.job WHERE name LIKE 'eq.%'`,
    )
    expect(ourJobs[0]?.n).toBe(0)
    // The dedicated process ran alpha's agents and nobody else's.
    for (const t of tenants) {
      const rows = await queryOnce(
        await databaseUrl(t),
        `SELECT DISTINCT split_part(action_data->>'worker', ':', 2)::int AS pid FROM equilateral.agent_audit_log WHERE action_type = 'task_started'`,
      )
      expect(rows.map((r) => r.pid)).toEqual([t === 'alpha' ? pids.dedicated : pids.shared])
    }
  })

  it(
    'a tenant database going down stops only its tenants; they resume when it is back',
    { timeout: 180_000 },
    async () => {
      const onB = (await engine.listTenants()).filter((t) => t.database?.server === 'b').map((t) => t.id)
      const onA = tenants.filter((t) => !onB.includes(t))
      // In flight on server b when it stops.
      const inFlight = await Promise.all(onB.map(async (t) => [t, await runDiamonds(t, 3)] as const))
      await second.stop()
      try {
        for (const t of onB) {
          await expect((await engine.tenant(t)).startWorkflow('chaos-diamond', {})).rejects.toMatchObject({
            code: expect.stringMatching(/ECONNREFUSED|57P01|57P03|08006/),
          })
        }
        // The other server's tenants keep running meanwhile.
        for (const t of onA) {
          for (const id of await runDiamonds(t, 3))
            expect((await settled(engine, t, id)).status).toBe('completed')
        }
      } finally {
        await second.start()
      }
      // What the outage cut off mid-claim is recovered by the sweeper (these workers run none).
      await eventually(
        async () => {
          await engine.sweep({ staleAfterMs: 1000 })
          for (const [t, ids] of inFlight) {
            const handle = await engine.tenant(t)
            for (const id of ids) if ((await handle.getWorkflow(id)).status === 'running') return undefined
          }
          return true
        },
        60_000,
        250,
        'workflows in flight during the outage ended',
      )
      for (const [t, ids] of inFlight) {
        const handle = await engine.tenant(t)
        for (const id of ids) expect((await handle.getWorkflow(id)).status).toBe('completed')
      }
      for (const t of onB) {
        for (const id of await runDiamonds(t, 2))
          expect((await settled(engine, t, id, 30_000)).status).toBe('completed')
      }
    },
  )

  it('serves a tenant created while the workers run, without restarting them', async () => {
    const created = await engine.createTenant({ id: 'epsilon' })
    expect(created.database?.server).toMatch(/^[ab]$/)
    const [id] = await runDiamonds('epsilon', 1)
    expect((await settled(engine, 'epsilon', id!, 30_000)).status).toBe('completed')
    expect(workers.children.size).toBe(2)
  })
})
