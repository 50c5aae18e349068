// Compliance events: written by the database, in the transaction of every change to a task row, one
// per changed row and regime of the tenant's compliance profile, with that regime's retention;
// nothing for a rolled-back change, for heartbeats, or for a tenant without a profile.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { heartbeat } from '../../src/flow/heartbeat.ts'
import { defineAgent, defineWorkflow, InvalidInputError } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const DAY_MS = 24 * 3600 * 1000

const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ done: ctx.taskKey }) })
let release: () => void = () => {}
const slow = defineAgent({
  id: 'slow',
  handler: async (ctx) => {
    await new Promise<void>((resolve) => {
      release = resolve
      ctx.signal.addEventListener('abort', () => resolve())
    })
    return { slept: true }
  },
})
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'a', agent: ok },
    { key: 'b', agent: ok, dependsOn: ['a'] },
  ],
})
const sleepy = defineWorkflow({ name: 'sleepy', tasks: [{ key: 'zz', agent: slow }] })

interface EventRow {
  compliance_type: string
  event_type: string
  agent_id: string
  event_data: Record<string, string>
  retention_days: number
}

describe.each<IsolationMode>(['row-level', 'schema-per-tenant'])('compliance events, %s', (mode) => {
  let ctx: Awaited<ReturnType<typeof setup>>

  async function setup() {
    const { engine, db } = await testEngine({
      agents: [ok, slow],
      workflows: [pair, sleepy],
      config: { isolationMode: mode },
    })
    await engine.createTenant({ id: 'eu', complianceProfile: { GDPR: { retentionDays: 30 } } })
    await engine.createTenant({
      id: 'us',
      complianceProfile: { SOX: { retentionDays: 2555 }, HIPAA: { retentionDays: 2190 } },
    })
    await engine.createTenant({ id: 'plain' })
    await engine.startWorker()
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    afterAll(() => owner.end())
    const { rows } = await owner.query(`SELECT id, schema_name FROM equilateral.tenants`)
    const schemaOf = Object.fromEntries(
      rows.map((r) => [r.id as string, pg.escapeIdentifier(r.schema_name ?? 'equilateral')]),
    )
    /** As the superuser (no row-level security): every event of a workflow's tasks. */
    const eventsOf = async (tenant: string, workflowId: string): Promise<EventRow[]> => {
      const { rows } = await owner.query(
        `SELECT compliance_type, event_type, agent_id, event_data,
           extract(epoch FROM retention_until - created_at) / 86400 AS retention_days
         FROM ${schemaOf[tenant]}.compliance_events
         WHERE tenant_id = $1 AND event_data ->> 'workflow' = $2 ORDER BY id`,
        [tenant, workflowId],
      )
      return rows.map((r) => ({ ...r, retention_days: Math.round(Number(r.retention_days)) }))
    }
    const countAll = async (tenant: string): Promise<number> => {
      const { rows } = await owner.query(
        `SELECT count(*)::int AS n FROM ${schemaOf[tenant]}.compliance_events WHERE tenant_id = $1`,
        [tenant],
      )
      return rows[0].n
    }
    return { engine, db, owner, schemaOf, eventsOf, countAll }
  }

  beforeAll(async () => {
    ctx = await setup()
  })

  it('writes one event per task change and regime, with the regime and the retention of the profile', async () => {
    const started = Date.now()
    const ids: Record<string, string> = {}
    for (const t of ['eu', 'us', 'plain']) {
      const handle = await ctx.engine.tenant(t)
      ids[t] = (await handle.startWorkflow('pair', { n: 1 })).id
      expect((await settled(ctx.engine, t, ids[t])).status).toBe('completed')
    }
    const wf = await (await ctx.engine.tenant('eu')).getWorkflow(ids.eu as string)
    const taskA = wf.tasks.find((t) => t.key === 'a')!.id
    const taskB = wf.tasks.find((t) => t.key === 'b')!.id

    const eu = await ctx.eventsOf('eu', ids.eu as string)
    expect(new Set(eu.map((e) => e.compliance_type))).toEqual(new Set(['GDPR']))
    expect(new Set(eu.map((e) => e.retention_days))).toEqual(new Set([30]))
    expect(eu.every((e) => e.agent_id === 'ok')).toBe(true)
    const story = (task: string) =>
      eu
        .filter((e) => e.event_data.task === task)
        .map((e) => [e.event_type, e.event_data.from, e.event_data.to])
    expect(story(taskA)).toEqual([
      ['task_created', undefined, 'queued'],
      ['task_running', 'queued', 'running'],
      ['task_completed', 'running', 'completed'],
    ])
    expect(story(taskB)).toEqual([
      ['task_created', undefined, 'pending'],
      ['task_queued', 'pending', 'queued'],
      ['task_running', 'queued', 'running'],
      ['task_completed', 'running', 'completed'],
    ])
    // Small: ids and statuses, never payloads.
    expect(Object.keys(eu[0]!.event_data).sort()).toEqual(['agent', 'task', 'to', 'workflow'])

    const us = await ctx.eventsOf('us', ids.us as string)
    expect(us).toHaveLength(2 * 7)
    const byRegime = Map.groupBy(us, (e) => e.compliance_type)
    expect([...byRegime.keys()].sort()).toEqual(['HIPAA', 'SOX'])
    expect(new Set(byRegime.get('SOX')!.map((e) => e.retention_days))).toEqual(new Set([2555]))
    expect(new Set(byRegime.get('HIPAA')!.map((e) => e.retention_days))).toEqual(new Set([2190]))
    expect(byRegime.get('SOX')!.map((e) => e.event_type)).toEqual(
      byRegime.get('HIPAA')!.map((e) => e.event_type),
    )

    expect(await ctx.countAll('plain')).toBe(0)
    // retention_until is counted from the change (the transaction's time), not from some later moment.
    const { rows } = await ctx.owner.query(
      `SELECT min(retention_until) AS first FROM ${ctx.schemaOf.eu}.compliance_events WHERE tenant_id = 'eu'`,
    )
    expect(Math.abs(rows[0].first.getTime() - (started + 30 * DAY_MS))).toBeLessThan(60_000)
  })

  it('writes nothing for a change that is rolled back, and the event inside the transaction that commits', async () => {
    const handle = await ctx.engine.tenant('eu')
    const { id } = await handle.startWorkflow('pair', null)
    await settled(ctx.engine, 'eu', id)
    const before = await ctx.countAll('eu')
    const app = new pg.Client({ connectionString: ctx.db.appUrl })
    await app.connect()
    try {
      await app.query('BEGIN')
      await enterTenant(app, await tenantSecret(ctx.db.url), 'eu')
      await app.query(`SELECT set_config('search_path', $1, true)`, [handle.scope.searchPath])
      const changed = await app.query(
        `UPDATE agent_coordination SET status = 'cancelled' WHERE tenant_id = 'eu' AND workflow_id = $1`,
        [id],
      )
      expect(changed.rowCount).toBe(2)
      const inside = await app.query(
        `SELECT count(*)::int AS n FROM compliance_events WHERE tenant_id = 'eu'`,
      )
      expect(inside.rows[0].n).toBe(before + 2)
      await app.query('ROLLBACK')
    } finally {
      await app.end()
    }
    expect(await ctx.countAll('eu')).toBe(before)
  })

  it('writes nothing for heartbeats', async () => {
    const handle = await ctx.engine.tenant('eu')
    const { id } = await handle.startWorkflow('sleepy', null)
    const task = await eventually(async () => {
      const wf = await handle.getWorkflow(id)
      return wf.tasks[0]?.status === 'running' ? wf.tasks[0] : undefined
    })
    const running = await ctx.eventsOf('eu', id)
    // The worker stamps the task every 200 ms (the test engine's HEARTBEAT_INTERVAL_MS); and once more here.
    await eventually(async () => {
      const { rows } = await ctx.owner.query(
        `SELECT heartbeat_at > started_at + interval '500 milliseconds' AS beaten
         FROM ${ctx.schemaOf.eu}.agent_coordination WHERE tenant_id = 'eu' AND id = $1`,
        [task.id],
      )
      return rows[0].beaten ? true : undefined
    })
    const held = await heartbeat(ctx.engine.pool, handle.scope, [{ taskId: task.id, attempt: task.attempt }])
    expect(held.has(task.id)).toBe(true)
    expect(await ctx.eventsOf('eu', id)).toEqual(running)
    expect(running.map((e) => e.event_type)).toEqual(['task_created', 'task_running'])
    release()
    await settled(ctx.engine, 'eu', id)
    expect((await ctx.eventsOf('eu', id)).map((e) => e.event_type)).toEqual([
      'task_created',
      'task_running',
      'task_completed',
    ])
  })

  it('follows a profile changed by the owner for changes from then on', async () => {
    await ctx.engine.setComplianceProfile('plain', { HIPAA: { retentionDays: 10 } })
    const handle = await ctx.engine.tenant('plain')
    const { id } = await handle.startWorkflow('pair', null)
    await settled(ctx.engine, 'plain', id)
    const events = await ctx.eventsOf('plain', id)
    expect(events).toHaveLength(7)
    expect(new Set(events.map((e) => `${e.compliance_type}:${e.retention_days}`))).toEqual(
      new Set(['HIPAA:10']),
    )
    await ctx.engine.setComplianceProfile('plain', {})
    const { id: later } = await handle.startWorkflow('pair', null)
    await settled(ctx.engine, 'plain', later)
    expect(await ctx.eventsOf('plain', later)).toEqual([])
  })
})

