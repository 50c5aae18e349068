// The test kit: what a user needs to test their agents and workflows the way this project tests
// itself, against a real PostgreSQL. One kit is one engine, one in-process worker and one fresh
// tenant; it starts workflows, waits for them, delivers events and approval decisions, controls time
// (fires the tenant's durable timers now, or moves them closer) and asserts on the audit trail.
//
// Time is controlled the way production judges it: every timer (a task's startAfter, a retry's
// backoff, a snooze, a wait's deadline) is a time the database holds and compares with its own
// clock, so the kit moves those times, in the tenant's rows and pg-boss jobs, instead of faking a
// clock in the process. Only the kit's tenant is touched: test files can share a database.
//
//   import { createTestKit } from 'equilateral-agents/testing'
//   const kit = await createTestKit({ databaseUrl, agents, workflows })
//   afterAll(() => kit.close())
//
// Over 400 lines on purpose: it is the `equilateral-agents/testing` entry a user reads, one class
// (TestKit) with the audit-trail assertions it returns and the SQL that moves the tenant's timers
// beside the methods that use it.
import { randomBytes, randomUUID } from 'node:crypto'
import { type Logger, pino } from 'pino'
import type { Config } from './config.ts'
import type { AgentDefinition, WorkflowDefinition } from './core/definition.ts'
import type { Json } from './core/json.ts'
import type { TaskStatus, WorkflowStatus } from './core/task-state.ts'
import type { VerifyReport } from './audit/seal.ts'
import { migrate } from './db/migrate.ts'
import { BOSS_SCHEMA } from './db/names.ts'
import { type Db, withTenantTx } from './db/tx.ts'
import {
  type AuditEntry,
  createEngine,
  type Engine,
  type TenantHandle,
  type TaskView,
  type WorkflowView,
} from './engine.ts'
import type { TaskWorker } from './fleet.ts'
import type { StartOptions, StartResult } from './flow/start.ts'
import type { SweepReport } from './flow/sweep.ts'
import type { DeliveryResult, EventDelivery } from './flow/waits.ts'
import type { ScheduleReport } from './schedule/scheduler.ts'

export type { AuditEntry, TaskView, WorkflowView } from './engine.ts'

export interface TestKitOptions {
  /**
   * The database's owner connection (a superuser's is fine): the kit migrates the database with it
   * and creates the tenant. Workflows run on this login switched to the application role
   * (DATABASE_ROLE, `equilateral_app` by default), as in production, unless `runtimeDatabaseUrl`
   * is given.
   */
  databaseUrl: string
  /** The run-time login (a member of the application role), if it is not the owner's. */
  runtimeDatabaseUrl?: string
  agents: readonly AgentDefinition<any, any>[]
  workflows: readonly WorkflowDefinition<any>[]
  /** The tenant to create. Default: a random `test-…` id, so test files can share a database. */
  tenantId?: string
  /** Overrides of the engine configuration (on top of the kit's fast poll and heartbeat intervals). */
  config?: Partial<Config>
  /** Default: silent. */
  log?: Logger
  /** Migrate the database first (default true; idempotent, safe from parallel test files). */
  migrate?: boolean
  /** How long waitFor and runToCompletion wait by default (default 20 000 ms). */
  timeoutMs?: number
}

/** What waitFor waits for: a workflow status, a task waiting for its event or decision, or any condition. */
export interface WaitCondition {
  /** The workflow has this status. */
  status?: WorkflowStatus
  /** The task with this key waits (for its approval or event). */
  taskWaiting?: string
  /** A condition on the workflow's view. */
  until?: (view: WorkflowView) => boolean
  /** Default: the kit's timeoutMs (20 s). */
  timeoutMs?: number
}

/** What fireTimers and advance did, judged by the database clock. */
export interface TimerReport {
  /** Timers of the kit's tenant that are due now and were not before (their tasks run at once). */
  fired: number
  /** Timers still in the future. */
  pending: number
}

