// Analytics: workflow performance per type and agent performance per agent over a window. A known
// data set is written directly as the owner (two tenants with the same workflow types and agents, a
// suspended one, an idle one, and rows just outside the window on both sides), and every figure is
// checked against a computation written out by hand below, in both isolation modes.
//
// Percentiles are PostgreSQL's percentile_cont: for n sorted values v[0..n-1], percentile p sits at
// position (n - 1) * p and interpolates linearly between the values on either side.
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { resolveWindow } from '../../src/analytics.ts'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ctx.input })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })

// The window: [T0, T0 + 1 h). Offsets below are seconds from T0.
const T0 = new Date('2025-06-01T00:00:00Z')
const UNTIL = 3600
const window = { since: T0, until: new Date(T0.getTime() + UNTIL * 1000) }

interface Wf {
  type: string
  status: 'running' | 'completed' | 'failed' | 'cancelled'
  created: number
  /** Seconds from created_at to completed_at; null while running. */
  duration: number | null
}

/** Usage an attempt recorded (agent_usage), at seconds from T0. */
interface UsageRow {
  agent: string
  dimension: string
  amount: number
  at: number
}

interface Task {
  agent: string
  status: 'pending' | 'queued' | 'running' | 'completed' | 'failed' | 'skipped' | 'cancelled'
  attempt: number
  queued: number | null
  started: number | null
  completed: number | null
}

// Tenant acme.
const ACME_WORKFLOWS: Wf[] = [
  { type: 'build', status: 'completed', created: 0, duration: 10 }, // exactly at since: in
  { type: 'build', status: 'completed', created: 60, duration: 20 },
  { type: 'build', status: 'failed', created: 120, duration: 30 },
  { type: 'build', status: 'cancelled', created: 180, duration: 40 },
  { type: 'build', status: 'running', created: 240, duration: null },
  { type: 'build', status: 'completed', created: -1, duration: 5 }, // before since: out
  { type: 'build', status: 'completed', created: UNTIL, duration: 5 }, // exactly at until: out
  { type: 'deploy', status: 'completed', created: 600, duration: 100 },
  { type: 'audit', status: 'running', created: 900, duration: null },
]
const ACME_TASKS: Task[] = [
  { agent: 'builder', status: 'completed', attempt: 1, queued: 0, started: 2, completed: 10 },
  { agent: 'builder', status: 'completed', attempt: 3, queued: 60, started: 64, completed: 76 },
  { agent: 'builder', status: 'failed', attempt: 3, queued: 130, started: 131, completed: 150 },
  { agent: 'builder', status: 'skipped', attempt: 0, queued: null, started: null, completed: 150 }, // not agent work
  { agent: 'builder', status: 'completed', attempt: 1, queued: -60, started: -50, completed: -5 }, // before since
  { agent: 'builder', status: 'completed', attempt: 1, queued: 3500, started: 3550, completed: UNTIL }, // at until
  { agent: 'builder', status: 'running', attempt: 2, queued: 200, started: 210, completed: null },
  { agent: 'deployer', status: 'completed', attempt: 1, queued: 600, started: 601, completed: 700 },
  { agent: 'reviewer', status: 'cancelled', attempt: 1, queued: 800, started: null, completed: 810 },
]
// By hand, acme:
//  build: 5 started in the window (created 0, 60, 120, 180, 240): 2 completed, 1 failed, 1 cancelled,
//    1 running; durations of the finished ones 10, 20, 30, 40 -> avg 100 / 4 = 25;
//    p50 at position 3 * 0.50 = 1.5  -> 20 + 0.5  * (30 - 20) = 25
//    p95 at position 3 * 0.95 = 2.85 -> 30 + 0.85 * (40 - 30) = 38.5
//    p99 at position 3 * 0.99 = 2.97 -> 30 + 0.97 * (40 - 30) = 39.7
//  deploy: one, 100 s: every figure 100.  audit: one running, no duration: nulls.
//  builder: completed 2 (the ones ending at 10 and 76), failed 1 (ending at 150); retried
//    (attempt - 1) 0 + 2 + 2 = 4; run (completed only) 10 - 2 = 8 and 76 - 64 = 12 -> avg 10, max 12;
//    queue wait 2 - 0 = 2 and 64 - 60 = 4 -> avg 3.
//  deployer: completed 1, run 700 - 601 = 99, wait 601 - 600 = 1, retried 0.
//  reviewer: only a cancelled task: no row.
const ACME_USAGE: UsageRow[] = [
  { agent: 'builder', dimension: 'tokens', amount: 100, at: 10 },
  { agent: 'builder', dimension: 'tokens', amount: 50, at: 3000 },
  { agent: 'builder', dimension: 'tokens', amount: 7, at: -1 }, // before since: out
  { agent: 'builder', dimension: 'tokens', amount: 9, at: UNTIL }, // at until: out
  { agent: 'deployer', dimension: 'costMicros', amount: 3, at: 700 },
]
const ACME = {
  workflows: [
    {
      type: 'audit',
      executions: 1,
      completed: 0,
      failed: 0,
      cancelled: 0,
      running: 1,
      avgSeconds: null,
      p50Seconds: null,
      p95Seconds: null,
      p99Seconds: null,
    },
    {
      type: 'build',
      executions: 5,
      completed: 2,
      failed: 1,
      cancelled: 1,
      running: 1,
      avgSeconds: 25,
      p50Seconds: 25,
      p95Seconds: 38.5,
      p99Seconds: 39.7,
    },
    {
      type: 'deploy',
      executions: 1,
      completed: 1,
      failed: 0,
      cancelled: 0,
      running: 0,
      avgSeconds: 100,
      p50Seconds: 100,
      p95Seconds: 100,
      p99Seconds: 100,
    },
  ],
  agents: [
    {
      agent: 'builder',
      completed: 2,
      failed: 1,
      retried: 4,
      avgSeconds: 10,
      maxSeconds: 12,
      avgQueueWaitSeconds: 3,
    },
    {
      agent: 'deployer',
      completed: 1,
      failed: 0,
      retried: 0,
      avgSeconds: 99,
      maxSeconds: 99,
      avgQueueWaitSeconds: 1,
    },
  ],
  // Usage recorded in the window: 100 + 50 tokens (the 7 before since and the 9 at until are out).
  usage: [
    { agent: 'builder', dimension: 'tokens', amount: 150 },
    { agent: 'deployer', dimension: 'costMicros', amount: 3 },
  ],
}

