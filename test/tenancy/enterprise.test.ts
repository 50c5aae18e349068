// Enterprise fan-out: one workflow type across several tenants, each with its own input, tracked as
// one run and consolidated once every tenant's workflow has ended, including partial failure, in both
// isolation modes (in schema-per-tenant mode a read outside the tenant's scope would find nothing).
// Tenants that cannot take the workflow are rejected without stopping the others; a start that
// crashed half-way is finished by a consolidation pass without a second workflow for anyone; input
// that cannot be accepted is refused before anything is written.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import {
  defineAgent,
  defineWorkflow,
  ENTERPRISE_QUEUE,
  EnterpriseOrchestrator,
  EnterpriseRunConflictError,
  InvalidInputError,
  NotFoundError,
  PermanentError,
  TenantError,
  UnknownWorkflowTypeError,
} from '../../src/index.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

// A type alias, not an interface: it must be assignable to Json.
type TeamInput = {
  team: string
  size: number
  broken?: boolean
}

const measure = defineAgent<TeamInput>({
  id: 'measure',
  handler: async (ctx) => {
    if (ctx.data.broken) throw new PermanentError(`no metrics for ${ctx.data.team}`)
    return { team: ctx.data.team, tenant: ctx.tenantId, velocity: ctx.data.size * 3 }
  },
})
const report = defineAgent({
  id: 'report',
  handler: async (ctx) => {
    const m = ctx.results.measure as { team: string; tenant: string; velocity: number }
    return { headline: `${m.team}: ${m.velocity} points`, tenant: m.tenant }
  },
})
const teamReport = defineWorkflow<TeamInput>({
  name: 'team-report',
  tasks: [
    { key: 'measure', agent: measure, data: (input) => input, maxAttempts: 3 },
    { key: 'report', agent: report, dependsOn: ['measure'] },
  ],
})