/** A timer of the kit's tenant, as pendingTimers lists it. */
export interface PendingTimer {
  workflowId: string
  taskKey: string
  /**
   * `start`: a queued task held back (startAfter, a retry's backoff, a snooze); `wait-timeout`: a
   * waiting task's deadline; `start-at`: the absolute startAfter of a task whose dependencies are
   * not done yet.
   */
  kind: 'start' | 'wait-timeout' | 'start-at'
  dueAt: Date
  /** From the database's now() to dueAt. */
  dueInMs: number
}

/** A step of AuditTrail.expectSequence: an action, or `action:taskKey` for that task's row. */
export type AuditStep = string | { action: string; task?: string }

export interface ApprovalOptions {
  /** Default: `test-approver`. */
  approver?: string
  comment?: string
  /** Default: the engine's (`<name>:<approver>:<approved|rejected>`). */
  eventId?: string
}

/**
 * A workflow's audit trail, read once, with assertions. Each `expect…` throws an Error whose
 * message lists the trail, so a failing test shows what happened instead.
 */
export class AuditTrail {
  readonly workflowId: string
  /** The rows, in the order they were written. */
  readonly entries: readonly AuditEntry[]
  readonly #keys: ReadonlyMap<string, string>

  constructor(workflowId: string, entries: readonly AuditEntry[], taskKeys: ReadonlyMap<string, string>) {
    this.workflowId = workflowId
    this.entries = entries
    this.#keys = taskKeys
  }

  /** The task key of an entry (null for the workflow's own rows). */
  taskKeyOf(entry: AuditEntry): string | null {
    return entry.taskId === null ? null : (this.#keys.get(entry.taskId) ?? null)
  }

  /** The actions, in order. */
  actions(): string[] {
    return this.entries.map((e) => e.action)
  }

  /** The rows of one task, by its key. */
  ofTask(key: string): AuditEntry[] {
    return this.entries.filter((e) => this.taskKeyOf(e) === key)
  }

  /** How many rows have this action (of this task, if a key is given). */
  count(action: string, taskKey?: string): number {
    return this.#matching(action, taskKey).length
  }

  /**
   * Asserts the steps appear in this order (other rows may come between them); returns the
   * matched rows. A step is an action (`'approval_decided'`), or an action of one task
   * (`'task_completed:deploy'` or `{ action: 'task_completed', task: 'deploy' }`).
   */
  expectSequence(steps: readonly AuditStep[]): AuditEntry[] {
    const wanted = steps.map(parseStep)
    const matched: AuditEntry[] = []
    let from = 0
    for (const [i, step] of wanted.entries()) {
      const at = this.entries.findIndex(
        (e, index) =>
          index >= from &&
          e.action === step.action &&
          (step.task === undefined || this.taskKeyOf(e) === step.task),
      )
      if (at < 0) {
        const after = i === 0 ? 'in it' : `after ${stepLabel(wanted[i - 1] as ParsedStep)} at row ${from}`
        const anywhere = this.count(step.action, step.task) > 0 ? ' (it is there, but earlier)' : ''
        throw this.#error(
          `expected ${wanted.map(stepLabel).join(' → ')} in this order, but there is no ${stepLabel(step)} ${after}${anywhere}`,
        )
      }
      matched.push(this.entries[at] as AuditEntry)
      from = at + 1
    }
    return matched
  }

  /** Asserts exactly one row has this action (of this task, if a key is given); returns it. */
  expectExactlyOnce(action: string, taskKey?: string): AuditEntry {
    const rows = this.#matching(action, taskKey)
    if (rows.length !== 1) {
      throw this.#error(
        `expected ${stepLabel({ action, task: taskKey })} exactly once, found it ${rows.length} time${rows.length === 1 ? '' : 's'}`,
      )
    }
    return rows[0] as AuditEntry
  }

  /** The trail, one numbered row a line (`3. task_completed (release) by ana`). */
  toString(): string {
    return this.entries
      .map((e, i) => {
        const key = this.taskKeyOf(e)
        return `  ${i + 1}. ${e.action}${key !== null ? ` (${key})` : ''}${e.actor ? ` by ${e.actor}` : ''}`
      })
      .join('\n')
  }

  #matching(action: string, taskKey: string | undefined): AuditEntry[] {
    return this.entries.filter(
      (e) => e.action === action && (taskKey === undefined || this.taskKeyOf(e) === taskKey),
    )
  }

  #error(message: string): Error {
    const error = new Error(
      `audit trail of workflow ${this.workflowId}: ${message}; the trail:\n${this.toString()}`,
    )
    error.name = 'AuditAssertionError'
    return error
  }
}

