// Retention purge: exactly what expired goes (ended workflows and their tasks past the data
// retention, compliance events past their retention_until, whole sealed audit blocks whose rows are
// all past the audit retention), in bounded, resumable batches, with a `purge` compliance event in
// the same transaction, the audit chain still verifying; and none of it is open to the application role.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const INSUFFICIENT_PRIVILEGE = '42501'

const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ done: ctx.taskKey }) })
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'a', agent: ok },
    { key: 'b', agent: ok, dependsOn: ['a'] },
  ],
})

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('retention purge, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [ok],
      workflows: [pair],
      config: { isolationMode: mode },
    })
    await engine.createTenant({
      id: 'keep',
      complianceProfile: { GDPR: { retentionDays: 30 }, dataRetentionDays: 7, auditRetentionDays: 60 },
    })
    await engine.createTenant({ id: 'plain' })
    await engine.createTenant({
      id: 'many',
      complianceProfile: { SOX: { retentionDays: 2555 }, dataRetentionDays: 1 },
    })
    await engine.startWorker()
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    afterAll(() => owner.end())
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemas = Object.fromEntries(
      rows.map((r) => [r.id as string, pg.escapeIdentifier(r.schema_name ?? 'equilateral')]),
    )
    /** A tenant table, schema-qualified, for the superuser's raw SQL (which bypasses row-level security). */
    const table = (tenant: string, name: string) => `${schemas[tenant]}.${name}`
    const run = async (tenant: string): Promise<string> => {
      const { id } = await (await engine.tenant(tenant)).startWorkflow('pair', { secret: 'x' })
      expect((await settled(engine, tenant, id)).status).toBe('completed')
      return id
    }
    /** Seals until no audit row of the tenant is left unsealed. */
    const sealAll = (tenant: string) =>
      eventually(async () => {
        await engine.sealAudit()
        const [report] = await engine.verifyAudit(tenant)
        return report!.unsealed === 0 ? report : undefined
      })
    /** Moves timestamps back, behind the triggers' backs (session_replication_role), as a test fixture. */
    const backdate = async (sql: string, params: unknown[]) => {
      await owner.query('BEGIN')
      await owner.query(`SET LOCAL session_replication_role = replica`)
      await owner.query(sql, params)
      await owner.query('COMMIT')
    }
    const count = async (sql: string, params: unknown[] = []): Promise<number> =>
      Number((await owner.query(sql, params)).rows[0].n)
    return { engine, db, owner, table, run, sealAll, backdate, count }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  it('purges exactly what expired and records it, and the audit chain still verifies', async () => {
    const { engine, table, run, sealAll, backdate, count } = ctx
    const audit = table('keep', 'agent_audit_log')
    // A: ended 10 days ago (data retention 7), audit rows 61 days old (audit retention 60), sealed.
    const a = await run('keep')
    await backdate(`UPDATE ${audit} SET "timestamp" = now() - interval '61 days' WHERE workflow_id = $1`, [a])
    await sealAll('keep')
    // B: recent, sealed in blocks of its own, one of its audit rows old: its block must stay whole.
    const b = await run('keep')
    await backdate(
      `UPDATE ${audit} SET "timestamp" = now() - interval '61 days'
       WHERE id = (SELECT min(id) FROM ${audit} WHERE workflow_id = $1)`,
      [b],
    )
    await sealAll('keep')
    // C: audit rows old but not sealed: never purged.
    const c = await run('keep')
    await backdate(`UPDATE ${audit} SET "timestamp" = now() - interval '61 days' WHERE workflow_id = $1`, [c])
    // The other tenant, without retention settings: old, and kept.
    const p = await run('plain')
    for (const [tenant, wf] of [
      ['keep', a],
      ['plain', p],
    ] as const) {
      await backdate(
        `UPDATE ${table(tenant, 'workflows')} SET created_at = now() - interval '11 days',
           completed_at = now() - interval '10 days' WHERE id = $1`,
        [wf],
      )
    }
    await backdate(
      `UPDATE ${table('plain', 'agent_audit_log')} SET "timestamp" = now() - interval '400 days'
       WHERE tenant_id = 'plain'`,
      [],
    )
    // Half of A's compliance events have passed their retention.
    const events = table('keep', 'compliance_events')
    const expiredEvents = await count(
      `WITH x AS (UPDATE ${events} SET retention_until = now() - interval '1 day'
         WHERE tenant_id = 'keep' AND event_data ->> 'workflow' = $1 AND event_type IN ('task_created', 'task_running') RETURNING 1)
       SELECT count(*) AS n FROM x`,
      [a],
    )
    expect(expiredEvents).toBe(4)
    const aRows = await count(`SELECT count(*) AS n FROM ${audit} WHERE workflow_id = $1`, [a])
    const { rows: aBlocks } = await ctx.owner.query(
      `SELECT block_no FROM ${table('keep', 'agent_audit_seals')} s
       WHERE s.tenant_id = 'keep' AND NOT EXISTS (
         SELECT FROM ${audit} l WHERE l.id = ANY (s.row_ids) AND l.workflow_id <> $1)`,
      [a],
    )
    expect(aBlocks.length).toBeGreaterThan(0)
    const eventsBefore = await count(`SELECT count(*) AS n FROM ${events} WHERE tenant_id = 'keep'`)
    const before = await engine.verifyAudit('keep')
    expect(before[0], JSON.stringify(before[0])).toMatchObject({ ok: true, purgedBlocks: 0 })

    const report = await engine.purgeExpired()

    expect(report).toMatchObject({
      workflows: 1,
      tasks: 2,
      auditRows: aRows,
      auditBlocks: aBlocks.length,
      complianceEvents: expiredEvents,
      complete: true,
      problems: [],
    })
    const left = async (tenant: string, name: string, column = 'id') =>
      (
        await ctx.owner.query(
          `SELECT DISTINCT ${column} AS id FROM ${table(tenant, name)} WHERE tenant_id = $1 ORDER BY 1`,
          [tenant],
        )
      ).rows.map((r) => r.id as string)
    expect(await left('keep', 'workflows')).toEqual([b, c].sort())
    expect(await left('keep', 'agent_coordination', 'workflow_id')).toEqual([b, c].sort())
    expect(await left('keep', 'agent_audit_log', 'workflow_id')).toEqual([b, c].sort())
    expect(await left('plain', 'workflows')).toEqual([p])
    expect(await count(`SELECT count(*) AS n FROM ${table('plain', 'agent_audit_log')}`)).toBeGreaterThan(0)
    // Purged blocks keep their hashes, lose their row lists; the others are untouched.
    const { rows: seals } = await ctx.owner.query(
      `SELECT block_no::int AS block_no, purged_at IS NOT NULL AS purged, cardinality(row_ids) AS n
       FROM ${table('keep', 'agent_audit_seals')} WHERE tenant_id = 'keep' ORDER BY block_no`,
    )
    const purged = new Set(aBlocks.map((r) => Number(r.block_no)))
    for (const s of seals) {
      expect(s.purged, `block ${s.block_no}`).toBe(purged.has(s.block_no))
      if (s.purged) expect(s.n).toBe(0)
      else expect(s.n).toBeGreaterThan(0)
    }
    // One purge record (one regime), in place of one task_deleted per task; nothing else deleted.
    const { rows: records } = await ctx.owner.query(
      `SELECT agent_id, compliance_type, event_data, round(extract(epoch FROM retention_until - created_at) / 86400) AS days
       FROM ${events} WHERE tenant_id = 'keep' AND event_type IN ('purge', 'task_deleted')`,
    )
    expect(records).toEqual([
      {
        agent_id: 'eq/retention',
        compliance_type: 'GDPR',
        days: '30',
        event_data: {
          run: report.runId,
          workflows: 1,
          tasks: 2,
          auditRows: aRows,
          auditBlocks: aBlocks.length,
          complianceEvents: expiredEvents,
          dataRetentionDays: 7,
          auditRetentionDays: 60,
        },
      },
    ])
    expect(await count(`SELECT count(*) AS n FROM ${events} WHERE tenant_id = 'keep'`)).toBe(
      eventsBefore - expiredEvents + 1,
    )
    const after = await engine.verifyAudit('keep')
    const cRows = await count(`SELECT count(*) AS n FROM ${audit} WHERE workflow_id = $1`, [c])
    expect(after[0]).toMatchObject({ ok: true, purgedBlocks: aBlocks.length, unsealed: cRows })
    // Sealing goes on after a purge, and a second purge finds nothing (and records nothing).
    await run('keep')
    expect((await sealAll('keep')).ok).toBe(true)
    const again = await engine.purgeExpired()
    expect(again).toMatchObject({ workflows: 0, tasks: 0, auditRows: 0, auditBlocks: 0, complianceEvents: 0 })
    expect(
      await count(`SELECT count(*) AS n FROM ${events} WHERE tenant_id = 'keep' AND event_type = 'purge'`),
    ).toBe(1)
  })

  it('works in bounded batches, one record each, and resumes where a bounded run stopped', async () => {
    const { engine, table, run, backdate, count } = ctx
    const ids = [await run('many'), await run('many'), await run('many')]
    await backdate(
      `UPDATE ${table('many', 'workflows')} SET created_at = now() - interval '3 days',
         completed_at = now() - interval '2 days' WHERE id = ANY ($1::uuid[])`,
      [ids],
    )
    const first = await engine.purgeExpired({ batchSize: 1, maxBatches: 2 })
    expect(first).toMatchObject({ workflows: 2, tasks: 4, complete: false })
    expect(
      await count(`SELECT count(*) AS n FROM ${table('many', 'workflows')} WHERE tenant_id = 'many'`),
    ).toBe(1)
    const second = await engine.purgeExpired({ batchSize: 1, maxBatches: 2 })
    expect(second).toMatchObject({ workflows: 1, tasks: 2, complete: true })
    expect(
      await count(`SELECT count(*) AS n FROM ${table('many', 'workflows')} WHERE tenant_id = 'many'`),
    ).toBe(0)
    const { rows } = await ctx.owner.query(
      `SELECT compliance_type, event_data ->> 'workflows' AS n FROM ${table('many', 'compliance_events')}
       WHERE tenant_id = 'many' AND event_type = 'purge' ORDER BY id`,
    )
    expect(rows).toEqual([
      { compliance_type: 'SOX', n: '1' },
      { compliance_type: 'SOX', n: '1' },
      { compliance_type: 'SOX', n: '1' },
    ])
  })

  it('is not open to the application role', async () => {
    const app = new pg.Client({ connectionString: ctx.db.appUrl })
    await app.connect()
    afterAll(() => app.end())
    const scope = (await ctx.engine.tenant('keep')).scope
    const secret = await tenantSecret(ctx.db.url)
    const inTx = async <T>(fn: () => Promise<T>, switches: string[] = []): Promise<T> => {
      await app.query('BEGIN')
      try {
        await enterTenant(app, secret, 'keep')
        await app.query(`SELECT set_config('search_path', $1, true)`, [scope.searchPath])
        for (const s of switches) await app.query(`SELECT set_config($1, 'on', true)`, [s])
        return await fn()
      } finally {
        await app.query('ROLLBACK')
      }
    }
    const purge = ['equilateral.audit_purge', 'equilateral.retention_purge']
    for (const sql of [
      `DELETE FROM agent_audit_log WHERE tenant_id = 'keep'`,
      `UPDATE agent_audit_seals SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}'`,
      `DELETE FROM compliance_events WHERE tenant_id = 'keep'`,
      `UPDATE compliance_events SET retention_until = now() - interval '1 day'`,
      `UPDATE equilateral.tenants SET compliance_profile = '{}' WHERE id = 'keep'`,
    ]) {
      expect(await inTx(() => errorCode(app.query(sql)), purge), sql).toBe(INSUFFICIENT_PRIVILEGE)
    }
    // It may delete its own tasks, but cannot make that go unrecorded with the purge's switch.
    const recorded = await inTx(async () => {
      const deleted = await app.query(`DELETE FROM agent_coordination WHERE tenant_id = 'keep'`)
      const { rows } = await app.query(
        `SELECT count(*)::int AS n FROM compliance_events WHERE event_type = 'task_deleted'`,
      )
      return { deleted: deleted.rowCount, events: rows[0].n }
    }, purge)
    expect(recorded.deleted).toBeGreaterThan(0)
    expect(recorded.events).toBe(recorded.deleted)
  })
})
