// The audit trail's integrity, over every active tenant: sealing new rows into each tenant's hash
// chain, signed checkpoints of the chain heads, and verification (src/audit/).
import { type AuditCheckpoint, type ChainHead, chainHead, signCheckpoint } from '../audit/checkpoint.ts'
import { type SealReport, sealTenantTx, type VerifyReport, verifyTenant } from '../audit/seal.ts'
import { auditRetentionDays as auditRetentionOf, parseComplianceProfile } from '../compliance/profile.ts'
import { APP_SCHEMA } from '../db/names.ts'
import { isTimedOut, type TenantScope, withTenantTx, withTimeouts } from '../db/tx.ts'
import type { EngineContext } from './context.ts'

export class Audit {
  readonly #ctx: EngineContext

  constructor(ctx: EngineContext) {
    this.#ctx = ctx
  }

  /**
   * Seals every active tenant's new audit rows into its hash chain (runs with the sweeper; safe
   * beside writers and beside another sealer). A tenant another sealer is on, or whose transaction
   * times out, is left for the next pass; the others are sealed.
   */
  async sealAudit(
    options: { maxRowsPerBlock?: number } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.#ctx.tenants.active(),
  ): Promise<SealReport> {
    const total: SealReport = { blocks: 0, rows: 0 }
    for await (const scope of scopes) {
      const { pool } = await this.#ctx.stores.of(scope)
      // Bounded per run, so a tenant that writes without pause cannot hold the sealer.
      for (let blocks = 0; blocks < 20; blocks++) {
        const r = await withTimeouts(this.#ctx.timeouts)(pool, scope, (db) =>
          sealTenantTx(db, scope.tenantId, options.maxRowsPerBlock),
        ).catch((error: unknown) => {
          if (isTimedOut(error)) return { blocks: 0, rows: 0 }
          throw error
        })
        total.blocks += r.blocks
        total.rows += r.rows
        if (r.blocks === 0) break
      }
    }
    return total
  }

  /**
   * Every active tenant's chain head, signed (src/audit/checkpoint.ts): keep it outside the
   * database, and `verifyAudit(…, { against })` shows later whether anything up to it changed.
   */
  async auditCheckpoint(): Promise<AuditCheckpoint> {
    const heads: ChainHead[] = []
    for await (const scope of this.#ctx.tenants.active()) {
      const { pool } = await this.#ctx.stores.of(scope)
      heads.push(await withTenantTx(pool, scope, (db) => chainHead(db, scope.tenantId)))
    }
    return signCheckpoint(this.#ctx.keyRing, heads)
  }

  /**
   * Recomputes audit hash chains: one tenant's, or every active tenant's; with `against`, also
   * checks each tenant head of that checkpoint.
   */
  async verifyAudit(tenantId?: string, options: { against?: AuditCheckpoint } = {}): Promise<VerifyReport[]> {
    const scopes = tenantId ? [await this.#ctx.tenants.require(tenantId)] : this.#ctx.tenants.active()
    const reports: VerifyReport[] = []
    for await (const scope of scopes) {
      const { pool } = await this.#ctx.stores.of(scope)
      const head = options.against?.heads.find((h) => h.tenantId === scope.tenantId)
      // Purged blocks are checked against the tenant's audit retention (none: nothing may be purged).
      const { rows } = await this.#ctx.pool.query(
        `SELECT compliance_profile FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
        [scope.tenantId],
      )
      let auditRetentionDays: number | null | undefined
      try {
        auditRetentionDays =
          auditRetentionOf(parseComplianceProfile(rows[0]?.compliance_profile ?? {})) ?? null
      } catch {
        auditRetentionDays = undefined // an invalid profile: purges are checked for order only
      }
      reports.push(
        await withTenantTx(pool, scope, (db) =>
          verifyTenant(db, scope.tenantId, {
            auditRetentionDays,
            ...(head ? { head: { ...head, takenAt: options.against?.takenAt ?? '' } } : {}),
          }),
        ),
      )
    }
    return reports
  }
}
