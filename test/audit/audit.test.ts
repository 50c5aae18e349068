// The audit trail: every transition written once, in order, in the transaction of the change;
// append-only for the application and, by trigger, for the owner too; sealed into a per-tenant hash
// chain off the hot path, which `verify` recomputes to name the first row altered, deleted or
// inserted out of band, while a GDPR redaction keeps it verifiable.
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { clientDb, defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

const attempts = new Map<string, number>()
const flaky = defineAgent({
  id: 'flaky',
  handler: async (ctx) => {
    const n = (attempts.get(ctx.taskId) ?? 0) + 1
    attempts.set(ctx.taskId, n)
    if (n === 1) throw new Error('first attempt fails')
    return { attempt: n }
  },
})
const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ done: ctx.taskKey }) })
const broken = defineAgent({
  id: 'broken',
  handler: async () => {
    throw new PermanentError('cannot be done')
  },
})

// Ten tasks: a retry (r), a permanent failure (x) whose dependents (y, z) are skipped, and the rest
// completing around them. x waits for f too: otherwise f (queued when c completes) races the chain
// r -> e -> x, and a worker that runs the chain first skips f (seen under load in CI).
const tenTasks = defineWorkflow({
  name: 'ten-tasks',
  tasks: [
    { key: 'a', agent: ok },
    { key: 'b', agent: ok, dependsOn: ['a'] },
    { key: 'c', agent: ok, dependsOn: ['a'] },
    { key: 'r', agent: flaky, dependsOn: ['b'], maxAttempts: 3, backoffMs: 10 },
    { key: 'd', agent: ok, dependsOn: ['c'] },
    { key: 'e', agent: ok, dependsOn: ['r', 'd'] },
    { key: 'x', agent: broken, dependsOn: ['e', 'f'], maxAttempts: 3 },
    { key: 'y', agent: ok, dependsOn: ['x'] },
    { key: 'z', agent: ok, dependsOn: ['y'] },
    { key: 'f', agent: ok, dependsOn: ['c'] },
  ],
})
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: ok }] })

const { engine, db } = await testEngine({ agents: [flaky, ok, broken], workflows: [tenTasks, single] })
await engine.createTenant({ id: 'acme' })
await engine.createTenant({ id: 'other' })
const acme = await engine.tenant('acme')
await engine.startWorker()
const owner = new pg.Client({ connectionString: db.url })
await owner.connect()
afterAll(() => owner.end())

/**
 * Seals the tenant's rows, then verifies its chain. Rows are sealed once no older transaction of the
 * server runs, and another test's (another database's, on a shared server) may for a moment: seal
 * again until none is left unsealed, and give the last report whatever it says.
 */
async function sealAndVerify(tenantId: string) {
  let report: Awaited<ReturnType<typeof engine.verifyAudit>>[number] | undefined
  await eventually(async () => {
    await engine.sealAudit()
    report = (await engine.verifyAudit(tenantId))[0]
    return report?.unsealed === 0 ? true : undefined
  }).catch(() => {})
  return report!
}

const verifyAcme = () => sealAndVerify('acme')

