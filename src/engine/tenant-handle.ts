// A tenant handle: everything a caller can do for one tenant (start, await, cancel, deliver events
// and decisions, cron schedules, and the read side, whose statements are in src/engine/read.ts).
// Obtained from Engine.tenant() or tenantByApiKey().
// Size (over 400 lines): the public surface of a tenant, each method a thin delegation to the flow
// module or the read statement that does the work; one class keeps that surface in one place.
import { createHash } from 'node:crypto'
import { resolveWindow, type StatsReport, type StatsWindowInput, tenantStats } from '../analytics.ts'
import type { WorkflowDefinition } from '../core/definition.ts'
import { requireUuid } from '../core/ids.ts'
import type { Json } from '../core/json.ts'
import type { WorkflowStatus } from '../core/task-state.ts'
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import type { Engine } from '../engine.ts'
import { InvalidInputError, ResultWaitError, WorkflowCancelledError, WorkflowFailedError } from '../errors.ts'
import { cancelWorkflow, type CancelResult } from '../flow/cancel.ts'
import {
  type DeadLetterFilter,
  type DeadLetterPage,
  listDeadLetters,
  redrive,
  type RedriveResult,
  type RedriveSelection,
} from '../flow/dead-letters.ts'
import { type ReplayOptions, type ReplayResult, replayWorkflow } from '../flow/replay.ts'
import type { OperatorRequest } from '../flow/requests.ts'
import { type RetryResult, retryWorkflow } from '../flow/retry.ts'
import { type StartOptions, type StartResult, startWorkflow } from '../flow/start.ts'
import { type ApprovalDecision, deliver, type DeliveryResult, type EventDelivery } from '../flow/waits.ts'
import {
  deleteScheduleTx,
  listSchedules,
  putScheduleTx,
  type ScheduleSpec,
  type ScheduleView,
} from '../schedule/schedules.ts'
import {
  checkWorkflowFilter,
  readEnded,
  readHasEnded,
  readHistory,
  readWorkflow,
  readWorkflowPage,
} from './read.ts'
import type { BudgetAuditEntry, BudgetView, UsageReport } from '../usage/budgets.ts'
import { tenantBudgetAudit, tenantBudgets, tenantUsage, type UsageDeps } from '../usage/service.ts'
import type { AuditEntry, ResultOptions, WorkflowFilter, WorkflowPage, WorkflowView } from './types.ts'
import { applyEffects, waitEffects } from '../flow/effects.ts'

/** What startWorkflow returns: the StartResult (JSON as before), and a way to await the run's end. */
export class StartedWorkflow implements StartResult {
  readonly id: string
  readonly created: boolean
  readonly status: WorkflowStatus
  readonly #handle: TenantHandle
  constructor(handle: TenantHandle, started: StartResult) {
    this.#handle = handle
    this.id = started.id
    this.created = started.created
    this.status = started.status
  }

  /**
   * The workflow's outputs once it completed: see TenantHandle.result. Started in the caller's own
   * transaction (`options.db`), call it after that transaction commits: before, the workflow is not
   * visible to other connections and the call rejects with NotFoundError.
   */
  result(options: ResultOptions = {}): Promise<Record<string, Json>> {
    return this.#handle.result(this.id, options)
  }

  toJSON(): StartResult {
    return { id: this.id, created: this.created, status: this.status }
  }
}

/** Everything a caller can do for one tenant; obtained from Engine.tenant() or tenantByApiKey(). */
export class TenantHandle {
  readonly #engine: Engine
  readonly scope: TenantScope

  constructor(engine: Engine, scope: TenantScope) {
    this.#engine = engine
    this.scope = scope
  }

  get id(): string {
    return this.scope.tenantId
  }

  /**
   * Starts a workflow of the type's latest registered version, or of `options.version`
   * (UnknownWorkflowVersionError if that version is not registered in this process). Given the
   * definition instead of its name, the input is typed by the definition's input schema (and the
   * definition's own version starts). The input is checked against that schema first: a refusal is
   * an InvalidInputError naming the path of the first problem, and nothing is written. The answer
   * serialises as the StartResult (id, created, status); its `result()` awaits the run's end.
   */
  async startWorkflow<TStart>(
    workflow: WorkflowDefinition<any, TStart>,
    input: TStart,
    options?: StartOptions,
  ): Promise<StartedWorkflow>
  async startWorkflow(
    type: string,
    input?: Json,
    options?: StartOptions & { version?: number },
  ): Promise<StartedWorkflow>
  async startWorkflow(
    type: string | WorkflowDefinition<any, unknown>,
    input: unknown = null,
    options: StartOptions & { version?: number } = {},
  ): Promise<StartedWorkflow> {
    const e = this.#engine
    const { version, ...rest } = options
    const def =
      typeof type === 'string' ? e.workflow(type, version) : e.workflow(type?.name, type?.version ?? version)
    const { pool, boss, key } = await e.storeOf(this.scope)
    const started = await startWorkflow(
      { pool, boss, limits: e.limits, keyRing: e.keyRing },
      this.scope,
      def,
      input,
      rest,
    )
    // In the caller's own transaction (options.db) this counts a start that may still roll back.
    if (started.created)
      e.metrics.workflowsStarted.inc(e.metrics.withTenant({ type: def.name }, this.id, key))
    return new StartedWorkflow(this, started)
  }

