// Chain-head checkpoints that leave the database. Whoever holds the owner's rights (or a superuser)
// can rewrite audit rows and then recompute every seal after them: the chain verifies again. A
// checkpoint taken earlier and kept elsewhere (a file in another system, a ticket, a log) names each
// tenant's head block and its hash then; `verify --against` checks that the block still has that
// hash, so nothing up to it changed. The checkpoint is signed with a key derived from
// ENCRYPTION_KEYS (never in the database), so a forged checkpoint file is refused too; without keys
// it is unsigned and only as good as the place it is kept.
import type { Db } from '../db/tx.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { EquilateralError } from '../errors.ts'

export interface ChainHead {
  tenantId: string
  /** The last block then ('0': no block yet). */
  blockNo: string
  hash: string
  /** Rows sealed up to and including it. */
  rows: string
}

export interface AuditCheckpoint {
  version: 1
  takenAt: string
  heads: ChainHead[]
  /** `<key id>.<HMAC>` over the rest, or null without ENCRYPTION_KEYS. */
  signature: string | null
}

const PURPOSE = 'audit.checkpoint'

function signedText(c: Omit<AuditCheckpoint, 'signature'>): string {
  return JSON.stringify([c.version, c.takenAt, c.heads.map((h) => [h.tenantId, h.blockNo, h.hash, h.rows])])
}

/** The tenant's head block, read in its scope (ORDER BY the column, not the text alias). */
export async function chainHead(db: Db, tenantId: string): Promise<ChainHead> {
  const { rows } = await db.executeSql(
    `SELECT s.block_no::text, s.hash, (s.first_seq + s.row_count - 1)::text AS rows FROM agent_audit_seals s
     WHERE s.tenant_id = $1 ORDER BY s.block_no DESC LIMIT 1`,
    [tenantId],
  )
  const r = rows[0] as { block_no: string; hash: string; rows: string } | undefined
  return { tenantId, blockNo: r?.block_no ?? '0', hash: r?.hash ?? '', rows: r?.rows ?? '0' }
}

export function signCheckpoint(ring: KeyRing, heads: ChainHead[], takenAt = new Date()): AuditCheckpoint {
  const body = { version: 1 as const, takenAt: takenAt.toISOString(), heads }
  return { ...body, signature: ring.sign(PURPOSE, signedText(body)) }
}

/**
 * The checkpoint in `text`, if it is one and its signature verifies under the ring (unsigned
 * checkpoints are accepted only without keys); throws EquilateralError 'invalid_checkpoint'.
 */
export function readCheckpoint(ring: KeyRing, text: string): AuditCheckpoint {
  let c: AuditCheckpoint
  try {
    c = JSON.parse(text) as AuditCheckpoint
  } catch {
    throw new EquilateralError('invalid_checkpoint', 'the checkpoint is not JSON')
  }
  const heads = (c as { heads?: unknown }).heads
  if (
    c === null ||
    typeof c !== 'object' ||
    c.version !== 1 ||
    typeof c.takenAt !== 'string' ||
    !Array.isArray(heads) ||
    !heads.every(
      (h: ChainHead) =>
        h !== null &&
        typeof h === 'object' &&
        typeof h.tenantId === 'string' &&
        /^\d+$/.test(String(h.blockNo)) &&
        typeof h.hash === 'string' &&
        /^\d+$/.test(String(h.rows)),
    )
  ) {
    throw new EquilateralError('invalid_checkpoint', 'the checkpoint is not one `audit checkpoint` printed')
  }
  if (!ring.verify(PURPOSE, signedText(c), c.signature ?? null)) {
    throw new EquilateralError(
      'invalid_checkpoint',
      "the checkpoint's signature does not verify under this deployment's keys (ENCRYPTION_KEYS): altered, or signed elsewhere",
    )
  }
  return c
}