// Tenant globex: the same type and agent names, other numbers.
const GLOBEX_WORKFLOWS: Wf[] = [
  { type: 'build', status: 'completed', created: 30, duration: 50 },
  { type: 'build', status: 'completed', created: 90, duration: 70 },
  { type: 'build', status: 'running', created: 150, duration: null },
  { type: 'etl', status: 'failed', created: 400, duration: 5 },
  { type: 'build', status: 'completed', created: UNTIL + 100, duration: 1 }, // after until
]
const GLOBEX_TASKS: Task[] = [
  { agent: 'builder', status: 'completed', attempt: 2, queued: 30, started: 36, completed: 66 },
  { agent: 'builder', status: 'failed', attempt: 1, queued: 400, started: 401, completed: 405 },
  { agent: 'loader', status: 'completed', attempt: 1, queued: 100, started: 100, completed: 103 },
  { agent: 'loader', status: 'completed', attempt: 1, queued: 4000, started: 4001, completed: 4002 }, // after
]
// By hand, globex:
//  build: 3 started: 2 completed, 1 running; durations 50, 70 -> avg 60;
//    p50 at 1 * 0.50 -> 50 + 0.5 * 20 = 60; p95 at 0.95 -> 50 + 0.95 * 20 = 69; p99 -> 50 + 0.99 * 20 = 69.8
//  etl: one failed after 5 s.
//  builder: completed 1, failed 1, retried 1 + 0 = 1, run 66 - 36 = 30, wait 36 - 30 = 6.
//  loader: completed 1, run 3, wait 0.
const GLOBEX_USAGE: UsageRow[] = [{ agent: 'builder', dimension: 'tokens', amount: 25, at: 40 }]
const GLOBEX = {
  workflows: [
    {
      type: 'build',
      executions: 3,
      completed: 2,
      failed: 0,
      cancelled: 0,
      running: 1,
      avgSeconds: 60,
      p50Seconds: 60,
      p95Seconds: 69,
      p99Seconds: 69.8,
    },
    {
      type: 'etl',
      executions: 1,
      completed: 0,
      failed: 1,
      cancelled: 0,
      running: 0,
      avgSeconds: 5,
      p50Seconds: 5,
      p95Seconds: 5,
      p99Seconds: 5,
    },
  ],
  agents: [
    {
      agent: 'builder',
      completed: 1,
      failed: 1,
      retried: 1,
      avgSeconds: 30,
      maxSeconds: 30,
      avgQueueWaitSeconds: 6,
    },
    {
      agent: 'loader',
      completed: 1,
      failed: 0,
      retried: 0,
      avgSeconds: 3,
      maxSeconds: 3,
      avgQueueWaitSeconds: 0,
    },
  ],
  usage: [{ agent: 'builder', dimension: 'tokens', amount: 25 }],
}

