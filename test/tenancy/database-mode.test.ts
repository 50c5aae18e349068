// database-per-tenant through the engine's public surface, on one server: the same code path as the
// other modes, with every tenant's work in its own database. Compliance events follow the profile
// (mirrored into the tenant's database), the audit chain is sealed and verified per database, the
// admin's stats, an enterprise run across tenants, GDPR erasure (tenant data and the control
// database's enterprise rows), retention, the HTTP API by credential, and suspension all work.
import { pino } from 'pino'
import { beforeAll, describe, expect, it } from 'vitest'
import { withDatabase } from '../../src/db/provision.ts'
import { EnterpriseOrchestrator } from '../../src/tenancy/enterprise.ts'
import { buildApp, defineAgent, defineWorkflow } from '../../src/index.ts'
import { pgContext, queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'first', agent: echo },
    { key: 'second', agent: echo, dependsOn: ['first'] },
  ],
})

const { engine, db } = await testEngine({
  agents: [echo],
  workflows: [pair],
  config: { isolationMode: 'database-per-tenant' },
  log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
})

/** The owner's URL of a tenant's database. */
async function tenantDb(id: string): Promise<string> {
  const [row] = await queryOnce(db.url, 'SELECT database_name FROM equilateral.tenants WHERE id = $1', [id])
  return withDatabase(pgContext().adminUrl, row!.database_name)
}

