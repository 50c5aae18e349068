// Analytics: workflow performance per workflow type and agent performance per agent, over a time
// window, computed by SQL from the coordination tables (the design document's "database-driven
// analytics"). The query functions are pure: they take a Db already scoped to one tenant (inside
// withTenantTx) and a resolved window, and read nothing else.
//
// What counts, and when:
// - A workflow belongs to the window by its start (created_at in [since, until)): executions are the
//   workflows started in the window, by the status they have now (a workflow started just before
//   `until` may still be running). Durations are created_at -> completed_at of those that finished
//   (completed, failed or cancelled).
// - A task belongs to the window by its end (completed_at in [since, until)), counted when it
//   completed or failed for good (skipped and cancelled tasks are not agent work). Execution time is
//   started_at -> completed_at and queue wait is queued_at -> started_at of the completed tasks'
//   last, successful attempt (the row keeps only the last attempt's timestamps). `retried` is the
//   number of dispatches beyond the first (attempt - 1): after a failure, a lost job or a release at
//   shutdown.
// - Percentiles are PostgreSQL's percentile_cont (continuous: linear interpolation between the two
//   nearest ranks, so the p50 of 10, 20, 30, 40 s is 25 s). They are exact per tenant and cannot be
//   combined across tenants, so the all-tenant totals carry counts, averages and maxima only.
import type { Db } from './db/tx.ts'
import { InvalidInputError } from './errors.ts'

/** The window as a caller gives it: `since` defaults to 24 hours before `until`, `until` to now. */
export interface StatsWindowInput {
  since?: Date | undefined
  until?: Date | undefined
}

/** A resolved window: rows whose timestamp is >= since and < until. */
export interface StatsWindow {
  since: Date
  until: Date
}

export interface WorkflowTypeStats {
  type: string
  /** Workflows of this type started in the window. */
  executions: number
  completed: number
  failed: number
  cancelled: number
  running: number
  /** Duration (created_at -> completed_at) of the finished ones; null when none finished. */
  avgSeconds: number | null
  p50Seconds: number | null
  p95Seconds: number | null
  p99Seconds: number | null
}

export interface AgentStats {
  agent: string
  /** Tasks of this agent that completed, or failed for good, in the window. */
  completed: number
  failed: number
  /** Dispatches beyond each task's first (attempt - 1), summed over those tasks. */
  retried: number
  /** Execution time (started_at -> completed_at) of the completed tasks; null when none. */
  avgSeconds: number | null
  maxSeconds: number | null
  /** Queue wait (queued_at -> started_at) of the completed tasks; null when none. */
  avgQueueWaitSeconds: number | null
}

/** What an agent reported spending (ctx.usage) with the attempts that ended in the window. */
export interface UsageStats {
  agent: string
  dimension: string
  amount: number
}

export interface StatsReport {
  window: StatsWindow
  workflows: WorkflowTypeStats[]
  agents: AgentStats[]
  usage: UsageStats[]
}

/** All-tenant totals: additive fields only (percentiles of different tenants cannot be merged). */
export type WorkflowTypeTotals = Omit<WorkflowTypeStats, 'p50Seconds' | 'p95Seconds' | 'p99Seconds'>

export interface TenantStatsSection {
  tenantId: string
  workflows: WorkflowTypeStats[]
  agents: AgentStats[]
  usage: UsageStats[]
}

export interface AdminStatsReport {
  window: StatsWindow
  /** Tenants with at least one workflow started, or task finished, in the window; in id order. */
  tenants: TenantStatsSection[]
  totals: { workflows: WorkflowTypeTotals[]; agents: AgentStats[]; usage: UsageStats[] }
}

/**
 * One workflow type's figures in one tenant, with the sums and counts behind its averages, so that
 * tenants can be added up exactly (see mergeTallies).
 */
export interface WorkflowTypeTally {
  type: string
  executions: number
  completed: number
  failed: number
  cancelled: number
  running: number
  /** Workflows with a duration (finished), and the sum of their durations in seconds. */
  finished: number
  durationSum: number
  p50: number | null
  p95: number | null
  p99: number | null
}

export interface AgentTally {
  agent: string
  completed: number
  failed: number
  retried: number
  /** Completed tasks with an execution time, its sum and maximum in seconds. */
  runs: number
  runSum: number
  runMax: number | null
  /** Completed tasks with a queue wait, and its sum in seconds. */
  waits: number
  waitSum: number
}

export interface StatsTallies {
  workflows: WorkflowTypeTally[]
  agents: AgentTally[]
  usage: UsageStats[]
}

const DAY_MS = 24 * 3600 * 1000

