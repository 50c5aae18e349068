// Group commit for completions: per tenant, the first completion is written at once; those that
// finish while that transaction is under way are written together by the next one. Under load a
// transaction carries many completions (a fixed number of statements per batch); when idle, each
// completion is written alone with no added wait.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { TenantScope } from '../db/tx.ts'
import { failpoint } from '../failpoints.ts'
import type { ClaimedTask } from './claim.ts'
import { type Completion, type CompletionOutcome, completeTasks, type LocalContinuation } from './complete.ts'
import { heartbeat } from './heartbeat.ts'

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
const RETRY_FOR_MS = 30_000

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

/**
 * Runs a write, and runs it again after a short backoff while it fails with a transient error, for
 * up to 30 s; other errors, and the last one, are thrown. `onRetry` runs before each wait. Every
 * write of an attempt's end (completion, failure, snooze, release) goes through here: a write
 * given up leaves the task running without a heartbeat, and the sweeper would count it as lost.
 */
export async function retryTransient<T>(
  write: () => Promise<T>,
  onRetry: (error: unknown, attempt: number) => void | Promise<void>,
): Promise<T> {
  const started = Date.now()
  for (let attempt = 1; ; attempt++) {
    try {
      return await write()
    } catch (error) {
      if (!isTransient(error) || Date.now() - started > RETRY_FOR_MS) throw error
      await onRetry(error, attempt)
      await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempt)))
    }
  }
}

/**
 * Between tries of a write, stamps its tasks' heartbeats, so the sweeper does not take them as lost
 * while their outcome waits to be written (best effort: the database may still be away).
 */
export async function keepAlive(
  pool: pg.Pool,
  scope: TenantScope,
  tasks: readonly { taskId: string; attempt: number }[],
): Promise<void> {
  await heartbeat(pool, scope, tasks).catch(() => {})
}

/** Connection-level and server-availability errors: the database may come back. */
export function isTransient(error: unknown): boolean {
  const code = (error as { code?: string } | null)?.code
  if (typeof code !== 'string') {
    const message = String((error as { message?: string } | null)?.message ?? '')
    return /Connection terminated|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|EPIPE|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(
      message,
    )
  }
  // 08: connection exceptions; 57P01-03: the server shutting down or starting; 53300: too many
  // connections; then the socket errors of a refused, reset or partitioned network (ENOTFOUND is
  // left out: it is usually a mistyped host name).
  return (
    code.startsWith('08') ||
    ['57P01', '57P02', '57P03', '53300'].includes(code) ||
    ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'EPIPE'].includes(
      code,
    )
  )
}
