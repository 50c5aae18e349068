// Tenants and credentials: API keys (only their hash stored), suspension, key rotation, tenant ids
// that try to be something else, and schema-per-tenant schemas (generated names, created atomically
// with the tenant, migrated in bounded, resumable passes).
import { createHash } from 'node:crypto'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { migrate } from '../../src/db/migrate.ts'
import { pino } from 'pino'
import { createEngine, defineAgent, defineWorkflow, TenantError } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

const { engine, db } = await testEngine({
  agents: [echo],
  workflows: [single],
  config: { isolationMode: 'schema-per-tenant' },
})
const owner = new pg.Client({ connectionString: db.url })
await owner.connect()
afterAll(() => owner.end())

async function schemas(): Promise<string[]> {
  const { rows } = await owner.query(
    `SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1`,
  )
  return rows.map((r) => r.nspname)
}

describe('tenant credentials', () => {
  it('stores only a hash of the API key, and resolves the key to its tenant', async () => {
    const created = await engine.createTenant({ id: 'keys', name: 'Keys Inc' })
    expect(created.apiKey).toMatch(/^eqk_[A-Za-z0-9_-]{43}$/)
    const { rows } = await owner.query(`SELECT * FROM equilateral.tenants WHERE id = 'keys'`)
    expect(JSON.stringify(rows[0])).not.toContain(created.apiKey)
    expect(rows[0].api_key_hash).toBe(createHash('sha256').update(created.apiKey).digest('hex'))
    expect((await engine.tenantByApiKey(created.apiKey)).id).toBe('keys')
    expect(await errorCode(engine.tenantByApiKey('eqk_wrong'))).toBe('unknown_tenant')
    expect(await errorCode(engine.tenantByApiKey(''))).toBe('unknown_tenant')
  })

  it('serves a tenant at once when it was looked up before it existed, here or in another process', async () => {
    expect(await errorCode(engine.tenant('late'))).toBe('unknown_tenant')
    await engine.createTenant({ id: 'late' })
    expect((await engine.tenant('late')).id).toBe('late')

    // Another process (the owner's SQL here) creates a tenant this engine cached as missing.
    expect(await errorCode(engine.tenant('elsewhere'))).toBe('unknown_tenant')
    const other = {
      engine: await createEngine({
        connectionString: db.appUrl,
        adminConnectionString: db.url,
        log: pino({ level: 'silent' }),
        supervise: false,
        config: { isolationMode: 'schema-per-tenant' },
      }),
    }
    try {
      await other.engine.createTenant({ id: 'elsewhere' })
    } finally {
      await other.engine.close()
    }
    expect((await engine.tenant('elsewhere')).id).toBe('elsewhere')
  })

  it('stops the old key at once when the key is rotated', async () => {
    const { apiKey } = await engine.createTenant({ id: 'rotating' })
    const fresh = await engine.rotateApiKey('rotating')
    expect(fresh).not.toBe(apiKey)
    expect(await errorCode(engine.tenantByApiKey(apiKey))).toBe('unknown_tenant')
    expect((await engine.tenantByApiKey(fresh)).id).toBe('rotating')
    expect(await errorCode(engine.rotateApiKey('nobody'))).toBe('unknown_tenant')
  })

  it('refuses a suspended tenant, leaves its queued work waiting, and finishes it when resumed', async () => {
    const { apiKey } = await engine.createTenant({ id: 'paused' })
    const paused = await engine.tenant('paused')
    await engine.suspendTenant('paused')
    expect(await errorCode(engine.tenant('paused'))).toBe('tenant_suspended')
    expect(await errorCode(engine.tenantByApiKey(apiKey))).toBe('tenant_suspended')
    // A handle obtained before the suspension can still enqueue (it was authorised then); the work waits.
    const { id } = await paused.startWorkflow('single', 1)
    const worker = await engine.startWorker()
    await new Promise((r) => setTimeout(r, 600))
    const { rows } = await owner.query(
      `SELECT status FROM ${await schemaOf('paused')}.agent_coordination WHERE workflow_id = $1`,
      [id],
    )
    expect(rows.map((r) => r.status)).toEqual(['queued'])
    await engine.resumeTenant('paused')
    // The worker left the job it fetched; the sweeper hands it out again.
    const wf = await eventually(async () => {
      await engine.sweep({ staleAfterMs: 1000 })
      const w = await paused.getWorkflow(id)
      return w.status === 'completed' ? w : undefined
    })
    expect(wf.output).toEqual({ only: { echoed: 1 } })
    await worker.stop()
  })

  it('lists tenants with their status and schema, and refuses unknown ones by a typed error', async () => {
    const list = await engine.listTenants()
    expect(list.find((t) => t.id === 'keys')).toMatchObject({ status: 'active', tier: 'standard' })
    expect(list.find((t) => t.id === 'keys')?.schema).toMatch(/^t_[0-9a-f]{16}$/)
    await expect(engine.tenant('nobody')).rejects.toMatchObject({ code: 'unknown_tenant' })
    await expect(engine.suspendTenant('nobody')).rejects.toBeInstanceOf(TenantError)
    await expect(engine.createTenant({ id: 'keys' })).rejects.toMatchObject({ code: 'tenant_exists' })
    await expect(engine.createTenant({ id: 'tiered', tier: 'Gold; DROP' })).rejects.toMatchObject({
      code: 'invalid_tier',
    })
  })
})

