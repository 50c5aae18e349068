// V2 of issue 20: rewriting sealed history with the owner's rights. The append-only trigger's two
// exceptions (redaction, purge) let the owner rewrite a sealed approval into a "redaction" that still
// says who approved, and mark a block in the middle of the chain purged and delete its rows, with
// `audit verify` still at exit 0. Now the trigger refuses both, and when they are done anyway (as a
// superuser past the triggers) verify names every problem, each of them, with exit 1.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { childEnv, cliProcesses } from '../cli/run.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'

const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ done: ctx.taskKey }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: ok }] })
const gate = defineWorkflow({
  name: 'gate',
  tasks: [{ key: 'release', approval: { approvers: ['alice'] } }],
})

const { engine, db } = await testEngine({ agents: [ok], workflows: [single, gate] })
const { run } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'warn' }),
)
const owner = new pg.Client({ connectionString: db.url })
await owner.connect()
afterAll(() => owner.end())

let approvalRow: string
let block5Rows: string[]
let blocks: number

/** Runs statements as the owner in one transaction with a switch of the append-only trigger on. */
async function asOwner(setting: string, statements: string[]): Promise<string | undefined> {
  await owner.query(`BEGIN; SET LOCAL ${setting} = 'on'`)
  try {
    for (const sql of statements) await owner.query(sql)
    await owner.query('COMMIT')
    return undefined
  } catch (error) {
    await owner.query('ROLLBACK')
    return (error as { code?: string }).code
  }
}

beforeAll(async () => {
  await engine.createTenant({ id: 'acme', complianceProfile: { auditRetentionDays: 30 } })
  await engine.startWorker()
  const acme = await engine.tenant('acme')
  const { id: gated } = await acme.startWorkflow('gate', null)
  await eventually(async () =>
    (await acme.getWorkflow(gated)).tasks[0]?.status === 'waiting' ? true : undefined,
  )
  await acme.decide(gated, { name: 'release', approved: false, approver: 'alice' })
  await settled(engine, 'acme', gated)
  for (let i = 0; i < 8; i++) await settled(engine, 'acme', (await acme.startWorkflow('single', i)).id)
  // Small blocks, sealed until nothing is left: a chain of well over 18 blocks.
  await eventually(async () => {
    await engine.sealAudit({ maxRowsPerBlock: 2 })
    const [r] = await engine.verifyAudit('acme')
    return r!.unsealed === 0 ? r : undefined
  })
  const { rows } = await owner.query(
    `SELECT id::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND action_type = 'approval_decided'`,
  )
  approvalRow = rows[0].id
  const seals = await owner.query(
    `SELECT block_no::int, row_ids::text[] FROM equilateral.agent_audit_seals WHERE tenant_id = 'acme' ORDER BY block_no`,
  )
  blocks = seals.rows.length
  block5Rows = seals.rows[4].row_ids
  expect(blocks).toBeGreaterThanOrEqual(18)
  expect(block5Rows).not.toContain(approvalRow)
})

