// Tamper evidence for the audit log, without a lock on the hot path.
//
// Writers only INSERT audit rows, each stamped with its transaction's 64-bit id (txid). A sealer,
// per tenant and off the hot path, takes the rows below the horizon of its snapshot (every
// transaction with a smaller id has ended, so no row can appear there later), in (txid, id) order,
// numbers them contiguously after the previous block, and appends a block to agent_audit_seals:
//
//   data_hash = sha256(action_data::text)          (jsonb's text form is canonical)
//   row_hash  = sha256(JSON [tenant, id, txid, workflow, task, agent, action, actor, correlation,
//                            timestamp in microseconds, data_hash])
//   hash      = sha256(prev_hash, block_no, first_seq, row_hash...)
//
// verify recomputes all of it and names every row or block that differs: a row altered, a row
// deleted, a row inserted out of band into a sealed range, or a seal altered. A GDPR redaction
// replaces action_data with exactly {"$redacted": <id>}, and the append-only trigger records it in
// agent_audit_redactions (with the hash of the data replaced); the seal kept its data hash, so the
// chain still verifies (and the row is counted as redacted) when both agree, and any other change of
// the data is named. A retention purge keeps the purged blocks' hashes as the chain's anchor; purged
// blocks must be a prefix of the chain and past the tenant's audit retention (newest_at). (Numbers travel as text; ORDER BY names the table's columns, never the
// text aliases, which would sort '10' before '9'.)
//
// Over 400 lines on purpose: sealing and verifying share the row and block hash format above; in
// one file a change to how rows are sealed cannot drift from how they are checked.
import { createHash } from 'node:crypto'
import type { Db } from '../db/tx.ts'

export const GENESIS = '0'.repeat(64)

export interface SealReport {
  blocks: number
  rows: number
}

export type VerifyProblemKind =
  | 'altered'
  | 'deleted'
  | 'inserted'
  | 'seal_altered'
  | 'broken_chain'
  | 'unrecorded_redaction'
  | 'purged_out_of_order'
  | 'purged_early'
  | 'checkpoint_mismatch'

export interface VerifyProblem {
  kind: VerifyProblemKind
  blockNo: string
  /** The audit row concerned (its id, and its sequence number in the tenant's chain). */
  rowId?: string
  seq?: string
  message: string
}

export interface VerifyReport {
  tenantId: string
  ok: boolean
  blocks: number
  rows: number
  redacted: number
  purgedBlocks: number
  /** Rows written but not sealed yet (newer than the last block). */
  unsealed: number
  /** The first problem (null: none); `problems` has every one, in chain order. */
  problem: VerifyProblem | null
  problems: VerifyProblem[]
}

export const ROW_COLUMNS = `a.id::text, a.txid::text, a.workflow_id, a.task_id, a.agent_id, a.action_type, a.actor,
  a.correlation_id, (extract(epoch FROM a."timestamp") * 1000000)::bigint::text AS ts_us, a.action_data::text AS data`

export interface AuditRow {
  id: string
  txid: string
  workflow_id: string
  task_id: string | null
  agent_id: string | null
  action_type: string
  actor: string | null
  correlation_id: string | null
  ts_us: string
  data: string
}