  /**
   * Waits for the workflow to end and resolves with its outputs (the results of its completed
   * final tasks, by task key, decrypted), also when it had ended before the call. Rejects with
   * WorkflowFailedError (its `error` is the failure) or WorkflowCancelledError; with ResultWaitError
   * `result_timeout` once `timeoutMs` passed or `result_aborted` when `signal` aborts, leaving the
   * workflow running; NotFoundError for a workflow this tenant does not have. Woken by a NOTIFY
   * from the statement that ends the workflow, not by polling (see src/flow/ends.ts).
   */
  async result(id: string, options: ResultOptions = {}): Promise<Record<string, Json>> {
    requireUuid(id, 'workflow id')
    checkWait(options)
    const ring = this.#engine.keyRing
    const tenant = this.scope.tenantId
    const ended = await this.#engine.awaitWorkflowEnd(
      this.scope,
      id,
      (db) => readEnded(db, tenant, id),
      options,
    )
    if (ended === 'timeout') {
      throw new ResultWaitError(
        'result_timeout',
        id,
        `workflow ${id} did not end within ${options.timeoutMs} ms (it goes on)`,
      )
    }
    if (ended.status === 'failed') throw new WorkflowFailedError(id, ended.error)
    if (ended.status === 'cancelled') {
      const reason = (ended.error as { reason?: unknown } | null)?.reason
      throw new WorkflowCancelledError(id, typeof reason === 'string' ? reason : null)
    }
    const output: Record<string, Json> = {}
    const outputs = ended.outputs as [string, Json][]
    await ring.prepareFor(
      (await this.#engine.storeOf(this.scope)).pool,
      this.scope,
      outputs.map(([, r]) => r),
    )
    for (const [key, result] of outputs) {
      output[key] = ring.decrypt(tenant, 'task.result', result)
    }
    return output
  }

  /**
   * Runs a failed or cancelled workflow again from where it stopped (src/flow/retry.ts): its tasks
   * that did not complete get new attempts, completed ones keep their results. Idempotent on
   * `requestKey`; OperationError `workflow_not_retryable` for a running or completed workflow.
   */
  async retryWorkflow(id: string, request: OperatorRequest = {}): Promise<RetryResult> {
    requireUuid(id, 'workflow id')
    const store = await this.#engine.storeOf(this.scope)
    return retryWorkflow(store, this.scope, id.toLowerCase(), request)
  }

  /**
   * A new workflow of the same type and version, linked to this one (`replayOf`), that runs task
   * `from` and everything downstream of it again and reuses the other tasks' results
   * (src/flow/replay.ts). OperationError `unknown_task` for a key the workflow does not have.
   */
  async replayWorkflow(id: string, options: ReplayOptions): Promise<ReplayResult> {
    requireUuid(id, 'workflow id')
    if (options === null || typeof options !== 'object')
      throw new InvalidInputError('options must be an object')
    const store = await this.#engine.storeOf(this.scope)
    return replayWorkflow(store, this.scope, id.toLowerCase(), options)
  }

  /** The tenant's dead letters (tasks failed for good), newest first, a page at a time. */
  async deadLetters(filter: DeadLetterFilter = {}): Promise<DeadLetterPage> {
    const { pool } = await this.#engine.storeOf(this.scope)
    return listDeadLetters(pool, this.scope, filter)
  }

  /** Runs a dead letter (`taskId`) or an agent's dead letters again, once each (src/flow/dead-letters.ts). */
  async redrive(selection: RedriveSelection, request: OperatorRequest = {}): Promise<RedriveResult> {
    const store = await this.#engine.storeOf(this.scope)
    return redrive(store, this.scope, selection, request)
  }