describe('database-per-tenant through the engine', () => {
  const keys: Record<string, string> = {}

  beforeAll(async () => {
    for (const id of ['north', 'south']) {
      keys[id] = (
        await engine.createTenant({ id, complianceProfile: { GDPR: { retentionDays: 30 } } })
      ).apiKey
    }
    await engine.startWorker()
  })

  it('creates a tenant idempotently: an interrupted creation is finished by creating it again', async () => {
    // As if the process died after the directory row was written, before the database existed.
    await queryOnce(
      db.url,
      `INSERT INTO equilateral.tenants (id, name, status, database_server, database_name)
       VALUES ('late', 'late', 'provisioning', 'default', $1)`,
      [`${engine.config.tenantDatabasePrefix}late_abcdef`],
    )
    await expect(engine.tenant('late')).rejects.toMatchObject({ code: 'tenant_provisioning' })
    const created = await engine.createTenant({ id: 'late' })
    expect(created.database).toEqual({
      server: 'default',
      name: `${engine.config.tenantDatabasePrefix}late_abcdef`,
    })
    await expect(engine.createTenant({ id: 'late' })).rejects.toMatchObject({ code: 'tenant_exists' })
    const [mirror] = await queryOnce(await tenantDb('late'), 'SELECT id FROM equilateral.tenants')
    expect(mirror?.id).toBe('late')
  })

  it('writes compliance events by the profile in the tenant database, and follows a changed profile', async () => {
    const north = await engine.tenant('north')
    const { id } = await north.startWorkflow('pair', { n: 1 }, { subjectKey: 'user-1' })
    expect((await settled(engine, 'north', id)).status).toBe('completed')
    const events = await queryOnce(
      await tenantDb('north'),
      'SELECT DISTINCT compliance_type FROM equilateral.compliance_events',
    )
    expect(events.map((r) => r.compliance_type)).toEqual(['GDPR'])
    await engine.setComplianceProfile('north', { SOX: { retentionDays: 2555 } })
    const { id: next } = await north.startWorkflow('pair', { n: 2 })
    await settled(engine, 'north', next)
    const sox = await queryOnce(
      await tenantDb('north'),
      `SELECT count(*)::int AS n FROM equilateral.compliance_events WHERE compliance_type = 'SOX'`,
    )
    expect(sox[0]?.n).toBeGreaterThan(0)
  })

  it('seals and verifies each tenant audit chain in its own database, and reports stats per tenant', async () => {
    const south = await engine.tenant('south')
    await settled(engine, 'south', (await south.startWorkflow('pair', 1)).id)
    // Rows are sealed once no older transaction of the server is running: another test's (another
    // database's, on a shared server) may hold them back for a moment.
    const sealed = await eventually(async () => {
      const report = await engine.sealAudit()
      return report.rows > 0 ? report : undefined
    })
    expect(sealed.rows).toBeGreaterThan(0)
    const verified = await engine.verifyAudit()
    expect(verified.map((r) => [r.tenantId, r.ok])).toEqual(
      expect.arrayContaining([
        ['north', true],
        ['south', true],
      ]),
    )
    const stats = await engine.stats()
    expect(stats.tenants.map((t) => t.tenantId).sort()).toEqual(['north', 'south'])
    expect(stats.totals.workflows.find((w) => w.type === 'pair')?.completed).toBe(3)
  })

  it('runs an enterprise run across tenant databases and erases the tenant data there and in the control database', async () => {
    const orchestrator = new EnterpriseOrchestrator(engine, { checkIntervalMs: 150 })
    await orchestrator.work()
    try {
      const run = await orchestrator.start('pair', [
        { tenantId: 'north', input: { secret: 'n' } },
        { tenantId: 'south', input: { secret: 's' } },
      ])
      const done = await orchestrator.wait(run.runId, { timeoutMs: 30_000 })
      expect(done.status).toBe('completed')
      const erased = await engine.eraseTenantData('south')
      expect(erased.enterpriseMembers).toBe(1)
      const [member] = await queryOnce(
        db.url,
        `SELECT input FROM equilateral.enterprise_run_tenants WHERE run_id = $1 AND tenant_id = 'south'`,
        [run.runId],
      )
      expect(member?.input).toMatchObject({ $erased: true })
      const inputs = await queryOnce(
        await tenantDb('south'),
        'SELECT DISTINCT input FROM equilateral.workflows',
      )
      expect(inputs.every((r) => r.input?.$erased === true)).toBe(true)
      // North's member is untouched.
      const [other] = await queryOnce(
        db.url,
        `SELECT input FROM equilateral.enterprise_run_tenants WHERE run_id = $1 AND tenant_id = 'north'`,
        [run.runId],
      )
      expect(other?.input).toEqual({ secret: 'n' })
    } finally {
      await orchestrator.stop()
    }
  })

  it('purges each tenant database by its own profile', async () => {
    const report = await engine.purgeExpired()
    expect(report.problems).toEqual([])
    expect(report.tenants).toBe(3)
  })

  it('routes the HTTP API by the credential to the tenant database', async () => {
    const app = await buildApp(engine)
    try {
      const started = await app.inject({
        method: 'POST',
        url: '/v1/workflows',
        headers: { authorization: `Bearer ${keys.south}` },
        payload: { type: 'pair', input: { via: 'http' } },
      })
      expect(started.statusCode).toBe(201)
      const id = started.json().id as string
      await settled(engine, 'south', id)
      const seen = await app.inject({
        method: 'GET',
        url: `/v1/workflows/${id}`,
        headers: { authorization: `Bearer ${keys.south}` },
      })
      expect(seen.json().status).toBe('completed')
      const other = await app.inject({
        method: 'GET',
        url: `/v1/workflows/${id}`,
        headers: { authorization: `Bearer ${keys.north}` },
      })
      expect(other.statusCode).toBe(404)
      const rows = await queryOnce(
        await tenantDb('south'),
        'SELECT id FROM equilateral.workflows WHERE id = $1',
        [id],
      )
      expect(rows).toHaveLength(1)
    } finally {
      await app.close()
    }
  })

  it('stops serving a suspended tenant database and serves it again on resume', async () => {
    const north = await engine.tenant('north')
    await engine.suspendTenant('north')
    await engine.refreshTenants()
    // A handle taken before the suspension may still enqueue; nobody serves the database meanwhile.
    const { id } = await north.startWorkflow('pair', 'waits')
    await new Promise((r) => setTimeout(r, 600))
    const [task] = await queryOnce(
      await tenantDb('north'),
      `SELECT status FROM equilateral.agent_coordination WHERE workflow_id = $1 AND task_key = 'first'`,
      [id],
    )
    expect(task?.status).toBe('queued')
    await engine.resumeTenant('north')
    await engine.refreshTenants()
    expect((await settled(engine, 'north', id)).status).toBe('completed')
  })
})
