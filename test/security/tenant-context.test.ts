// Issue 20, item 3: a tenant context injected SQL cannot forge. An attacker with SQL as the
// application role (the login web and worker use) sits inside tenant alpha's transaction (a raw
// connection doing exactly what the engine does for alpha; a caller's own transaction the engine
// worked in through clientDb) or outside any tenant transaction, and tries to become tenant beta:
// set_config('app.tenant_id', 'beta') as a statement and inside one expression, a seal replayed from
// an earlier transaction of beta's (on the same connection and on another), and enter_tenant() with
// a wrong credential. Then it reads, inserts, updates and deletes beta's workflows, tasks, audit
// rows, compliance events and workflow events. Nothing of beta is reachable; every write is refused
// or touches nothing. In both modes whose tables the application role can name across tenants.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { migrate } from '../../src/db/migrate.ts'
import { tenantCredential } from '../../src/tenancy/tenant-context.ts'
import { clientDb, createEngine, defineAgent, defineWorkflow } from '../../src/index.ts'
import { TEST_ENGINE_CONFIG } from '../../src/testing.ts'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'
import { TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const INSUFFICIENT_PRIVILEGE = '42501'
const TABLES = [
  'workflows',
  'agent_coordination',
  'agent_audit_log',
  'compliance_events',
  'workflow_events',
] as const

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

async function connect(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  return c
}

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('tenant context, mode %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [echo],
      workflows: [single],
      config: { isolationMode: mode },
    })
    await engine.createTenant({ id: 'alpha' })
    await engine.createTenant({ id: 'beta' })
    await engine.startWorker()
    const wf: Record<string, string> = {}
    for (const t of ['alpha', 'beta']) {
      const { id } = await (await engine.tenant(t)).startWorkflow('single', { secret: `${t}-secret` })
      await settled(engine, t, id)
      wf[t] = id
    }
    const owner = await connect(db.url)
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf: Record<string, string> = Object.fromEntries(
      rows.map((r) => [r.id, r.schema_name ?? 'equilateral']),
    )
    for (const t of ['alpha', 'beta']) {
      const s = pg.escapeIdentifier(schemaOf[t]!)
      await owner.query(
        `INSERT INTO ${s}.compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data)
         VALUES ($1, 'echo', 'GDPR', 'test', '{}')`,
        [t],
      )
      await owner.query(
        `INSERT INTO ${s}.workflow_events (tenant_id, workflow_id, event_id, kind, name, payload)
         VALUES ($1, $2, 'e1', 'event', 'paid', '{"amount": 1}')`,
        [t, wf[t]],
      )
    }
    // Beta has a row in every table: the attacks below have something to find.
    for (const name of TABLES) {
      const { rows: n } = await owner.query(
        `SELECT count(*)::int AS n FROM ${pg.escapeIdentifier(schemaOf.beta!)}.${name} WHERE tenant_id = 'beta'`,
      )
      expect(n[0].n, name).toBeGreaterThan(0)
    }
    await owner.end()
    const secret = await tenantSecret(db.url)
    const app = await connect(db.appUrl)
    const other = await connect(db.appUrl)
    afterAll(async () => {
      await app.end()
      await other.end()
    })
    return { engine, db, wf, schemaOf, secret, app, other }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  const table = (tenant: string, name: string) =>
    `${pg.escapeIdentifier(ctx.schemaOf[tenant]!)}.${pg.escapeIdentifier(name)}`

  /** A genuine seal for `tenant`, made by the engine's own call in a transaction of `client`'s, since ended. */
  async function sealFrom(client: pg.Client, tenant: string): Promise<string> {
    await client.query('BEGIN')
    try {
      await enterTenant(client, ctx.secret, tenant)
      const { rows } = await client.query(`SELECT current_setting('equilateral.tenant_seal') AS seal`)
      return rows[0].seal
    } finally {
      await client.query('ROLLBACK')
    }
  }

  /**
   * What the attacker reaches of beta after `forge`, run on ctx.app (inside or outside a
   * transaction): every read of beta's rows, every write to them. Each statement runs under a
   * savepoint (or alone), so one refusal does not end the attack.
   */
  async function reachable(forge: () => Promise<unknown>, inTx: boolean): Promise<string[]> {
    const app = ctx.app
    const found: string[] = []
    const attempt = async (label: string, sql: string, params: unknown[] = []) => {
      if (inTx) await app.query('SAVEPOINT attack')
      try {
        await forge()
        const result = await app.query(sql, params)
        const count = result.rows[0]?.n ?? result.rowCount
        if (count > 0) found.push(`${label}: ${count}`)
      } catch (error) {
        const code = (error as { code?: string }).code
        if (code !== INSUFFICIENT_PRIVILEGE)
          found.push(`${label}: unexpected ${code} ${(error as Error).message}`)
      } finally {
        if (inTx) await app.query('ROLLBACK TO SAVEPOINT attack')
      }
    }
    const b = ctx.wf.beta
    for (const name of TABLES) {
      await attempt(
        `SELECT ${name}`,
        `SELECT count(*)::int AS n FROM ${table('beta', name)} WHERE tenant_id = 'beta'`,
      )
      // Inside one expression: the setting changes while the statement runs.
      await attempt(
        `SELECT ${name} with set_config in the expression`,
        `SELECT count(*)::int AS n FROM ${table('beta', name)}
         WHERE set_config('app.tenant_id', 'beta', true) IS NOT NULL AND tenant_id = 'beta'`,
      )
    }
    await attempt(
      'SELECT payloads',
      `SELECT count(*)::int AS n FROM ${table('beta', 'workflows')} WHERE id = $1`,
      [b],
    )
    await attempt(
      'UPDATE workflows',
      `UPDATE ${table('beta', 'workflows')} SET status = 'failed' WHERE tenant_id = 'beta' AND id = $1`,
      [b],
    )
    await attempt(
      'UPDATE tasks',
      `UPDATE ${table('beta', 'agent_coordination')} SET status = 'failed' WHERE tenant_id = 'beta'`,
    )
    await attempt(
      'UPDATE tasks with set_config in the expression',
      `UPDATE ${table('beta', 'agent_coordination')} SET status = 'failed'
       WHERE set_config('app.tenant_id', 'beta', true) IS NOT NULL AND tenant_id = 'beta'`,
    )
    await attempt(
      'UPDATE workflow events',
      `UPDATE ${table('beta', 'workflow_events')} SET consumed_at = now() WHERE tenant_id = 'beta'`,
    )
    await attempt(
      'DELETE tasks',
      `DELETE FROM ${table('beta', 'agent_coordination')} WHERE tenant_id = 'beta'`,
    )
    await attempt('DELETE workflows', `DELETE FROM ${table('beta', 'workflows')} WHERE tenant_id = 'beta'`)
    await attempt(
      'DELETE workflow events',
      `DELETE FROM ${table('beta', 'workflow_events')} WHERE tenant_id = 'beta'`,
    )
    await attempt(
      'INSERT workflow',
      `INSERT INTO ${table('beta', 'workflows')} (tenant_id, id, type, version, status, correlation_id, tasks_remaining)
       VALUES ('beta', gen_random_uuid(), 'single', 1, 'running', 'forged', 0)`,
    )
    await attempt(
      'INSERT audit row',
      `INSERT INTO ${table('beta', 'agent_audit_log')} (tenant_id, workflow_id, agent_id, action_type, action_data)
       VALUES ('beta', $1, 'echo', 'forged', '{}')`,
      [b],
    )
    await attempt(
      'INSERT audit row with set_config in the expression',
      `INSERT INTO ${table('beta', 'agent_audit_log')} (tenant_id, workflow_id, agent_id, action_type, action_data)
       SELECT 'beta', $1, 'echo', 'forged', '{}' WHERE set_config('app.tenant_id', 'beta', true) IS NOT NULL`,
      [b],
    )
    await attempt(
      'INSERT compliance event',
      `INSERT INTO ${table('beta', 'compliance_events')} (tenant_id, agent_id, compliance_type, event_type, event_data)
       VALUES ('beta', 'echo', 'GDPR', 'forged', '{}')`,
    )
    await attempt(
      'INSERT workflow event',
      `INSERT INTO ${table('beta', 'workflow_events')} (tenant_id, workflow_id, event_id, kind, name)
       VALUES ('beta', $1, 'forged', 'event', 'paid')`,
      [b],
    )
    return found
  }

  /** The forgeries: each leaves the attacker's session claiming beta by its own means. */
  const forgeries = (): [string, () => Promise<unknown>][] => [
    ['set_config', () => ctx.app.query(`SELECT set_config('app.tenant_id', 'beta', true)`)],
    ['set_config, session-wide', () => ctx.app.query(`SELECT set_config('app.tenant_id', 'beta', false)`)],
    [
      "a seal of beta's replayed from an earlier transaction on the same connection",
      async () => {
        const seal = await sealOfBetaSameConnection
        await ctx.app.query(
          `SELECT set_config('app.tenant_id', 'beta', false), set_config('equilateral.tenant_seal', $1, false)`,
          [seal],
        )
      },
    ],
    [
      "a seal of beta's replayed from another connection's transaction",
      async () => {
        const seal = await sealOfBetaOtherConnection
        await ctx.app.query(
          `SELECT set_config('app.tenant_id', 'beta', false), set_config('equilateral.tenant_seal', $1, false)`,
          [seal],
        )
      },
    ],
  ]
  let sealOfBetaSameConnection: Promise<string>
  let sealOfBetaOtherConnection: Promise<string>
  beforeAll(() => {
    sealOfBetaSameConnection = sealFrom(ctx.app, 'beta')
    sealOfBetaOtherConnection = sealFrom(ctx.other, 'beta')
  })

  it("keeps beta out of reach inside alpha's transaction, as the engine scopes it", async () => {
    await sealOfBetaSameConnection
    await sealOfBetaOtherConnection
    for (const [name, forge] of forgeries()) {
      await ctx.app.query('BEGIN')
      try {
        await enterTenant(ctx.app, ctx.secret, 'alpha')
        // Alpha's own rows are there, under the same statements' shape: the scope is real.
        const { rows } = await ctx.app.query(`SELECT count(*)::int AS n FROM ${table('alpha', 'workflows')}`)
        expect(rows[0].n).toBe(1)
        expect(await reachable(forge, true), name).toEqual([])
      } finally {
        await ctx.app.query('ROLLBACK')
      }
    }
  })

  it("keeps beta out of reach in a caller's transaction the engine started alpha's workflow in", async () => {
    await sealOfBetaSameConnection
    for (const [name, forge] of forgeries()) {
      await ctx.app.query('BEGIN')
      try {
        const alpha = await ctx.engine.tenant('alpha')
        await alpha.startWorkflow('single', { n: 1 }, { db: clientDb(ctx.app) })
        expect(await reachable(forge, true), name).toEqual([])
      } finally {
        await ctx.app.query('ROLLBACK')
      }
    }
  })

  it('keeps beta out of reach outside any tenant transaction', async () => {
    await sealOfBetaSameConnection
    for (const [name, forge] of forgeries()) {
      expect(await reachable(forge, false), name).toEqual([])
      await ctx.app.query(`RESET app.tenant_id; RESET equilateral.tenant_seal`)
    }
  })

  it('refuses enter_tenant with a wrong credential, and beta stays out of reach', async () => {
    const wrong = [
      tenantCredential(ctx.secret, 'alpha'), // alpha's, for beta
      tenantCredential(Buffer.alloc(32, 7), 'beta'), // beta's under another secret
      '',
      'beta',
    ]
    for (const credential of wrong) {
      for (const inTx of [true, false]) {
        const refused = async () => {
          if (inTx) await ctx.app.query('SAVEPOINT forge')
          const code = await errorCode(
            ctx.app.query(`SELECT equilateral.enter_tenant('beta', $1)`, [credential]),
          )
          expect(code, credential).toBe(INSUFFICIENT_PRIVILEGE)
          if (inTx) await ctx.app.query('ROLLBACK TO SAVEPOINT forge')
        }
        if (inTx) {
          await ctx.app.query('BEGIN')
          await enterTenant(ctx.app, ctx.secret, 'alpha')
        }
        try {
          expect(await reachable(refused, inTx), credential).toEqual([])
        } finally {
          if (inTx) await ctx.app.query('ROLLBACK')
        }
      }
    }
  })

  it('gives the application role no way to the secret, the credentials or the seal function', async () => {
    for (const sql of [
      'SELECT secret FROM equilateral.tenant_context_key',
      `SELECT equilateral.tenant_context_mac('\\x00'::bytea, 'tenant:beta')`,
      `SELECT equilateral.tenant_context_binding()`,
      'ALTER FUNCTION equilateral.current_tenant() SECURITY INVOKER',
      "CREATE OR REPLACE FUNCTION equilateral.current_tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'beta' $$",
      `ALTER POLICY tenant_isolation ON ${table('beta', 'workflows')} USING (true)`,
    ]) {
      expect(await errorCode(ctx.app.query(sql)), sql).toBe(INSUFFICIENT_PRIVILEGE)
    }
    // The function the policies call runs as its owner with a search_path the caller cannot change.
    const { rows } = await ctx.app.query(
      `SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
       WHERE n.nspname = 'equilateral' AND p.proname IN ('current_tenant', 'enter_tenant') ORDER BY 1`,
    )
    expect(rows).toEqual([
      { proname: 'current_tenant', prosecdef: true, proconfig: ['search_path=pg_catalog, pg_temp'] },
      { proname: 'enter_tenant', prosecdef: true, proconfig: ['search_path=pg_catalog, pg_temp'] },
    ])
  })

  it("takes the secret from the owner's connection, else TENANT_CONTEXT_SECRET, and says which is missing", async () => {
    const engineWith = (tenantContextSecret: string | undefined) =>
      createEngine({
        connectionString: ctx.db.appUrl,
        // No owner login: the engine cannot read the database's secret.
        adminConnectionString: ctx.db.appUrl,
        agents: [echo],
        workflows: [single],
        log: pino({ level: 'silent' }),
        supervise: false,
        config: { ...TEST_ENGINE_CONFIG, isolationMode: mode, tenantContextSecret },
      })
    const unconfigured = await engineWith(undefined)
    try {
      await expect((await unconfigured.tenant('alpha')).startWorkflow('single', 1)).rejects.toMatchObject({
        code: 'tenant_context_unavailable',
        message: expect.stringContaining('TENANT_CONTEXT_SECRET'),
      })
    } finally {
      await unconfigured.close()
    }
    // A secret the database does not hold is refused when the engine starts.
    await expect(engineWith('x'.repeat(40))).rejects.toMatchObject({ code: INSUFFICIENT_PRIVILEGE })
    // The secret `migrate` stored (the test template's): alpha's workflow starts, in alpha only.
    const configured = await engineWith(TEST_TENANT_CONTEXT_SECRET)
    try {
      const { id } = await (await configured.tenant('alpha')).startWorkflow('single', 2)
      const [row] = await queryOnce(
        ctx.db.url,
        `SELECT tenant_id FROM ${table('alpha', 'workflows')} WHERE id = $1`,
        [id],
      )
      expect(row?.tenant_id).toBe('alpha')
    } finally {
      await configured.close()
    }
  })
})