  async cancelWorkflow(id: string, options: { reason?: string; actor?: string } = {}): Promise<CancelResult> {
    const m = this.#engine.metrics
    requireUuid(id, 'workflow id')
    const store = await this.#engine.storeOf(this.scope)
    return cancelWorkflow(store, this.scope, id, options, (wf) =>
      applyEffects(
        { workflows: [{ tenantId: this.id, type: wf.type, status: 'cancelled', durationMs: wf.durationMs }] },
        { metrics: m, database: store.key },
      ),
    )
  }

  /**
   * Delivers an external event to a workflow: the task waiting for it completes with its payload
   * (and its dependents are dispatched) in the same transaction; if its task is not waiting yet,
   * the event is kept for it. Idempotent on `eventId`. WaitError when nothing in the workflow waits
   * for it, or the workflow has ended.
   */
  async sendEvent(workflowId: string, event: EventDelivery): Promise<DeliveryResult> {
    requireUuid(workflowId, 'workflow id')
    return this.#deliver(workflowId, eventDelivery(event))
  }

  /**
   * Records an approver's decision on a workflow's approval: approved, the approval task completes
   * and the workflow goes on; rejected, the workflow fails with the approver's reason. Idempotent
   * (see ApprovalDecision.eventId); kept until the approval is waiting, like an event.
   */
  async decide(workflowId: string, decision: ApprovalDecision): Promise<DeliveryResult> {
    requireUuid(workflowId, 'workflow id')
    return this.#deliver(workflowId, decisionDelivery(decision))
  }

