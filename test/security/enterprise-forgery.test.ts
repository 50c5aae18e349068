// V1 of issue 20, reproduced as an attacker with the application login and SQL (no keys) would:
// forged enterprise rows and a forged `eq/enterprise` job must not turn consolidation into a
// decryption oracle (tenant-b's result written in plaintext where the app role reads it), nor start
// a workflow in tenant-b with the attacker's input. A run started through the API still works, and
// its summary holds each tenant's output encrypted, not in plaintext.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow, EnterpriseOrchestrator, KeyRing } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

const CANARY = 'b-canary-7f3c1e'
const ATTACKER = 'attacker-input-91d2'

const answer = defineAgent<{ question: string }>({
  id: 'answer',
  handler: async (ctx) => ({ answer: `${CANARY} for ${ctx.tenantId}`, question: ctx.data.question }),
})
const ask = defineWorkflow<{ question: string }>({
  name: 'ask',
  tasks: [{ key: 'answer', agent: answer, data: (input) => input }],
})

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('enterprise forgery, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [answer],
      workflows: [ask],
      config: { isolationMode: mode, encryption: KeyRing.of({ k1: KeyRing.generateKey() }) },
    })
    await engine.createTenant({ id: 'tenant-a' })
    await engine.createTenant({ id: 'tenant-b' })
    await engine.startWorker({ concurrency: 4 })
    const orchestrator = new EnterpriseOrchestrator(engine, { checkIntervalMs: 100 })
    await orchestrator.work()
    const owner = new pg.Client({ connectionString: db.url })
    const app = new pg.Client({ connectionString: db.appUrl })
    await owner.connect()
    await app.connect()
    afterAll(async () => {
      await orchestrator.stop()
      await app.end()
      await owner.end()
    })
    const b = await engine.tenant('tenant-b')
    const { id: victim } = await b.startWorkflow('ask', { question: 'what is secret?' })
    expect((await settled(engine, 'tenant-b', victim)).output).toEqual({
      answer: { answer: `${CANARY} for tenant-b`, question: 'what is secret?' },
    })
    return { engine, db, orchestrator, owner, app, victim }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  /** Rows anywhere in the database (every table of every schema) whose text holds `needle`. */
  async function rowsHolding(needle: string): Promise<string[]> {
    const { rows: tables } = await ctx.owner.query(
      `SELECT table_schema, table_name FROM information_schema.tables
       WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`,
    )
    const found: string[] = []
    for (const t of tables) {
      const name = `${pg.escapeIdentifier(t.table_schema)}.${pg.escapeIdentifier(t.table_name)}`
      const { rows } = await ctx.owner.query(
        `SELECT count(*)::int AS n FROM ${name} x WHERE strpos(x::text, $1) > 0`,
        [needle],
      )
      if (rows[0].n > 0) found.push(`${name}: ${rows[0].n}`)
    }
    return found
  }

  /** Waits until the job has been worked (completed or failed for good). */
  async function worked(jobId: string) {
    await eventually(
      async () => {
        const { rows } = await ctx.owner.query(`SELECT state FROM pgboss.job WHERE id = $1`, [jobId])
        return rows[0]?.state === 'completed' || rows[0]?.state === 'failed' ? true : undefined
      },
      20_000,
      25,
      `forged job ${jobId} worked`,
    )
  }

  /** Workflows in tenant-b correlated with a run (as the owner, behind the engine's back). */
  async function workflowsOfRun(runId: string): Promise<number> {
    const { rows } = await ctx.owner.query(
      `SELECT schema_name FROM equilateral.tenants WHERE id = 'tenant-b'`,
    )
    const schema = pg.escapeIdentifier(rows[0].schema_name ?? 'equilateral')
    const found = await ctx.owner.query(
      `SELECT count(*)::int AS n FROM ${schema}.workflows WHERE correlation_id = $1`,
      [runId],
    )
    return found.rows[0].n
  }

  it("holds tenant-b's result nowhere in plaintext before the attack", async () => {
    expect(await rowsHolding(CANARY)).toEqual([])
  })

  it('ignores forged run rows and a forged eq/enterprise job: no summary, no plaintext of tenant-b', async () => {
    const { app } = ctx
    // The attack of the issue, statement by statement, as the app login.
    const { rows } = await app.query(
      `SELECT data->>'w' AS victim_wf FROM pgboss.job WHERE data->>'t'='tenant-b' LIMIT 1`,
    )
    const victimWf = rows[0].victim_wf as string
    expect(victimWf).toBe(ctx.victim)
    const runId = '22222222-2222-4222-8222-222222222222'
    await app.query(
      `INSERT INTO equilateral.enterprise_runs (id, workflow_type) VALUES ('22222222-2222-4222-8222-222222222222','x')`,
    )
    await app.query(
      `INSERT INTO equilateral.enterprise_run_tenants (run_id, tenant_id, workflow_id, status)
         VALUES ('22222222-2222-4222-8222-222222222222','tenant-b',$1,'running')`,
      [victimWf],
    )
    const job = await app.query(
      `INSERT INTO pgboss.job (name, data) VALUES ('eq/enterprise','{"runId":"22222222-2222-4222-8222-222222222222"}') RETURNING id`,
    )
    await worked(job.rows[0].id)

    const run = await app.query(`SELECT status, summary FROM equilateral.enterprise_runs WHERE id = $1`, [
      runId,
    ])
    expect(run.rows).toEqual([{ status: 'running', summary: null }])
    // Same with the workflow type right: the signature, not the type, is what is missing.
    await app.query(`UPDATE equilateral.enterprise_runs SET workflow_type = 'ask' WHERE id = $1`, [runId])
    const again = await app.query(
      `INSERT INTO pgboss.job (name, data) VALUES ('eq/enterprise', $1) RETURNING id`,
      [JSON.stringify({ runId })],
    )
    await worked(again.rows[0].id)
    const after = await app.query(`SELECT status, summary FROM equilateral.enterprise_runs WHERE id = $1`, [
      runId,
    ])
    expect(after.rows).toEqual([{ status: 'running', summary: null }])
    expect(await rowsHolding(CANARY)).toEqual([])
  })

  it("does not start a workflow in tenant-b with the attacker's input from a forged 'starting' member", async () => {
    const { app } = ctx
    const runId = '33333333-3333-4333-8333-333333333333'
    await app.query(`INSERT INTO equilateral.enterprise_runs (id, workflow_type) VALUES ($1, 'ask')`, [runId])
    await app.query(
      `INSERT INTO equilateral.enterprise_run_tenants (run_id, tenant_id, status, input)
         VALUES ($1, 'tenant-b', 'starting', $2)`,
      [runId, JSON.stringify({ question: ATTACKER })],
    )
    const job = await app.query(
      `INSERT INTO pgboss.job (name, data) VALUES ('eq/enterprise', $1) RETURNING id`,
      [JSON.stringify({ runId })],
    )
    await worked(job.rows[0].id)
    expect(await workflowsOfRun(runId)).toBe(0)
    const member = await app.query(
      `SELECT status, workflow_id FROM equilateral.enterprise_run_tenants WHERE run_id = $1`,
      [runId],
    )
    expect(member.rows).toEqual([{ status: 'starting', workflow_id: null }])
  })

  it('does not let a forged member ride along a run started through the API, or repoint one at another workflow', async () => {
    const { orchestrator, app, engine } = ctx
    // Passes run here, by hand, so that the attacker's writes land before consolidation.
    await orchestrator.stop()
    try {
      // A real run, on one tenant; the attacker adds tenant-b to it before it is consolidated.
      const started = await orchestrator.start('ask', [{ tenantId: 'tenant-a', input: { question: 'a?' } }])
      await app.query(
        `INSERT INTO equilateral.enterprise_run_tenants (run_id, tenant_id, workflow_id, status)
       VALUES ($1, 'tenant-b', $2, 'running') ON CONFLICT DO NOTHING`,
        [started.runId, ctx.victim],
      )
      await expect(orchestrator.checkRun(started.runId)).rejects.toMatchObject({ code: 'invalid_signature' })
      expect((await orchestrator.get(started.runId)).summary).toBeNull()

      // A real run over both tenants: the attacker repoints tenant-b's member at the victim workflow.
      const real = await orchestrator.start('ask', [
        { tenantId: 'tenant-a', input: { question: 'a?' } },
        { tenantId: 'tenant-b', input: { question: 'b?' } },
      ])
      const b = await engine.tenant('tenant-b')
      const own = await eventually(async () => {
        const { rows } = await app.query(
          `SELECT workflow_id FROM equilateral.enterprise_run_tenants WHERE run_id = $1 AND tenant_id = 'tenant-b'`,
          [real.runId],
        )
        return rows[0]?.workflow_id ?? undefined
      })
      await settled(engine, 'tenant-b', own)
      await app.query(
        `UPDATE equilateral.enterprise_run_tenants SET workflow_id = $2, status = 'completed'
       WHERE run_id = $1 AND tenant_id = 'tenant-b'`,
        [real.runId, ctx.victim],
      )
      const run = await eventually(async () => {
        const r = await orchestrator.checkRun(real.runId)
        return r.status === 'running' ? undefined : r
      })
      expect(run.summary?.tenants['tenant-b']?.output).toBeUndefined()
      expect(run.summary?.tenants['tenant-b']?.error).toMatchObject({ code: 'invalid_signature' })
      expect(run.summary?.tenants['tenant-a']?.output).toEqual({
        answer: { answer: `${CANARY} for tenant-a`, question: 'a?' },
      })
      expect((await b.getWorkflow(ctx.victim)).status).toBe('completed')
      expect(await rowsHolding(CANARY)).toEqual([])
    } finally {
      await orchestrator.work()
    }
  })

  it('consolidates a run started through the API, with each output encrypted in the summary', async () => {
    const { orchestrator, owner } = ctx
    const { runId } = await orchestrator.start('ask', [
      { tenantId: 'tenant-a', input: { question: 'a?' } },
      { tenantId: 'tenant-b', input: { question: 'b?' } },
    ])
    const run = await orchestrator.wait(runId, { timeoutMs: 20_000 })
    expect(run.status).toBe('completed')
    expect(run.summary?.tenants['tenant-b']?.output).toEqual({
      answer: { answer: `${CANARY} for tenant-b`, question: 'b?' },
    })
    const { rows } = await owner.query(`SELECT summary FROM equilateral.enterprise_runs WHERE id = $1`, [
      runId,
    ])
    expect(rows[0].summary.tenants['tenant-b'].output).toMatchObject({ $eq: 1, k: 'k1' })
    expect(await rowsHolding(CANARY)).toEqual([])
  })
})
