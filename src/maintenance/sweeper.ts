// The sweeper (src/flow/sweep.ts): requeues or fails the tasks of workers that stopped answering,
// then seals the audit rows written since the last pass. Runs every minute from a pg-boss cron
// schedule on each database, or every SWEEP_INTERVAL_MS on a local timer under an advisory lock;
// the liveness pass (src/flow/liveness.ts) sweeps at once when a worker's database session ends.
import type { SealReport } from '../audit/seal.ts'
import type { TenantScope } from '../db/tx.ts'
import { type DeadWorkers, findDeadWorkers, livenessPass } from '../flow/liveness.ts'
import { type SweepReport, sweepOnce } from '../flow/sweep.ts'
import type { EngineContext } from '../engine/context.ts'
import { SWEEP_QUEUE } from '../queue/boss.ts'
import type { Store } from '../tenancy/stores.ts'
import type { budgetPasses } from '../usage/service.ts'
import { controlTenants, type Runner, type Stop } from './runner.ts'

/** The session advisory lock of the timer-driven sweeper (one process per database at a time). */
const SWEEP_LOCK = 0x65717377

type BudgetPassReport = Awaited<ReturnType<typeof budgetPasses>>
type Scopes = AsyncIterable<TenantScope> | Iterable<TenantScope>

export class Sweeper {
  readonly #ctx: EngineContext
  readonly #runner: Runner
  readonly #seal: (options: { maxRowsPerBlock?: number }, scopes: Scopes) => Promise<SealReport>
  readonly #budgetPass: (scopes: Scopes) => Promise<BudgetPassReport>
  #livenessStarted = false

  constructor(
    ctx: EngineContext,
    runner: Runner,
    seal: (options: { maxRowsPerBlock?: number }, scopes: Scopes) => Promise<SealReport>,
    budgetPass: (scopes: Scopes) => Promise<BudgetPassReport>,
  ) {
    this.#ctx = ctx
    this.#runner = runner
    this.#seal = seal
    this.#budgetPass = budgetPass
  }

  /**
   * One pass of the stale-task sweeper over every active tenant (or the given ones), each in its
   * own database; a tenant database that cannot be reached is listed in `unreachable`. Running
   * tasks of workers whose database session ended (see startSweeper) are lost too, stale or not.
   */
  async sweep(
    options: { staleAfterMs?: number; deadWorkers?: DeadWorkers | null } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.#ctx.tenants.active(),
  ): Promise<SweepReport> {
    const deadWorkers =
      options.deadWorkers === undefined ? await findDeadWorkers(this.#ctx.pool) : options.deadWorkers
    const report = await sweepOnce((scope) => this.#ctx.stores.of(scope), scopes, {
      keyRing: this.#ctx.keyRing,
      limits: this.#ctx.limits,
      staleAfterMs: options.staleAfterMs ?? this.#ctx.config.staleAfterMs,
      batchSize: 500,
      maxPages: 20,
      timeouts: this.#ctx.timeouts,
      deadWorkers: deadWorkers ?? undefined,
    })
    this.#countSweep(report)
    return report
  }

