// The gauges of src/metrics.ts that are read at scrape time (prom-client's collect()): budgets
// reached, connections held, the pools' connections and pg-boss's queue depths. Each function
// registers one family over a live source the Metrics object keeps and changes as the process
// opens and closes databases.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { Gauge, type Registry } from 'prom-client'

/** A budget reached in its current period, as the budget pass last saw it. */
export interface ExceededBudget {
  dimension: string
  period: string
  hard: boolean
}

/**
 * Connections a process holds open to the database, by what holds them: `pool` names the holder
 * (app: the engine's pool; boss: pg-boss's own; listen: workers' LISTEN sessions; results: result
 * waiters' LISTEN sessions; liveness: the worker liveness session; admin, maintenance: the owner's
 * and the maintenance login's pools), `kind` whether they go through the pooler (`pooled`: they
 * share its server connections) or hold a server connection each (`direct`).
 */
export interface ConnectionCount {
  pool: string
  kind: 'pooled' | 'direct'
  count: number
}

/** One database's pool and queues, as the resource gauges read them. */
export interface Resources {
  pool: pg.Pool
  poolName: string
  database: string
  queues: () => Promise<Awaited<ReturnType<PgBoss['getQueues']>>>
}

/** equilateral_budgets_exceeded: budgets reached, counted by dimension, period and kind. */
export function registerBudgetGauge(
  registry: Registry,
  budgets: ReadonlyMap<string, readonly ExceededBudget[]>,
  tenantLabel: boolean,
): void {
  new Gauge({
    name: 'equilateral_budgets_exceeded',
    help: "Budgets reached in their current period (kind hard: the tenant's tasks are held; soft: an alert), by dimension and period, as of the last budget pass or budget change seen by this process. Alert on > 0.",
    labelNames: ['dimension', 'period', 'kind', ...(tenantLabel ? ['tenant'] : [])],
    registers: [registry],
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
}

/** equilateral_db_connections{pool,kind}: the sum over `sources`, read at scrape time. */
export function registerConnectionsGauge(
  registry: Registry,
  sources: ReadonlySet<() => ConnectionCount[]>,
): void {
  new Gauge({
    name: 'equilateral_db_connections',
    help: 'Database connections this process holds open, by holder (pool) and by whether they go through the pooler (kind: pooled) or each hold a server connection (kind: direct).',
    labelNames: ['pool', 'kind'],
    registers: [registry],
    collect() {
      this.reset()
      const sums = new Map<string, ConnectionCount>()
      for (const source of sources) {
        for (const c of source()) {
          const key = `${c.pool}\0${c.kind}`
          const sum = sums.get(key)
          if (sum) sum.count += c.count
          else sums.set(key, { ...c })
        }
      }
      for (const c of sums.values()) this.set({ pool: c.pool, kind: c.kind }, c.count)
    },
  })
}

/** The pool gauge and pg-boss's queue gauges, over every database in `resources`. */
export function registerResourceGauges(
  registry: Registry,
  resources: ReadonlySet<Resources>,
  databaseLabel: boolean,
): void {
  const db = (r: Resources) => (databaseLabel ? { database: r.database } : {})
  const d = databaseLabel ? ['database'] : []
  new Gauge({
    name: 'equilateral_db_pool_connections',
    help: 'Connections of the database pool, by state: in_use, idle, waiting (requests queued for a connection).',
    labelNames: ['pool', 'state', ...d],
    registers: [registry],
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
    registers: [registry],
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
    registers: [registry],
    async collect() {
      const found = await all()
      this.reset()
      for (const { r, queues } of found) {
        for (const q of queues) this.set({ queue: q.name, ...db(r) }, Number(q.readyOldestSeconds ?? 0))
      }
    },
  })
}
