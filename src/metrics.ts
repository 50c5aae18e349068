// Prometheus metrics of a process (prom-client). Each Engine owns one registry, so tests can run
// several engines in one process without their series mixing; web serves it at /metrics and workers
// on METRICS_PORT (src/metrics-server.ts).
//
// Names follow the Prometheus conventions: the `equilateral_` prefix, base units in the name
// (`_seconds`), `_total` on counters. Labels are bounded sets: agent ids, workflow types, queue
// names, outcomes. Tenant ids are NOT labels unless METRICS_TENANT_LABEL is set (see
// docs/operations-and-deploying.md#metrics): with thousands of tenants every tenant-labelled series
// multiplies by the tenant count.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client'

/** Seconds, from 1 ms to 1 min: dispatch latency lives at the low end, agents at the high end. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
/** Seconds, from 10 ms to 1 h: whole workflows. */
const DURATION_BUCKETS = [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600]

/** How old the queue depths may be when scraped (each refresh is one small query). */
const QUEUE_STATS_MAX_AGE_MS = 5000

export interface MetricsOptions {
  /** Adds a `tenant` label to the task and workflow counters (not histograms). Default false. */
  tenantLabel?: boolean
  /**
   * database-per-tenant: adds a `database` label (`control`, or `server/database`) to the task and
   * workflow counters and to the pool and queue gauges. Default false.
   */
  databaseLabel?: boolean
}

interface Resources {
  pool: pg.Pool
  poolName: string
  database: string
  queues: () => Promise<Awaited<ReturnType<PgBoss['getQueues']>>>
}

const TASK_OUTCOMES = ['completed', 'retrying', 'failed', 'lease_lost', 'released'] as const
const WORKFLOW_ENDS = ['completed', 'failed', 'cancelled'] as const
export type TaskOutcome = (typeof TASK_OUTCOMES)[number]
export type WorkflowEnd = (typeof WORKFLOW_ENDS)[number]

export class Metrics {
  readonly registry = new Registry()
  readonly tenantLabel: boolean
  readonly databaseLabel: boolean
  /** What the pool and queue gauges read at scrape time, one entry per database. */
  readonly #resources = new Set<Resources>()

  readonly tasksStarted: Counter<string>
  readonly tasksFinished: Counter<string>
  readonly taskRunDuration: Histogram<string>
  readonly taskDispatchLatency: Histogram<string>
  readonly taskQueueWait: Histogram<string>
  readonly deadLettered: Counter<string>
  readonly workflowsStarted: Counter<string>
  readonly workflowsFinished: Counter<string>
  readonly workflowDuration: Histogram<string>
  readonly sweeperRecovered: Counter<string>
  readonly schedulerPasses: Counter<string>
  readonly agentUsage: Counter<string>
  /** Per tenant: its budgets reached in their current period, as last seen (budget pass, budget set). */
  readonly #budgetsExceeded = new Map<string, { dimension: string; period: string; hard: boolean }[]>()