describe('audit rewrites with the owner’s rights (issue 20, V2)', () => {
  it('refuses a "redaction" that keeps other keys, and a purge of block 5 of the chain', async () => {
    const rewrite = `UPDATE equilateral.agent_audit_log
      SET action_data = '{"$redacted":"x","approver":"mallory","approved":true}' WHERE id = ${approvalRow}`
    expect(await asOwner('equilateral.audit_redaction', [rewrite])).toBe('42501')

    const purge5 = [
      `UPDATE equilateral.agent_audit_seals SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}'
       WHERE tenant_id = 'acme' AND block_no = 5`,
      `DELETE FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND id = ANY ('{${block5Rows.join(',')}}'::bigint[])`,
    ]
    expect(await asOwner('equilateral.audit_purge', purge5)).toBe('42501')
    // Deleting rows of a block not marked purged is refused too, and so is rewriting a seal.
    expect(await asOwner('equilateral.audit_purge', [purge5[1] as string])).toBe('42501')
    expect(
      await asOwner('equilateral.audit_purge', [
        `UPDATE equilateral.agent_audit_seals SET hash = 'x' WHERE tenant_id = 'acme' AND block_no = 5`,
      ]),
    ).toBe('42501')
    const [report] = await engine.verifyAudit('acme')
    expect(report).toMatchObject({ ok: true, purgedBlocks: 0, problems: [] })
  })

  it('records a canonical redaction (who, when, which row, of what) and verify accepts exactly that', async () => {
    const { rows } = await owner.query(
      `SELECT id::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND action_type = 'workflow_started' ORDER BY id LIMIT 1`,
    )
    const row = rows[0].id as string
    const code = await asOwner('equilateral.audit_redaction', [
      `UPDATE equilateral.agent_audit_log SET action_data = '{"$redacted": "gdpr-7"}' WHERE id = ${row}`,
    ])
    expect(code).toBeUndefined()
    const record = await owner.query(
      `SELECT row_id::text, redaction, by_role, data_hash IS NOT NULL AS hashed, redacted_at IS NOT NULL AS dated
       FROM equilateral.agent_audit_redactions WHERE tenant_id = 'acme'`,
    )
    expect(record.rows).toEqual([
      { row_id: row, redaction: 'gdpr-7', by_role: 'postgres', hashed: true, dated: true },
    ])
    // Once: the record cannot be rewritten, nor the row redacted again under another id.
    expect(
      await asOwner('equilateral.audit_redaction', [
        `UPDATE equilateral.agent_audit_log SET action_data = '{"$redacted": "other"}' WHERE id = ${row}`,
      ]),
    ).toBe('42501')
    expect(await errorCode(owner.query(`DELETE FROM equilateral.agent_audit_redactions`))).toBe('42501')
    const [report] = await engine.verifyAudit('acme')
    expect(report).toMatchObject({ ok: true, redacted: 1, problems: [] })
  })

  it('past the triggers (as a superuser): verify fails and names every problem, and the CLI exits 1', async () => {
    const { rows } = await owner.query(
      `SELECT id::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND action_type = 'workflow_completed'
       ORDER BY id LIMIT 1`,
    )
    const unrecorded = rows[0].id as string
    await owner.query(`BEGIN; SET LOCAL session_replication_role = replica;
      UPDATE equilateral.agent_audit_log
        SET action_data = '{"$redacted":"x","approver":"mallory","approved":true}' WHERE id = ${approvalRow};
      UPDATE equilateral.agent_audit_log SET action_data = '{"$redacted":"quietly"}' WHERE id = ${unrecorded};
      UPDATE equilateral.agent_audit_seals SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}'
        WHERE tenant_id = 'acme' AND block_no = 5;
      DELETE FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND id = ANY ('{${block5Rows.join(',')}}'::bigint[]);
      COMMIT`)

    const [report] = await engine.verifyAudit('acme')
    expect(report!.ok).toBe(false)
    const named = report!.problems.map((p) => [p.kind, p.blockNo, p.rowId])
    expect(named).toEqual(
      expect.arrayContaining([
        ['altered', expect.any(String), approvalRow],
        ['unrecorded_redaction', expect.any(String), unrecorded],
        ['purged_out_of_order', '5', undefined],
        ['purged_early', '5', undefined],
      ]),
    )
    expect(named).toHaveLength(4)
    expect(report!.problem).toEqual(report!.problems[0])

    const cli = await run(['audit', 'verify', '--tenant', 'acme'])
    expect(cli.code, cli.stderr).toBe(1)
    const lines = cli.stdout.trim().split('\n')
    expect(lines).toHaveLength(4)
    expect(lines.every((l) => l.startsWith('TAMPERED  acme: '))).toBe(true)
    expect(cli.stdout).toContain(`audit row ${approvalRow} `)
    expect(cli.stdout).toContain(`audit row ${unrecorded} `)
    expect(cli.stdout).toMatch(/block 5 is marked purged, but block 1 before it is not/)
    expect(cli.stdout).toMatch(/\[purged_early, block 5\]/)
  })
})
