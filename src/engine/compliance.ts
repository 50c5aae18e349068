// Compliance operations over tenants' data: the retention purge, GDPR erasure (one data subject,
// or a whole tenant) on the maintenance connection, and re-encryption of stored payloads.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { type ErasureReport, eraseSubject, eraseTenant } from '../compliance/erasure.ts'
import { ownerTenant } from '../compliance/owner.ts'
import { type PurgeOptions, type PurgeReport, purgeExpired } from '../compliance/retention.ts'
import { type ReencryptOptions, type ReencryptReport, reencryptPayloads } from '../crypto/reencrypt.ts'
import type { Connections } from './connections.ts'
import type { EngineContext } from './context.ts'

export class Compliance {
  readonly #ctx: EngineContext
  readonly #connections: Connections

  constructor(ctx: EngineContext, connections: Connections) {
    this.#ctx = ctx
    this.#connections = connections
  }

  /**
   * Retention: purges, for every tenant, coordination data, compliance events and sealed audit
   * blocks past their retention, in bounded batches, recording a `purge` compliance event
   * (src/compliance/retention.ts). Maintenance connection.
   */
  purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    return purgeExpired(
      this.#connections.maintenance,
      { timeouts: this.#ctx.timeouts, ...options },
      (scope) => this.#connections.maintenanceOf(scope),
    )
  }

  /** GDPR erasure of one data subject's personal data (workflows started with that subjectKey). */
  async eraseSubject(tenantId: string, subjectKey: string): Promise<ErasureReport> {
    return eraseSubject(await this.#erasureDeps(tenantId), tenantId, subjectKey)
  }

  /** GDPR erasure of a whole tenant's personal data; the tenant stays (suspend it to stop intake). */
  async eraseTenantData(tenantId: string): Promise<ErasureReport> {
    return eraseTenant(await this.#erasureDeps(tenantId), tenantId)
  }

  /**
   * The maintenance pools (the tenant's database's, the control database's) and the store of the
   * database the tenant's data is in (any status), whose pool and pg-boss cancel its running workflows.
   */
  async #erasureDeps(
    tenantId: string,
  ): Promise<{ maintenance: pg.Pool; app: pg.Pool; boss: PgBoss; control: pg.Pool }> {
    const { scope } = await ownerTenant(this.#connections.maintenance, tenantId)
    const store = await this.#ctx.stores.of(scope)
    return {
      maintenance: this.#connections.maintenanceOf(scope),
      app: store.pool,
      boss: store.boss,
      control: this.#connections.maintenance,
    }
  }

  /**
   * Rewrites stored payloads (every tenant's, suspended ones too, or one tenant's) that are plain or
   * under another key, under the active key; in pages of `batchSize` rows, resumable.
   */
  reencrypt(options: ReencryptOptions = {}): Promise<ReencryptReport> {
    return reencryptPayloads(
      {
        poolOf: async (scope) => (await this.#ctx.stores.of(scope)).pool,
        tenants: this.#ctx.tenants,
        keyRing: this.#ctx.keyRing,
      },
      options,
    )
  }
}