async function schemaOf(id: string): Promise<string> {
  const { rows } = await owner.query(`SELECT schema_name FROM equilateral.tenants WHERE id = $1`, [id])
  return pg.escapeIdentifier(rows[0].schema_name)
}

describe('hostile tenant ids', () => {
  const hostile = [
    `o'brien`,
    'a"b',
    'acme.prod',
    'équipe',
    '租户',
    'x'.repeat(64),
    `x'; DROP SCHEMA equilateral CASCADE; --`,
    '',
    ' acme',
    '../etc',
    '-leading-dash',
  ]

  it('rejects them with a clear error and creates no schema or row for them', async () => {
    const before = await schemas()
    const { rows: tenantsBefore } = await owner.query('SELECT count(*)::int AS n FROM equilateral.tenants')
    for (const id of hostile) {
      const error = await engine.createTenant({ id }).catch((e: unknown) => e)
      expect(error, id).toBeInstanceOf(TenantError)
      expect((error as TenantError).code).toBe('invalid_tenant_id')
      expect((error as TenantError).message).toMatch(/must be 1-63 characters/)
      await expect(engine.tenant(id)).rejects.toMatchObject({ code: 'invalid_tenant_id' })
    }
    expect(await schemas()).toEqual(before)
    const { rows: tenantsAfter } = await owner.query('SELECT count(*)::int AS n FROM equilateral.tenants')
    expect(tenantsAfter[0].n).toBe(tenantsBefore[0].n)
  })

  it('stores ids that name existing schemas safely, in generated schemas of their own', async () => {
    for (const id of ['public', 'equilateral', 'pgboss', 'pg_catalog']) {
      const created = await engine.createTenant({ id })
      expect(created.schema, id).toMatch(/^t_[0-9a-f]{16}$/)
    }
  })

  it('gives ids that differ only after 60 characters schemas of their own', async () => {
    const base = 'a'.repeat(60)
    for (const suffix of ['xyz', 'xyw']) await engine.createTenant({ id: base + suffix })
    const one = await schemaOf(base + 'xyz')
    const two = await schemaOf(base + 'xyw')
    expect(one).not.toBe(two)
    const all = await schemas()
    for (const s of all) expect(s).toMatch(/^(t_[0-9a-f]{16}|equilateral|pgboss|drizzle|public)$/)
    // Each has its own tables, and its workflows run there.
    await engine.startWorker()
    for (const id of [base + 'xyz', base + 'xyw']) {
      const handle = await engine.tenant(id)
      const started = await handle.startWorkflow('single', id.slice(-3))
      expect((await settled(engine, id, started.id)).output).toEqual({ only: { echoed: id.slice(-3) } })
    }
    const { rows } = await owner.query(`SELECT tenant_id FROM ${one}.workflows`)
    expect(rows).toEqual([{ tenant_id: base + 'xyz' }])
  })

  it('refuses a tenant row whose schema name was edited to point elsewhere', async () => {
    await engine.createTenant({ id: 'edited' })
    const original = await schemaOf('edited')
    await owner.query(`UPDATE equilateral.tenants SET schema_name = 'equilateral' WHERE id = 'edited'`)
    engine.tenants.invalidate('edited')
    try {
      await expect(engine.tenant('edited')).rejects.toThrow(/malformed schema name/)
      // The sweeper passes over it rather than stop for every tenant.
      await expect(engine.sweep()).resolves.toMatchObject({ scanned: 0 })
    } finally {
      await owner.query(`UPDATE equilateral.tenants SET schema_name = $1 WHERE id = 'edited'`, [
        original.slice(1, -1),
      ])
    }
  })
})

