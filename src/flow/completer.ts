// Group commit for completions: per tenant, the first completion is written at once; those that
// finish while that transaction is under way are written together by the next one. Under load a
// transaction carries many completions (a fixed number of statements per batch); when idle, each
// completion is written alone with no added wait.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { retryTransient } from '../db/errors.ts'
import type { TenantScope } from '../db/tx.ts'
import { failpoint } from '../failpoints.ts'
import type { ClaimedTask } from './claim.ts'
import { type Completion, type CompletionOutcome, completeTasks, type LocalContinuation } from './complete.ts'
import { keepAlive } from './heartbeat.ts'

export interface CompletionResult {
  /** False when the task's lease was lost (cancelled, recovered elsewhere): the result was discarded. */
  written: boolean
  /** The whole batch's outcome (its dispatched jobs, shared by every completion in the batch). */
  outcome: CompletionOutcome
  /** Workflows this completion ended: each ended workflow is reported by one completion of the batch. */
  workflowsCompleted: CompletionOutcome['workflowsCompleted']
}

interface Pending {
  item: Completion
  resolve: (r: CompletionResult) => void
  reject: (e: unknown) => void
}

const MAX_BATCH = 200

export class Completer {
  readonly #deps: { pool: pg.Pool; boss: PgBoss }
  readonly #queues = new Map<
    string,
    { scope: TenantScope; items: Pending[]; flushing: Promise<void> | null }
  >()
  readonly #onError: (error: unknown, attempt: number) => void
  readonly #local: (LocalContinuation & { run(scope: TenantScope, tasks: ClaimedTask[]): void }) | undefined

  constructor(
    deps: { pool: pg.Pool; boss: PgBoss },
    onError: (error: unknown, attempt: number) => void,
    /** Local continuation: picks tasks the batches make ready, and runs them once claimed and committed. */
    local?: LocalContinuation & { run(scope: TenantScope, tasks: ClaimedTask[]): void },
  ) {
    this.#deps = deps
    this.#onError = onError
    this.#local = local
  }

  submit(scope: TenantScope, item: Completion): Promise<CompletionResult> {
    return new Promise((resolve, reject) => {
      if (item.spawn) {
        // A spawn can be refused (invalid tasks); write it alone so it cannot fail its neighbours.
        this.#write(scope, [{ item, resolve, reject }]).catch(reject)
        return
      }
      let q = this.#queues.get(scope.tenantId)
      if (!q) this.#queues.set(scope.tenantId, (q = { scope, items: [], flushing: null }))
      q.items.push({ item, resolve, reject })
      if (!q.flushing) q.flushing = this.#drain(scope.tenantId)
    })
  }

  /** Resolves when every submitted completion has been written (or has failed). */
  async idle(): Promise<void> {
    for (;;) {
      const pending = [...this.#queues.values()].map((q) => q.flushing).filter((p) => p !== null)
      if (pending.length === 0) return
      await Promise.allSettled(pending)
    }
  }

  async #drain(tenantId: string): Promise<void> {
    const q = this.#queues.get(tenantId)
    if (!q) return
    try {
      while (q.items.length > 0) {
        const batch = q.items.splice(0, MAX_BATCH)
        await this.#write(q.scope, batch)
      }
    } finally {
      q.flushing = null
      if (q.items.length === 0) this.#queues.delete(tenantId)
      else q.flushing = this.#drain(tenantId)
    }
  }

  async #write(scope: TenantScope, batch: Pending[]): Promise<void> {
    const items = batch.map((p) => p.item)
    let outcome: CompletionOutcome
    try {
      outcome = await retryTransient(
        () => completeTasks(this.#deps, scope, items, this.#local),
        async (error, attempt) => {
          this.#onError(error, attempt)
          await keepAlive(this.#deps.pool, scope, items)
        },
      )
    } catch (error) {
      // Errors that another try cannot fix (or an outage longer than the retries) go back to the caller.
      for (const p of batch) p.reject(error)
      return
    }
    failpoint('complete.after-commit')
    if (outcome.claimedLocally.length > 0) {
      failpoint('local.after-commit')
      this.#local?.run(scope, outcome.claimedLocally)
    }
    const reported = new Set<string>()
    for (const p of batch) {
      const written = outcome.completed.has(p.item.taskId)
      const ended = outcome.workflowsCompleted.filter(
        (w) => written && w.id === p.item.workflowId && !reported.has(w.id),
      )
      for (const w of ended) reported.add(w.id)
      p.resolve({ written, outcome, workflowsCompleted: ended })
    }
  }
}
