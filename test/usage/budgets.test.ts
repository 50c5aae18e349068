// Budgets: a hard budget stops a tenant's dispatch within one task of its limit (the completion that
// reaches it marks it, the claim holds what comes next) and dispatch resumes when the budget is
// raised or its period rolls (the budget pass, with an injected clock: never the test's time of
// day); a soft budget alerts (audit row, gauge) and stops nothing; two completions reaching a budget
// at once record one crossing; and a tenant reads only its own usage and budgets, in every isolation
// mode.
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { buildApp, defineAgent, defineWorkflow } from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { errorCode } from '../helpers/errors.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { parseExposition, sample } from '../helpers/prometheus.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const ADMIN = 'budget-admin-token'
const TOKENS_PER_TASK = 10
const spender = defineAgent({
  id: 'spender',
  usage: ['tokens'],
  handler: async (ctx) => {
    ctx.usage({ tokens: TOKENS_PER_TASK })
    return { step: ctx.taskKey }
  },
})
/** A chain of n tasks (s1 -> s2 -> ...): one runs at a time, each spending TOKENS_PER_TASK. */
const chain = (name: string, n: number) =>
  defineWorkflow({
    name,
    tasks: Array.from({ length: n }, (_, i) => ({
      key: `s${i + 1}`,
      agent: spender,
      ...(i > 0 ? { dependsOn: [`s${i}`] } : {}),
    })),
  })
const chain8 = chain('chain8', 8)
const chain3 = chain('chain3', 3)

describe.each<IsolationMode>(['row-level', 'schema-per-tenant', 'database-per-tenant'])(
  'budgets in isolation mode %s',
  (mode) => {
    it('hard: stops dispatch within one task of the limit, holds new work, and resumes when raised; tenants see only their own', async () => {
      const { engine } = await testEngine({
        agents: [spender],
        workflows: [chain8, chain3],
        config: { isolationMode: mode },
      })
      const app = await buildApp(engine, { adminToken: ADMIN })
      afterAll(() => app.close())
      await engine.startWorker()
      const keys = {
        alpha: (await engine.createTenant({ id: 'alpha' })).apiKey,
        beta: (await engine.createTenant({ id: 'beta' })).apiKey,
      }
      const call = (method: 'GET' | 'PUT', url: string, key: string, payload?: object) =>
        app.inject({
          method,
          url,
          headers: { authorization: `Bearer ${key}` },
          ...(payload ? { payload } : {}),
        })

      const set = await call('PUT', '/v1/admin/tenants/alpha/budgets/tokens', ADMIN, {
        period: 'day',
        limit: 35,
        hard: true,
        actor: 'ops@example.com',
      })
      expect(set.statusCode).toBe(200)
      expect(set.json()).toMatchObject({ dimension: 'tokens', period: 'day', limit: 35, hard: true, used: 0 })

      const alpha = await engine.tenant('alpha')
      const { id } = await alpha.startWorkflow('chain8')
      // The 4th completion reaches 40 >= 35; the 5th task is held, not run.
      await eventually(async () => ((await alpha.usage()).heldTasks === 1 ? true : undefined))
      let wf = await alpha.getWorkflow(id)
      expect(wf.status).toBe('running')
      expect(wf.tasks.filter((t) => t.status === 'completed').map((t) => t.key)).toEqual([
        's1',
        's2',
        's3',
        's4',
      ])
      expect(wf.tasks.find((t) => t.key === 's5')).toMatchObject({
        status: 'queued',
        holdReason: 'budget_exhausted',
      })
      const [budget] = await alpha.budgets()
      expect(budget).toMatchObject({ used: 40, exhausted: true })
      expect(budget!.used).toBeLessThanOrEqual(35 + TOKENS_PER_TASK)
      // New work of the tenant waits too; another tenant runs as usual.
      const second = await alpha.startWorkflow('chain3')
      await eventually(async () => ((await alpha.usage()).heldTasks === 2 ? true : undefined))
      const beta = await engine.tenant('beta')
      const betaRun = await beta.startWorkflow('chain3')
      expect((await settled(engine, 'beta', betaRun.id)).status).toBe('completed')
      expect((await alpha.getWorkflow(second.id)).tasks.every((t) => t.status !== 'completed')).toBe(true)

      // Each tenant reads its own usage and budgets only, whatever it asks for.
      const alphaUsage = (await call('GET', '/v1/usage', keys.alpha)).json()
      expect(alphaUsage.totals).toEqual([{ dimension: 'tokens', amount: 40 }])
      const betaUsage = await call('GET', `/v1/usage?workflowId=${id}`, keys.beta)
      expect(betaUsage.statusCode).toBe(200)
      expect(betaUsage.json().totals).toEqual([])
      expect((await call('GET', '/v1/usage', keys.beta)).json().totals).toEqual([
        { dimension: 'tokens', amount: 30 },
      ])
      expect((await call('GET', '/v1/budgets', keys.beta)).json()).toEqual({ budgets: [], audit: [] })
      expect(
        (
          await call('PUT', '/v1/admin/tenants/alpha/budgets/tokens', keys.alpha, {
            period: 'day',
            limit: 1e6,
          })
        ).statusCode,
      ).toBe(401)

      // Raised: the held tasks are queued again at once, and both workflows finish.
      const raised = await call('PUT', '/v1/admin/tenants/alpha/budgets/tokens', ADMIN, {
        period: 'day',
        limit: 1000,
        hard: true,
        actor: 'ops@example.com',
      })
      expect(raised.json()).toMatchObject({ exhausted: false, released: 2 })
      wf = await settled(engine, 'alpha', id)
      expect(wf.status).toBe('completed')
      expect((await settled(engine, 'alpha', second.id)).status).toBe('completed')
      expect((await alpha.usage()).totals).toEqual([{ dimension: 'tokens', amount: 110 }])

      const audit = (await call('GET', '/v1/budgets', keys.alpha)).json().audit as {
        action: string
        actor: string | null
        workflowId: string | null
      }[]
      expect(audit.map((a) => a.action).reverse()).toEqual([
        'budget_set',
        'budget_exhausted',
        'budget_raised',
      ])
      expect(audit.find((a) => a.action === 'budget_exhausted')?.workflowId).toBe(id)
      expect(audit.find((a) => a.action === 'budget_raised')?.actor).toBe('ops@example.com')
      const history = (await alpha.history(id)).map((e) => `${e.action}`)
      expect(history.filter((a) => a === 'task_held')).toHaveLength(1)
      expect(history.filter((a) => a === 'task_released')).toHaveLength(1)
    })
  },
)