  /**
   * A sweep's outcomes in the metrics, whoever ran it (the sweeper, a liveness pass, `equilateral
   * sweep`, the test kit): what it recovered, and the tasks and workflows it failed for good, which
   * the lost worker never counted.
   */
  #countSweep(report: SweepReport): void {
    const m = this.#ctx.metrics
    m.sweeperRecovered.inc({ action: 'requeued' }, report.requeued)
    m.sweeperRecovered.inc({ action: 'lost' }, report.lost)
    for (const t of report.ended.tasks) {
      m.tasksFinished.inc(m.withTenant({ agent: t.agentId, outcome: 'failed' }, t.tenantId, t.database))
      m.deadLettered.inc({ agent: t.agentId })
    }
    for (const w of report.ended.workflows)
      m.workflowFinished(w.type, 'failed', w.durationMs, w.tenantId, w.database)
  }

  /**
   * Every LIVENESS_INTERVAL_MS, one process of the fleet at a time looks for workers whose
   * database session ended; when it finds some, it sweeps every active tenant with their running
   * tasks taken as lost, then forgets them (src/flow/liveness.ts).
   */
  #startLivenessPasses(): void {
    if (this.#ctx.config.livenessIntervalMs === 0 || this.#livenessStarted) return
    this.#livenessStarted = true
    const recover = async (dead: DeadWorkers) => {
      const report = await this.sweep({ deadWorkers: dead })
      this.#ctx.log.info(
        { ...report, workers: dead.ids },
        'liveness pass: workers gone, their tasks recovered',
      )
      for (const f of report.failed) this.#ctx.log.warn({ ...f }, 'sweep of a tenant failed')
    }
    this.#runner.every(
      this.#ctx.stores.control,
      { everyMs: this.#ctx.config.livenessIntervalMs, failed: 'liveness pass failed' },
      async () => {
        await livenessPass(this.#ctx.pool, recover)
      },
    )
  }

  /**
   * Runs the sweeper across the fleet: from a pg-boss cron schedule (every minute, sent once
   * whatever the number of processes), or, with SWEEP_INTERVAL_MS, on a local timer guarded by an
   * advisory lock so only one process sweeps at a time.
   */
  async start(): Promise<void> {
    this.#startLivenessPasses()
    const run = async (store: Store, scopes: () => Scopes) => {
      const report = await this.sweep({}, scopes())
      if (report.requeued > 0 || report.lost > 0) {
        this.#ctx.log.info({ ...report, database: store.key }, 'sweeper recovered tasks')
      }
      for (const f of report.failed)
        this.#ctx.log.warn({ ...f, database: store.key }, 'sweep of a tenant failed')
      if (report.blocked.length > 0 || report.skipped > 0)
        this.#ctx.log.warn(
          { blocked: report.blocked, skipped: report.skipped, database: store.key },
          'sweep passed over what another transaction holds; the next sweep comes back to it',
        )
      const sealed = await this.#seal({}, scopes())
      if (sealed.rows > 0) this.#ctx.log.debug({ ...sealed, database: store.key }, 'audit rows sealed')
      const budgets = await this.#budgetPass(scopes())
      if (budgets.rolled > 0 || budgets.released > 0)
        this.#ctx.log.info(
          { ...budgets, exceeded: budgets.exceeded.length, database: store.key },
          'budget pass',
        )
    }
    // The control database sweeps its own tenants; each tenant database is swept on its own schedule.
    const control = this.#ctx.stores.control
    await this.#sweepOn(control, () => run(control, () => controlTenants(this.#ctx.tenants)))
    if (this.#ctx.config.isolationMode === 'database-per-tenant') {
      await this.#ctx.serve({
        name: 'sweeper',
        start: (store, scope) => this.#sweepOn(store, () => run(store, () => [scope])),
      })
    }
  }

  /**
   * Runs `run` on the store's database: from a pg-boss cron schedule (every minute, sent once
   * whatever the number of processes), or, with SWEEP_INTERVAL_MS, on a local timer guarded by an
   * advisory lock so only one process sweeps a database at a time. Returns its stop.
   */
  async #sweepOn(store: Store, run: () => Promise<void>): Promise<Stop> {
    const everyMs = this.#ctx.config.sweepIntervalMs
    if (everyMs > 0) {
      return this.#runner.every(
        store,
        { everyMs, failed: 'sweep failed', database: store.key, lockKey: SWEEP_LOCK },
        run,
      )
    }
    // The sweep queue exists: start() (or opening the store) created it with the agents' queues.
    return this.#runner.cron(store, { queue: SWEEP_QUEUE, cron: '* * * * *', pollingIntervalSeconds: 5 }, run)
  }
}