/** Fills in the defaults (the last 24 hours) and refuses a window that is not one. */
export function resolveWindow(input: StatsWindowInput = {}, now: Date = new Date()): StatsWindow {
  const until = input.until ?? now
  const since = input.since ?? new Date(until.getTime() - DAY_MS)
  for (const [name, d] of [
    ['since', since],
    ['until', until],
  ] as const) {
    if (!(d instanceof Date) || Number.isNaN(d.getTime())) {
      throw new InvalidInputError(`${name} must be a valid date`)
    }
  }
  if (since.getTime() >= until.getTime()) {
    throw new InvalidInputError(
      `since (${since.toISOString()}) must be before until (${until.toISOString()})`,
    )
  }
  return { since, until }
}

// A range scan of workflows_recent_idx (tenant_id, created_at desc, id desc) plus the window's heap
// rows; date_part (float8) rather than extract (numeric) is a quarter cheaper per row.
// percentile_cont ignores the NULL durations of running workflows.
const WORKFLOW_SQL = `
SELECT type,
  count(*)::int AS executions,
  count(*) FILTER (WHERE status = 'completed')::int AS completed,
  count(*) FILTER (WHERE status = 'failed')::int AS failed,
  count(*) FILTER (WHERE status = 'cancelled')::int AS cancelled,
  count(*) FILTER (WHERE status = 'running')::int AS running,
  count(d)::int AS finished,
  coalesce(sum(d), 0)::float8 AS duration_sum,
  percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY d) AS pct
FROM (
  SELECT type, status,
    CASE WHEN status <> 'running' THEN date_part('epoch', completed_at - created_at) END AS d
  FROM workflows
  WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
) w
GROUP BY type
ORDER BY type COLLATE "C"`

// An index-only range scan of agent_coordination_finished_idx (tenant_id, completed_at, agent_id,
// status, attempt, queued_at, started_at) WHERE status IN ('completed', 'failed'): the query
// repeats the index's predicate, so the planner can prove the partial index applies.
const AGENT_SQL = `
SELECT agent_id AS agent,
  count(*) FILTER (WHERE status = 'completed')::int AS completed,
  count(*) FILTER (WHERE status = 'failed')::int AS failed,
  coalesce(sum(greatest(attempt - 1, 0)), 0)::float8 AS retried,
  count(run)::int AS runs,
  coalesce(sum(run), 0)::float8 AS run_sum,
  max(run) AS run_max,
  count(wait)::int AS waits,
  coalesce(sum(wait), 0)::float8 AS wait_sum
FROM (
  SELECT agent_id, status, attempt,
    CASE WHEN status = 'completed' THEN date_part('epoch', completed_at - started_at) END AS run,
    CASE WHEN status = 'completed' THEN greatest(0, date_part('epoch', started_at - queued_at)) END AS wait
  FROM agent_coordination
  WHERE tenant_id = $1 AND completed_at >= $2 AND completed_at < $3 AND status IN ('completed', 'failed')
) t
GROUP BY agent_id
ORDER BY agent_id COLLATE "C"`

/** Per workflow type, the tenant's workflows started in the window. */
export async function workflowTallies(
  db: Db,
  tenantId: string,
  window: StatsWindow,
): Promise<WorkflowTypeTally[]> {
  const { rows } = await db.executeSql(WORKFLOW_SQL, [tenantId, window.since, window.until])
  return rows.map((r) => {
    const pct = (r.pct as (number | null)[] | null) ?? []
    return {
      type: r.type,
      executions: r.executions,
      completed: r.completed,
      failed: r.failed,
      cancelled: r.cancelled,
      running: r.running,
      finished: r.finished,
      durationSum: r.duration_sum,
      p50: pct[0] ?? null,
      p95: pct[1] ?? null,
      p99: pct[2] ?? null,
    }
  })
}

/** Per agent, the tenant's tasks that completed or failed for good in the window. */
export async function agentTallies(db: Db, tenantId: string, window: StatsWindow): Promise<AgentTally[]> {
  const { rows } = await db.executeSql(AGENT_SQL, [tenantId, window.since, window.until])
  return rows.map((r) => ({
    agent: r.agent,
    completed: r.completed,
    failed: r.failed,
    retried: r.retried,
    runs: r.runs,
    runSum: r.run_sum,
    runMax: r.run_max,
    waits: r.waits,
    waitSum: r.wait_sum,
  }))
}

