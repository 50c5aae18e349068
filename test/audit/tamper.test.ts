// V2 of issue 20: rewriting sealed history with the owner's rights. The append-only trigger's two
// exceptions (redaction, purge) let the owner rewrite a sealed approval into a "redaction" that still
// says who approved, and mark a block in the middle of the chain purged and delete its rows, with
// `audit verify` still at exit 0. Now the trigger refuses both, and when they are done anyway (as a
// superuser past the triggers) verify names every problem, each of them, with exit 1.
import { mkdtemp, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AuditRow, blockHash, dataHash, ROW_COLUMNS, rowHash } from '../../src/audit/seal.ts'
import { defineAgent, defineWorkflow, KeyRing } from '../../src/index.ts'
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
// The command line signs checkpoints with a key of its own; the database never sees it.
const { run } = cliProcesses(
  childEnv({
    DATABASE_URL: db.url,
    MIGRATION_DATABASE_URL: db.url,
    LOG_LEVEL: 'warn',
    ENCRYPTION_KEYS: `k1:${KeyRing.generateKey()}`,
  }),
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

  it('catches, against a checkpoint kept outside, a rewrite whose whole chain was recomputed', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'eq-checkpoint-'))
    const file = path.join(dir, 'checkpoint.json')
    const taken = await run(['audit', 'checkpoint'])
    expect(taken.code, taken.stderr).toBe(0)
    await writeFile(file, taken.stdout)
    const checkpoint = JSON.parse(taken.stdout)
    expect(checkpoint.heads).toEqual([
      { tenantId: 'acme', blockNo: String(blocks), hash: expect.any(String), rows: expect.any(String) },
    ])
    expect(checkpoint.signature).toMatch(/^k1\./)
    expect((await run(['audit', 'verify', '--against', file])).code).toBe(0)

    // Whoever has the database rewrites a sealed row and recomputes every seal from its block on.
    const { rows } = await owner.query(
      `SELECT id::text FROM equilateral.agent_audit_log WHERE tenant_id = 'acme' AND action_type = 'task_started'
       ORDER BY id LIMIT 1`,
    )
    const victim = rows[0].id as string
    await owner.query(`BEGIN; SET LOCAL session_replication_role = replica;
      UPDATE equilateral.agent_audit_log SET action_data = '{"by": "mallory"}' WHERE id = ${victim}; COMMIT`)
    await reseal(victim)
    const [plain] = await engine.verifyAudit('acme')
    expect(plain).toMatchObject({ ok: true, problems: [] })

    const verified = await run(['audit', 'verify', '--against', file])
    expect(verified.code).toBe(1)
    expect(verified.stdout).toMatch(
      new RegExp(
        `^TAMPERED  acme: block ${blocks} does not have the hash it had at the checkpoint of .*\\[checkpoint_mismatch, block ${blocks}\\]\n$`,
      ),
    )
    // Nor can the checkpoint be made to agree: a head changed in the file no longer verifies.
    const [head] = await engine.auditCheckpoint().then((c) => c.heads)
    await writeFile(
      file,
      JSON.stringify({ ...checkpoint, heads: [{ ...checkpoint.heads[0], hash: head!.hash }] }),
    )
    const forged = await run(['audit', 'verify', '--against', file])
    expect(forged.code).toBe(2)
    expect(forged.stderr).toMatch(/signature does not verify/)
    expect(JSON.parse(await readFile(file, 'utf8')).heads[0].hash).toBe(head!.hash)
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

/** Recomputes, as someone with the database would, every seal from the block holding `rowId` on. */
async function reseal(rowId: string): Promise<void> {
  const { rows: seals } = await owner.query(
    `SELECT s.block_no::text, s.first_seq::text, s.row_ids::text[], s.prev_hash FROM equilateral.agent_audit_seals s
     WHERE s.tenant_id = 'acme' AND s.block_no >= (SELECT block_no FROM equilateral.agent_audit_seals
       WHERE tenant_id = 'acme' AND ${rowId} = ANY (row_ids)) ORDER BY s.block_no`,
  )
  let prev = seals[0].prev_hash as string
  await owner.query(`BEGIN; SET LOCAL session_replication_role = replica`)
  for (const s of seals) {
    const { rows } = await owner.query(
      `SELECT ${ROW_COLUMNS} FROM equilateral.agent_audit_log a WHERE a.id = ANY ($1::bigint[]) ORDER BY a.txid, a.id`,
      [s.row_ids],
    )
    const dataHashes = (rows as AuditRow[]).map((r) => dataHash(r.data))
    const rowHashes = (rows as AuditRow[]).map((r, i) => rowHash('acme', r, dataHashes[i]!))
    const hash = blockHash(prev, s.block_no, s.first_seq, rowHashes)
    await owner.query(
      `UPDATE equilateral.agent_audit_seals SET data_hashes = $2, row_hashes = $3, prev_hash = $4, hash = $5
       WHERE tenant_id = 'acme' AND block_no = $1`,
      [s.block_no, dataHashes, rowHashes, prev, hash],
    )
    prev = hash
  }
  await owner.query('COMMIT')
}
