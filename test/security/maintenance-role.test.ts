// Issue 20, item 2: the maintenance role. The retention purge and GDPR erasure run as
// equilateral_maintenance, so web and worker need no owner login: an engine given the application
// login and the maintenance login, and no owner URL, purges and erases (and is refused tenant
// administration with owner_required). An attacker holding the maintenance login, with SQL, can do
// nothing else: no UPDATE, DELETE or TRUNCATE of audit rows or seals (redaction switch on or not, in
// the canonical form or not), no purge of a block that is not leading or not past the tenant's
// retention, no trigger, policy, function or role changed, no payload read, no row of any tenant read
// at all, and the maintenance functions refuse any tenant but the transaction's.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { withDatabase } from '../../src/db/provision.ts'
import { createEngine, defineAgent, defineWorkflow } from '../../src/index.ts'
import { TEST_ENGINE_CONFIG } from '../../src/testing.ts'
import { createTenant } from '../../src/tenancy/tenants.ts'
import { buildApp } from '../../src/web/app.ts'
import { createTestDatabase, pgContext } from '../helpers/db.ts'
import { eventually, settled, tenantDatabasePrefix } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'
import { TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'

const INSUFFICIENT_PRIVILEGE = '42501'
const ADMIN_TOKEN = 'maintenance-role-admin-token'
const SECRET = 'SECRET-4b1d-personal'
const PROFILE = { GDPR: { retentionDays: 30 }, dataRetentionDays: 7, auditRetentionDays: 60 }

type Note = { note: string }
const echo = defineAgent<Note>({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.data.note }) })
const pair = defineWorkflow<Note>({
  name: 'pair',
  tasks: [
    { key: 'a', agent: echo, data: (input) => input },
    { key: 'b', agent: echo, dependsOn: ['a'], data: (input) => input },
  ],
})

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('maintenance role, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const db = await createTestDatabase()
    // Tenant administration: the owner's, as the release step would do it.
    const ownerPool = new pg.Pool({ connectionString: db.url, max: 2 })
    for (const id of ['acme', 'beta', 'gamma']) {
      await createTenant(ownerPool, { id, complianceProfile: PROFILE }, mode)
    }
    // Web and worker as recommended: the application login and the maintenance login, no owner URL.
    const engine = await createEngine({
      connectionString: db.appUrl,
      maintenanceConnectionString: db.maintenanceUrl,
      agents: [echo],
      workflows: [pair],
      log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
      supervise: false,
      // No owner login to read the database's secret with: the one `migrate` stored (the template's).
      config: {
        ...TEST_ENGINE_CONFIG,
        isolationMode: mode,
        migrationDatabaseUrl: undefined,
        tenantContextSecret: TEST_TENANT_CONTEXT_SECRET,
      },
    })
    await engine.startWorker()
    const maint = new pg.Client({ connectionString: db.maintenanceUrl })
    await maint.connect()
    afterAll(async () => {
      await maint.end()
      await engine.close()
      await ownerPool.end()
      await db.drop()
    })
    const { rows } = await ownerPool.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf: Record<string, string> = Object.fromEntries(
      rows.map((r) => [r.id as string, pg.escapeIdentifier(r.schema_name ?? 'equilateral')]),
    )
    const searchPathOf: Record<string, string> = Object.fromEntries(
      rows.map((r) => [r.id as string, (r.schema_name as string | null) ?? 'equilateral']),
    )
    /** The owner's (superuser's) raw SQL, past row-level security. */
    const owner = async (sql: string, params: unknown[] = []) => (await ownerPool.query(sql, params)).rows
    const run = async (tenant: string, note: string, subjectKey?: string): Promise<string> => {
      const handle = await engine.tenant(tenant)
      const { id } = await handle.startWorkflow('pair', { note }, subjectKey ? { subjectKey } : {})
      expect((await settled(engine, tenant, id)).status).toBe('completed')
      return id
    }
    const sealAll = (tenant: string) =>
      eventually(async () => {
        await engine.sealAudit()
        const [report] = await engine.verifyAudit(tenant)
        return report!.unsealed === 0 ? report : undefined
      })
    /** Moves timestamps back, behind the triggers' backs (session_replication_role), as a fixture. */
    const backdate = async (sql: string, params: unknown[]) => {
      const client = await ownerPool.connect()
      try {
        await client.query(`BEGIN; SET LOCAL session_replication_role = replica`)
        await client.query(sql, params)
        await client.query('COMMIT')
      } finally {
        client.release()
      }
    }
    /**
     * Runs `fn` as the maintenance login in a transaction scoped to `tenant` (null: to no tenant, in
     * gamma's schema), with every audit switch on, and rolls it back.
     */
    const secret = await tenantSecret(db.url)
    const asMaintenance = async <T>(tenant: string | null, fn: () => Promise<T>): Promise<T> => {
      await maint.query('BEGIN')
      try {
        // As the engine does: the tenant's credential, from the secret (read here as the owner).
        if (tenant !== null) await enterTenant(maint, secret, tenant)
        await maint.query(`SELECT set_config('search_path', $1, true)`, [searchPathOf[tenant ?? 'gamma']])
        await maint.query(
          `SELECT set_config('equilateral.audit_redaction', 'on', true),
             set_config('equilateral.audit_purge', 'on', true), set_config('equilateral.retention_purge', 'on', true)`,
        )
        return await fn()
      } finally {
        await maint.query('ROLLBACK')
      }
    }
    return { db, engine, maint, schemaOf, searchPathOf, owner, run, sealAll, backdate, asMaintenance }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  it("purges and erases through the engine with the maintenance login, without the owner's", async () => {
    const { engine, schemaOf, owner, run, sealAll, backdate } = ctx
    const s = schemaOf.acme
    await expect(engine.createTenant({ id: 'delta' })).rejects.toMatchObject({ code: 'owner_required' })
    // The admin API of such a web process says so, instead of an internal error.
    const app = await buildApp(engine, { adminToken: ADMIN_TOKEN })
    try {
      const headers = { authorization: `Bearer ${ADMIN_TOKEN}` }
      const created = await app.inject({
        method: 'POST',
        url: '/v1/admin/tenants',
        headers,
        payload: { id: 'delta' },
      })
      expect(created.statusCode).toBe(503)
      expect(created.json()).toMatchObject({ code: 'owner_required' })
      const suspended = await app.inject({ method: 'POST', url: '/v1/admin/tenants/beta/suspend', headers })
      expect([suspended.statusCode, suspended.json().code]).toEqual([503, 'owner_required'])
    } finally {
      await app.close()
    }

    // Ended 10 days ago (data retention 7), audit rows 61 days old (audit retention 60), sealed.
    const old = await run('acme', 'old news')
    await backdate(
      `UPDATE ${s}.workflows SET created_at = now() - interval '11 days', completed_at = now() - interval '10 days'
       WHERE id = $1`,
      [old],
    )
    await backdate(
      `UPDATE ${s}.agent_audit_log SET "timestamp" = now() - interval '61 days' WHERE workflow_id = $1`,
      [old],
    )
    await sealAll('acme')
    const alice = await run('acme', SECRET, 'alice')
    expect((await sealAll('acme')).ok).toBe(true)

    const purge = await engine.purgeExpired()
    expect(purge).toMatchObject({ workflows: 1, tasks: 2, complete: true, problems: [] })
    expect(purge.auditBlocks).toBeGreaterThan(0)
    expect(await owner(`SELECT id FROM ${s}.workflows WHERE id = $1`, [old])).toEqual([])
    const [record] = await owner(
      `SELECT agent_id, event_data ->> 'auditRetentionDays' AS days FROM ${s}.compliance_events
       WHERE tenant_id = 'acme' AND event_type = 'purge'`,
    )
    expect(record).toEqual({ agent_id: 'eq/retention', days: '60' })

    const erasure = await engine.eraseSubject('acme', 'alice')
    expect(erasure).toMatchObject({ workflows: 1, tasks: 2, events: 1 })
    expect(erasure.auditRows).toBeGreaterThan(0)
    const traces = await owner(
      `SELECT (SELECT count(*) FROM ${s}.workflows WHERE input::text LIKE $1)::int
         + (SELECT count(*) FROM ${s}.agent_coordination WHERE data::text LIKE $1 OR result::text LIKE $1)::int
         + (SELECT count(*) FROM ${s}.agent_audit_log WHERE action_data::text LIKE $1)::int AS n`,
      [`%${SECRET}%`],
    )
    expect(traces).toEqual([{ n: 0 }])
    // Every audit row of the subject's workflow in the one canonical form, each redaction recorded
    // with the maintenance login that did it.
    const forms = await owner(
      `SELECT DISTINCT action_data FROM ${s}.agent_audit_log WHERE workflow_id = $1`,
      [alice],
    )
    expect(forms).toEqual([{ action_data: { $redacted: `erasure ${erasure.erasureId}` } }])
    const records = await owner(
      `SELECT DISTINCT by_role, redaction FROM ${s}.agent_audit_redactions WHERE tenant_id = 'acme'`,
    )
    expect(records).toEqual([
      { by_role: pgContext().maintenanceUser.user, redaction: `erasure ${erasure.erasureId}` },
    ])
    expect((await engine.verifyAudit('acme'))[0]).toMatchObject({ ok: true })

    // A whole tenant's erasure too.
    await run('beta', SECRET)
    const whole = await engine.eraseTenantData('beta')
    expect(whole).toMatchObject({ workflows: 1, events: 1 })
    const left = await owner(
      `SELECT count(*)::int AS n FROM ${schemaOf.beta}.agent_audit_log WHERE action_data::text LIKE $1`,
      [`%${SECRET}%`],
    )
    expect(left).toEqual([{ n: 0 }])
  })

  it('refuses the maintenance login every change and read outside the maintenance functions', async () => {
    const { maint, run, sealAll, asMaintenance } = ctx
    await run('gamma', SECRET)
    await sealAll('gamma')
    const [role] = (
      await maint.query(`SELECT pg_has_role('equilateral_maintenance', 'MEMBER') AS member, rolsuper, rolbypassrls
         FROM pg_roles WHERE rolname = current_user`)
    ).rows
    expect(role).toEqual({ member: true, rolsuper: false, rolbypassrls: false })
    const refused: string[] = [
      // Audit rows and seals, the redaction and purge switches on.
      `UPDATE agent_audit_log SET action_data = '{"$redacted": "x"}'`,
      `UPDATE agent_audit_log SET action_data = '{"$redacted": "x", "approver": "mallory", "approved": true}'`,
      `DELETE FROM agent_audit_log`,
      `TRUNCATE agent_audit_log`,
      `INSERT INTO agent_audit_log (tenant_id, agent_id, action_type, action_data) VALUES ('gamma', 'x', 'forged', '{}')`,
      `UPDATE agent_audit_seals SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}' WHERE block_no = 2`,
      `DELETE FROM agent_audit_redactions`,
      `DELETE FROM compliance_events`,
      `UPDATE compliance_events SET retention_until = now() - interval '1 day'`,
      // Coordination rows: neither read nor written, payloads included.
      `SELECT id FROM workflows`,
      `SELECT input FROM workflows`,
      `SELECT data, result FROM agent_coordination`,
      `SELECT action_data FROM agent_audit_log`,
      `SELECT event_data FROM compliance_events`,
      `UPDATE workflows SET status = 'cancelled'`,
      `DELETE FROM workflows`,
      `DELETE FROM agent_coordination`,
      `SELECT api_key_hash FROM equilateral.tenants`,
      `UPDATE equilateral.tenants SET compliance_profile = '{}'`,
      `UPDATE pgboss.job SET data = '{}'`,
      `UPDATE equilateral.enterprise_runs SET summary = '{}'`,
      // A compliance event for another tenant than the transaction's (row-level security).
      `INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data)
       VALUES ('beta', 'x', 'GDPR', 'forged', '{}')`,
      // Triggers, policies, functions, roles.
      `DROP TRIGGER append_only ON agent_audit_log`,
      `ALTER TABLE agent_audit_log DISABLE TRIGGER append_only`,
      `ALTER TABLE agent_audit_seals DISABLE TRIGGER ALL`,
      `CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$`,
      `ALTER FUNCTION maintenance_purge(text, integer, integer, integer) SECURITY INVOKER`,
      `ALTER POLICY tenant_isolation ON workflows USING (true)`,
      `DROP POLICY tenant_isolation ON agent_audit_log`,
      `CREATE POLICY open ON workflows USING (true)`,
      `ALTER TABLE workflows NO FORCE ROW LEVEL SECURITY`,
      `GRANT equilateral_app TO ${pgContext().maintenanceUser.user}`,
      `GRANT equilateral_maintenance TO ${pgContext().appUser.user}`,
      `ALTER ROLE ${pgContext().maintenanceUser.user} BYPASSRLS`,
      `CREATE ROLE mallory LOGIN`,
      `SET ROLE postgres`,
      `SELECT analyze_hot_tables()`,
      `SELECT maintenance_tenant('gamma')`,
    ]
    for (const sql of refused) {
      expect(await asMaintenance('gamma', () => errorCode(maint.query(sql))), sql).toBe(
        INSUFFICIENT_PRIVILEGE,
      )
    }
    // Grants: where it holds a privilege, GRANT only warns, and grants nothing.
    const login = pgContext().maintenanceUser.user
    const granted = await asMaintenance('gamma', async () => {
      await maint.query(`GRANT DELETE, UPDATE ON compliance_events TO ${login}`)
      await maint.query(`GRANT INSERT ON compliance_events TO equilateral_app WITH GRANT OPTION`)
      return (
        await maint.query(
          `SELECT has_table_privilege($1, 'compliance_events', 'DELETE') AS del,
             has_table_privilege($1, 'compliance_events', 'UPDATE') AS upd,
             has_table_privilege('equilateral_app', 'compliance_events', 'INSERT WITH GRANT OPTION') AS passed_on`,
          [login],
        )
      ).rows[0]
    })
    expect(granted).toEqual({ del: false, upd: false, passed_on: false })
    // Nothing changed: the chain verifies and the triggers and policies are in place.
    expect((await ctx.engine.verifyAudit('gamma'))[0]).toMatchObject({ ok: true, purgedBlocks: 0 })
    const [catalog] = await ctx.owner(
      `SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'append_only' AND tgenabled = 'O')::int AS triggers,
         (SELECT count(*) FROM pg_policies WHERE policyname = 'open')::int AS open`,
    )
    expect(catalog).toMatchObject({ open: 0 })
    expect(catalog!.triggers).toBeGreaterThanOrEqual(3)
  })

  it('the maintenance functions purge only leading blocks past retention, of the transaction’s tenant alone', async () => {
    const { maint, schemaOf, owner, run, sealAll, backdate, asMaintenance, db } = ctx
    const s = schemaOf.gamma
    // A recent block first, then old ones: none of them is a leading block past retention.
    await run('gamma', 'recent')
    await sealAll('gamma')
    const old = await run('gamma', 'old')
    await backdate(
      `UPDATE ${s}.agent_audit_log SET "timestamp" = now() - interval '400 days' WHERE workflow_id = $1`,
      [old],
    )
    await sealAll('gamma')
    const purge = `SELECT * FROM maintenance_purge($1, $2, $3, 500)`
    const purged = await asMaintenance('gamma', async () => (await maint.query(purge, ['gamma', 7, 60])).rows)
    expect(purged).toEqual([
      {
        purged_workflows: 0,
        purged_tasks: 0,
        purged_audit_rows: 0,
        purged_audit_blocks: 0,
        purged_events: 0,
      },
    ])
    // A retention shorter than the tenant's profile, another tenant, or no tenant at all: refused.
    for (const [tenant, params] of [
      ['gamma', ['gamma', 7, 1]],
      ['gamma', ['gamma', 0, 60]],
      ['gamma', ['gamma', null, 59]],
      ['gamma', ['beta', 7, 60]],
      [null, ['gamma', 7, 60]],
    ] as const) {
      expect(
        await asMaintenance(tenant, () => errorCode(maint.query(purge, [...params]))),
        `${tenant}: ${params.join(', ')}`,
      ).toBe(INSUFFICIENT_PRIVILEGE)
    }
    for (const sql of [
      `SELECT * FROM maintenance_erase('beta', gen_random_uuid(), NULL, NULL, 10)`,
      `SELECT * FROM maintenance_redact_audit('beta', gen_random_uuid(), 0, 10)`,
      `SELECT maintenance_erase_rest('beta', gen_random_uuid())`,
      `SELECT maintenance_erase_dead_letters('beta', gen_random_uuid(), NULL)`,
    ]) {
      expect(await asMaintenance('gamma', () => errorCode(maint.query(sql))), sql).toBe(
        INSUFFICIENT_PRIVILEGE,
      )
    }
    expect(
      await owner(
        `SELECT count(*)::int AS n FROM ${s}.agent_audit_seals WHERE tenant_id = 'gamma' AND purged_at IS NOT NULL`,
      ),
    ).toEqual([{ n: 0 }])
    // The application role may not call them at all.
    const app = new pg.Client({ connectionString: db.appUrl })
    await app.connect()
    try {
      await app.query('BEGIN')
      await enterTenant(app, await tenantSecret(db.url), 'gamma')
      await app.query(`SELECT set_config('search_path', $1, true)`, [ctx.searchPathOf.gamma])
      expect(await errorCode(app.query(purge, ['gamma', null, null]))).toBe(INSUFFICIENT_PRIVILEGE)
      await app.query('ROLLBACK')
    } finally {
      await app.end()
    }
  })
})

