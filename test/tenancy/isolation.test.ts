// Tenant isolation enforced by PostgreSQL, in both isolation modes. A connection as the application
// role (what web and worker processes run as) tries every way we know to reach another tenant's rows:
// by id, by crafted SQL naming the other tenant's schema, with no tenant setting, with an empty one,
// after a pooled connection served another tenant, by writing rows or moving its own rows across,
// and by shedding the policies (other roles, DISABLE/NO FORCE, row_security off). All of it fails or
// sees nothing. The owner role is not what the engine runs as.
// Each mode also runs behind a real PgBouncer in transaction mode with ONE server connection for the
// application login (test/helpers/pgbouncer.ts): the engine, pg-boss and the cheating connection all
// take turns on it, so what one tenant's transaction leaves on a server connection is what the next
// client (another tenant) finds.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { provideTenantContextSecret } from '../../src/tenancy/tenant-context.ts'
import { poolerPoolOptions } from '../../src/db/pooler.ts'
import { type TenantScope, withTenantTx } from '../../src/db/tx.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { pgContext } from '../helpers/db.ts'
import { errorCode } from '../helpers/errors.ts'
import { havePgBouncer, type PgBouncer, startPgBouncer } from '../helpers/pgbouncer.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const TABLES = [
  'workflows',
  'agent_coordination',
  'agent_audit_log',
  'compliance_events',
  'workflow_requests',
  'console_watchers',
] as const
const INSUFFICIENT_PRIVILEGE = '42501'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  return c
}

/** Runs statements in a transaction that is rolled back, returning what `fn` returns. */
async function inRolledBackTx<T>(c: pg.Client, fn: () => Promise<T>): Promise<T> {
  await c.query('BEGIN')
  try {
    return await fn()
  } finally {
    await c.query('ROLLBACK')
  }
}

// Without Debian's pgbouncer (apt-get install pgbouncer) the PgBouncer variants are left out; in CI
// its absence fails (test/helpers/pgbouncer.ts).
const VARIANTS: { mode: IsolationMode; pooler: boolean }[] = [
  { mode: 'row-level', pooler: false },
  { mode: 'schema-per-tenant', pooler: false },
  ...(havePgBouncer
    ? [
        { mode: 'row-level' as const, pooler: true },
        { mode: 'schema-per-tenant' as const, pooler: true },
      ]
    : []),
]

