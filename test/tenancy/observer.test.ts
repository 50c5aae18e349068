// The observer role (issue 20, item 4): a login in equilateral_observer reads status, timing and
// counts of a tenant's tables, under the same row-level security as the application, and none of
// the payload columns (inputs, task data, results, errors, audit data, event payloads, schedule
// inputs) nor keys and actors; it writes nothing. In both shared-table modes.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'

const INSUFFICIENT_PRIVILEGE = '42501'
const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('observer role, %s', (mode) => {
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
    const ids: Record<string, string> = {}
    for (const t of ['alpha', 'beta']) {
      const { id } = await (await engine.tenant(t)).startWorkflow('single', { secret: `${t}-secret` })
      await settled(engine, t, id)
      ids[t] = id
    }
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf = Object.fromEntries(rows.map((r) => [r.id, r.schema_name ?? 'equilateral']))
    // A dashboard's login, as an operator would create it.
    const login = `observer_${randomBytes(4).toString('hex')}`
    const password = randomBytes(12).toString('hex')
    await owner.query(`CREATE ROLE ${login} LOGIN PASSWORD '${password}' IN ROLE equilateral_observer`)
    const url = new URL(db.url)
    url.username = login
    url.password = password
    const observer = new pg.Client({ connectionString: url.toString() })
    await observer.connect()
    afterAll(async () => {
      await observer.end()
      await owner.query(`DROP ROLE ${login}`)
      await owner.end()
    })
    return { ids, schemaOf, observer }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  const table = (tenant: string, name: string) =>
    `${pg.escapeIdentifier(ctx.schemaOf[tenant])}.${pg.escapeIdentifier(name)}`

  /** Runs `fn` in a rolled-back transaction of the observer, scoped to `tenant` (or none). */
  async function asObserver<T>(tenant: string | null, fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const c = ctx.observer
    await c.query('BEGIN')
    try {
      if (tenant !== null) await c.query(`SELECT set_config('app.tenant_id', $1, true)`, [tenant])
      return await fn(c)
    } finally {
      await c.query('ROLLBACK')
    }
  }

  it("reads a tenant's status, timing and counts, and only that tenant's", async () => {
    const seen = await asObserver('alpha', async (c) => {
      const wf = await c.query(
        `SELECT id, status, completed_at IS NOT NULL AS done FROM ${table('alpha', 'workflows')} WHERE tenant_id <> ''`,
      )
      const tasks = await c.query(
        `SELECT status, count(*)::int AS n, max(completed_at - started_at) IS NOT NULL AS timed
         FROM ${table('alpha', 'agent_coordination')} GROUP BY status`,
      )
      const audit = await c.query(
        `SELECT action_type, count(*)::int AS n FROM ${table('alpha', 'agent_audit_log')} GROUP BY action_type ORDER BY 1`,
      )
      const theirs = await c.query(
        `SELECT count(*)::int AS n FROM ${table('beta', 'workflows')} WHERE id = $1`,
        [ctx.ids.beta],
      )
      const tenants = await c.query(`SELECT id, status FROM equilateral.tenants ORDER BY id`)
      return {
        wf: wf.rows,
        tasks: tasks.rows,
        audit: audit.rows,
        theirs: theirs.rows[0].n,
        tenants: tenants.rows,
      }
    })
    expect(seen.wf).toEqual([{ id: ctx.ids.alpha, status: 'completed', done: true }])
    expect(seen.tasks).toEqual([{ status: 'completed', n: 1, timed: true }])
    expect(seen.audit.map((r) => r.action_type)).toContain('workflow_completed')
    expect(seen.theirs).toBe(0)
    expect(seen.tenants).toEqual([
      { id: 'alpha', status: 'active' },
      { id: 'beta', status: 'active' },
    ])
    // Without a tenant, nothing.
    const none = await asObserver(
      null,
      async (c) => (await c.query(`SELECT count(*)::int AS n FROM ${table('alpha', 'workflows')}`)).rows[0].n,
    )
    expect(none).toBe(0)
  })

  it('is refused every payload column, SELECT *, and any write', async () => {
    const refused = [
      ['workflows', 'input'],
      ['workflows', 'error'],
      ['workflows', 'idempotency_key'],
      ['workflows', 'subject_key'],
      ['workflows', '*'],
      ['agent_coordination', 'data'],
      ['agent_coordination', 'result'],
      ['agent_coordination', 'error'],
      ['agent_coordination', 'wait'],
      ['agent_audit_log', 'action_data'],
      ['agent_audit_log', 'actor'],
      ['compliance_events', 'event_data'],
      ['workflow_events', 'payload'],
      ['workflow_events', 'match_key'],
      ['workflow_schedules', 'input'],
    ] as const
    for (const [name, column] of refused) {
      const code = await asObserver('alpha', (c) =>
        errorCode(
          c.query(
            `SELECT ${column === '*' ? '*' : pg.escapeIdentifier(column)} FROM ${table('alpha', name)}`,
          ),
        ),
      )
      expect(code, `${name}.${column}`).toBe(INSUFFICIENT_PRIVILEGE)
    }
    expect(
      await asObserver('alpha', (c) => errorCode(c.query(`SELECT api_key_hash FROM equilateral.tenants`))),
    ).toBe(INSUFFICIENT_PRIVILEGE)
    for (const sql of [
      `UPDATE ${table('alpha', 'workflows')} SET status = 'cancelled'`,
      `DELETE FROM ${table('alpha', 'agent_coordination')}`,
      `INSERT INTO ${table('alpha', 'agent_audit_log')} (tenant_id, workflow_id, action_type) VALUES ('alpha', gen_random_uuid(), 'x')`,
      `UPDATE equilateral.tenants SET status = 'active'`,
    ]) {
      expect(await asObserver('alpha', (c) => errorCode(c.query(sql))), sql).toBe(INSUFFICIENT_PRIVILEGE)
    }
  })
})
