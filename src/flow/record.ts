// Step 5 of the data flow: recording how an attempt ended. A result goes to the completer (group
// commit, src/flow/completer.ts); a failure, a snooze or a release at shutdown is written here. Each
// write is retried through an outage (db/errors.ts retryTransient), the tasks' heartbeats stamped
// between tries. Returns what it changed (Effects) for the worker to apply: this module counts
// nothing itself.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { isTransient, retryTransient } from '../db/errors.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { isPermanent, LeaseLostError, serializeError, type Snooze } from '../errors.ts'
import type { AttemptEnd } from './attempt.ts'
import type { ClaimedTask } from './claimed.ts'
import type { LocalContinuation } from './complete.ts'
import { Completer } from './completer.ts'
import type { Effects } from './effects.ts'
import { type AttemptFailure, failAttempt } from './fail.ts'
import { keepAlive } from './heartbeat.ts'
import { requeueTasksTx } from './requeue.ts'

export interface RecorderOptions {
  pool: pg.Pool
  boss: PgBoss
  log: Logger
  limits: JsonLimits
  keyRing: KeyRing
}

export class Recorder {
  readonly #o: RecorderOptions
  readonly #completer: Completer

  constructor(
    options: RecorderOptions,
    local?: LocalContinuation & { run(scope: TenantScope, tasks: ClaimedTask[]): void },
  ) {
    this.#o = options
    this.#completer = new Completer(
      options,
      (error, attempt) => options.log.warn({ err: error, attempt }, 'completion write failed; retrying'),
      local,
    )
  }

  /**
   * Writes how an attempt ended (its agent returned, threw, or snoozed) and returns what changed.
   * Never throws: an outcome that could not be written is logged, and the sweeper recovers its task.
   */
  async record(
    task: ClaimedTask,
    scope: TenantScope,
    end: Exclude<AttemptEnd, { kind: 'aborted' }>,
    log: Logger,
    durationMs: number,
  ): Promise<Effects> {
    if (end.kind === 'snoozed') return this.#snooze(task, scope, end.snooze, log, durationMs)
    const ended = (outcome: 'completed' | 'lease_lost' | 'retrying' | 'failed'): Effects['tasks'] => [
      { tenantId: scope.tenantId, agentId: task.agentId, outcome, durationMs, task },
    ]
    try {
      let failure: { error: ReturnType<typeof serializeError>; permanent: boolean }
      if (end.kind === 'returned') {
        try {
          const written = await this.#completer.submit(scope, {
            job: task.job,
            taskId: task.taskId,
            workflowId: task.workflowId,
            attempt: task.attempt,
            result: end.result,
            ...(end.spawned.length
              ? {
                  spawn: {
                    tasks: end.spawned,
                    limits: this.#o.limits,
                    keyRing: this.#o.keyRing,
                    ...(task.sealKey ? { sealKey: task.sealKey } : {}),
                  },
                }
              : {}),
            ...(end.usage ? { usage: end.usage } : {}),
          })
          if (written.written) log.debug({ ms: Math.round(durationMs) }, 'task completed')
          else discarded(log, durationMs)
          // The dependents queued are announced by the transaction's NOTIFY, to this worker too:
          // waking our loops here as well would only cost an empty fetch when the NOTIFY follows.
          return {
            tasks: ended(written.written ? 'completed' : 'lease_lost'),
            usage: written.written && end.usage ? [{ task, tenantId: scope.tenantId, usage: end.usage }] : [],
            workflows: written.workflowsCompleted.map((wf) => ({
              tenantId: scope.tenantId,
              type: wf.type,
              status: 'completed' as const,
              durationMs: wf.durationMs,
            })),
          }
        } catch (error) {
          if (error instanceof LeaseLostError) {
            discarded(log, durationMs)
            return { tasks: ended('lease_lost') }
          }
          if (!isPermanent(error)) throw error
          failure = { error: serializeError(error), permanent: true }
        }
      } else failure = { error: end.error, permanent: end.permanent }
      log.warn({ error: failure.error, permanent: failure.permanent }, 'task attempt failed')
      const attemptFailure: AttemptFailure = {
        taskId: task.taskId,
        workflowId: task.workflowId,
        attempt: task.attempt,
        failures: task.failures,
        maxAttempts: task.maxAttempts,
        backoffMs: task.backoffMs,
        backoffMaxMs: task.backoffMaxMs,
        timeoutMs: task.timeoutMs,
        queue: task.job.queue,
        agentId: task.agentId,
        error: failure.error,
        permanent: failure.permanent,
        ...(task.job.jobId ? { job: { jobId: task.job.jobId, retryCount: task.job.retryCount } } : {}),
        ...(end.usage ? { usage: end.usage } : {}),
      }
      const outcome = await this.#writeEnd(scope, [task], log, 'failure', () =>
        failAttempt(this.#o, scope, attemptFailure),
      )
      return {
        tasks: ended(outcome.kind),
        usage:
          end.usage && outcome.kind !== 'lease_lost'
            ? [{ task, tenantId: scope.tenantId, usage: end.usage }]
            : [],
        workflows:
          outcome.kind === 'failed' && outcome.workflow
            ? [{ tenantId: scope.tenantId, status: 'failed', ...outcome.workflow }]
            : [],
      }
    } catch (error) {
      // The outcome could not be written. The database unavailable (for longer than the completer
      // retries) is an outage already reported; either way the sweeper recovers the task.
      const transient = isTransient(error)
      log[transient ? 'warn' : 'error']({ err: error, transient }, 'could not record the task outcome')
      return {}
    }
  }

  /** The agent snoozed: queue the task again for later, without counting a failure. */
  async #snooze(
    task: ClaimedTask,
    scope: TenantScope,
    snooze: Snooze,
    log: Logger,
    durationMs: number,
  ): Promise<Effects> {
    try {
      await this.#writeEnd(scope, [task], log, 'snooze', () =>
        withTenantTx(this.#o.pool, scope, (db) =>
          requeueTasksTx(
            { db, boss: this.#o.boss, scope },
            [
              {
                taskId: task.taskId,
                attempt: task.attempt,
                status: 'running',
                reason: snooze.message,
                ...(task.job.jobId ? { oldJob: { queue: task.job.queue, jobId: task.job.jobId } } : {}),
                delayMs: snooze.delayMs,
                until: snooze.until,
              },
            ],
            'task_snoozed',
          ),
        ),
      )
      log.debug({ delayMs: snooze.delayMs, until: snooze.until }, 'task snoozed')
      return {
        tasks: [{ tenantId: scope.tenantId, agentId: task.agentId, outcome: 'snoozed', durationMs, task }],
      }
    } catch (error) {
      log[isTransient(error) ? 'warn' : 'error'](
        { err: error },
        'could not snooze the task; the sweeper will recover it',
      )
      return {}
    }
  }

  /**
   * At shutdown, puts one tenant's unfinished tasks back in the queue (a new attempt at once, no
   * failure counted). Never throws: tasks not released are recovered by the sweeper.
   */
  async release(scope: TenantScope, tasks: readonly ClaimedTask[]): Promise<void> {
    try {
      await this.#writeEnd(scope, tasks, this.#o.log, 'release', () =>
        withTenantTx(this.#o.pool, scope, (db) =>
          requeueTasksTx(
            { db, boss: this.#o.boss, scope },
            tasks.map((t) => ({
              taskId: t.taskId,
              attempt: t.attempt,
              status: 'running' as const,
              reason: 'worker shut down',
              ...(t.job.jobId ? { oldJob: { queue: t.job.queue, jobId: t.job.jobId } } : {}),
            })),
            'task_released',
          ),
        ),
      )
      this.#o.log.info({ tasks: tasks.length, tenant: scope.tenantId }, 'released unfinished tasks')
    } catch (error) {
      this.#o.log.error({ err: error }, 'could not release unfinished tasks; the sweeper will recover them')
    }
  }

  /** Resolves when every submitted completion has been written (or has failed). */
  idle(): Promise<void> {
    return this.#completer.idle()
  }

  /**
   * Writes the end of attempts other than a completion (a failure, a snooze, a release) with the
   * completer's retries of transient errors, the tasks' heartbeats stamped between tries: given up
   * at the first error, the task would stay running unstamped and the sweeper count it as lost.
   */
  #writeEnd<T>(
    scope: TenantScope,
    tasks: readonly ClaimedTask[],
    log: Logger,
    what: string,
    write: () => Promise<T>,
  ): Promise<T> {
    return retryTransient(write, async (error, attempt) => {
      log.warn({ err: error, attempt }, `${what} write failed; retrying`)
      await keepAlive(this.#o.pool, scope, tasks)
    })
  }
}

/**
 * The agent returned, but its task was no longer running on this attempt (the sweeper recovered it,
 * or its workflow ended): nothing was written, and what the agent returned or spawned is dropped.
 * Counted as `lease_lost` in equilateral_tasks_finished_total.
 */
function discarded(log: Logger, durationMs: number): void {
  log.warn({ reason: 'lease_lost', ms: Math.round(durationMs) }, 'task completion discarded: lease lost')
}