interface SealRow {
  block_no: string
  first_seq: string
  row_count: number
  last_txid: string
  last_id: string
  row_ids: string[]
  row_hashes: string[]
  data_hashes: string[]
  prev_hash: string
  hash: string
  purged_at: Date | null
  newest_at: Date | null
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex')

export function dataHash(dataText: string): string {
  return sha256(dataText)
}

export function rowHash(tenantId: string, r: AuditRow, dataHashHex: string): string {
  return sha256(
    JSON.stringify([
      tenantId,
      r.id,
      r.txid,
      r.workflow_id,
      r.task_id,
      r.agent_id,
      r.action_type,
      r.actor,
      r.correlation_id,
      r.ts_us,
      dataHashHex,
    ]),
  )
}

export function blockHash(prevHash: string, blockNo: string, firstSeq: string, rowHashes: string[]): string {
  return sha256([prevHash, blockNo, firstSeq, ...rowHashes].join('\n'))
}

/**
 * Seals the tenant's next audit rows (up to `maxRows` per block), in the caller's tenant-scoped
 * transaction. Sealers of one tenant take turns on a transaction advisory lock (writers never take
 * it); a sealer that finds it held seals nothing and leaves the tenant to the holder, or to its next
 * pass, instead of waiting (the holder may be a frozen process).
 */
export async function sealTenantTx(db: Db, tenantId: string, maxRows = 1000): Promise<SealReport> {
  const turn = await db.executeSql(
    `SELECT pg_try_advisory_xact_lock(hashtextextended('equilateral.seal:' || $1, 0)) AS ok`,
    [tenantId],
  )
  if (!turn.rows[0]?.ok) return { blocks: 0, rows: 0 }
  const horizon = await db.executeSql(`SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS xmin`, [])
  const last = await db.executeSql(
    `SELECT block_no::text, first_seq::text, row_count, last_txid::text, last_id::text, hash
     FROM agent_audit_seals s WHERE s.tenant_id = $1 ORDER BY s.block_no DESC LIMIT 1`,
    [tenantId],
  )
  const prev = last.rows[0] as
    | {
        block_no: string
        first_seq: string
        row_count: number
        last_txid: string
        last_id: string
        hash: string
      }
    | undefined
  const { rows } = await db.executeSql(
    `SELECT ${ROW_COLUMNS} FROM agent_audit_log a
     WHERE a.tenant_id = $1 AND (a.txid, a.id) > ($2::bigint, $3::bigint) AND a.txid < $4::bigint
     ORDER BY a.txid, a.id LIMIT $5`,
    [tenantId, prev?.last_txid ?? '0', prev?.last_id ?? '0', horizon.rows[0]?.xmin, maxRows],
  )
  if (rows.length === 0) return { blocks: 0, rows: 0 }
  const audit = rows as AuditRow[]
  const blockNo = prev ? String(BigInt(prev.block_no) + 1n) : '1'
  const firstSeq = prev ? String(BigInt(prev.first_seq) + BigInt(prev.row_count)) : '1'
  const dataHashes = audit.map((r) => dataHash(r.data))
  const rowHashes = audit.map((r, i) => rowHash(tenantId, r, dataHashes[i] as string))
  const prevHash = prev?.hash ?? GENESIS
  const lastRow = audit[audit.length - 1] as AuditRow
  await db.executeSql(
    `INSERT INTO agent_audit_seals (tenant_id, block_no, first_seq, row_count, last_txid, last_id, row_ids,
       row_hashes, data_hashes, prev_hash, hash)
     VALUES ($1, $2, $3, $4, $5, $6, $7::bigint[], $8::text[], $9::text[], $10, $11)`,
    [
      tenantId,
      blockNo,
      firstSeq,
      audit.length,
      lastRow.txid,
      lastRow.id,
      audit.map((r) => r.id),
      rowHashes,
      dataHashes,
      prevHash,
      blockHash(prevHash, blockNo, firstSeq, rowHashes),
    ],
  )
  return { blocks: 1, rows: audit.length }
}

export interface VerifyOptions {
  /** Seals read per query (default 100). */
  pageSize?: number
  /**
   * The tenant's audit retention in days (its compliance profile's auditRetentionDays), or null if
   * it has none: then no block may be purged at all. Undefined: purges are checked for order only.
   */
  auditRetentionDays?: number | null
  /** A head from a checkpoint taken earlier (src/audit/checkpoint.ts): that block must still hash so. */
  head?: { blockNo: string; hash: string; takenAt: string }
}

const DAY_MS = 24 * 3600 * 1000

/**
 * Recomputes the tenant's chain, block by block, and reports every row or block that differs (a
 * block out of place is reported and the walk goes on from it as stored): data changed other than
 * by a recorded, canonical redaction, rows deleted or inserted, seals altered, blocks purged out of
 * order (not a prefix of the chain) or before the tenant's audit retention allowed.
 */
export async function verifyTenant(
  db: Db,
  tenantId: string,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const pageSize = options.pageSize ?? 100
  const report: VerifyReport = {
    tenantId,
    ok: true,
    blocks: 0,
    rows: 0,
    redacted: 0,
    purgedBlocks: 0,
    unsealed: 0,
    problem: null,
    problems: [],
  }
  const fail = (problem: VerifyProblem): void => {
    report.ok = false
    report.problem ??= problem
    report.problems.push(problem)
  }
  let expect = { blockNo: 1n, firstSeq: 1n, prevHash: GENESIS, txid: '0', id: '0' }
  // Whether a block not purged has been seen: a purged block after it breaks the prefix rule.
  let unpurgedSeen: string | null = null
  let headSeen = false
  for (;;) {
    const { rows: seals } = await db.executeSql(
      `SELECT block_no::text, first_seq::text, row_count, last_txid::text, last_id::text, row_ids::text[],
         row_hashes, data_hashes, prev_hash, hash, purged_at, newest_at
       FROM agent_audit_seals s WHERE s.tenant_id = $1 AND s.block_no >= $2 ORDER BY s.block_no LIMIT $3`,
      [tenantId, String(expect.blockNo), pageSize],
    )
    for (const s of seals as SealRow[]) {
      const at = s.block_no
      if (BigInt(s.block_no) !== expect.blockNo || BigInt(s.first_seq) !== expect.firstSeq) {
        fail({
          kind: 'broken_chain',
          blockNo: at,
          message: `block ${at} should be block ${expect.blockNo} starting at sequence ${expect.firstSeq}`,
        })
      } else if (s.prev_hash !== expect.prevHash) {
        fail({
          kind: 'broken_chain',
          blockNo: at,
          message: `block ${at} does not chain to the block before it`,
        })
      }
      if (s.purged_at) {
        report.purgedBlocks++
        checkPurge(s, unpurgedSeen, options.auditRetentionDays, fail)
      } else {
        unpurgedSeen ??= at
        if (blockHash(s.prev_hash, s.block_no, s.first_seq, s.row_hashes) !== s.hash) {
          fail({ kind: 'seal_altered', blockNo: at, message: `the seal of block ${at} was altered` })
        }
        const { rows } = await db.executeSql(
          `SELECT ${ROW_COLUMNS}, r.redaction, r.data_hash AS redacted_hash, (r.row_id IS NOT NULL) AS recorded
           FROM agent_audit_log a
           LEFT JOIN agent_audit_redactions r ON r.tenant_id = a.tenant_id AND r.row_id = a.id
           WHERE a.tenant_id = $1 AND (a.txid, a.id) > ($2::bigint, $3::bigint)
             AND (a.txid, a.id) <= ($4::bigint, $5::bigint)
           ORDER BY a.txid, a.id`,
          [tenantId, expect.txid, expect.id, s.last_txid, s.last_id],
        )
        const audit = rows as (AuditRow & RedactionColumns)[]
        const byId = new Map(audit.map((r) => [r.id, r]))
        const sealed = new Set(s.row_ids)
        const seqOf = (i: number) => String(BigInt(s.first_seq) + BigInt(i))
        for (let i = 0; i < s.row_ids.length; i++) {
          const id = s.row_ids[i] as string
          const r = byId.get(id)
          if (!r) {
            fail({
              kind: 'deleted',
              blockNo: at,
              rowId: id,
              seq: seqOf(i),
              message: `audit row ${id} (sequence ${seqOf(i)}) was deleted`,
            })
            continue
          }
          const stored = s.data_hashes[i] as string
          const problem = checkData(r, stored)
          if (problem === 'redacted') report.redacted++
          else if (problem !== null) {
            fail({
              kind: problem.kind,
              blockNo: at,
              rowId: id,
              seq: seqOf(i),
              message: `audit row ${id} (sequence ${seqOf(i)}) ${problem.message}`,
            })
          }
          if (rowHash(tenantId, r, stored) !== s.row_hashes[i]) {
            fail({
              kind: 'altered',
              blockNo: at,
              rowId: id,
              seq: seqOf(i),
              message: `audit row ${id} (sequence ${seqOf(i)}) was altered`,
            })
          }
        }
        for (const extra of audit.filter((r) => !sealed.has(r.id))) {
          fail({
            kind: 'inserted',
            blockNo: at,
            rowId: extra.id,
            message: `audit row ${extra.id} was inserted into sealed block ${at} out of band`,
          })
        }
        report.rows += audit.length
      }
      if (options.head && options.head.blockNo === s.block_no) {
        headSeen = true
        if (options.head.hash !== s.hash) {
          fail({
            kind: 'checkpoint_mismatch',
            blockNo: at,
            message: `block ${at} does not have the hash it had at the checkpoint of ${options.head.takenAt}: the chain up to it was rewritten`,
          })
        }
      }
      report.blocks++
      // From the block as stored: a block out of place is reported once, not every block after it.
      expect = {
        blockNo: BigInt(s.block_no) + 1n,
        firstSeq: BigInt(s.first_seq) + BigInt(s.row_count),
        prevHash: s.hash,
        txid: s.last_txid,
        id: s.last_id,
      }
    }
    if (seals.length < pageSize) break
  }
  if (options.head && options.head.blockNo !== '0' && !headSeen) {
    fail({
      kind: 'checkpoint_mismatch',
      blockNo: options.head.blockNo,
      message: `block ${options.head.blockNo}, the head at the checkpoint of ${options.head.takenAt}, is gone: the chain was cut back`,
    })
  }
  const { rows } = await db.executeSql(
    `SELECT count(*)::int AS n FROM agent_audit_log WHERE tenant_id = $1 AND (txid, id) > ($2::bigint, $3::bigint)`,
    [tenantId, expect.txid, expect.id],
  )
  report.unsealed = rows[0]?.n ?? 0
  return report
}

interface RedactionColumns {
  redaction: string | null
  redacted_hash: string | null
  recorded: boolean
}

/** The one form a redaction may give action_data: {"$redacted": <id>}, nothing else. */
export function redactionMarker(id: string): { $redacted: string } {
  return { $redacted: id }
}

/**
 * Null if the row's data is what was sealed; 'redacted' if it was replaced by a canonical marker
 * that agent_audit_redactions records, for this id and this sealed data; otherwise what is wrong.
 */
function checkData(
  r: AuditRow & RedactionColumns,
  sealedHash: string,
): null | 'redacted' | { kind: VerifyProblemKind; message: string } {
  if (dataHash(r.data) === sealedHash) return null
  const marker = canonicalRedaction(r.data)
  if (marker === null) {
    return { kind: 'altered', message: 'was altered: its data differs from what was sealed' }
  }
  if (!r.recorded || r.redaction !== marker) {
    return {
      kind: 'unrecorded_redaction',
      message: `was redacted ("${marker}") without a record of the redaction`,
    }
  }
  if (r.redacted_hash !== null && r.redacted_hash !== sealedHash) {
    return {
      kind: 'unrecorded_redaction',
      message: `was redacted ("${marker}"), but the record is of other data than was sealed`,
    }
  }
  return 'redacted'
}

/** The redaction id if the data is exactly {"$redacted": <string>}, else null. */
function canonicalRedaction(dataText: string): string | null {
  let v: unknown
  try {
    v = JSON.parse(dataText)
  } catch {
    return null
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null
  const keys = Object.keys(v)
  const id = (v as { $redacted?: unknown }).$redacted
  return keys.length === 1 && typeof id === 'string' ? id : null
}

/** A purged block must follow only purged blocks, and its rows must have been past retention. */
function checkPurge(
  s: SealRow,
  unpurgedSeen: string | null,
  retentionDays: number | null | undefined,
  fail: (p: VerifyProblem) => void,
): void {
  const at = s.block_no
  if (unpurgedSeen !== null) {
    fail({
      kind: 'purged_out_of_order',
      blockNo: at,
      message: `block ${at} is marked purged, but block ${unpurgedSeen} before it is not: purges remove the oldest blocks first`,
    })
  }
  if (retentionDays === null) {
    fail({
      kind: 'purged_early',
      blockNo: at,
      message: `block ${at} is marked purged, but the tenant has no audit retention`,
    })
  } else if (retentionDays !== undefined && s.newest_at && s.purged_at) {
    if (s.purged_at.getTime() - s.newest_at.getTime() < retentionDays * DAY_MS) {
      fail({
        kind: 'purged_early',
        blockNo: at,
        message: `block ${at} was purged ${s.purged_at.toISOString()}, before its newest row (${s.newest_at.toISOString()}) was ${retentionDays} days old`,
      })
    }
  }
}
