// What the parts of an engine share: the process's configuration, log, metrics, control pool, the
// stores and tenant directory, and a few engine-wide services (the maintenance timeouts, whether
// the engine is closing, the outage-aware warning, the tenant-database fleet). Built by the Engine
// (src/engine.ts); each part takes the context instead of the Engine, so no part imports it.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TxTimeouts } from '../db/tx.ts'
import type { FleetService } from '../fleet.ts'
import type { Metrics } from '../metrics.ts'
import type { Stores } from '../tenancy/stores.ts'
import type { TenantDirectory } from '../tenancy/tenants.ts'

export interface EngineContext {
  readonly config: Readonly<Config>
  readonly log: Logger
  readonly metrics: Metrics
  /** The control database's run-time pool and pg-boss. */
  readonly pool: pg.Pool
  readonly boss: PgBoss
  readonly stores: Stores
  readonly tenants: TenantDirectory
  readonly keyRing: KeyRing
  readonly limits: JsonLimits
  /** The lock and statement timeouts of the maintenance passes' transactions. */
  readonly timeouts: TxTimeouts
  /** Set once close() began: nothing new is started. */
  readonly closing: boolean
  /** Logs a failed database operation of the engine's own (counted, not logged, during an outage). */
  warn(details: object, error: unknown, msg: string): void
  /** Runs a service on every tenant database this process serves (database-per-tenant). */
  serve(service: FleetService): Promise<void>
}

/** The context of `engine`: its shared fields, and what only the Engine itself can answer. */
export function engineContext(
  engine: Pick<
    EngineContext,
    'config' | 'log' | 'metrics' | 'pool' | 'boss' | 'stores' | 'tenants' | 'keyRing' | 'limits'
  >,
  own: { closing: () => boolean; warn: EngineContext['warn']; serve: EngineContext['serve'] },
): EngineContext {
  return {
    config: engine.config,
    log: engine.log,
    metrics: engine.metrics,
    pool: engine.pool,
    boss: engine.boss,
    stores: engine.stores,
    tenants: engine.tenants,
    get keyRing() {
      return engine.keyRing
    },
    get limits() {
      return engine.limits
    },
    get timeouts() {
      const c = engine.config
      return {
        lockTimeoutMs: c.maintenanceLockTimeoutMs,
        statementTimeoutMs: c.maintenanceStatementTimeoutMs,
      }
    },
    get closing() {
      return own.closing()
    },
    warn: own.warn,
    serve: own.serve,
  }
}
