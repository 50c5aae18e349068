// GDPR erasure: of one data subject (the workflows started with its subject key) or of a whole
// tenant. Afterwards raw SQL finds no trace of the personal data anywhere the engine put it (inputs,
// task data, results, errors, audit action_data, dead-lettered jobs, enterprise runs), other
// subjects and tenants are untouched, a `deletion` compliance event records it, and the audit chain
// still verifies. Only the owner can do it.
import { createHash } from 'node:crypto'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import {
  defineAgent,
  defineWorkflow,
  EnterpriseOrchestrator,
  InvalidInputError,
  PermanentError,
} from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const ALICE = 'ALICE-7f3a-personal'
const BOB = 'BOB-91c2-personal'
const GONE = 'GONE-55aa-personal'
const INSUFFICIENT_PRIVILEGE = '42501'

type Note = { note: string }
const echo = defineAgent<Note>({ id: 'echo', handler: async (ctx) => ({ echoed: ctx.data.note }) })
const leaky = defineAgent<Note>({
  id: 'leaky',
  handler: async (ctx) => {
    throw new PermanentError(`cannot handle ${ctx.data.note}`)
  },
})
const hold = defineAgent({
  id: 'hold',
  handler: (ctx) => new Promise<null>((resolve) => ctx.signal.addEventListener('abort', () => resolve(null))),
})
const profile = defineWorkflow<Note>({
  name: 'profile',
  tasks: [
    { key: 'a', agent: echo, data: (input) => input },
    { key: 'b', agent: echo, dependsOn: ['a'], data: (input) => input },
  ],
})
const broken = defineWorkflow<Note>({
  name: 'broken',
  tasks: [{ key: 'x', agent: leaky, data: (input) => input }],
})
const held = defineWorkflow<Note>({
  name: 'held',
  tasks: [{ key: 'h', agent: hold, data: (input) => input }],
})

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('erasure, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [echo, leaky, hold],
      workflows: [profile, broken, held],
      config: { isolationMode: mode },
    })
    await engine.createTenant({ id: 'acme', complianceProfile: { GDPR: { retentionDays: 30 } } })
    await engine.createTenant({ id: 'gone' })
    await engine.startWorker()
    const orchestrator = new EnterpriseOrchestrator(engine, { checkIntervalMs: 150 })
    await orchestrator.work()
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    afterAll(async () => {
      await orchestrator.stop()
      await owner.end()
    })
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf = Object.fromEntries(
      rows.map((r) => [r.id as string, pg.escapeIdentifier(r.schema_name ?? 'equilateral')]),
    )
    const schemas = [...new Set(Object.values(schemaOf))]
    /** Where a string appears, as the superuser sees it (no row-level security): place -> rows. */
    const traces = async (marker: string): Promise<Record<string, number>> => {
      const places: [string, string][] = [
        ['workflows', 'input'],
        ['workflows', 'error'],
        ['workflows', 'subject_key'],
        ['agent_coordination', 'data'],
        ['agent_coordination', 'result'],
        ['agent_coordination', 'error'],
        ['agent_audit_log', 'action_data'],
        ['compliance_events', 'event_data'],
      ]
      const found: Record<string, number> = {}
      const add = async (place: string, sql: string) => {
        const n = Number((await owner.query(sql, [`%${marker}%`])).rows[0].n)
        if (n > 0) found[place] = (found[place] ?? 0) + n
      }
      for (const s of schemas) {
        for (const [table, column] of places) {
          await add(
            `${table}.${column}`,
            `SELECT count(*) AS n FROM ${s}.${table} WHERE ${column}::text LIKE $1`,
          )
        }
      }
      await add('pgboss.job', `SELECT count(*) AS n FROM pgboss.job WHERE data::text LIKE $1`)
      await add(
        'enterprise_run_tenants',
        `SELECT count(*) AS n FROM equilateral.enterprise_run_tenants WHERE input::text LIKE $1 OR error::text LIKE $1`,
      )
      await add(
        'enterprise_runs',
        `SELECT count(*) AS n FROM equilateral.enterprise_runs WHERE summary::text LIKE $1`,
      )
      return found
    }
    const start = async (tenant: string, type: string, note: string, subjectKey?: string) => {
      const handle = await engine.tenant(tenant)
      return (await handle.startWorkflow(type, { note }, subjectKey ? { subjectKey } : {})).id
    }
    const sealAll = (tenant: string) =>
      eventually(async () => {
        await engine.sealAudit()
        const [report] = await engine.verifyAudit(tenant)
        return report!.unsealed === 0 ? report : undefined
      })
    const deletions = async (tenant: string) =>
      (
        await owner.query(
          `SELECT agent_id, compliance_type, event_data,
             round(extract(epoch FROM retention_until - created_at) / 86400)::int AS days
           FROM ${schemaOf[tenant]}.compliance_events WHERE tenant_id = $1 AND event_type = 'deletion' ORDER BY id`,
          [tenant],
        )
      ).rows
    return { engine, db, owner, orchestrator, schemaOf, traces, start, sealAll, deletions }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  it("erases one subject's personal data, leaves the others', records it, and the chain still verifies", async () => {
    const { engine, owner, schemaOf, traces, start, sealAll, deletions } = ctx
    const alice = [
      await start('acme', 'profile', ALICE, 'alice'),
      await start('acme', 'profile', `${ALICE} again`, 'alice'),
      await start('acme', 'broken', ALICE, 'alice'),
    ]
    const bob = [await start('acme', 'profile', BOB, 'bob'), await start('acme', 'broken', BOB, 'bob')]
    for (const id of [...alice, ...bob]) await settled(engine, 'acme', id)
    const running = await start('acme', 'held', ALICE, 'alice')
    const acme = await engine.tenant('acme')
    await eventually(async () =>
      (await acme.getWorkflow(running)).tasks[0]?.status === 'running' ? true : undefined,
    )
    expect((await sealAll('acme')).ok).toBe(true)

    const before = await traces(ALICE)
    // Everywhere the engine puts personal data, before the erasure.
    expect(Object.keys(before).sort()).toEqual(
      [
        'agent_audit_log.action_data',
        'agent_coordination.data',
        'agent_coordination.error',
        'agent_coordination.result',
        'pgboss.job',
        'workflows.error',
        'workflows.input',
      ].sort(),
    )
    const bobBefore = await traces(BOB)
    const statusEvents = async () =>
      Number(
        (
          await owner.query(
            `SELECT count(*) AS n FROM ${schemaOf.acme}.compliance_events WHERE tenant_id = 'acme' AND event_type LIKE 'task\\_%'`,
          )
        ).rows[0].n,
      )
    const eventsBefore = await statusEvents()

    const report = await engine.eraseSubject('acme', 'alice')

    expect(report).toMatchObject({
      tenantId: 'acme',
      scope: 'subject',
      cancelled: 1,
      workflows: 4,
      tasks: 6,
      events: 1,
    })
    expect(report.auditRows).toBeGreaterThan(10)
    expect(await traces(ALICE)).toEqual({})
    expect(await traces(BOB)).toEqual(bobBefore)
    const keys = await owner.query(
      `SELECT subject_key, count(*)::int AS n FROM ${schemaOf.acme}.workflows WHERE tenant_id = 'acme'
       GROUP BY 1 ORDER BY 1 NULLS LAST`,
    )
    expect(keys.rows).toEqual([
      { subject_key: 'bob', n: 2 },
      { subject_key: null, n: 4 },
    ])
    // The structure stays: statuses, ids; payloads are markers.
    const wf = await acme.getWorkflow(alice[0] as string)
    expect(wf.status).toBe('completed')
    expect(wf.input).toEqual({ $erased: true, erasure: report.erasureId })
    expect(wf.tasks.map((t) => t.result)).toEqual([
      { $erased: true, erasure: report.erasureId },
      { $erased: true, erasure: report.erasureId },
    ])
    expect((await acme.getWorkflow(running)).status).toBe('cancelled')
    expect(
      (await acme.history(alice[0] as string)).every((h) => JSON.stringify(h.data).includes('$redacted')),
    ).toBe(true)
    // Payload changes are not status changes: the only new status event is the cancellation's.
    expect(await statusEvents()).toBe(eventsBefore + 1)
    expect(await deletions('acme')).toEqual([
      {
        agent_id: 'eq/erasure',
        compliance_type: 'GDPR',
        days: 30,
        event_data: {
          erasure: report.erasureId,
          scope: 'subject',
          subject: sha256('alice'),
          cancelled: 1,
          workflows: 4,
          tasks: 6,
          auditRows: report.auditRows,
          enterpriseMembers: 0,
        },
      },
    ])
    // Redacted rows keep the chain verifiable, before and after the next seal.
    const [verified] = await engine.verifyAudit('acme')
    expect(verified).toMatchObject({ ok: true })
    expect(verified!.redacted).toBeGreaterThan(0)
    expect((await sealAll('acme')).ok).toBe(true)

    // Again: nothing left to erase, and the request is recorded all the same.
    const again = await engine.eraseSubject('acme', 'alice')
    expect(again).toMatchObject({ cancelled: 0, workflows: 0, tasks: 0, auditRows: 0, events: 1 })
    await expect(engine.eraseSubject('acme', '')).rejects.toBeInstanceOf(InvalidInputError)
    await expect(engine.eraseSubject('nobody', 'alice')).rejects.toMatchObject({ code: 'unknown_tenant' })
  })

  it("erases a whole tenant's personal data, enterprise runs and purged workflows' audit rows included", async () => {
    const { engine, owner, orchestrator, schemaOf, traces, start, sealAll, deletions } = ctx
    const ids = [await start('gone', 'profile', GONE), await start('gone', 'broken', GONE, 'someone')]
    for (const id of ids) await settled(engine, 'gone', id)
    const { runId } = await orchestrator.start('profile', [
      { tenantId: 'gone', input: { note: GONE } },
      { tenantId: 'acme', input: { note: 'acme-in-enterprise' } },
    ])
    expect((await orchestrator.wait(runId, { timeoutMs: 30_000 })).status).toBe('completed')
    // A workflow whose row is gone (purged) but whose audit rows remain.
    const orphan = await start('gone', 'profile', GONE)
    await settled(engine, 'gone', orphan)
    await owner.query(`DELETE FROM ${schemaOf.gone}.agent_coordination WHERE workflow_id = $1`, [orphan])
    await owner.query(`DELETE FROM ${schemaOf.gone}.workflows WHERE id = $1`, [orphan])
    expect((await sealAll('gone')).ok).toBe(true)
    expect(Object.keys(await traces(GONE)).sort()).toEqual(
      [
        'agent_audit_log.action_data',
        'agent_coordination.data',
        'agent_coordination.error',
        'agent_coordination.result',
        'enterprise_run_tenants',
        'enterprise_runs',
        'pgboss.job',
        'workflows.error',
        'workflows.input',
      ].sort(),
    )
    const acmeBefore = await traces('acme-in-enterprise')

    const report = await engine.eraseTenantData('gone')

    expect(report).toMatchObject({
      tenantId: 'gone',
      scope: 'tenant',
      workflows: 3,
      enterpriseMembers: 1,
      events: 1,
    })
    expect(await traces(GONE)).toEqual({})
    expect(await traces('acme-in-enterprise')).toEqual(acmeBefore)
    const { rows: redacted } = await owner.query(
      `SELECT count(*)::int AS n FROM ${schemaOf.gone}.agent_audit_log
       WHERE tenant_id = 'gone' AND workflow_id = $1 AND action_data ? '$redacted'`,
      [orphan],
    )
    expect(redacted[0].n).toBeGreaterThan(0)
    const [record] = await deletions('gone')
    // No regime applies to this tenant: recorded under GDPR, kept.
    expect(record).toMatchObject({ agent_id: 'eq/erasure', compliance_type: 'GDPR', days: null })
    expect(record.event_data).toMatchObject({ erasure: report.erasureId, scope: 'tenant', workflows: 3 })
    const run = await orchestrator.get(runId)
    expect(run.summary?.tenants.gone).toEqual({
      status: 'completed',
      workflowId: expect.any(String),
      $erased: true,
    })
    expect(run.summary?.tenants.acme?.output).toBeDefined()
    expect((await engine.verifyAudit('gone'))[0]).toMatchObject({ ok: true })
  })

  it('is not open to the application role', async () => {
    const app = new pg.Client({ connectionString: ctx.db.appUrl })
    await app.connect()
    try {
      await app.query('BEGIN')
      await enterTenant(app, await tenantSecret(ctx.db.url), 'acme')
      await app.query(`SELECT set_config('search_path', $1, true)`, [
        (await ctx.engine.tenant('acme')).scope.searchPath,
      ])
      await app.query(`SELECT set_config('equilateral.audit_redaction', 'on', true)`)
      const code = await app
        .query(
          `UPDATE agent_audit_log SET action_data = '{"$redacted": "by the app"}' WHERE tenant_id = 'acme'`,
        )
        .then(
          () => 'no error',
          (error: { code: string }) => error.code,
        )
      expect(code).toBe(INSUFFICIENT_PRIVILEGE)
    } finally {
      await app.query('ROLLBACK')
      await app.end()
    }
  })
})