describe('compliance profiles', () => {
  let setup: ReturnType<typeof testEngine>
  beforeAll(() => {
    setup = testEngine({ agents: [ok], workflows: [pair] })
    return setup.then(() => {})
  })

  it('are validated before anything is written', async () => {
    const { engine } = await setup
    for (const [profile, path] of [
      [{ CCPA: { retentionDays: 30 } }, '$.complianceProfile.CCPA'],
      [{ GDPR: { retentionDays: 0 } }, '$.complianceProfile.GDPR.retentionDays'],
      [{ GDPR: { retentionDays: 1.5 } }, '$.complianceProfile.GDPR.retentionDays'],
      [{ GDPR: { retentionDays: '30' } }, '$.complianceProfile.GDPR.retentionDays'],
      [{ GDPR: true }, '$.complianceProfile.GDPR'],
      [{ SOX: { retentionDays: 2555 }, auditRetentionDays: 365 }, '$.complianceProfile.auditRetentionDays'],
      [[], '$.complianceProfile'],
    ] as const) {
      const attempt = engine.createTenant({ id: 'refused', complianceProfile: profile as never })
      await expect(attempt, JSON.stringify(profile)).rejects.toBeInstanceOf(InvalidInputError)
      await expect(attempt).rejects.toMatchObject({ path })
    }
    expect((await engine.listTenants()).map((t) => t.id)).toEqual([])
    await expect(engine.setComplianceProfile('nobody', {})).rejects.toMatchObject({ code: 'unknown_tenant' })
  })

  it('are stored normalised and listed with the tenant', async () => {
    const { engine } = await setup
    await engine.createTenant({
      id: 'listed',
      complianceProfile: { GDPR: { retentionDays: 30 }, dataRetentionDays: 7, auditRetentionDays: 400 },
    })
    const [t] = await engine.listTenants()
    expect(t?.complianceProfile).toEqual({
      GDPR: { retentionDays: 30 },
      dataRetentionDays: 7,
      auditRetentionDays: 400,
    })
  })
})