// Usage recorded in the window (agent_usage_period_idx leads with the dimension: one range per
// dimension the tenant has; usage has few).
const USAGE_SQL = `
SELECT agent_id AS agent, dimension, sum(amount)::float8 AS amount
FROM agent_usage
WHERE tenant_id = $1 AND recorded_at >= $2 AND recorded_at < $3
GROUP BY agent_id, dimension
ORDER BY agent_id COLLATE "C", dimension COLLATE "C"`

/** Per agent and dimension, the tenant's usage recorded in the window. */
export async function usageTallies(db: Db, tenantId: string, window: StatsWindow): Promise<UsageStats[]> {
  const { rows } = await db.executeSql(USAGE_SQL, [tenantId, window.since, window.until])
  return rows.map((r) => ({ agent: r.agent, dimension: r.dimension, amount: r.amount }))
}

/**
 * All three, for one tenant (inside its withTenantTx). Three statements at READ COMMITTED: a task finishing
 * between them may show in one and not the other, as it may in any report of a moving system.
 */
export async function statsTallies(db: Db, tenantId: string, window: StatsWindow): Promise<StatsTallies> {
  return {
    workflows: await workflowTallies(db, tenantId, window),
    agents: await agentTallies(db, tenantId, window),
    usage: await usageTallies(db, tenantId, window),
  }
}

/** The tenant's report: what TenantHandle.stats() returns. */
export async function tenantStats(db: Db, tenantId: string, window: StatsWindow): Promise<StatsReport> {
  return { window, ...reportOf(await statsTallies(db, tenantId, window)) }
}

export function reportOf(t: StatsTallies): Omit<StatsReport, 'window'> {
  return {
    workflows: t.workflows.map((w) => ({
      ...workflowTotals(w),
      p50Seconds: seconds(w.p50),
      p95Seconds: seconds(w.p95),
      p99Seconds: seconds(w.p99),
    })),
    agents: t.agents.map(agentStats),
    usage: t.usage,
  }
}

/**
 * Adds up tenants' tallies per workflow type and per agent: counts and sums add, maxima take the
 * maximum, averages are recomputed from the sums. Percentiles are dropped (not mergeable).
 */
export function mergeTallies(all: readonly StatsTallies[]): AdminStatsReport['totals'] {
  const workflows = new Map<string, WorkflowTypeTally>()
  const agents = new Map<string, AgentTally>()
  const usage = new Map<string, UsageStats>()
  for (const t of all) {
    for (const u of t.usage) {
      const key = `${u.agent}\u0000${u.dimension}`
      const m = usage.get(key)
      if (m) m.amount += u.amount
      else usage.set(key, { ...u })
    }
    for (const w of t.workflows) {
      const m = workflows.get(w.type)
      if (!m) {
        workflows.set(w.type, { ...w, p50: null, p95: null, p99: null })
        continue
      }
      m.executions += w.executions
      m.completed += w.completed
      m.failed += w.failed
      m.cancelled += w.cancelled
      m.running += w.running
      m.finished += w.finished
      m.durationSum += w.durationSum
    }
    for (const a of t.agents) {
      const m = agents.get(a.agent)
      if (!m) {
        agents.set(a.agent, { ...a })
        continue
      }
      m.completed += a.completed
      m.failed += a.failed
      m.retried += a.retried
      m.runs += a.runs
      m.runSum += a.runSum
      m.runMax = a.runMax === null ? m.runMax : Math.max(m.runMax ?? a.runMax, a.runMax)
      m.waits += a.waits
      m.waitSum += a.waitSum
    }
  }
  const byKey = <T>(m: Map<string, T>) => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return {
    workflows: byKey(workflows).map(([, w]) => workflowTotals(w)),
    agents: byKey(agents).map(([, a]) => agentStats(a)),
    usage: byKey(usage).map(([, u]) => u),
  }
}

function workflowTotals(w: WorkflowTypeTally): WorkflowTypeTotals {
  return {
    type: w.type,
    executions: w.executions,
    completed: w.completed,
    failed: w.failed,
    cancelled: w.cancelled,
    running: w.running,
    avgSeconds: w.finished > 0 ? seconds(w.durationSum / w.finished) : null,
  }
}

function agentStats(a: AgentTally): AgentStats {
  return {
    agent: a.agent,
    completed: a.completed,
    failed: a.failed,
    retried: a.retried,
    avgSeconds: a.runs > 0 ? seconds(a.runSum / a.runs) : null,
    maxSeconds: seconds(a.runMax),
    avgQueueWaitSeconds: a.waits > 0 ? seconds(a.waitSum / a.waits) : null,
  }
}

/** Seconds rounded to the millisecond (timestamps have microseconds; averages have float tails). */
function seconds(s: number | null): number | null {
  return s === null ? null : Math.round(s * 1000) / 1000
}