describe('audit trail', () => {
  it('writes every transition of a workflow with a retry and a failure exactly once, in order', async () => {
    const { id } = await acme.startWorkflow('ten-tasks', null, { correlationId: 'req-42' })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    const history = await acme.history(id)
    const keyOf = new Map(wf.tasks.map((t) => [t.id, t.key]))
    const byTask = new Map<string, string[]>()
    for (const h of history) {
      if (!h.taskId) continue
      const key = keyOf.get(h.taskId) as string
      byTask.set(key, [...(byTask.get(key) ?? []), h.action])
    }
    const done = ['task_queued', 'task_started', 'task_completed']
    expect(Object.fromEntries(byTask)).toEqual({
      a: done,
      b: ['task_created', ...done],
      c: ['task_created', ...done],
      d: ['task_created', ...done],
      f: ['task_created', ...done],
      r: [
        'task_created',
        'task_queued',
        'task_started',
        'task_failed_attempt',
        'task_retry_queued',
        'task_started',
        'task_completed',
      ],
      e: ['task_created', ...done],
      // A permanent error: the attempt fails, and so does the task, without another attempt.
      x: ['task_created', 'task_queued', 'task_started', 'task_failed_attempt', 'task_failed'],
      y: ['task_created', 'task_skipped'],
      z: ['task_created', 'task_skipped'],
    })
    const workflowRows = history.filter((h) => !h.taskId).map((h) => h.action)
    expect(workflowRows).toEqual(['workflow_started', 'workflow_failed'])
    expect(history[0]?.action).toBe('workflow_started')
    // In the order written, and every row carries the request's correlation id.
    for (let i = 1; i < history.length; i++) {
      expect(BigInt(history[i]!.id) > BigInt(history[i - 1]!.id)).toBe(true)
    }
    expect(new Set(history.map((h) => h.correlationId))).toEqual(new Set(['req-42']))
  })

  it('leaves no audit row when the change rolls back', async () => {
    const count = async () =>
      (await owner.query(`SELECT count(*)::int AS n FROM equilateral.agent_audit_log`)).rows[0].n as number
    const before = await count()
    const client = new pg.Client({ connectionString: db.appUrl })
    await client.connect()
    try {
      await client.query('BEGIN')
      await acme.startWorkflow('single', 1, { db: clientDb(client) })
      await client.query('ROLLBACK')
    } finally {
      await client.end()
    }
    expect(await count()).toBe(before)
  })

  it('refuses UPDATE, DELETE and TRUNCATE to the application role, and to the owner by trigger', async () => {
    const app = new pg.Client({ connectionString: db.appUrl })
    await app.connect()
    try {
      for (const sql of [
        `UPDATE equilateral.agent_audit_log SET action_type = 'rewritten'`,
        `DELETE FROM equilateral.agent_audit_log`,
        `TRUNCATE equilateral.agent_audit_log`,
        `UPDATE equilateral.agent_audit_seals SET hash = 'x'`,
      ]) {
        await app.query('BEGIN')
        await enterTenant(app, await tenantSecret(db.url), 'acme')
        expect(await errorCode(app.query(sql)), sql).toBe('42501')
        await app.query('ROLLBACK')
      }
    } finally {
      await app.end()
    }
    for (const sql of [
      `UPDATE equilateral.agent_audit_log SET action_type = 'rewritten'`,
      `DELETE FROM equilateral.agent_audit_log`,
      `TRUNCATE equilateral.agent_audit_log`,
    ]) {
      expect(await errorCode(owner.query(sql)), `owner: ${sql}`).toBe('42501')
    }
  })
})

describe('hash chain', () => {
  it('seals every row exactly once with contiguous sequence numbers while workflows run', async () => {
    const running = Promise.all(
      Array.from({ length: 20 }, async () => {
        const { id } = await acme.startWorkflow('single', 1)
        return settled(engine, 'acme', id)
      }),
    )
    for (let i = 0; i < 10; i++) await engine.sealAudit({ maxRowsPerBlock: 7 })
    await running
    const report = await verifyAcme()
    expect(report).toMatchObject({ ok: true, unsealed: 0, problem: null })
    const { rows } = await owner.query(
      `SELECT (SELECT count(*)::int FROM equilateral.agent_audit_log WHERE tenant_id = 'acme') AS audit,
         (SELECT sum(row_count)::int FROM equilateral.agent_audit_seals WHERE tenant_id = 'acme') AS sealed,
         (SELECT count(DISTINCT r)::int FROM equilateral.agent_audit_seals, unnest(row_ids) r WHERE tenant_id = 'acme') AS distinct_rows,
         (SELECT max(first_seq + row_count - 1)::int FROM equilateral.agent_audit_seals WHERE tenant_id = 'acme') AS last_seq`,
    )
    expect(rows[0].sealed).toBe(rows[0].audit)
    expect(rows[0].distinct_rows).toBe(rows[0].audit)
    expect(rows[0].last_seq).toBe(rows[0].audit)
    expect(report.rows).toBe(rows[0].audit)
  })

  it('names a row altered as the owner behind the triggers', async () => {
    const victim = (
      await owner.query(
        `SELECT id::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' ORDER BY id LIMIT 1 OFFSET 5`,
      )
    ).rows[0].id as string
    await tamper(
      `UPDATE equilateral.agent_audit_log SET action_data = '{"forged": true}' WHERE id = ${victim}`,
    )
    try {
      const report = await verifyAcme()
      expect(report.ok).toBe(false)
      expect(report.problem).toMatchObject({ kind: 'altered', rowId: victim })
      expect(report.problem?.message).toMatch(new RegExp(`audit row ${victim} .*altered`))
    } finally {
      await restore()
    }
  })

  it('names a deleted row and a row inserted out of band into a sealed range', async () => {
    const { rows } = await owner.query(
      `SELECT id::text, txid::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' ORDER BY txid, id LIMIT 1 OFFSET 3`,
    )
    const victim = rows[0]
    await tamper(`DELETE FROM equilateral.agent_audit_log WHERE id = ${victim.id}`)
    const deleted = await verifyAcme()
    expect(deleted.problem).toMatchObject({ kind: 'deleted', rowId: victim.id })
    await restore()

    await tamper(
      `INSERT INTO equilateral.agent_audit_log (tenant_id, workflow_id, action_type, txid)
       VALUES ('acme', gen_random_uuid(), 'task_completed', ${victim.txid})`,
    )
    const inserted = await verifyAcme()
    expect(inserted.problem).toMatchObject({ kind: 'inserted' })
    await restore()
  })

  it('still verifies after a redaction by the owner, and counts the redacted row', async () => {
    const before = await verifyAcme()
    expect(before.ok).toBe(true)
    await owner.query(`BEGIN; SET LOCAL equilateral.audit_redaction = 'on';
      UPDATE equilateral.agent_audit_log SET action_data = '{"$redacted": "gdpr-request-1"}'
      WHERE id = (SELECT min(id) FROM equilateral.agent_audit_log WHERE tenant_id = 'acme'); COMMIT`)
    const after = await verifyAcme()
    expect(after).toMatchObject({ ok: true, redacted: before.redacted + 1 })
    // The redaction switch allows nothing else: not another column, not a non-marker value.
    for (const sql of [
      `UPDATE equilateral.agent_audit_log SET action_type = 'x' WHERE tenant_id = 'acme'`,
      `UPDATE equilateral.agent_audit_log SET action_data = '{"forged": 1}' WHERE tenant_id = 'acme'`,
    ]) {
      await owner.query(`BEGIN; SET LOCAL equilateral.audit_redaction = 'on'`)
      expect(await errorCode(owner.query(sql)), sql).toBe('42501')
      await owner.query('ROLLBACK')
    }
  })

  it("keeps tenants' chains apart: another tenant's chain verifies on its own", async () => {
    const other = await engine.tenant('other')
    const { id } = await other.startWorkflow('single', 2)
    await settled(engine, 'other', id)
    await sealAndVerify('other')
    const reports = await engine.verifyAudit()
    expect(reports.map((r) => [r.tenantId, r.ok])).toEqual([
      ['acme', true],
      ['other', true],
    ])
    expect(reports[1]!.rows).toBeGreaterThan(0)
  })
})