interface ParsedStep {
  action: string
  task?: string | undefined
}

function parseStep(step: AuditStep): ParsedStep {
  if (typeof step !== 'string') return step
  const colon = step.indexOf(':')
  return colon < 0 ? { action: step } : { action: step.slice(0, colon), task: step.slice(colon + 1) }
}

function stepLabel(step: ParsedStep): string {
  return step.task === undefined ? step.action : `${step.action} (${step.task})`
}

// The tenant's timers, in one tenant-scoped transaction on the run-time connection (the engine's own
// privileges; row-level security or the tenant's schema keep it to the tenant). $2: how far to move
// them, in ms; NULL: all the way, due now. A timer never moves before now(): a task's job and its
// row keep the same time (a timer job's start_after is its row's queued_at or wait_deadline).
const SHIFT = (column: string) =>
  `CASE WHEN $2::bigint IS NULL THEN now() ELSE greatest(now(), ${column} - $2::bigint * interval '1 millisecond') END`

const MOVE_ROWS = `
WITH moved AS (
  UPDATE agent_coordination SET
    queued_at = CASE WHEN status = 'queued' AND queued_at > now() THEN ${SHIFT('queued_at')} ELSE queued_at END,
    wait_deadline = CASE WHEN status = 'waiting' AND wait_deadline > now() THEN ${SHIFT('wait_deadline')} ELSE wait_deadline END,
    start_at = CASE WHEN status = 'pending' AND start_at > now() THEN ${SHIFT('start_at')} ELSE start_at END
  WHERE tenant_id = $1 AND (
    (status = 'queued' AND queued_at > now()) OR (status = 'waiting' AND wait_deadline > now())
    OR (status = 'pending' AND start_at > now()))
  RETURNING status, queued_at, wait_deadline, start_at
)
SELECT count(*) FILTER (WHERE
    (status = 'queued' AND queued_at <= now()) OR (status = 'waiting' AND wait_deadline <= now())
    OR (status = 'pending' AND start_at <= now()))::int AS fired,
  count(*) FILTER (WHERE
    (status = 'queued' AND queued_at > now()) OR (status = 'waiting' AND wait_deadline > now())
    OR (status = 'pending' AND start_at > now()))::int AS pending
FROM moved`

const MOVE_JOBS = `
UPDATE ${BOSS_SCHEMA}.job SET start_after = ${SHIFT('start_after')}
WHERE data->>'t' = $1 AND state IN ('created', 'retry') AND start_after > now()`

const PENDING_TIMERS = `
SELECT workflow_id, task_key, kind, due_at, (extract(epoch FROM due_at - now()) * 1000)::float8 AS due_in_ms FROM (
  SELECT workflow_id, task_key, created_at,
    CASE status WHEN 'queued' THEN 'start' WHEN 'waiting' THEN 'wait-timeout' ELSE 'start-at' END AS kind,
    CASE status WHEN 'queued' THEN queued_at WHEN 'waiting' THEN wait_deadline ELSE start_at END AS due_at
  FROM agent_coordination
  WHERE tenant_id = $1 AND ($2::uuid IS NULL OR workflow_id = $2) AND (
    (status = 'queued' AND queued_at > now()) OR (status = 'waiting' AND wait_deadline > now())
    OR (status = 'pending' AND start_at > now()))
) t ORDER BY due_at, created_at, task_key`

/**
 * A test kit: an engine, an in-process worker and a fresh tenant on a real database. Create it
 * with createTestKit; close it after the tests (`afterAll(() => kit.close())`). The tenant (and
 * what its workflows wrote) stays in the database after close, for inspection: use a throwaway
 * database.
 */