  constructor(options: MetricsOptions = {}) {
    this.tenantLabel = options.tenantLabel ?? false
    this.databaseLabel = options.databaseLabel ?? false
    const t = [...(this.tenantLabel ? ['tenant'] : []), ...(this.databaseLabel ? ['database'] : [])]
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry })
    // Gauges named like counters (promtool's lint refuses them); nodejs_active_handles and
    // nodejs_active_requests, by type, carry the same numbers.
    for (const name of [
      'nodejs_active_handles_total',
      'nodejs_active_requests_total',
      'nodejs_active_resources_total',
    ])
      this.registry.removeSingleMetric(name)
    this.tasksStarted = new Counter({
      name: 'equilateral_tasks_started_total',
      help: 'Task attempts whose agent started in this process.',
      labelNames: ['agent', ...t],
      registers,
    })
    this.tasksFinished = new Counter({
      name: 'equilateral_tasks_finished_total',
      help: 'Task attempts that ended in this process, by outcome: completed, retrying (failed, another attempt queued), failed (for good), lease_lost (cancelled or recovered elsewhere; result discarded), released (at shutdown).',
      labelNames: ['agent', 'outcome', ...t],
      registers,
    })
    this.taskRunDuration = new Histogram({
      name: 'equilateral_task_run_duration_seconds',
      help: "Time an agent's handler ran, per attempt.",
      labelNames: ['agent'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.taskDispatchLatency = new Histogram({
      name: 'equilateral_task_dispatch_latency_seconds',
      help: 'From the moment a task became ready (its last dependency committed, or its retry became due) to its agent starting.',
      labelNames: ['agent'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.taskQueueWait = new Histogram({
      name: 'equilateral_task_queue_wait_seconds',
      help: 'From the moment a task became ready to a worker claiming it (database clock): the part of dispatch latency spent waiting in the queue.',
      labelNames: ['agent'],
      buckets: LATENCY_BUCKETS,
      registers,
    })
    this.deadLettered = new Counter({
      name: 'equilateral_tasks_dead_lettered_total',
      help: 'Tasks that failed for good and were recorded in the dead-letter queue by this process.',
      labelNames: ['agent'],
      registers,
    })
    this.workflowsStarted = new Counter({
      name: 'equilateral_workflows_started_total',
      help: 'Workflows started through this process (repeated idempotency keys are not counted).',
      labelNames: ['type', ...t],
      registers,
    })
    this.workflowsFinished = new Counter({
      name: 'equilateral_workflows_finished_total',
      help: 'Workflows that ended in this process, by status: completed, failed, cancelled.',
      labelNames: ['type', 'status', ...t],
      registers,
    })
    this.workflowDuration = new Histogram({
      name: 'equilateral_workflow_duration_seconds',
      help: 'From start to end of a workflow, by type and final status.',
      labelNames: ['type', 'status'],
      buckets: DURATION_BUCKETS,
      registers,
    })
    this.sweeperRecovered = new Counter({
      name: 'equilateral_sweeper_recovered_tasks_total',
      help: 'Tasks the sweeper recovered: requeued (job lost or worker silent, attempt left) or lost (no attempt left: failed).',
      labelNames: ['action'],
      registers,
    })
    this.schedulerPasses = new Counter({
      name: 'equilateral_scheduler_passes_total',
      help: 'Scheduler ticks of this process: ran (it took the pass over its database) or skipped (another process had, within SCHEDULER_INTERVAL_MS).',
      labelNames: ['outcome'],
      registers,
    })
    this.agentUsage = new Counter({
      name: 'equilateral_agent_usage_total',
      help: "Usage agents reported (ctx.usage) and this process recorded with their attempts (completed or failed), by agent and dimension, in the dimension's unit.",
      labelNames: ['agent', 'dimension', ...t],
      registers,
    })
    const budgets = this.#budgetsExceeded
    const tenantLabel = this.tenantLabel
    new Gauge({
      name: 'equilateral_budgets_exceeded',
      help: "Budgets reached in their current period (kind hard: the tenant's tasks are held; soft: an alert), by dimension and period, as of the last budget pass or budget change seen by this process. Alert on > 0.",
      labelNames: ['dimension', 'period', 'kind', ...(tenantLabel ? ['tenant'] : [])],
      registers,
      collect() {
        this.reset()
        const counts = new Map<string, { labels: Record<string, string>; n: number }>()
        for (const [tenant, list] of budgets) {
          for (const b of list) {
            const labels = {
              dimension: b.dimension,
              period: b.period,
              kind: b.hard ? 'hard' : 'soft',
              ...(tenantLabel ? { tenant } : {}),
            }
            const key = JSON.stringify(labels)
            const e = counts.get(key) ?? { labels, n: 0 }
            e.n++
            counts.set(key, e)
          }
        }
        for (const { labels, n } of counts.values()) this.set(labels, n)
      },
    })
    for (const action of ['requeued', 'lost']) this.sweeperRecovered.inc({ action }, 0)
    for (const outcome of ['ran', 'skipped']) this.schedulerPasses.inc({ outcome }, 0)
  }

  /**
   * Series at zero for an agent this process knows, so that dashboards and alerts (rate(), absent())
   * see them before the first task ends, not only after it. Counters with a tenant label start with
   * that tenant's first event: tenants are not known here.
   */
  declareAgent(agent: string): void {
    const started = this.#untenanted({ agent })
    if (started) this.tasksStarted.inc(started, 0)
    for (const outcome of TASK_OUTCOMES) {
      const labels = this.#untenanted({ agent, outcome })
      if (labels) this.tasksFinished.inc(labels, 0)
    }
    this.deadLettered.inc({ agent }, 0)
    for (const h of [this.taskRunDuration, this.taskDispatchLatency, this.taskQueueWait]) h.zero({ agent })
  }

  /** A tenant's budgets reached in their current period (the alert gauge's source). */
  budgetsObserved(
    tenant: string,
    exceeded: readonly { dimension: string; period: string; hard: boolean }[],
  ): void {
    if (exceeded.length === 0) this.#budgetsExceeded.delete(tenant)
    else this.#budgetsExceeded.set(tenant, [...exceeded])
  }

  /** Series at zero for a workflow type this process knows (see declareAgent). */
  declareWorkflowType(type: string): void {
    const started = this.#untenanted({ type })
    if (started) this.workflowsStarted.inc(started, 0)
    for (const status of WORKFLOW_ENDS) {
      const labels = this.#untenanted({ type, status })
      if (labels) this.workflowsFinished.inc(labels, 0)
      this.workflowDuration.zero({ type, status })
    }
  }

  /** The labels of a series that may carry tenant or database labels, or null where a tenant is needed. */
  #untenanted<L extends Record<string, string>>(labels: L): L | null {
    if (this.tenantLabel) return null
    return this.databaseLabel ? { ...labels, database: 'control' } : labels
  }

  /** Labels with the tenant, and the database, only when the deployment asked for them. */
  withTenant<L extends Record<string, string>>(labels: L, tenant: string, database = 'control'): L {
    return {
      ...labels,
      ...(this.tenantLabel ? { tenant } : {}),
      ...(this.databaseLabel ? { database } : {}),
    }
  }

  workflowFinished(
    type: string,
    status: WorkflowEnd,
    durationMs: number | null,
    tenant: string,
    database = 'control',
  ): void {
    this.workflowsFinished.inc(this.withTenant({ type, status }, tenant, database))
    if (durationMs !== null) this.workflowDuration.observe({ type, status }, durationMs / 1000)
  }

  /**
   * Gauges read at scrape time: the pool's connections, and pg-boss's per-queue job counts (from its
   * queue table, which its monitor keeps up to date: one row per queue, never a scan of the jobs).
   * One call per database (database-per-tenant: one per tenant database open); returns the call
   * that stops observing it.
   */
  observeResources(pool: pg.Pool, boss: PgBoss, poolName = 'app', database = 'control'): () => void {
    if (this.#resources.size === 0) this.#registerResourceGauges()
    let cached: { at: number; queues: Awaited<ReturnType<PgBoss['getQueues']>> } | null = null
    const entry: Resources = {
      pool,
      poolName,
      database,
      queues: async () => {
        if (!cached || Date.now() - cached.at > QUEUE_STATS_MAX_AGE_MS) {
          cached = { at: Date.now(), queues: await boss.getQueues() }
        }
        return cached.queues
      },
    }
    this.#resources.add(entry)
    return () => {
      this.#resources.delete(entry)
    }
  }

  #registerResourceGauges(): void {
    const resources = this.#resources
    const db = (r: Resources) => (this.databaseLabel ? { database: r.database } : {})
    const d = this.databaseLabel ? ['database'] : []
    new Gauge({
      name: 'equilateral_db_pool_connections',
      help: 'Connections of the database pool, by state: in_use, idle, waiting (requests queued for a connection).',
      labelNames: ['pool', 'state', ...d],
      registers: [this.registry],
      collect() {
        this.reset()
        for (const r of resources) {
          const { pool, poolName } = r
          this.set({ pool: poolName, state: 'in_use', ...db(r) }, pool.totalCount - pool.idleCount)
          this.set({ pool: poolName, state: 'idle', ...db(r) }, pool.idleCount)
          this.set({ pool: poolName, state: 'waiting', ...db(r) }, pool.waitingCount)
        }
      },
    })
    const all = () =>
      Promise.all([...resources].map(async (r) => ({ r, queues: await r.queues().catch(() => []) })))
    new Gauge({
      name: 'equilateral_queue_jobs',
      help: 'Jobs per pg-boss queue and state: queued (created, incl. deferred), deferred (waiting for a start time, e.g. a retry backoff), active, failed (kept until deleted). As of the last pg-boss monitor pass.',
      labelNames: ['queue', 'state', ...d],
      registers: [this.registry],
      async collect() {
        const found = await all()
        this.reset()
        for (const { r, queues } of found) {
          for (const q of queues) {
            this.set({ queue: q.name, state: 'queued', ...db(r) }, q.queuedCount)
            this.set({ queue: q.name, state: 'deferred', ...db(r) }, q.deferredCount)
            this.set({ queue: q.name, state: 'active', ...db(r) }, q.activeCount)
            this.set({ queue: q.name, state: 'failed', ...db(r) }, q.failedCount ?? 0)
          }
        }
      },
    })
    new Gauge({
      name: 'equilateral_queue_oldest_ready_job_age_seconds',
      help: 'Age of the oldest job ready to run per queue (0 when none), as of the last pg-boss monitor pass: a queue nobody drains grows it.',
      labelNames: ['queue', ...d],
      registers: [this.registry],
      async collect() {
        const found = await all()
        this.reset()
        for (const { r, queues } of found) {
          for (const q of queues) this.set({ queue: q.name, ...db(r) }, Number(q.readyOldestSeconds ?? 0))
        }
      },
    })
  }

  /** The exposition text and its content type. */
  async expose(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
