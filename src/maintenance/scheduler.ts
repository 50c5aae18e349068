// The cron scheduler (src/schedule/scheduler.ts): starts a workflow for each due slot of the
// tenants' cron schedules, every SCHEDULER_INTERVAL_MS, over the control database's tenants and
// each tenant database this process serves.
import type { TenantScope } from '../db/tx.ts'
import type { EngineContext } from '../engine/context.ts'
import type { Registry } from '../engine/registry.ts'
import { InvalidInputError } from '../errors.ts'
import { releasePass, type ScheduleReport, runSchedules, takePass } from '../schedule/scheduler.ts'
import type { Store } from '../tenancy/stores.ts'
import { controlTenants, type Runner } from './runner.ts'

export class Scheduler {
  readonly #ctx: EngineContext
  readonly #runner: Runner
  readonly #registry: Registry

  constructor(ctx: EngineContext, runner: Runner, registry: Registry) {
    this.#ctx = ctx
    this.#runner = runner
    this.#registry = registry
  }

  /**
   * How old a due cron slot may be and still start its workflow: SCHEDULER_GRACE_MS, or twice the
   * scheduler interval if that is more (a slot a running scheduler sees late is not a missed slot).
   */
  get graceMs(): number {
    return Math.max(this.#ctx.config.schedulerGraceMs, 2 * this.#ctx.config.schedulerIntervalMs)
  }

  /**
   * One scheduler pass over every active tenant (or the given ones): starts a workflow for each
   * due slot of their cron schedules, once per slot whatever the number of processes doing this at
   * the same time, and applies the missed-slot policy to slots older than the grace (see
   * src/schedule/scheduler.ts). `now` judges slots by that instant instead of the database clock.
   */
  async run(
    options: { now?: Date } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.#ctx.tenants.active(),
  ): Promise<ScheduleReport> {
    if (
      options.now !== undefined &&
      !(options.now instanceof Date && Number.isFinite(options.now.getTime()))
    ) {
      throw new InvalidInputError('now must be a valid Date', '$.now')
    }
    return runSchedules(
      {
        keyRing: this.#ctx.keyRing,
        limits: this.#ctx.limits,
        definition: (type) => this.#registry.latest(type),
        types: () => this.#registry.workflowTypes,
        storeOf: (scope) => this.#ctx.stores.of(scope),
        started: (start, database) =>
          this.#ctx.metrics.workflowsStarted.inc(
            this.#ctx.metrics.withTenant({ type: start.workflowType }, start.tenantId, database),
          ),
      },
      scopes,
      {
        graceMs: this.graceMs,
        timeouts: this.#ctx.timeouts,
        ...(options.now ? { now: options.now } : {}),
      },
    )
  }

  /**
   * Runs the scheduler in this process every SCHEDULER_INTERVAL_MS (0: not at all): over the control
   * database's tenants and, in database-per-tenant mode, over each tenant database this process
   * serves. Every process may run it: each tick first takes the pass over its database (takePass),
   * so one process per interval passes over the tenants, and each slot starts one workflow (SKIP
   * LOCKED and the slot's idempotency key). Stopped by close().
   */
  async start(): Promise<void> {
    const every = this.#ctx.config.schedulerIntervalMs
    if (every === 0) return
    const loop = (store: Store, scopes: () => AsyncIterable<TenantScope> | Iterable<TenantScope>) => {
      const database = store.key
      const pass = async () => {
        // One pass per interval across the fleet, whatever the number of processes ticking.
        if (!(await takePass(store.pool, 'scheduler', every))) {
          this.#ctx.metrics.schedulerPasses.inc({ outcome: 'skipped' })
          return
        }
        this.#ctx.metrics.schedulerPasses.inc({ outcome: 'ran' })
        const report = await this.run({}, scopes())
        const { starts: _starts, ...counts } = report
        if (report.skipped > 0 || report.caughtUp > 0)
          this.#ctx.log.info({ ...counts, database }, 'missed cron slots')
        else if (report.started > 0)
          this.#ctx.log.debug({ ...counts, database }, 'cron schedules started workflows')
        for (const p of report.problems)
          this.#ctx.log.warn({ ...p, database }, 'cron schedule failed to start its workflow')
        for (const u of report.unknownTypes)
          this.#ctx.log.warn(
            { ...u, database },
            'cron schedule of a workflow type this process does not know',
          )
        // Only while such a slot is on time: a type no process knows (removed from the code) must not
        // make every process pass on every tick for ever.
        if (report.unknownTypes.some((u) => u.onTime)) await releasePass(store.pool, 'scheduler')
      }
      return this.#runner.every(store, { everyMs: every, failed: 'scheduler pass failed', database }, pass)
    }
    loop(this.#ctx.stores.control, () => controlTenants(this.#ctx.tenants))
    if (this.#ctx.config.isolationMode === 'database-per-tenant') {
      await this.#ctx.serve({
        name: 'scheduler',
        start: async (store, scope) => loop(store, () => [scope]),
      })
    }
  }
}
