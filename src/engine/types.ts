// The types of the Engine's public API (re-exported by src/engine.ts and src/index.ts): the options
// it is built with, and what its tenant handles answer.
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import type { AgentDefinition, WorkflowDefinition } from '../core/definition.ts'
import type { Json } from '../core/json.ts'
import type { TaskStatus, WorkflowStatus } from '../core/task-state.ts'

export interface EngineOptions {
  /** The run-time connection (switched to the application role, see DATABASE_ROLE). */
  connectionString: string
  /**
   * The owner's connection, for tenant administration (create, suspend, rotate key), which the
   * application role may not do. Defaults to MIGRATION_DATABASE_URL, then connectionString.
   */
  adminConnectionString?: string
  /**
   * A login in equilateral_maintenance, for the retention purge and GDPR erasure (switched to that
   * role at connection start). Defaults to MAINTENANCE_DATABASE_URL, then the owner's connection.
   */
  maintenanceConnectionString?: string
  agents?: readonly AgentDefinition<any, any>[]
  workflows?: readonly WorkflowDefinition<any>[]
  /** Overrides of the configuration read from the environment. */
  config?: Partial<Config>
  log?: Logger
  /** Run pg-boss maintenance and cron in this process (default true). */
  supervise?: boolean
  /**
   * Migrate the database (with the owner's connection) before starting, as `equilateral migrate`
   * does: for single-process apps. Default false: a fleet migrates once, in its release phase.
   */
  migrate?: boolean
  /**
   * Log at start what the deployment should change: payloads stored unencrypted, run-time
   * connections that bypass row-level security (default true). The CLI's one-shot commands turn
   * it off: those warnings belong to the processes that run the fleet (web, worker), once each.
   */
  setupWarnings?: boolean
}

export interface WorkflowView {
  id: string
  type: string
  version: number
  status: WorkflowStatus
  input: Json
  error: Json | null
  correlationId: string
  createdAt: Date
  completedAt: Date | null
  /** A replay (TenantHandle.replayWorkflow): the workflow it replays; null otherwise. */
  replayOf: string | null
  /** Results of the completed tasks that nothing depends on. */
  output: Record<string, Json>
  /** Every task after the tasks it depends on (ties in creation order, then by key). */
  tasks: TaskView[]
}

export interface TaskView {
  id: string
  key: string
  agent: string
  /** The agent version the run needs (recorded when the task was created); null: any version. */
  agentVersion: number | null
  type: string
  status: TaskStatus
  dependsOn: string[]
  attempt: number
  failures: number
  result: Json | null
  error: Json | null
  queuedAt: Date | null
  startedAt: Date | null
  completedAt: Date | null
  /** A wait task: what it waits for, and until when once it waits (null without a timeout). */
  wait?: { type: 'approval' | 'event'; name: string; deadline: Date | null }
  /** A queued task held without a job: its tenant's hard budget is exhausted (docs/usage-and-budgets.md). */
  holdReason?: 'budget_exhausted'
}

/** How long `result()` (and `getWorkflow(id, { waitMs })`) waits, and what stops it early. */
export interface ResultOptions {
  /** Give up after this long (ResultWaitError `result_timeout`); default: no limit. */
  timeoutMs?: number
  /** Stop waiting when aborted (ResultWaitError `result_aborted`). The workflow is not touched. */
  signal?: AbortSignal
}

export interface Readiness {
  ready: boolean
  database: 'ok' | 'unreachable'
  migrations: 'current' | 'pending' | 'unknown'
  detail?: string
}

export interface WorkflowFilter {
  status?: WorkflowStatus
  type?: string
  /** 1 to 200, default 50. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
  /** Look-ups (each an index probe): the workflow with this id, correlation id or idempotency key. */
  id?: string
  correlationId?: string
  idempotencyKey?: string
  /** Created at or after `since`, before `until` (ISO 8601 or a Date). */
  since?: string | Date
  until?: string | Date
}

export interface WorkflowSummary {
  id: string
  type: string
  version: number
  status: WorkflowStatus
  correlationId: string
  tasksRemaining: number
  createdAt: Date
  completedAt: Date | null
}

export interface WorkflowPage {
  workflows: WorkflowSummary[]
  nextCursor: string | null
}

export interface AuditEntry {
  id: string
  taskId: string | null
  agentId: string | null
  action: string
  data: Json
  actor: string | null
  correlationId: string | null
  at: Date
}