export class TestKit {
  /** The engine (owner connection for administration, the application role at run time). */
  readonly engine: Engine
  /** The kit's tenant: what the kit does, it does through this handle. */
  readonly tenant: TenantHandle
  /** The in-process worker running the kit's agents. */
  readonly worker: TaskWorker
  readonly #timeoutMs: number
  #closed: Promise<void> | undefined

  constructor(engine: Engine, tenant: TenantHandle, worker: TaskWorker, timeoutMs: number) {
    this.engine = engine
    this.tenant = tenant
    this.worker = worker
    this.#timeoutMs = timeoutMs
  }

  get tenantId(): string {
    return this.tenant.id
  }

  /** Starts a workflow of the kit's tenant (see TenantHandle.startWorkflow). */
  start(type: string, input: Json = null, options: StartOptions = {}): Promise<StartResult> {
    return this.tenant.startWorkflow(type, input, options)
  }

  /** The workflow as it is now: status, tasks, results, output. */
  get(workflowId: string): Promise<WorkflowView> {
    return this.tenant.getWorkflow(workflowId)
  }

  /**
   * Waits until the workflow meets the condition and returns its view. Throws, with the workflow's
   * state in the message, when the time runs out, or at once when the workflow ended without
   * meeting it (a test waiting for `completed` sees the failure's error, not a timeout).
   */
  async waitFor(workflowId: string, condition: WaitCondition): Promise<WorkflowView> {
    const timeoutMs = condition.timeoutMs ?? this.#timeoutMs
    const wanted = describeCondition(condition)
    const met = (view: WorkflowView) =>
      (condition.status === undefined || view.status === condition.status) &&
      (condition.taskWaiting === undefined ||
        view.tasks.some((t) => t.key === condition.taskWaiting && t.status === 'waiting')) &&
      (condition.until === undefined || condition.until(view))
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const view = await this.get(workflowId)
      if (met(view)) return view
      if (view.status !== 'running') {
        throw new Error(`waitFor: workflow ended before ${wanted}; ${describeView(view)}`)
      }
      if (Date.now() > deadline) {
        throw new Error(`waitFor: ${wanted} not met within ${timeoutMs} ms; ${describeView(view)}`)
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }

  /** Starts a workflow and waits until it ends (completed, failed or cancelled); returns its view. */
  async runToCompletion(
    type: string,
    input: Json = null,
    options: StartOptions & { timeoutMs?: number } = {},
  ): Promise<WorkflowView> {
    const { timeoutMs, ...start } = options
    const { id } = await this.start(type, input, start)
    return this.waitFor(id, {
      until: (view) => view.status !== 'running',
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    })
  }

  /** Delivers an event to a workflow (see TenantHandle.sendEvent); `eventId` defaults to a new uuid. */
  sendEvent(
    workflowId: string,
    event: Omit<EventDelivery, 'eventId'> & { eventId?: string },
  ): Promise<DeliveryResult> {
    return this.tenant.sendEvent(workflowId, { ...event, eventId: event.eventId ?? randomUUID() })
  }

  /** Approves a workflow's approval `name` (see TenantHandle.decide). */
  approve(workflowId: string, name: string, options: ApprovalOptions = {}): Promise<DeliveryResult> {
    return this.#decide(workflowId, name, true, options)
  }

  /** Rejects a workflow's approval `name`: the workflow fails with the approver's reason. */
  reject(workflowId: string, name: string, options: ApprovalOptions = {}): Promise<DeliveryResult> {
    return this.#decide(workflowId, name, false, options)
  }

  #decide(workflowId: string, name: string, approved: boolean, o: ApprovalOptions): Promise<DeliveryResult> {
    return this.tenant.decide(workflowId, {
      name,
      approved,
      approver: o.approver ?? 'test-approver',
      ...(o.comment !== undefined ? { comment: o.comment } : {}),
      ...(o.eventId !== undefined ? { eventId: o.eventId } : {}),
    })
  }

  /**
   * Makes every pending timer of the kit's tenant due now: tasks held back by startAfter, a retry's
   * backoff or a snooze, the deadlines of waiting tasks (they time out), and the absolute startAfter
   * of tasks whose dependencies are not done yet. Then wakes the worker, so the due work runs at
   * once. A startAfter delay counted from when a task becomes ready is not a timer yet while its
   * dependencies run: fire it once the task is queued.
   */
  fireTimers(): Promise<TimerReport> {
    return this.#moveTimers(null)
  }

