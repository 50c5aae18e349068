// The engine's workers: startWorker (one worker on the control database and, in
// database-per-tenant mode, one per tenant database this process serves, sharing the agent slots),
// the metrics hooks every worker reports through, and the per-process passes workers bring along
// (statistics, liveness registration).
import type { AgentDefinition } from '../core/definition.ts'
import type { TenantScope } from '../db/tx.ts'
import { closeAgents } from '../flow/close-agents.ts'
import { LivenessRegistry } from '../flow/liveness.ts'
import { StatisticsPasses } from '../flow/statistics.ts'
import { Slots, Worker, type WorkerHooks } from '../flow/worker.ts'
import { FleetWorker, type TaskWorker } from '../fleet.ts'
import { ensureQueues } from '../queue/boss.ts'
import { databaseKey } from '../tenancy/placement.ts'
import type { Store } from '../tenancy/stores.ts'
import type { EngineContext } from './context.ts'
import type { Registry } from './registry.ts'

export class Workers {
  readonly #ctx: EngineContext
  readonly #registry: Registry
  /** The run-time connection string (the liveness registration's connection). */
  readonly #connectionString: string
  /** startWorker calls so far (each is a service of the fleet of its own). */
  #workerCalls = 0
  readonly #workers = new Set<Worker>()
  /** Worker liveness (src/flow/liveness.ts): this process's registration. */
  #liveness: LivenessRegistry | null = null
  /**
   * The statistics pass (src/flow/statistics.ts) over the databases this process's workers serve,
   * and each worker's hold on its database's place in it.
   */
  #statistics: StatisticsPasses | null = null
  readonly #statisticsHolds = new Map<Worker, () => void>()
  /** Agents given to startWorker, registered or not: their close hooks run at close() too. */
  readonly #workerAgents = new Set<AgentDefinition<any, any>>()
  #agentsClosed = false

  constructor(ctx: EngineContext, registry: Registry, connectionString: string) {
    this.#ctx = ctx
    this.#registry = registry
    this.#connectionString = connectionString
  }

  ensureQueues(agentIds: string[], boss = this.#ctx.boss): Promise<void> {
    return ensureQueues(boss, agentIds, {
      heartbeatSeconds: Math.max(30, Math.ceil((this.#ctx.config.staleAfterMs * 2) / 1000)),
      deleteAfterSeconds: 24 * 3600,
    })
  }

  /**
   * Creates the agents' queues and starts a worker running them in this process. In
   * database-per-tenant mode it also serves the tenant databases WORKER_TENANTS selects: one worker
   * per database (sharing this process's agent slots), started and stopped as the directory changes.
   */
  async startWorker(
    options: {
      agents?: readonly AgentDefinition<any, any>[]
      concurrency?: number
      hooks?: WorkerHooks
    } = {},
  ): Promise<TaskWorker> {
    const agents = options.agents ?? this.#registry.allAgents()
    for (const a of options.agents ?? []) this.#workerAgents.add(a)
    const slots = new Slots(options.concurrency ?? this.#ctx.config.workerConcurrency)
    const control =
      this.#ctx.config.workerTenants.kind === 'only' &&
      this.#ctx.config.isolationMode === 'database-per-tenant'
        ? null
        : await this.#startStoreWorker(this.#ctx.stores.control, agents, slots, options.hooks, (ids) =>
            this.#ctx.tenants
              .scopeOf(ids)
              .then((m) => new Map([...m].filter(([, scope]) => !scope.database))),
          )
    if (this.#ctx.config.isolationMode !== 'database-per-tenant') return control as Worker
    // Stopping the returned worker stops its tenant databases' workers; none is started after that.
    let stopped = false
    const workers = new Set<Worker>()
    await this.#ctx.serve({
      // One service per startWorker call (each has its own agents and hooks).
      name: `tasks-${++this.#workerCalls}`,
      start: async (store, scope) => {
        if (stopped) return async () => {}
        const key = store.key
        const worker = await this.#startStoreWorker(store, agents, slots, options.hooks, (ids) =>
          // Only the tenant this database belongs to, and only while the directory still puts it here.
          this.#ctx.tenants
            .scopeOf(ids)
            .then(
              (m) =>
                new Map(
                  [...m].filter(
                    ([id, s]) => id === scope.tenantId && s.database && databaseKey(s.database) === key,
                  ),
                ),
            ),
        )
        workers.add(worker)
        return async () => {
          workers.delete(worker)
          this.#workers.delete(worker)
          this.#statisticsHolds.get(worker)?.()
          this.#statisticsHolds.delete(worker)
          await worker.stop()
        }
      },
    })
    const fleetWorker = new FleetWorker(control, workers, control?.id ?? `fleet:${process.pid}`)
    const stop = fleetWorker.stop.bind(fleetWorker)
    fleetWorker.stop = async () => {
      stopped = true
      await stop()
    }
    return fleetWorker
  }

  async #startStoreWorker(
    store: Store,
    agents: readonly AgentDefinition<any, any>[],
    slots: Slots,
    hooks: WorkerHooks | undefined,
    scopeOf: (ids: string[]) => Promise<Map<string, TenantScope>>,
  ): Promise<Worker> {
    await this.ensureQueues([...new Set(agents.map((a) => a.id))], store.boss)
    const worker = new Worker({
      pool: store.pool,
      boss: store.boss,
      connectionString: store.connectionString,
      agents,
      scopeOf,
      log: store.database ? this.#ctx.log.child({ database: store.key }) : this.#ctx.log,
      concurrency: slots.size,
      slots,
      batchSize: this.#ctx.config.fetchBatchSize,
      pollIntervalMs: this.#ctx.config.pollIntervalMs,
      heartbeatIntervalMs: this.#ctx.config.heartbeatIntervalMs,
      shutdownGraceMs: this.#ctx.config.shutdownGraceMs,
      limits: this.#ctx.limits,
      keyRing: this.#ctx.keyRing,
      tenantConcurrency: this.#ctx.config.tenantConcurrency,
      localContinuation: this.#ctx.config.localContinuation,
      agentVersionRetryMs: this.#ctx.config.agentVersionRetryMs,
      agentVersionWaitMs: this.#ctx.config.agentVersionWaitMs,
      hooks: this.#metricsHooks(hooks, store.key),
      liveness: this.#livenessRegistry() ?? undefined,
    })
    await worker.start()
    this.#workers.add(worker)
    const statistics = this.#statisticsPasses()
    if (statistics) this.#statisticsHolds.set(worker, statistics.hold(store.key, store.pool))
    return worker
  }

