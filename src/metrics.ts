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
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client'
import {
  type ConnectionCount,
  type ExceededBudget,
  registerBudgetGauge,
  registerConnectionsGauge,
  registerResourceGauges,
  type Resources,
} from './metrics-gauges.ts'

export type { ConnectionCount } from './metrics-gauges.ts'

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
  readonly #connections = new Set<() => ConnectionCount[]>()
  #connectionsGauge = false

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
  readonly #budgetsExceeded = new Map<string, ExceededBudget[]>()

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
    registerBudgetGauge(this.registry, this.#budgetsExceeded, this.tenantLabel)
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
  budgetsObserved(tenant: string, exceeded: readonly ExceededBudget[]): void {
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
    if (this.#resources.size === 0) registerResourceGauges(this.registry, this.#resources, this.databaseLabel)
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

  /**
   * The connection budget as it is spent (equilateral_db_connections{pool,kind}): `count` is read
   * at scrape time. Returns the call that stops observing.
   */
  observeConnections(count: () => ConnectionCount[]): () => void {
    if (!this.#connectionsGauge) {
      this.#connectionsGauge = true
      registerConnectionsGauge(this.registry, this.#connections)
    }
    this.#connections.add(count)
    return () => {
      this.#connections.delete(count)
    }
  }

  /** The exposition text and its content type. */
  async expose(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