describe.each(VARIANTS)('isolation mode $mode, through PgBouncer: $pooler', ({ mode, pooler }) => {
  let ctx: Awaited<ReturnType<typeof setup>>
  let bouncer: PgBouncer | null = null
  // The pooler goes last: its clients (the cheating connection, the engine) are closed first, so
  // that none is cut off while idle.
  afterAll(async () => {
    if (!bouncer) return
    await ctx?.app.end().catch(() => {})
    await ctx?.engine.close()
    await bouncer.stop()
  })

  async function setup() {
    if (pooler) {
      const { adminUrl, appUser } = pgContext()
      const app = new URL(adminUrl)
      app.username = appUser.user
      app.password = appUser.password
      bouncer = await startPgBouncer({ urls: [adminUrl, app.toString()], poolSize: 1 })
    }
    const through = (url: string) => (bouncer ? bouncer.through(url) : url)
    const { engine, db } = await testEngine({
      agents: [echo],
      workflows: [single],
      config: { isolationMode: mode, ...(pooler ? { databasePooler: 'transaction' as const } : {}) },
      runtimeUrl: through,
    })
    await engine.createTenant({ id: 'alpha' })
    await engine.createTenant({ id: 'beta' })
    await engine.startWorker()
    const ids: Record<string, string> = {}
    for (const t of ['alpha', 'beta']) {
      const handle = await engine.tenant(t)
      const { id } = await handle.startWorkflow('single', { secret: `${t}-secret` })
      await settled(engine, t, id)
      ids[t] = id
    }
    const owner = await connect(db.url)
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf = Object.fromEntries(rows.map((r) => [r.id, r.schema_name ?? 'equilateral']))
    // Tenants without a compliance profile get no events from the trigger: give each one as the owner.
    for (const t of ['alpha', 'beta']) {
      await owner.query(
        `INSERT INTO ${pg.escapeIdentifier(schemaOf[t])}.compliance_events
           (tenant_id, agent_id, compliance_type, event_type, event_data) VALUES ($1, 'echo', 'GDPR', 'test', '{}')`,
        [t],
      )
      // A retry's request key (src/flow/requests.ts), as the owner: the table is checked like the others.
      await owner.query(
        `INSERT INTO ${pg.escapeIdentifier(schemaOf[t])}.workflow_requests
           (tenant_id, request_key, operation, target, result) VALUES ($1, 'key', 'retry', $2, '{}')`,
        [t, ids[t]],
      )
      // A console watching the tenant (src/web/live.ts): the row that turns its progress NOTIFY on.
      await owner.query(
        `INSERT INTO ${pg.escapeIdentifier(schemaOf[t])}.console_watchers (tenant_id, expires_at)
           VALUES ($1, now() + interval '1 hour')`,
        [t],
      )
    }
    await owner.end()
    const secret = await tenantSecret(db.url)
    const app = await connect(through(db.appUrl))
    afterAll(() => app.end())
    const scope = async (t: string): Promise<TenantScope> => (await engine.tenant(t)).scope
    return { engine, db, ids, schemaOf, app, scope, secret, appUrl: through(db.appUrl) }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  const table = (tenant: string, name: string) =>
    `${pg.escapeIdentifier(ctx.schemaOf[tenant])}.${pg.escapeIdentifier(name)}`
  const asTenant = (tenant: string) => enterTenant(ctx.app, ctx.secret, tenant)

  it('puts each tenant where the mode says', () => {
    if (mode === 'row-level') {
      expect(ctx.schemaOf).toEqual({ alpha: 'equilateral', beta: 'equilateral' })
    } else {
      expect(ctx.schemaOf.alpha).toMatch(/^t_[0-9a-f]{16}$/)
      expect(ctx.schemaOf.beta).toMatch(/^t_[0-9a-f]{16}$/)
      expect(ctx.schemaOf.alpha).not.toBe(ctx.schemaOf.beta)
    }
  })

  it('shows a transaction with no tenant setting, or an empty one, nothing, and lets it write nothing', async () => {
    for (const setting of [null, '']) {
      await inRolledBackTx(ctx.app, async () => {
        if (setting !== null) await ctx.app.query(`SELECT set_config('app.tenant_id', $1, true)`, [setting])
        for (const name of TABLES) {
          for (const t of ['alpha', 'beta']) {
            const { rows } = await ctx.app.query(`SELECT count(*)::int AS n FROM ${table(t, name)}`)
            expect(rows[0].n, `${name} of ${t} with setting ${setting}`).toBe(0)
          }
        }
      })
      await inRolledBackTx(ctx.app, async () => {
        if (setting !== null) await ctx.app.query(`SELECT set_config('app.tenant_id', $1, true)`, [setting])
        const code = await errorCode(
          ctx.app.query(
            `INSERT INTO ${table('beta', 'agent_audit_log')} (tenant_id, workflow_id, action_type) VALUES ('', gen_random_uuid(), 'forged')`,
          ),
        )
        expect(code).toBe(INSUFFICIENT_PRIVILEGE)
      })
    }
  })

  it("does not let one tenant read, change or delete another tenant's rows, by id or by naming its tables", async () => {
    await inRolledBackTx(ctx.app, async () => {
      await asTenant('alpha')
      for (const name of TABLES) {
        const own = await ctx.app.query(`SELECT DISTINCT tenant_id FROM ${table('alpha', name)}`)
        expect(own.rows, name).toEqual([{ tenant_id: 'alpha' }])
        const theirs = await ctx.app.query(
          `SELECT count(*)::int AS n FROM ${table('beta', name)} WHERE tenant_id <> 'alpha'`,
        )
        expect(theirs.rows[0].n, name).toBe(0)
      }
      const betaWf = ctx.ids.beta
      const byId = await ctx.app.query(`SELECT * FROM ${table('beta', 'workflows')} WHERE id = $1`, [betaWf])
      expect(byId.rowCount).toBe(0)
      const crafted = await ctx.app.query(
        `SELECT tenant_id FROM ${table('beta', 'agent_coordination')} WHERE tenant_id = 'beta' OR true`,
      )
      expect(crafted.rows.filter((r) => r.tenant_id !== 'alpha')).toEqual([])
      const updated = await ctx.app.query(
        `UPDATE ${table('beta', 'workflows')} SET status = 'cancelled' WHERE id = $1`,
        [betaWf],
      )
      expect(updated.rowCount).toBe(0)
      const deleted = await ctx.app.query(
        `DELETE FROM ${table('beta', 'agent_coordination')} WHERE tenant_id = 'beta'`,
      )
      expect(deleted.rowCount).toBe(0)
    })
    // Beta's workflow is intact.
    const beta = await ctx.engine.tenant('beta')
    expect((await beta.getWorkflow(ctx.ids.beta as string)).status).toBe('completed')
  })

  it("refuses rows written under another tenant's id, and moving a row to another tenant", async () => {
    for (const sql of [
      `INSERT INTO ${table('alpha', 'agent_audit_log')} (tenant_id, workflow_id, action_type) VALUES ('beta', gen_random_uuid(), 'forged')`,
      `INSERT INTO ${table('beta', 'compliance_events')} (tenant_id, agent_id, compliance_type, event_type, event_data) VALUES ('beta', 'x', 'GDPR', 'forged', '{}')`,
      `UPDATE ${table('alpha', 'workflows')} SET tenant_id = 'beta'`,
      `UPDATE ${table('alpha', 'agent_coordination')} SET tenant_id = 'beta'`,
      `INSERT INTO ${table('beta', 'workflow_requests')} (tenant_id, request_key, operation, target, result) VALUES ('beta', 'forged', 'retry', 'x', '{}')`,
      // Turning another tenant's progress notifications on (or keeping them on) is refused too.
      `INSERT INTO ${table('beta', 'console_watchers')} (tenant_id, expires_at) VALUES ('beta', now()) ON CONFLICT (tenant_id) DO UPDATE SET expires_at = now() + interval '1 day'`,
      `UPDATE ${table('alpha', 'console_watchers')} SET tenant_id = 'beta'`,
    ]) {
      const code = await inRolledBackTx(ctx.app, async () => {
        await asTenant('alpha')
        return errorCode(ctx.app.query(sql))
      })
      expect(code, sql).toBe(INSUFFICIENT_PRIVILEGE)
    }
  })

  it("does not reveal another tenant's keys through a unique violation", async () => {
    // Keys lead with tenant_id: reusing beta's workflow id is simply another row for alpha.
    await inRolledBackTx(ctx.app, async () => {
      await asTenant('alpha')
      const inserted = await ctx.app.query(
        `INSERT INTO ${table('alpha', 'workflows')} (tenant_id, id, type, version, status, correlation_id, tasks_remaining)
         VALUES ('alpha', $1, 'single', 1, 'running', 'c', 0)`,
        [ctx.ids.beta],
      )
      expect(inserted.rowCount).toBe(1)
    })
  })

  it('carries no tenant from one transaction of a pooled connection into the next', async () => {
    const pool = new pg.Pool({
      connectionString: ctx.appUrl,
      max: 1,
      ...poolerPoolOptions({ databasePooler: pooler ? 'transaction' : 'none' }),
    })
    provideTenantContextSecret(pool, async () => ctx.secret)
    try {
      const seen = await withTenantTx(pool, await ctx.scope('alpha'), async (db) => {
        const { rows } = await db.executeSql('SELECT count(*)::int AS n FROM workflows', [])
        return rows[0]?.n
      })
      expect(seen).toBe(1)
      // Same (only) connection, next use: no tenant, no search_path to the tenant's schema, no rows.
      const { rows } = await pool.query(
        `SELECT current_setting('app.tenant_id', true) AS tenant, current_setting('search_path') AS path,
           (SELECT count(*)::int FROM ${table('alpha', 'workflows')}) AS n`,
      )
      expect(rows[0].tenant ?? '').toBe('')
      expect(rows[0].path).not.toContain(
        ctx.schemaOf.alpha === 'equilateral' ? '"equilateral"' : ctx.schemaOf.alpha,
      )
      expect(rows[0].n).toBe(0)
    } finally {
      await pool.end()
    }
  })

  it('does not let the application role shed the policies or change what it does not own', async () => {
    for (const sql of [
      'SET ROLE postgres',
      `ALTER TABLE ${table('beta', 'workflows')} DISABLE ROW LEVEL SECURITY`,
      `ALTER TABLE ${table('beta', 'workflows')} NO FORCE ROW LEVEL SECURITY`,
      `DROP POLICY tenant_isolation ON ${table('beta', 'workflows')}`,
      `UPDATE equilateral.tenants SET status = 'active'`,
      `UPDATE ${table('alpha', 'agent_audit_log')} SET action_type = 'rewritten'`,
      `DELETE FROM ${table('alpha', 'agent_audit_log')}`,
      `TRUNCATE ${table('beta', 'agent_coordination')}`,
      'CREATE SCHEMA sneaky',
      `CREATE TABLE ${pg.escapeIdentifier(ctx.schemaOf.beta)}.sneaky (x int)`,
    ]) {
      const code = await inRolledBackTx(ctx.app, async () => {
        await asTenant('alpha')
        return errorCode(ctx.app.query(sql))
      })
      expect(code, sql).toBe(INSUFFICIENT_PRIVILEGE)
    }
    // With row_security off, PostgreSQL raises an error rather than silently apply the policy.
    const code = await inRolledBackTx(ctx.app, async () => {
      await ctx.app.query('SET LOCAL row_security = off')
      return errorCode(ctx.app.query(`SELECT count(*) FROM ${table('beta', 'workflows')}`))
    })
    expect(code).toBe(INSUFFICIENT_PRIVILEGE)
  })

  it('gives the application role no SECURITY DEFINER function without a pinned search_path, and no definer views', async () => {
    const owner = await connect(ctx.db.url)
    try {
      const functions = await owner.query(
        `SELECT p.oid::regprocedure::text AS fn FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND has_function_privilege('equilateral_app', p.oid, 'EXECUTE')
           AND NOT EXISTS (SELECT FROM unnest(coalesce(p.proconfig, '{}')) c WHERE c LIKE 'search\\_path=%')`,
      )
      expect(functions.rows).toEqual([])
      const views = await owner.query(
        `SELECT c.oid::regclass::text AS view FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND NOT coalesce(c.reloptions @> '{security_invoker=true}', false)`,
      )
      expect(views.rows).toEqual([])
    } finally {
      await owner.end()
    }
  })

  it('runs every engine connection as the application role, never as the owner', async () => {
    const { rows } = await ctx.engine.pool.query(
      `SELECT current_user AS role, r.rolsuper, r.rolbypassrls,
         EXISTS (SELECT FROM pg_tables WHERE tableowner = current_user) AS owns_tables
       FROM pg_roles r WHERE r.rolname = current_user`,
    )
    // Behind a pooler the login is not switched (PgBouncer refuses startup options): it is the
    // application login itself, a member of equilateral_app and nothing more.
    expect(rows[0]).toEqual({
      role: pooler ? 'equilateral_test_app' : 'equilateral_app',
      rolsuper: false,
      rolbypassrls: false,
      owns_tables: false,
    })
    const owner = await connect(ctx.db.url)
    try {
      const sessions = await owner.query(
        `SELECT DISTINCT usename, application_name FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> 'equilateral-admin'`,
      )
      expect(sessions.rows.length).toBeGreaterThan(0)
      for (const s of sessions.rows) expect(s.usename, s.application_name).toBe('equilateral_test_app')
    } finally {
      await owner.end()
    }
  })

  it("never shows tenant A's rows to B on a connection that just served A (behind the pooler: one server connection, turns alternating)", async () => {
    const other = await connect(ctx.appUrl)
    try {
      const backends = new Set<number>()
      for (let round = 0; round < 3; round++) {
        for (const [client, tenant, theirs] of [
          [ctx.app, 'alpha', 'beta'],
          [other, 'beta', 'alpha'],
        ] as const) {
          // The tenant's transaction, as the engine scopes one, then the next client's turn.
          const seen = await inRolledBackTx(client, async () => {
            await enterTenant(client, ctx.secret, tenant)
            const { rows } = await client.query(
              `SELECT pg_backend_pid() AS pid, (SELECT array_agg(DISTINCT tenant_id) FROM ${table(tenant, 'workflows')}) AS own,
                   (SELECT count(*)::int FROM ${table(theirs, 'workflows')} WHERE tenant_id = $1) AS theirs`,
              [theirs],
            )
            return rows[0]
          })
          backends.add(seen.pid)
          expect(seen.own).toEqual([tenant])
          expect(seen.theirs).toBe(0)
          // Outside any transaction, the next statement on that server connection: no tenant left.
          const after = await client.query(
            `SELECT pg_backend_pid() AS pid, current_setting('app.tenant_id', true) AS tenant,
                 current_setting('equilateral.tenant_seal', true) AS seal,
                 (SELECT count(*)::int FROM ${table(tenant, 'workflows')}) AS n`,
          )
          backends.add(after.rows[0].pid)
          expect(after.rows[0].tenant ?? '').toBe('')
          expect(after.rows[0].seal ?? '').toBe('')
          expect(after.rows[0].n).toBe(0)
          // The engine's own transactions take their turns on the same server connection.
          const handle = await ctx.engine.tenant(theirs)
          const listed = await handle.listWorkflows()
          expect(listed.workflows.map((w) => w.id)).toEqual([ctx.ids[theirs]])
        }
      }
      // Behind the pooler one server connection served every turn (directly: each client its own).
      expect(backends.size).toBe(pooler ? 1 : 2)
    } finally {
      await other.end()
    }
  })
})