  /**
   * The process's statistics loop, created with its first worker; null when STATISTICS_INTERVAL_MS
   * is 0. A worker's database gets its first pass at once: the tables a backlog filled before the
   * worker started are the ones its first claims read.
   */
  #statisticsPasses(): StatisticsPasses | null {
    if (this.#ctx.config.statisticsIntervalMs === 0 || this.#ctx.closing) return null
    this.#statistics ??= new StatisticsPasses({
      everyMs: this.#ctx.config.statisticsIntervalMs,
      log: this.#ctx.log,
      timeouts: this.#ctx.timeouts,
    })
    return this.#statistics
  }

  /** The process's liveness registration, on the control database; null when LIVENESS_INTERVAL_MS is 0. */
  #livenessRegistry(): LivenessRegistry | null {
    if (this.#ctx.config.livenessIntervalMs === 0) return null
    this.#liveness ??= new LivenessRegistry({
      connectionString: this.#connectionString,
      log: this.#ctx.log,
      checkMs: this.#ctx.config.heartbeatIntervalMs,
    })
    return this.#liveness
  }

  /** Worker hooks that feed the metrics, then call the caller's own hooks. */
  #metricsHooks(extra: WorkerHooks = {}, database: string): WorkerHooks {
    const m = this.#ctx.metrics
    return {
      taskStarted: (task, tenant, dispatchMs) => {
        m.tasksStarted.inc(m.withTenant({ agent: task.agentId }, tenant, database))
        m.taskQueueWait.observe({ agent: task.agentId }, task.queueWaitMs / 1000)
        m.taskDispatchLatency.observe({ agent: task.agentId }, dispatchMs / 1000)
        extra.taskStarted?.(task, tenant, dispatchMs)
      },
      taskFinished: (task, tenant, outcome, ms) => {
        m.tasksFinished.inc(m.withTenant({ agent: task.agentId, outcome }, tenant, database))
        if (outcome !== 'released') m.taskRunDuration.observe({ agent: task.agentId }, ms / 1000)
        if (outcome === 'failed') m.deadLettered.inc({ agent: task.agentId })
        extra.taskFinished?.(task, tenant, outcome, ms)
      },
      usageRecorded: (task, tenant, usage) => {
        for (const [dimension, amount] of Object.entries(usage))
          m.agentUsage.inc(m.withTenant({ agent: task.agentId, dimension }, tenant, database), amount)
        extra.usageRecorded?.(task, tenant, usage)
      },
      workflowFinished: (tenant, type, status, ms) => {
        m.workflowFinished(type, status, ms, tenant, database)
        extra.workflowFinished?.(tenant, type, status, ms)
      },
    }
  }

  /** Stops the workers (gracefully), then runs the agents' close hooks, once. */
  async stop(): Promise<void> {
    await Promise.allSettled([...this.#workers].map((w) => w.stop()))
    this.#workers.clear()
    // Once, with no agent running any more: what the agents opened themselves (defineAgent close).
    if (!this.#agentsClosed) {
      this.#agentsClosed = true
      await closeAgents(new Set([...this.#registry.allAgents(), ...this.#workerAgents]), {
        timeoutMs: this.#ctx.config.shutdownGraceMs,
        log: this.#ctx.log,
      })
    }
  }

  /** Stops the statistics pass and ends the liveness registration (after stop()). */
  async close(): Promise<void> {
    await this.#statistics?.stop()
    this.#statisticsHolds.clear()
    await this.#liveness?.close()
  }
}