describe('budget periods, soft budgets and concurrent crossings', async () => {
  const { engine, db } = await testEngine({ agents: [spender], workflows: [chain8, chain3] })
  await engine.startWorker()
  for (const id of ['monthly', 'soft', 'race']) await engine.createTenant({ id })

  it('holds until the period rolls: the budget pass, given a clock past the period, releases the tasks', async () => {
    const t = await engine.tenant('monthly')
    const budget = await engine.setBudget('monthly', {
      dimension: 'tokens',
      period: 'month',
      limit: 15,
      hard: true,
    })
    const { id } = await t.startWorkflow('chain3')
    await eventually(async () => ((await t.usage()).heldTasks === 1 ? true : undefined))
    // A pass whose clock is still in the period changes nothing.
    expect(await engine.budgetPass({ clock: new Date(budget.periodStart) })).toMatchObject({
      rolled: 0,
      released: 0,
    })
    expect((await t.getWorkflow(id)).status).toBe('running')
    // Forty days after the period's start is in a later month, whatever today is.
    const later = new Date(Date.parse(budget.periodStart) + 40 * 86_400_000)
    const pass = await engine.budgetPass({ clock: later })
    expect(pass).toMatchObject({ rolled: 1, released: 1 })
    expect((await settled(engine, 'monthly', id)).status).toBe('completed')
    const [rolled] = await t.budgets()
    expect(Date.parse(rolled!.periodStart)).toBeGreaterThan(Date.parse(budget.periodStart))
    expect((await t.budgetAudit()).map((a) => a.action)).toContain('budget_period_rolled')
  })

  it('soft: alerts (one audit row, the gauge) and stops nothing', async () => {
    const t = await engine.tenant('soft')
    const budget = await engine.setBudget('soft', { dimension: 'tokens', period: 'day', limit: 15 })
    const { id } = await t.startWorkflow('chain3')
    expect((await settled(engine, 'soft', id)).status).toBe('completed')
    const audit = await t.budgetAudit()
    expect(audit.filter((a) => a.action === 'budget_exceeded')).toHaveLength(1)
    expect(audit.find((a) => a.action === 'budget_exceeded')).toMatchObject({
      workflowId: id,
      data: { used: 20 },
    })
    expect((await t.budgets())[0]).toMatchObject({ used: 30, exhausted: false })
    await engine.budgetPass({ clock: new Date(budget.periodStart) })
    const s = parseExposition((await engine.metrics.expose()).body)
    expect(
      sample(s, 'equilateral_budgets_exceeded', { dimension: 'tokens', period: 'day', kind: 'soft' }),
    ).toBe(1)
  })

  it('records one crossing when two transactions reach a budget at once, and the pass catches one neither saw', async () => {
    const scope = await engine.tenants.require('race')
    const b1 = await engine.setBudget('race', { dimension: 'calls', period: 'day', limit: 10, hard: true })
    await engine.setBudget('race', { dimension: 'pages', period: 'day', limit: 50, hard: false })
    const secret = await tenantSecret(db.url)
    const clients = await Promise.all(
      [0, 1].map(async () => {
        const c = new pg.Client({ connectionString: db.appUrl })
        await c.connect()
        await c.query('BEGIN')
        await enterTenant(c, secret, scope.tenantId)
        return c
      }),
    )
    const [c1, c2] = clients as [pg.Client, pg.Client]
    const record = (c: pg.Client, dimension: string, amount: number) =>
      c.query(
        `INSERT INTO equilateral.agent_usage (tenant_id, task_id, attempt, dimension, workflow_id, agent_id, amount, outcome)
         VALUES ($1, gen_random_uuid(), 1, $2, gen_random_uuid(), 'spender', $3, 'completed')`,
        [scope.tenantId, dimension, amount],
      )
    try {
      // Each alone stays below 'pages' (30 < 50); together they pass it (60), and neither sees the other.
      await record(c1, 'pages', 30)
      await record(c2, 'pages', 30)
      // Each alone reaches 'calls': the second waits for the first's budget row, then sees it marked.
      await record(c1, 'calls', 20)
      const second = record(c2, 'calls', 20)
      await c1.query('COMMIT')
      await second
      await c2.query('COMMIT')
    } finally {
      await Promise.all(clients.map((c) => c.end()))
    }
    const t = await engine.tenant('race')
    const crossings = async (dimension: string) =>
      (await t.budgetAudit()).filter((a) => a.dimension === dimension && a.action.startsWith('budget_ex'))
    expect(await crossings('calls')).toHaveLength(1)
    expect(await crossings('pages')).toHaveLength(0)
    expect(await engine.budgetPass({ clock: new Date(b1.periodStart) })).toMatchObject({ reached: 1 })
    expect(await crossings('pages')).toMatchObject([
      { action: 'budget_exceeded', data: { used: 60, by: 'budget pass' } },
    ])
  })

  it('refuses what the database must not hold, as the application role', async () => {
    // Another tenant's usage cannot be written nor read from a transaction scoped to this one.
    const secret = await tenantSecret(db.url)
    const c = new pg.Client({ connectionString: db.appUrl })
    await c.connect()
    try {
      await c.query('BEGIN')
      await enterTenant(c, secret, 'race')
      const { rows } = await c.query(
        `SELECT count(*)::int AS n FROM equilateral.agent_usage WHERE tenant_id <> 'race'`,
      )
      expect(rows[0].n).toBe(0)
      const { rowCount } = await c.query(
        `UPDATE equilateral.usage_budgets SET budget = 0 WHERE tenant_id = 'soft'`,
      )
      expect(rowCount).toBe(0)
      expect(
        await errorCode(
          c.query(
            `INSERT INTO equilateral.agent_usage (tenant_id, task_id, attempt, dimension, workflow_id, agent_id, amount, outcome)
             VALUES ('soft', gen_random_uuid(), 1, 'tokens', gen_random_uuid(), 'x', 1, 'completed')`,
          ),
        ),
      ).toBe('42501')
      await c.query('ROLLBACK')
      // Usage is append-only for the application role.
      await c.query('BEGIN')
      await enterTenant(c, secret, 'race')
      expect(await errorCode(c.query(`DELETE FROM equilateral.agent_usage`))).toBe('42501')
      await c.query('ROLLBACK')
    } finally {
      await c.end()
    }
    const [{ n }] = (await queryOnce(
      db.url,
      `SELECT count(*)::int AS n FROM equilateral.agent_usage WHERE tenant_id = 'soft'`,
    )) as [{ n: number }]
    expect(n).toBe(3)
  })
})