describe('seals written by the application role', () => {
  it('refuses a seal that jumps ahead (last_txid 2^63 - 1) or skips rows, so sealing goes on', async () => {
    const { id } = await acme.startWorkflow('single', 3)
    await settled(engine, 'acme', id)
    const app = new pg.Client({ connectionString: db.appUrl })
    await app.connect()
    try {
      const forge = async (lastTxid: string, rowIds: string) => {
        await app.query('BEGIN')
        await enterTenant(app, await tenantSecret(db.url), 'acme')
        try {
          return await errorCode(
            app.query(
              `INSERT INTO equilateral.agent_audit_seals (tenant_id, block_no, first_seq, row_count, last_txid, last_id,
                 row_ids, row_hashes, data_hashes, prev_hash, hash)
               SELECT 'acme', max(block_no) + 1, max(first_seq + row_count), 1, ${lastTxid},
                 (SELECT max(id) FROM equilateral.agent_audit_log), ${rowIds}, '{x}', '{x}',
                 (SELECT hash FROM equilateral.agent_audit_seals WHERE tenant_id = 'acme' ORDER BY block_no DESC LIMIT 1), 'x'
               FROM equilateral.agent_audit_seals WHERE tenant_id = 'acme'`,
            ),
          )
        } finally {
          await app.query('ROLLBACK')
        }
      }
      const CHECK_VIOLATION = '23514'
      // Far ahead: every later row would be below it, and never sealed.
      expect(
        await forge('9223372036854775807', `ARRAY[(SELECT max(id) FROM equilateral.agent_audit_log)]`),
      ).toBe(CHECK_VIOLATION)
      // The last row only, skipping the unsealed rows before it.
      expect(
        await forge(
          `(SELECT txid FROM equilateral.agent_audit_log ORDER BY id DESC LIMIT 1)`,
          `ARRAY[(SELECT max(id) FROM equilateral.agent_audit_log)]`,
        ),
      ).toBe(CHECK_VIOLATION)
    } finally {
      await app.end()
    }
    // The sealer seals them (once every transaction older than them has ended, on a shared server).
    const report = await eventually(async () => {
      const r = await verifyAcme()
      return r.unsealed === 0 ? r : undefined
    })
    expect(report).toMatchObject({ ok: true, problems: [] })
  })
})

// Tampering as a superuser that skips the triggers; restore() puts the rows back exactly as they were
// (copied inside the database: a round trip through JavaScript would lose the microseconds).
async function tamper(sql: string): Promise<void> {
  await owner.query(`DROP TABLE IF EXISTS pg_temp.audit_backup;
    CREATE TEMP TABLE audit_backup AS SELECT * FROM equilateral.agent_audit_log WHERE tenant_id = 'acme'`)
  await owner.query(`BEGIN; SET LOCAL session_replication_role = replica; ${sql}; COMMIT`)
}
async function restore(): Promise<void> {
  await owner.query(`BEGIN; SET LOCAL session_replication_role = replica;
    DELETE FROM equilateral.agent_audit_log WHERE tenant_id = 'acme';
    INSERT INTO equilateral.agent_audit_log OVERRIDING SYSTEM VALUE SELECT * FROM pg_temp.audit_backup;
    COMMIT`)
}
