// Crypto-erasure (issue 25, item 3): a data subject's, or a whole tenant's, data keys destroyed, so
// every value encrypted under them is unreadable wherever a copy of it is: the live rows, replicas,
// WAL archives, dumps and base backups taken before. Fast (no row is read or rewritten) and complete
// for what the keys cover; docs/encryption.md says what they do not cover (plain-text columns,
// values written without data keys, and a backup's own copy of the wrapped keys while the KEK that
// wrapped them is still held).
//
// As the row erasure does (erasure.ts), the running workflows concerned are cancelled first on the
// application connection, so nothing of the subject is written after. Then, in one maintenance
// transaction scoped to the tenant, maintenance_destroy_data_keys (drizzle/tenant/0018) destroys
// the keys and one `deletion` compliance event per regime records it (the subject only as its
// SHA-256, as the row erasure records it). Reads of values under a destroyed key answer the typed
// marker {"$erased": true, "erasure": <id>}. Running it again destroys what was created since.
import { randomUUID } from 'node:crypto'
import { subjectHash } from '../crypto/data-keys.ts'
import { InvalidInputError } from '../errors.ts'
import { cancelRunning, type Deps } from './erasure.ts'
import { ERASURE_ACTOR, maintenanceTx, ownerTenant, recordComplianceEventTx } from './owner.ts'

export interface CryptoErasureReport {
  tenantId: string
  erasureId: string
  scope: 'subject' | 'tenant'
  crypto: true
  /** Running workflows cancelled before the keys were destroyed. */
  cancelled: number
  /** Data keys destroyed. */
  keys: number
  /** `deletion` compliance events written (one per regime that applies). */
  events: number
}

export async function cryptoErase(
  deps: Deps,
  tenantId: string,
  subjectKey?: string,
): Promise<CryptoErasureReport> {
  if (
    subjectKey !== undefined &&
    (typeof subjectKey !== 'string' || subjectKey.length === 0 || subjectKey.length > 200)
  ) {
    throw new InvalidInputError('subjectKey must be a string of 1-200 characters', '$.subjectKey')
  }
  const { scope } = await ownerTenant(deps.maintenance, tenantId)
  const t = scope.tenantId
  const report: CryptoErasureReport = {
    tenantId: t,
    erasureId: randomUUID(),
    scope: subjectKey === undefined ? 'tenant' : 'subject',
    crypto: true,
    cancelled: 0,
    keys: 0,
    events: 0,
  }
  if (subjectKey === undefined) {
    await cancelRunning(
      deps,
      scope,
      `SELECT id FROM workflows WHERE tenant_id = $1 AND status = 'running' LIMIT $2`,
      [t],
      report,
    )
  } else {
    await cancelRunning(
      deps,
      scope,
      `SELECT id FROM workflows WHERE tenant_id = $1 AND subject_key = $2 AND status = 'running' LIMIT $3`,
      [t, subjectKey],
      report,
    )
  }
  const hash = subjectKey === undefined ? null : subjectHash(subjectKey)
  const done = await maintenanceTx(deps.maintenance, scope, async (db) => {
    const { rows } = await db.executeSql('SELECT maintenance_destroy_data_keys($1, $2, $3) AS n', [
      t,
      report.erasureId,
      hash,
    ])
    const keys = (rows[0]?.n as number | undefined) ?? 0
    const events = await recordComplianceEventTx(db, t, ERASURE_ACTOR, 'deletion', {
      erasure: report.erasureId,
      scope: report.scope,
      crypto: true,
      ...(hash === null ? {} : { subject: hash }),
      cancelled: report.cancelled,
      keys,
    })
    return { keys, events }
  })
  return { ...report, ...done }
}