const TEAMS = ['payments', 'search', 'mobile', 'data', 'infra']

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('enterprise fan-out, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [measure, report],
      workflows: [teamReport],
      config: { isolationMode: mode },
    })
    for (const t of [...TEAMS, 'solo', 'paused']) await engine.createTenant({ id: t })
    await engine.suspendTenant('paused')
    await engine.startWorker({ concurrency: 8 })
    const orchestrator = new EnterpriseOrchestrator(engine, { checkIntervalMs: 150 })
    await orchestrator.work()
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    afterAll(async () => {
      await orchestrator.stop()
      await owner.end()
    })
    /** Workflows (any tenant) started for this run, seen by the owner behind the engine's back. */
    const workflowsOf = async (runId: string) => {
      const schemas = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
      const found: { tenant: string; id: string }[] = []
      for (const s of new Set(schemas.rows.map((r) => r.schema_name ?? 'equilateral'))) {
        const { rows } = await owner.query(
          `SELECT tenant_id, id FROM ${pg.escapeIdentifier(s)}.workflows WHERE idempotency_key = $1`,
          [`enterprise:${runId}`],
        )
        found.push(...rows.map((r) => ({ tenant: r.tenant_id, id: r.id })))
      }
      return found.sort((a, b) => a.tenant.localeCompare(b.tenant))
    }
    return { engine, db, orchestrator, owner, workflowsOf }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  const input = (team: string, extra: Partial<TeamInput> = {}): TeamInput => ({
    team,
    size: TEAMS.indexOf(team) + 1,
    ...extra,
  })

  it('runs across 5 tenants with one failing: 4 completed and 1 failed, with each tenant’s result', async () => {
    const { orchestrator, engine } = ctx
    const { runId, created } = await orchestrator.start(
      'team-report',
      TEAMS.map((t) => ({ tenantId: t, input: input(t, t === 'mobile' ? { broken: true } : {}) })),
    )
    expect(created).toBe(true)
    const run = await orchestrator.wait(runId, { timeoutMs: 30_000 })

    expect(run.status).toBe('partial')
    expect(run.completedAt).toBeInstanceOf(Date)
    const summary = run.summary!
    expect({ ...summary, tenants: undefined }).toEqual({
      total: 5,
      completed: 4,
      failed: 1,
      cancelled: 0,
      rejected: 0,
      tenants: undefined,
    })
    for (const t of TEAMS.filter((t) => t !== 'mobile')) {
      const size = TEAMS.indexOf(t) + 1
      expect(summary.tenants[t]).toEqual({
        status: 'completed',
        workflowId: expect.any(String),
        output: { report: { headline: `${t}: ${size * 3} points`, tenant: t } },
      })
    }
    expect(summary.tenants.mobile).toEqual({
      status: 'failed',
      workflowId: expect.any(String),
      error: {
        task: expect.any(String),
        agent: 'measure',
        error: { name: 'PermanentError', message: 'no metrics for mobile', code: 'permanent' },
      },
    })
    // Members record the same, and each workflow lives in its own tenant, correlated with the run.
    expect(run.members.map((m) => [m.tenantId, m.status])).toEqual(
      [...TEAMS].sort().map((t) => [t, t === 'mobile' ? 'failed' : 'completed']),
    )
    for (const m of run.members) {
      const own = await engine.tenant(m.tenantId)
      const wf = await own.getWorkflow(m.workflowId!)
      expect(wf.correlationId).toBe(runId)
      expect(wf.input).toEqual(input(m.tenantId, m.tenantId === 'mobile' ? { broken: true } : {}))
      const other = await engine.tenant(m.tenantId === 'search' ? 'data' : 'search')
      await expect(other.getWorkflow(m.workflowId!)).rejects.toBeInstanceOf(NotFoundError)
    }
    // Consolidated once: a later pass changes nothing, and the run's job chain has stopped.
    const again = await orchestrator.checkRun(runId)
    expect(again.summary).toEqual(summary)
    expect(again.completedAt).toEqual(run.completedAt)
    await eventually(async () => {
      const { rows } = await ctx.owner.query(
        `SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1 AND singleton_key = $2 AND state < 'completed'`,
        [ENTERPRISE_QUEUE, runId],
      )
      return rows[0].n === 0 ? true : undefined
    })
  })

  it('reports completed when every tenant completes and failed when none does', async () => {
    const { orchestrator } = ctx
    const ok = await orchestrator.start(
      'team-report',
      ['payments', 'search'].map((t) => ({ tenantId: t, input: input(t) })),
    )
    const bad = await orchestrator.start(
      'team-report',
      ['data', 'infra'].map((t) => ({ tenantId: t, input: input(t, { broken: true }) })),
    )
    const [done, failed] = await Promise.all([orchestrator.wait(ok.runId), orchestrator.wait(bad.runId)])
    expect([done.status, done.summary?.completed, done.summary?.failed]).toEqual(['completed', 2, 0])
    expect([failed.status, failed.summary?.completed, failed.summary?.failed]).toEqual(['failed', 0, 2])
  })

  it('rejects a suspended or unknown tenant without stopping the others', async () => {
    const { orchestrator, workflowsOf } = ctx
    const { runId } = await orchestrator.start('team-report', [
      { tenantId: 'paused', input: input('payments') },
      { tenantId: 'solo', input: input('search') },
      { tenantId: 'nobody-here', input: input('data') },
    ])
    // Rejections are known as soon as start() returns.
    const started = await orchestrator.get(runId)
    expect(started.members.map((m) => [m.tenantId, m.status, (m.error as { code?: string })?.code])).toEqual([
      ['nobody-here', 'rejected', 'unknown_tenant'],
      ['paused', 'rejected', 'tenant_suspended'],
      // Started; a consolidation pass may already have seen it finish.
      ['solo', expect.stringMatching(/^(running|completed)$/), undefined],
    ])
    const run = await orchestrator.wait(runId)
    expect(run.status).toBe('partial')
    expect(run.summary).toMatchObject({ total: 3, completed: 1, failed: 0, rejected: 2 })
    expect(run.summary?.tenants.solo?.output).toEqual({
      report: { headline: 'search: 6 points', tenant: 'solo' },
    })
    expect(run.summary?.tenants.paused).toEqual({
      status: 'rejected',
      workflowId: null,
      error: { name: 'TenantError', message: 'tenant "paused" is suspended', code: 'tenant_suspended' },
    })
    expect((await workflowsOf(runId)).map((w) => w.tenant)).toEqual(['solo'])
  })

  it('finishes a start that crashed half-way without a second workflow for any member', async () => {
    const { orchestrator, engine, owner, workflowsOf } = ctx
    // The state start() leaves if its process dies after committing the run: every member still
    // 'starting', one of them with its workflow already started (the crash came before recording it),
    // and (here) no consolidation job either.
    const runId = crypto.randomUUID()
    await owner.query(
      `INSERT INTO equilateral.enterprise_runs (id, workflow_type) VALUES ($1, 'team-report')`,
      [runId],
    )
    for (const t of ['payments', 'search', 'data']) {
      await owner.query(
        `INSERT INTO equilateral.enterprise_run_tenants (run_id, tenant_id, input) VALUES ($1, $2, $3)`,
        [runId, t, JSON.stringify(input(t))],
      )
    }
    const search = await engine.tenant('search')
    const before = await search.startWorkflow('team-report', input('search'), {
      idempotencyKey: `enterprise:${runId}`,
      correlationId: runId,
    })

    // Passes racing each other (as several processes' jobs may) still start each member once.
    const passes = await Promise.all([1, 2, 3].map(() => orchestrator.checkRun(runId)))
    for (const p of passes) expect(p.members.every((m) => m.status !== 'starting')).toBe(true)
    expect(passes[0]?.members.find((m) => m.tenantId === 'search')?.workflowId).toBe(before.id)

    const run = await eventually(async () => {
      const r = await orchestrator.checkRun(runId)
      return r.status === 'running' ? undefined : r
    })
    expect(run.status).toBe('completed')
    expect(run.summary?.completed).toBe(3)
    expect(run.summary?.tenants.search?.workflowId).toBe(before.id)
    const workflows = await workflowsOf(runId)
    expect(workflows.map((w) => w.tenant)).toEqual(['data', 'payments', 'search'])
    expect(workflows.map((w) => w.id).sort()).toEqual(run.members.map((m) => m.workflowId).sort())
  })

  it('picks up a run with no consolidation job when a worker starts, through the queue alone', async () => {
    const { engine, owner, workflowsOf } = ctx
    const runId = crypto.randomUUID()
    await owner.query(
      `INSERT INTO equilateral.enterprise_runs (id, workflow_type) VALUES ($1, 'team-report')`,
      [runId],
    )
    await owner.query(
      `INSERT INTO equilateral.enterprise_run_tenants (run_id, tenant_id, input) VALUES ($1, 'infra', $2)`,
      [runId, JSON.stringify(input('infra'))],
    )
    const second = new EnterpriseOrchestrator(engine, { checkIntervalMs: 150 })
    await second.work()
    try {
      const run = await second.wait(runId, { timeoutMs: 30_000 })
      expect(run.status).toBe('completed')
      expect(run.summary?.tenants.infra?.output).toEqual({
        report: { headline: 'infra: 15 points', tenant: 'infra' },
      })
      expect(await workflowsOf(runId)).toHaveLength(1)
    } finally {
      await second.stop()
    }
  })

  it('starting again with the same run id returns the run and starts nobody twice', async () => {
    const { orchestrator, workflowsOf } = ctx
    const runId = crypto.randomUUID()
    const members = ['payments', 'mobile'].map((t) => ({ tenantId: t, input: input(t) }))
    const first = await orchestrator.start('team-report', members, { runId })
    // In any order and any case of the id.
    const second = await orchestrator.start('team-report', [...members].reverse(), {
      runId: runId.toUpperCase(),
    })
    expect([first, second]).toEqual([
      { runId, created: true },
      { runId, created: false },
    ])
    // Same id, other members or inputs: refused, and the run is untouched.
    await expect(
      orchestrator.start('team-report', [{ tenantId: 'payments', input: input('payments') }], { runId }),
    ).rejects.toBeInstanceOf(EnterpriseRunConflictError)
    await expect(
      orchestrator.start(
        'team-report',
        members.map((m) => ({ ...m, input: { ...m.input, size: 99 } })),
        { runId },
      ),
    ).rejects.toMatchObject({ code: 'idempotency_conflict' })
    const run = await orchestrator.wait(runId)
    expect(run.summary?.completed).toBe(2)
    expect(await workflowsOf(runId)).toHaveLength(2)
  })

  it('refuses bad input with a typed error and writes nothing', async () => {
    const { orchestrator, engine } = ctx
    const counts = async () => {
      const { rows } = await engine.pool.query(
        `SELECT (SELECT count(*) FROM equilateral.enterprise_runs) AS runs,
                (SELECT count(*) FROM equilateral.enterprise_run_tenants) AS members`,
      )
      return rows[0]
    }
    const before = await counts()
    const ok = { tenantId: 'solo', input: input('search') }
    await expect(orchestrator.start('no-such-type', [ok])).rejects.toBeInstanceOf(UnknownWorkflowTypeError)
    await expect(orchestrator.start('team-report', [])).rejects.toMatchObject({
      code: 'invalid_input',
      path: '$.members',
    })
    await expect(
      orchestrator.start('team-report', [ok, { ...ok, input: input('data') }]),
    ).rejects.toMatchObject({ code: 'invalid_input', path: '$.members[1].tenantId' })
    await expect(
      orchestrator.start('team-report', [{ tenantId: 'bad id!', input: null }]),
    ).rejects.toBeInstanceOf(TenantError)
    await expect(
      orchestrator.start('team-report', [ok, { tenantId: 'data', input: { team: 'nul \u0000' } }]),
    ).rejects.toMatchObject({ code: 'invalid_input', path: '$.members[1].input.team' })
    await expect(orchestrator.start('team-report', [ok], { runId: 'not-a-uuid' })).rejects.toBeInstanceOf(
      InvalidInputError,
    )
    expect(await counts()).toEqual(before)
    await expect(orchestrator.get('not-a-uuid')).rejects.toBeInstanceOf(NotFoundError)
    await expect(orchestrator.get(crypto.randomUUID())).rejects.toBeInstanceOf(NotFoundError)
  })
})