  /**
   * Creates or replaces a cron schedule that starts `workflowType` with `input` at every slot of
   * `cron` in `timezone` (see ScheduleSpec). Validated before anything is written: an unknown type
   * is UnknownWorkflowTypeError, a bad cron expression, time zone or input InvalidInputError.
   */
  async putSchedule(spec: ScheduleSpec): Promise<ScheduleView> {
    const e = this.#engine
    await e.keyRing.prepare((await e.storeOf(this.scope)).pool, this.scope)
    return this.#tx((db) =>
      putScheduleTx(
        db,
        { keyRing: e.keyRing, limits: e.limits, workflow: (type) => e.workflow(type) },
        this.id,
        spec,
      ),
    )
  }

  /** The tenant's cron schedules, by id. */
  async listSchedules(): Promise<ScheduleView[]> {
    const ring = this.#engine.keyRing
    return this.#tx(async (db) =>
      listSchedules(await ring.prepareFor(db, this.scope, []).then(() => db), ring, this.id),
    )
  }

  /** Deletes a cron schedule (workflows it started are not touched); NotFoundError if there is none. */
  async deleteSchedule(id: string): Promise<void> {
    return this.#tx((db) => deleteScheduleTx(db, this.id, id))
  }

  async #deliver(workflowId: string, delivery: Delivery): Promise<DeliveryResult> {
    const e = this.#engine
    const store = await e.storeOf(this.scope)
    const { outcome, ...result } = await deliver(
      { pool: store.pool, boss: store.boss, keyRing: e.keyRing, limits: e.limits },
      this.scope,
      workflowId,
      delivery,
    )
    // The dispatched jobs are announced by the transaction's NOTIFY: no local loop to wake here.
    applyEffects(waitEffects(this.scope, outcome), { metrics: e.metrics, database: store.key })
    return result
  }

  /** Runs `fn` in a transaction scoped to this tenant, in the tenant's database. */
  async #tx<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    const { pool } = await this.#engine.storeOf(this.scope)
    return withTenantTx(pool, this.scope, fn)
  }

  /**
   * The tenant's workflows, newest first, `limit` at a time (keyset pagination on the
   * workflows_recent index: a page costs the same however deep it is). Pass the returned
   * `nextCursor` to read the next page; it is null on the last one.
   */
  async listWorkflows(filter: WorkflowFilter = {}): Promise<WorkflowPage> {
    const page = checkWorkflowFilter(filter)
    return this.#tx((db) => readWorkflowPage(db, this.scope.tenantId, filter, page))
  }

  /** The tenant's usage (ctx.usage) over a window, by dimension, agent and workflow type. */
  async usage(query: { from?: Date; to?: Date; workflowId?: string } = {}): Promise<UsageReport> {
    if (query.workflowId !== undefined) requireUuid(query.workflowId, 'workflow id')
    return tenantUsage(this.#usageDeps, this.scope, query)
  }

  /** The tenant's budgets, with what each period has used. */
  budgets(): Promise<BudgetView[]> {
    return tenantBudgets(this.#usageDeps, this.scope)
  }

  /** The budgets' audit trail (set, raised, reached, rolled, removed), newest first. */
  budgetAudit(limit?: number): Promise<BudgetAuditEntry[]> {
    return tenantBudgetAudit(this.#usageDeps, this.scope, limit)
  }

  get #usageDeps(): UsageDeps {
    return { storeOf: (scope) => this.#engine.storeOf(scope), metrics: this.#engine.metrics }
  }

  /**
   * The tenant's workflow performance per type and agent performance per agent over a window
   * (default: the last 24 hours; see src/analytics.ts for what each figure counts).
   */
  async stats(window: StatsWindowInput = {}): Promise<StatsReport> {
    const w = resolveWindow(window)
    return this.#tx((db) => tenantStats(db, this.scope.tenantId, w))
  }

  /**
   * Decrypts the input and results; a missing or wrong key throws EncryptionError. With `waitMs`,
   * waits (as result() does, woken by the workflow's end) up to that long for a running workflow
   * to end, then answers with its state, ended or not; `signal` stops the wait early the same way.
   */
  async getWorkflow(
    id: string,
    options: { waitMs?: number; signal?: AbortSignal } = {},
  ): Promise<WorkflowView> {
    requireUuid(id, 'workflow id')
    if (options.waitMs !== undefined && options.waitMs > 0) {
      checkWait({ timeoutMs: options.waitMs, signal: options.signal })
      await this.#engine
        .awaitWorkflowEnd(this.scope, id, (db) => readHasEnded(db, this.scope.tenantId, id), {
          timeoutMs: options.waitMs,
          signal: options.signal,
        })
        .catch((error: unknown) => {
          // Stopped early: the state as it is now (a disconnected HTTP client gets nothing anyway).
          if ((error as { code?: unknown }).code !== 'result_aborted') throw error
        })
    }
    const ring = this.#engine.keyRing
    return this.#tx((db) => readWorkflow(db, ring, this.scope.tenantId, id, this.scope))
  }

  /** The workflow's audit trail, in the order it was written; NotFoundError for an unknown workflow. */
  async history(workflowId: string): Promise<AuditEntry[]> {
    requireUuid(workflowId, 'workflow id')
    return this.#tx((db) => readHistory(db, this.scope.tenantId, workflowId))
  }
}

type Delivery = Parameters<typeof deliver>[3]

/** An event as deliver() takes it; a value that is not an object is an InvalidInputError. */
function eventDelivery(event: EventDelivery): Delivery {
  if (event === null || typeof event !== 'object') throw new InvalidInputError('an event must be an object')
  return {
    kind: 'event',
    eventId: event.eventId,
    name: event.name,
    key: event.key ?? null,
    payload: event.payload ?? null,
    actor: event.actor ?? null,
  }
}

/** A decision as deliver() takes it, checked first (InvalidInputError naming the field). */
function decisionDelivery(decision: ApprovalDecision): Delivery {
  if (decision === null || typeof decision !== 'object')
    throw new InvalidInputError('a decision must be an object')
  if (typeof decision.approved !== 'boolean')
    throw new InvalidInputError('approved must be true or false', '$.approved')
  if (
    decision.comment !== undefined &&
    (typeof decision.comment !== 'string' || decision.comment.length > 2000)
  )
    throw new InvalidInputError('comment must be a string of at most 2000 characters', '$.comment')
  if (typeof decision.approver !== 'string' || decision.approver.length === 0)
    throw new InvalidInputError('approver must name who decides', '$.approver')
  return {
    kind: 'approval',
    eventId: decision.eventId ?? decisionId(decision),
    name: decision.name,
    key: null,
    payload: {
      approved: decision.approved,
      ...(decision.comment !== undefined ? { comment: decision.comment } : {}),
    },
    actor: decision.approver,
  }
}

/** Checks result()'s options: a bad timeout or signal is an InvalidInputError, before any wait. */
function checkWait(options: ResultOptions): void {
  if (options === null || typeof options !== 'object')
    throw new InvalidInputError('options must be an object')
  const t = options.timeoutMs
  if (t !== undefined && !(Number.isInteger(t) && t >= 0 && t <= 2_147_483_647)) {
    throw new InvalidInputError(
      'timeoutMs must be an integer number of milliseconds, 0 to 2^31-1',
      '$.timeoutMs',
    )
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new InvalidInputError('signal must be an AbortSignal', '$.signal')
  }
}

/**
 * A decision's default idempotency id: `<name>:<approver>:<approved|rejected>`, or its SHA-256 when
 * that is over the 200 characters an event id may have (long names are still a valid decision).
 */
function decisionId(d: ApprovalDecision): string {
  const id = `${String(d.name)}:${d.approver}:${d.approved ? 'approved' : 'rejected'}`
  return id.length <= 200 ? id : `sha256:${createHash('sha256').update(id).digest('hex')}`
}