describe('maintenance role, database-per-tenant', () => {
  it('purges and erases in a tenant database with the maintenance login, without the owner’s', async () => {
    const db = await createTestDatabase()
    const config = {
      ...TEST_ENGINE_CONFIG,
      isolationMode: 'database-per-tenant' as const,
      tenantDatabasePrefix: tenantDatabasePrefix(),
      // The engine below has no owner login to read the tenant database's secret with: the admin
      // side stores this one in the database it creates, and the engine holds it.
      tenantContextSecret: TEST_TENANT_CONTEXT_SECRET,
    }
    const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
    // The release step's side creates the tenant and its database.
    const admin = await createEngine({
      connectionString: db.appUrl,
      adminConnectionString: db.url,
      log,
      config,
    })
    const engine = await createEngine({
      connectionString: db.appUrl,
      maintenanceConnectionString: db.maintenanceUrl,
      agents: [echo],
      workflows: [pair],
      log,
      supervise: false,
      config: { ...config, migrationDatabaseUrl: undefined },
    })
    afterAll(async () => {
      await engine.close()
      await admin.close()
      await db.drop()
    })
    const created = await admin.createTenant({ id: 'acme', complianceProfile: PROFILE })
    const owner = new pg.Client({ connectionString: withDatabase(db.url, created.database!.name) })
    await owner.connect()
    try {
      await engine.startWorker()
      const acme = await engine.tenant('acme')
      const run = async (note: string, subjectKey?: string) => {
        const { id } = await acme.startWorkflow('pair', { note }, subjectKey ? { subjectKey } : {})
        expect((await settled(engine, 'acme', id)).status).toBe('completed')
        return id
      }
      const old = await run('old news')
      await owner.query(`BEGIN; SET LOCAL session_replication_role = replica;
        UPDATE equilateral.workflows SET created_at = now() - interval '11 days', completed_at = now() - interval '10 days'
        WHERE id = '${old}'; COMMIT`)
      const alice = await run(SECRET, 'alice')

      expect(await engine.purgeExpired()).toMatchObject({
        workflows: 1,
        tasks: 2,
        complete: true,
        problems: [],
      })
      const erasure = await engine.eraseSubject('acme', 'alice')
      expect(erasure).toMatchObject({ workflows: 1, tasks: 2, events: 1 })
      const { rows } = await owner.query(
        `SELECT (SELECT count(*) FROM equilateral.workflows WHERE id = $1)::int AS old,
           (SELECT count(*) FROM equilateral.agent_audit_log WHERE action_data::text LIKE $3)::int AS traces,
           (SELECT array_agg(DISTINCT by_role) FROM equilateral.agent_audit_redactions)::text[] AS by,
           (SELECT subject_key FROM equilateral.workflows WHERE id = $2) AS subject`,
        [old, alice, `%${SECRET}%`],
      )
      expect(rows).toEqual([{ old: 0, traces: 0, by: [pgContext().maintenanceUser.user], subject: null }])
    } finally {
      await owner.end()
    }
  })
})