  /**
   * Moves every pending timer of the kit's tenant `ms` closer, as if that much time had passed:
   * those that become due fire (the worker is woken), the others stay pending, `ms` sooner.
   * Judged by the database clock, like the timers themselves.
   */
  advance(ms: number): Promise<TimerReport> {
    if (!Number.isSafeInteger(ms) || ms < 0)
      throw new RangeError(`advance: ms must be a whole number ≥ 0 (got ${ms})`)
    return this.#moveTimers(ms)
  }

  async #moveTimers(ms: number | null): Promise<TimerReport> {
    const report = await this.#tx(async (db) => {
      const { rows } = await db.executeSql(MOVE_ROWS, [this.tenantId, ms])
      await db.executeSql(MOVE_JOBS, [this.tenantId, ms])
      return { fired: Number(rows[0]?.fired ?? 0), pending: Number(rows[0]?.pending ?? 0) }
    })
    this.worker.wake()
    return report
  }

  /** The kit's tenant's pending timers (of one workflow, if given), soonest first. */
  async pendingTimers(workflowId?: string): Promise<PendingTimer[]> {
    return this.#tx(async (db) => {
      const { rows } = await db.executeSql(PENDING_TIMERS, [this.tenantId, workflowId ?? null])
      return rows.map((r) => ({
        workflowId: r.workflow_id,
        taskKey: r.task_key,
        kind: r.kind,
        dueAt: r.due_at,
        dueInMs: Number(r.due_in_ms),
      }))
    })
  }

  /**
   * One pass of the sweeper over the kit's tenant: recovers tasks whose worker went silent for
   * `staleAfterMs` (the kit's default: 2 s) and times out waits whose timer job was lost.
   */
  runSweeper(options: { staleAfterMs?: number } = {}): Promise<SweepReport> {
    return this.engine.sweep(options, [this.tenant.scope])
  }

  /**
   * One scheduler pass over the kit's tenant's cron schedules (see TenantHandle.putSchedule);
   * `now` judges the slots at that instant instead of the database clock.
   */
  runSchedules(now?: Date): Promise<ScheduleReport> {
    return this.engine.runSchedules(now === undefined ? {} : { now }, [this.tenant.scope])
  }

  /** The workflow's audit trail, with assertions (see AuditTrail). */
  async audit(workflowId: string): Promise<AuditTrail> {
    const [entries, view] = await Promise.all([this.tenant.history(workflowId), this.get(workflowId)])
    return new AuditTrail(workflowId, entries, new Map(view.tasks.map((t) => [t.id, t.key])))
  }

  /**
   * Seals the tenant's new audit rows into its hash chain and verifies the whole chain; throws if it
   * is broken. A row can only be sealed once every older transaction on the server has ended (see
   * src/audit/seal.ts), so this seals again, for up to `timeoutMs` (default 5 s), until no row is
   * left unsealed; `unsealed` in the report counts those that still were (they are not verified).
   */
  async verifyAuditChain(options: { timeoutMs?: number } = {}): Promise<VerifyReport> {
    const deadline = Date.now() + (options.timeoutMs ?? 5000)
    for (;;) {
      await this.engine.sealAudit({}, [this.tenant.scope])
      const [report] = await this.engine.verifyAudit(this.tenantId)
      if (!report) throw new Error(`audit chain of tenant ${this.tenantId}: nothing to verify`)
      if (!report.ok) {
        throw new Error(
          `audit chain of tenant ${this.tenantId} is broken: ${report.problem?.kind ?? 'unknown'}: ${report.problem?.message ?? ''}`,
        )
      }
      if (report.unsealed === 0 || Date.now() > deadline) return report
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  /** Stops the worker (running agents get the grace period) and the engine. Safe to call twice. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.worker.stop().catch(() => {})
      await this.engine.close()
    })()
    return this.#closed
  }

  async #tx<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    const { pool } = await this.engine.storeOf(this.tenant.scope)
    return withTenantTx(pool, this.tenant.scope, fn)
  }
}

/**
 * The engine settings of a kit (and of this project's own test engines): workers poll and beat
 * every 200 ms, a silent worker is stale after 2 s, shutdown waits 2 s. Override with `config`.
 */
export const TEST_ENGINE_CONFIG: Readonly<Partial<Config>> = Object.freeze({
  pollIntervalMs: 200,
  heartbeatIntervalMs: 200,
  staleAfterMs: 2000,
  shutdownGraceMs: 2000,
  tenantRefreshMs: 200,
})

/**
 * Migrates the database (unless `migrate: false`), starts an engine and an in-process worker with
 * fast poll and heartbeat intervals, and creates a fresh tenant. Nothing runs on timers of its own
 * beyond the worker: the sweeper and the cron scheduler run when the test calls runSweeper and
 * runSchedules.
 *
 * Kits on one database share its queues: a kit's worker may run another kit's tasks of an agent
 * both register. Give the agents of different test files distinct ids, or each file a database.
 */
export async function createTestKit(options: TestKitOptions): Promise<TestKit> {
  if (options.migrate !== false) await migrate(options.databaseUrl)
  const engine = await createEngine({
    connectionString: options.runtimeDatabaseUrl ?? options.databaseUrl,
    adminConnectionString: options.databaseUrl,
    agents: options.agents,
    workflows: options.workflows,
    log: options.log ?? pino({ level: 'silent' }),
    supervise: false,
    config: { ...TEST_ENGINE_CONFIG, ...options.config },
  })
  try {
    const id = options.tenantId ?? `test-${randomBytes(6).toString('hex')}`
    await engine.createTenant({ id })
    const tenant = await engine.tenant(id)
    const worker = await engine.startWorker()
    return new TestKit(engine, tenant, worker, options.timeoutMs ?? 20_000)
  } catch (error) {
    await engine.close().catch(() => {})
    throw error
  }
}

function describeCondition(c: WaitCondition): string {
  const parts = [
    ...(c.status !== undefined ? [`status ${c.status}`] : []),
    ...(c.taskWaiting !== undefined ? [`task "${c.taskWaiting}" waiting`] : []),
    ...(c.until !== undefined ? ['the until() condition'] : []),
  ]
  return parts.length > 0 ? parts.join(' and ') : 'nothing'
}

/** The workflow's state for an error message: status, error, and each task with what holds it. */
function describeView(view: WorkflowView): string {
  const error = view.error === null ? '' : ` with ${describeError(view)}`
  return `workflow ${view.type} ${view.id} is ${view.status}${error}; tasks: ${view.tasks.map(describeTask).join(', ')}`
}

/** `ApprovalRejected: approval "ok" rejected by qa (task ok)`, or the error's JSON if it is not a task's. */
function describeError(view: WorkflowView): string {
  const e = view.error as { task?: unknown; error?: { name?: unknown; message?: unknown } } | null
  if (e && typeof e === 'object' && e.error && typeof e.error.message === 'string') {
    const task = view.tasks.find((t) => t.id === e.task)
    return `${typeof e.error.name === 'string' ? `${e.error.name}: ` : ''}${e.error.message}${task ? ` (task ${task.key})` : ''}`
  }
  return `error ${JSON.stringify(view.error)}`
}

function describeTask(t: TaskView): string {
  if (t.status === 'waiting' && t.wait) {
    const until = t.wait.deadline ? ` until ${t.wait.deadline.toISOString()}` : ''
    return `${t.key}=waiting for ${t.wait.type} "${t.wait.name}"${until} (kit.approve/reject/sendEvent, or kit.fireTimers())`
  }
  if (t.status === 'queued' && t.queuedAt && t.queuedAt.getTime() > Date.now()) {
    return `${t.key}=queued until ${t.queuedAt.toISOString()} (a timer: kit.fireTimers() or kit.advance(ms))`
  }
  return `${t.key}=${t.status satisfies TaskStatus}${t.attempt > 1 ? ` (attempt ${t.attempt})` : ''}`
}