// Tenant paused (suspended: its history still belongs in the admin view): one etl workflow, 15 s.
const PAUSED_WORKFLOWS: Wf[] = [{ type: 'etl', status: 'completed', created: 1000, duration: 15 }]
const PAUSED = {
  workflows: [
    {
      type: 'etl',
      executions: 1,
      completed: 1,
      failed: 0,
      cancelled: 0,
      running: 0,
      avgSeconds: 15,
      p50Seconds: 15,
      p95Seconds: 15,
      p99Seconds: 15,
    },
  ],
  agents: [],
  usage: [],
}

// By hand, all tenants (idle has nothing and gets no section):
//  audit:  acme's only.
//  build:  executions 5 + 3 = 8, completed 2 + 2 = 4, failed 1, cancelled 1, running 1 + 1 = 2;
//          avg over the six finished: (10 + 20 + 30 + 40 + 50 + 70) / 6 = 220 / 6 = 36.667.
//  deploy: acme's only.
//  etl:    globex's failed one (5 s) and paused's completed one (15 s): executions 2, avg 10.
//  builder: completed 2 + 1 = 3, failed 1 + 1 = 2, retried 4 + 1 = 5;
//          run avg (8 + 12 + 30) / 3 = 16.667, max 30; wait avg (2 + 4 + 6) / 3 = 4.
//  deployer, loader: their one tenant's figures.
const TOTALS = {
  workflows: [
    { type: 'audit', executions: 1, completed: 0, failed: 0, cancelled: 0, running: 1, avgSeconds: null },
    { type: 'build', executions: 8, completed: 4, failed: 1, cancelled: 1, running: 2, avgSeconds: 36.667 },
    { type: 'deploy', executions: 1, completed: 1, failed: 0, cancelled: 0, running: 0, avgSeconds: 100 },
    { type: 'etl', executions: 2, completed: 1, failed: 1, cancelled: 0, running: 0, avgSeconds: 10 },
  ],
  agents: [
    {
      agent: 'builder',
      completed: 3,
      failed: 2,
      retried: 5,
      avgSeconds: 16.667,
      maxSeconds: 30,
      avgQueueWaitSeconds: 4,
    },
    ACME.agents[1],
    GLOBEX.agents[1],
  ],
  usage: [
    { agent: 'builder', dimension: 'tokens', amount: 175 },
    { agent: 'deployer', dimension: 'costMicros', amount: 3 },
  ],
}

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('analytics, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [echo],
      workflows: [single],
      config: { isolationMode: mode },
    })
    for (const id of ['acme', 'globex', 'idle', 'paused']) await engine.createTenant({ id })
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    afterAll(() => owner.end())
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf = new Map<string, string>(rows.map((r) => [r.id, r.schema_name ?? 'equilateral']))

    /** Writes the rows as the owner (which row-level security does not bind: it is a superuser here). */
    async function seed(tenant: string, workflows: Wf[], tasks: Task[], base = T0, usage: UsageRow[] = []) {
      const schema = pg.escapeIdentifier(schemaOf.get(tenant) as string)
      const ts = (s: number | null) => (s === null ? null : new Date(base.getTime() + s * 1000))
      const ids: string[] = []
      for (const w of workflows) {
        const id = randomUUID()
        ids.push(id)
        await owner.query(
          `INSERT INTO ${schema}.workflows (tenant_id, id, type, version, status, correlation_id, tasks_remaining,
             created_at, updated_at, completed_at)
           VALUES ($1, $2, $3, 1, $4, $7, 0, $5, $5, $6)`,
          [
            tenant,
            id,
            w.type,
            w.status,
            ts(w.created),
            w.duration === null ? null : ts(w.created + w.duration),
            `corr-${id}`,
          ],
        )
      }
      // Tasks hang off the tenant's first workflow (nothing here reads the link).
      const workflowId = ids[0] ?? randomUUID()
      for (const [i, t] of tasks.entries()) {
        await owner.query(
          `INSERT INTO ${schema}.agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue,
             status, deps_remaining, attempt, failures, max_attempts, backoff_ms, backoff_max_ms, timeout_ms,
             created_at, queued_at, started_at, completed_at)
           VALUES ($1, $2, $3, $4, $5, 'task', $5, $6, 0, $7, 0, 3, 1000, 60000, 300000, $8, $9, $10, $11)`,
          [
            tenant,
            randomUUID(),
            workflowId,
            `task-${i}`,
            t.agent,
            t.status,
            t.attempt,
            ts(t.queued ?? t.completed ?? 0),
            ts(t.queued),
            ts(t.started),
            ts(t.completed),
          ],
        )
      }
      for (const u of usage) {
        await owner.query(
          `INSERT INTO ${schema}.agent_usage (tenant_id, task_id, attempt, dimension, workflow_id, agent_id, amount,
             outcome, recorded_at)
           VALUES ($1, $2, 1, $3, $4, $5, $6, 'completed', $7)`,
          [tenant, randomUUID(), u.dimension, workflowId, u.agent, u.amount, ts(u.at)],
        )
      }
    }

    await seed('acme', ACME_WORKFLOWS, ACME_TASKS, T0, ACME_USAGE)
    await seed('globex', GLOBEX_WORKFLOWS, GLOBEX_TASKS, T0, GLOBEX_USAGE)
    await seed('paused', PAUSED_WORKFLOWS, [])
    await engine.suspendTenant('paused')
    return { engine, owner, schemaOf, seed }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  it("reports a tenant's workflows and agents, equal to the hand computation", async () => {
    const acme = await (await ctx.engine.tenant('acme')).stats(window)
    expect(acme).toEqual({ window, ...ACME })
    const globex = await (await ctx.engine.tenant('globex')).stats(window)
    expect(globex).toEqual({ window, ...GLOBEX })
  })

  it("never counts another tenant's rows", async () => {
    // acme's figures above are exact, so globex's rows (same types, same agents) were not in them;
    // and a tenant with no rows sees nothing at all although the others have plenty.
    expect(await (await ctx.engine.tenant('idle')).stats(window)).toEqual({
      window,
      workflows: [],
      agents: [],
      usage: [],
    })
  })

  it('serialises to the stable JSON shape', async () => {
    const json = JSON.parse(JSON.stringify(await (await ctx.engine.tenant('acme')).stats(window)))
    expect(Object.keys(json)).toEqual(['window', 'workflows', 'agents', 'usage'])
    expect(json.window).toEqual({ since: '2025-06-01T00:00:00.000Z', until: '2025-06-01T01:00:00.000Z' })
    expect(Object.keys(json.workflows[0])).toEqual([
      'type',
      'executions',
      'completed',
      'failed',
      'cancelled',
      'running',
      'avgSeconds',
      'p50Seconds',
      'p95Seconds',
      'p99Seconds',
    ])
    expect(Object.keys(json.agents[0])).toEqual([
      'agent',
      'completed',
      'failed',
      'retried',
      'avgSeconds',
      'maxSeconds',
      'avgQueueWaitSeconds',
    ])
    expect(Object.keys(json.usage[0])).toEqual(['agent', 'dimension', 'amount'])
  })

  it('gives the admin a section per tenant with data, suspended ones included, and additive totals', async () => {
    const report = await ctx.engine.stats(window)
    expect(report).toEqual({
      window,
      tenants: [
        { tenantId: 'acme', ...ACME },
        { tenantId: 'globex', ...GLOBEX },
        { tenantId: 'paused', ...PAUSED },
      ],
      totals: TOTALS,
    })
    // Totals carry no percentiles: those of different tenants cannot be combined.
    for (const w of report.totals.workflows) expect(Object.keys(w)).not.toContain('p50Seconds')
  })

  it('defaults to the last 24 hours', async () => {
    const now = new Date()
    const hoursAgo = (h: number) => new Date(now.getTime() - h * 3600_000)
    await ctx.seed(
      'acme',
      [
        { type: 'recent', status: 'completed', created: 0, duration: 2 },
        { type: 'stale', status: 'completed', created: -2 * 3600, duration: 2 }, // 25 h ago
      ],
      [{ agent: 'recent-agent', status: 'completed', attempt: 1, queued: 0, started: 1, completed: 3 }],
      hoursAgo(23),
    )
    const before = Date.now()
    const report = await (await ctx.engine.tenant('acme')).stats()
    expect(report.window.until.getTime()).toBeGreaterThanOrEqual(before)
    expect(report.window.until.getTime()).toBeLessThanOrEqual(Date.now())
    expect(report.window.until.getTime() - report.window.since.getTime()).toBe(24 * 3600_000)
    expect(report.workflows.map((w) => [w.type, w.executions, w.avgSeconds])).toEqual([['recent', 1, 2]])
    expect(report.agents.map((a) => [a.agent, a.completed, a.avgSeconds, a.avgQueueWaitSeconds])).toEqual([
      ['recent-agent', 1, 2, 1],
    ])
    // `since` alone: until is now; `until` alone: since is 24 hours before it.
    const sinceOnly = await (await ctx.engine.tenant('acme')).stats({ since: hoursAgo(48) })
    expect(sinceOnly.workflows.map((w) => w.type)).toEqual(['recent', 'stale'])
    const untilOnly = await (await ctx.engine.tenant('acme')).stats({ until: hoursAgo(23.5) })
    expect(untilOnly.workflows.map((w) => w.type)).toEqual(['stale'])
  })

  it("has the analytics index in the tenants' schema, in place of the one it replaced", async () => {
    const { rows } = await ctx.owner.query(
      `SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'agent_coordination'
         AND indexname IN ('agent_coordination_finished_idx', 'agent_coordination_completed_idx') ORDER BY 1`,
      [ctx.schemaOf.get('acme')],
    )
    expect(rows.map((r) => r.indexname)).toEqual(['agent_coordination_finished_idx'])
  })

  it('refuses a window that is not one', async () => {
    const acme = await ctx.engine.tenant('acme')
    expect(await errorCode(acme.stats({ since: window.until, until: window.since }))).toBe('invalid_input')
    expect(await errorCode(acme.stats({ since: window.since, until: window.since }))).toBe('invalid_input')
    expect(await errorCode(ctx.engine.stats({ since: new Date('not a date') }))).toBe('invalid_input')
  })
})

describe('resolveWindow', () => {
  it('fills in the defaults from the clock it is given', () => {
    const now = new Date('2025-06-02T12:00:00Z')
    expect(resolveWindow({}, now)).toEqual({ since: new Date('2025-06-01T12:00:00Z'), until: now })
    expect(resolveWindow({ until: T0 }, now)).toEqual({ since: new Date('2025-05-31T00:00:00Z'), until: T0 })
    expect(resolveWindow({ since: T0 }, now)).toEqual({ since: T0, until: now })
  })
})
