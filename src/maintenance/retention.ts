// The retention purge (src/compliance/retention.ts) on a schedule: a pg-boss cron schedule on the
// control database and on each tenant database this process serves, on the maintenance connection.
import {
  canMaintain,
  ensureRetentionQueue,
  type PurgeReport,
  purgeExpired,
  RETENTION_QUEUE,
} from '../compliance/retention.ts'
import type { Connections } from '../engine/connections.ts'
import type { EngineContext } from '../engine/context.ts'
import type { Store } from '../tenancy/stores.ts'
import type { Runner } from './runner.ts'

export class Retention {
  readonly #ctx: EngineContext
  readonly #runner: Runner
  readonly #connections: Connections

  constructor(ctx: EngineContext, runner: Runner, connections: Connections) {
    this.#ctx = ctx
    this.#runner = runner
    this.#connections = connections
  }

  /**
   * Runs the retention purge from a pg-boss cron schedule (hourly by default, sent once across the
   * fleet). Needs the maintenance connection (MAINTENANCE_DATABASE_URL, else the owner's:
   * MIGRATION_DATABASE_URL, or an owner DATABASE_URL): without one that may purge, logs a warning
   * and returns false; run `equilateral retention purge` from a scheduler then.
   */
  async start(cron = '17 * * * *'): Promise<boolean> {
    if (!(await canMaintain(this.#connections.maintenance))) {
      this.#ctx.log.warn(
        'retention purge not scheduled: the maintenance connection may not purge (set MAINTENANCE_DATABASE_URL to a login in equilateral_maintenance)',
      )
      return false
    }
    const schedule = async (store: Store, purge: () => Promise<PurgeReport>) => {
      await ensureRetentionQueue(store.boss)
      return this.#runner.cron(
        store,
        { queue: RETENTION_QUEUE, cron, pollingIntervalSeconds: 30 },
        async () => {
          const { problems, ...report } = await purge()
          for (const p of problems) this.#ctx.log.warn(p, 'retention purge skipped part of a tenant')
          this.#ctx.log.info({ ...report, database: store.key }, 'retention purge')
        },
      )
    }
    // The control database's tenants (all of them in the shared modes).
    await schedule(this.#ctx.stores.control, () =>
      purgeExpired(this.#connections.maintenance, { timeouts: this.#ctx.timeouts }, (scope) =>
        scope.database ? null : this.#connections.maintenance,
      ),
    )
    // database-per-tenant: each tenant database has its own schedule, run by the workers serving it.
    if (this.#ctx.config.isolationMode === 'database-per-tenant') {
      await this.#ctx.serve({
        name: 'retention',
        start: async (store, scope) => {
          return schedule(store, () =>
            purgeExpired(this.#connections.maintenanceOf(scope), { timeouts: this.#ctx.timeouts }),
          )
        },
      })
    }
    return true
  }
}