describe('tenant schema migrations', () => {
  it('creates a tenant and its schema together, or neither', async () => {
    const before = await schemas()
    // A schema whose migration fails half-way must leave neither the tenant nor the schema behind.
    await owner.query(`CREATE OR REPLACE FUNCTION public.eq_test_fail() RETURNS event_trigger LANGUAGE plpgsql AS
      $$ BEGIN RAISE EXCEPTION 'simulated failure'; END $$`)
    await owner.query(`CREATE EVENT TRIGGER eq_test_fail ON ddl_command_start WHEN TAG IN ('CREATE INDEX')
      EXECUTE FUNCTION public.eq_test_fail()`)
    try {
      await expect(engine.createTenant({ id: 'half-made' })).rejects.toThrow(/simulated failure/)
    } finally {
      await owner.query('DROP EVENT TRIGGER eq_test_fail')
      await owner.query('DROP FUNCTION public.eq_test_fail()')
    }
    expect(await schemas()).toEqual(before)
    await expect(engine.tenant('half-made')).rejects.toMatchObject({ code: 'unknown_tenant' })
  })

  it('migrates every tenant schema in pages, and resumes after a failed run', async () => {
    for (const id of ['m1', 'm2', 'm3', 'm4', 'm5']) await engine.createTenant({ id })
    const names = (
      await owner.query(
        `SELECT schema_name FROM equilateral.tenants WHERE schema_name IS NOT NULL ORDER BY 1`,
      )
    ).rows.map((r) => pg.escapeIdentifier(r.schema_name))
    // Take every tenant schema back to empty, as if its migrations had never run.
    for (const s of names) await owner.query(`DROP SCHEMA ${s} CASCADE; CREATE SCHEMA ${s}`)
    const migrated = async () =>
      (
        await owner.query(
          `SELECT count(*)::int AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = 'agent_audit_seals' AND c.relforcerowsecurity AND n.nspname LIKE 't\\_%'`,
        )
      ).rows[0].n as number
    expect(await migrated()).toBe(0)

    // Break one schema so its migration fails: the run stops there with an error ...
    const broken = names[2] as string
    await owner.query(`CREATE TABLE ${broken}.workflows (squatter int)`)
    await expect(migrate(db.url, { tenantBatchSize: 2 })).rejects.toThrow(/workflows/)
    const afterFailure = await migrated()
    expect(afterFailure).toBe(2)
    // ... and, once it is repaired, the next run does the rest and only the rest.
    await owner.query(`DROP TABLE ${broken}.workflows`)
    const report = await migrate(db.url, { tenantBatchSize: 2 })
    expect(report.tenantSchemas).toBe(names.length)
    expect(report.tenantSchemasMigrated).toBe(names.length - afterFailure)
    expect(await migrated()).toBe(names.length)
    const again = await migrate(db.url, { tenantBatchSize: 2 })
    expect(again.tenantSchemasMigrated).toBe(0)
  })
})
