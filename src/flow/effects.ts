// What a write changed, and the one place that turns it into metrics, hook calls and wake-ups.
// Every writer of task or workflow state returns (or its caller builds from what it returns) one
// Effects value: the worker's completions and failures (src/flow/record.ts), the tasks a claim
// fails for want of an agent version (src/flow/unserved.ts), wait tasks armed, delivered or timed
// out (src/flow/waits.ts), cancellations (src/flow/cancel.ts) and the sweeper (src/flow/sweep.ts,
// whose lost workers can no longer count what they ran). applyEffects is the only function that
// counts them, so no writer can forget to (the sweeper did: issue 24).
import type { Metrics, TaskOutcome as MetricsTaskOutcome } from '../metrics.ts'
import type { Usage } from '../usage/meter.ts'
import type { TenantScope } from '../db/tx.ts'
import type { ClaimedTask } from './claimed.ts'
import type { SweepReport } from './sweep.ts'
import type { WaitOutcome } from './waits.ts'

/** How an attempt ended, as equilateral_tasks_finished_total labels it. */
export type TaskOutcome = MetricsTaskOutcome | 'snoozed'

export interface TaskEnded {
  tenantId: string
  agentId: string
  outcome: TaskOutcome
  /** The agent's run time; null when it did not run in this process (the sweeper's lost tasks). */
  durationMs: number | null
  /** The attempt, when this process ran it (for the caller's WorkerHooks). */
  task?: ClaimedTask
  /** The database it ran in (Store.key), when it differs from the sinks' (a sweep of many). */
  database?: string
}

export interface WorkflowEnded {
  tenantId: string
  type: string
  status: 'completed' | 'failed' | 'cancelled'
  durationMs: number
  /** The database it ran in (Store.key), when it differs from the sinks' (a sweep of many). */
  database?: string
}

/** What one write (or a pass of writes, such as a sweep) changed. Every field may be absent. */
export interface Effects {
  /** Attempts that ended. A task `failed` for good was also recorded in the dead-letter queue. */
  tasks?: readonly TaskEnded[]
  workflows?: readonly WorkflowEnded[]
  /** Tasks the sweeper put back in the queue (`requeued`), or found lost (`lost`). */
  recovered?: { requeued: number; lost: number }
  /** Usage written with an attempt's end (ctx.usage), for the caller's hook. */
  usage?: readonly { task: ClaimedTask; tenantId: string; usage: Usage }[]
  /** Queues the write made jobs ready in: loops of this process waiting on them may fetch now. */
  wake?: readonly string[]
}

/** Observation points for metrics; every hook is optional and must not throw. */
export interface WorkerHooks {
  /** The agent is about to run; `dispatchLatencyMs` runs from the task becoming ready to now. */
  taskStarted?(t: ClaimedTask, tenantId: string, dispatchLatencyMs: number): void
  taskFinished?(t: ClaimedTask, tenantId: string, outcome: TaskOutcome, durationMs: number): void
  /** The attempt's usage (ctx.usage) was written with its completion or failure. */
  usageRecorded?(t: ClaimedTask, tenantId: string, usage: Usage): void
  /** A completion or a failure of this worker ended the workflow. */
  workflowFinished?(tenantId: string, type: string, status: 'completed' | 'failed', durationMs: number): void
}

/** Where effects go: all optional, so a writer with no worker (cancel, sweep) passes what it has. */
export interface EffectSinks {
  metrics?: Metrics | undefined
  /** The database the writes ran in (Store.key), for the metrics' database label. */
  database?: string | undefined
  hooks?: WorkerHooks | undefined
  wake?: ((queue: string) => void) | undefined
}

/** Applies what a write changed: metrics, the caller's hooks, and wake-ups of the local loops. */
export function applyEffects(effects: Effects, sinks: EffectSinks): void {
  const { metrics: m, database, hooks } = sinks
  for (const t of effects.tasks ?? []) {
    if (m) {
      m.tasksFinished.inc(
        m.withTenant({ agent: t.agentId, outcome: t.outcome }, t.tenantId, t.database ?? database),
      )
      if (t.durationMs !== null && t.outcome !== 'released')
        m.taskRunDuration.observe({ agent: t.agentId }, t.durationMs / 1000)
      if (t.outcome === 'failed') m.deadLettered.inc({ agent: t.agentId })
    }
    if (t.task) hooks?.taskFinished?.(t.task, t.tenantId, t.outcome, t.durationMs ?? 0)
  }
  for (const w of effects.workflows ?? []) {
    m?.workflowFinished(w.type, w.status, w.durationMs, w.tenantId, w.database ?? database)
    if (w.status !== 'cancelled') hooks?.workflowFinished?.(w.tenantId, w.type, w.status, w.durationMs)
  }
  for (const u of effects.usage ?? []) {
    if (m)
      for (const [dimension, amount] of Object.entries(u.usage))
        m.agentUsage.inc(m.withTenant({ agent: u.task.agentId, dimension }, u.tenantId, database), amount)
    hooks?.usageRecorded?.(u.task, u.tenantId, u.usage)
  }
  if (effects.recovered && m) {
    m.sweeperRecovered.inc({ action: 'requeued' }, effects.recovered.requeued)
    m.sweeperRecovered.inc({ action: 'lost' }, effects.recovered.lost)
  }
  if (sinks.wake) for (const queue of new Set(effects.wake ?? [])) sinks.wake(queue)
}

/** An agent about to run (not a write, but the same sinks): its metrics and the caller's hook. */
export function applyStarted(
  task: ClaimedTask,
  tenantId: string,
  dispatchMs: number,
  sinks: EffectSinks,
): void {
  const m = sinks.metrics
  if (m) {
    m.tasksStarted.inc(m.withTenant({ agent: task.agentId }, tenantId, sinks.database))
    m.taskQueueWait.observe({ agent: task.agentId }, task.queueWaitMs / 1000)
    m.taskDispatchLatency.observe({ agent: task.agentId }, dispatchMs / 1000)
  }
  sinks.hooks?.taskStarted?.(task, tenantId, dispatchMs)
}

/** What arming, delivering to or timing out wait tasks changed. */
export function waitEffects(scope: TenantScope, outcome: WaitOutcome): Effects {
  const tenantId = scope.tenantId
  return {
    workflows: [
      ...outcome.workflowsCompleted.map((wf) => ({
        tenantId,
        type: wf.type,
        status: 'completed' as const,
        durationMs: wf.durationMs,
      })),
      ...outcome.workflowsFailed.map((wf) => ({
        tenantId,
        type: wf.type,
        status: 'failed' as const,
        durationMs: wf.durationMs,
      })),
    ],
    wake: outcome.dispatched.map((d) => d.queue),
  }
}

/** What a sweep changed: what it recovered, and the tasks and workflows it failed for good. */
export function sweepEffects(report: SweepReport): Effects {
  return {
    recovered: { requeued: report.requeued, lost: report.lost },
    tasks: report.ended.tasks.map((t) => ({ ...t, outcome: 'failed' as const, durationMs: null })),
    workflows: report.ended.workflows.map((w) => ({ ...w, status: 'failed' as const })),
  }
}