describe('TENANT_CONTEXT_VERIFIED=false', () => {
  it('puts back the policies by setting, which injected SQL can choose, and true restores the verified ones', async () => {
    const db = await createTestDatabase()
    afterAll(() => db.drop())
    await queryOnce(
      db.url,
      `INSERT INTO equilateral.workflows (tenant_id, id, type, version, status, correlation_id, tasks_remaining)
       VALUES ('beta', gen_random_uuid(), 'single', 1, 'running', 'c', 1)`,
    )
    const app = await connect(db.appUrl)
    afterAll(() => app.end())
    const forged = async () => {
      await app.query(`BEGIN; SELECT set_config('app.tenant_id', 'beta', true)`)
      try {
        return (await app.query(`SELECT count(*)::int AS n FROM equilateral.workflows`)).rows[0].n
      } finally {
        await app.query('ROLLBACK')
      }
    }
    expect(await forged()).toBe(0)
    await migrate(db.url, { tenantContextVerified: false })
    expect(await forged()).toBe(1)
    await migrate(db.url, { tenantContextVerified: true })
    expect(await forged()).toBe(0)
    // The default (no TENANT_CONTEXT_VERIFIED) is the policies by setting: see docs/security.md.
    const env = process.env.TENANT_CONTEXT_VERIFIED
    delete process.env.TENANT_CONTEXT_VERIFIED
    try {
      await migrate(db.url)
    } finally {
      if (env !== undefined) process.env.TENANT_CONTEXT_VERIFIED = env
    }
    expect(await forged()).toBe(1)
  })
})
