// How every periodic maintenance pass of an engine runs (the sweeper, the liveness pass, the
// scheduler, the retention purge): one of two ways, with the same stop and error handling.
// - every(): on a local timer, the next pass armed when one ends (passes of one loop never
//   overlap); with `lockKey`, only while this process holds that advisory lock on the store's
//   database (one process at a time per database; transaction-scoped, see withTurn). A failed pass is logged through the
//   engine's warning (counted, not logged, while the database is known to be down) and the loop
//   goes on. Leader rules of a pass's own (the scheduler's takePass) stay in the pass.
// - cron(): from a pg-boss cron schedule on the store's database (sent once across the fleet
//   whatever the number of processes, run by one of them); pg-boss records a failed pass as a
//   failed job.
// stop() (at close) clears the timers, waits for the timer passes under way and leaves the cron
// queues' work (each loop's own stop does that for one loop: see FleetService).
import { withTurn } from '../db/pooler.ts'
import type { TenantScope } from '../db/tx.ts'
import type { Store } from '../tenancy/stores.ts'
import type { TenantDirectory } from '../tenancy/tenants.ts'

export interface RunnerHost {
  readonly closing: boolean
  warn(details: object, error: unknown, msg: string): void
}

export interface EveryOptions {
  everyMs: number
  /** Logged (with `err`, and `database` when given) when a pass fails. */
  failed: string
  database?: string
  /** An advisory lock key (transaction-scoped): the pass runs only in the process that takes it. */
  lockKey?: number
}

export interface CronOptions {
  queue: string
  cron: string
  pollingIntervalSeconds: number
}

/** A loop's stop. */
export type Stop = () => Promise<void>

export class Runner {
  readonly #host: RunnerHost
  readonly #timers = new Set<NodeJS.Timeout>()
  readonly #runs = new Set<Promise<void>>()

  constructor(host: RunnerHost) {
    this.#host = host
  }

  /** Runs `pass` every `everyMs` on a local timer (see the file's comment); returns its stop. */
  every(store: Store, options: EveryOptions, pass: () => Promise<void>): Stop {
    let timer: NodeJS.Timeout | undefined
    let stopped = false
    const guarded = options.lockKey === undefined ? pass : () => withLock(store, options.lockKey!, pass)
    const tick = () => {
      const run = guarded().catch((error: unknown) =>
        this.#host.warn(
          { err: error, ...(options.database !== undefined ? { database: options.database } : {}) },
          error,
          options.failed,
        ),
      )
      this.#runs.add(run)
      void run.finally(() => {
        this.#runs.delete(run)
        if (timer) this.#timers.delete(timer)
        if (!stopped && !this.#host.closing) arm()
      })
    }
    const arm = () => {
      timer = setTimeout(tick, options.everyMs)
      this.#timers.add(timer)
    }
    arm()
    return async () => {
      stopped = true
      if (timer) clearTimeout(timer)
      if (timer) this.#timers.delete(timer)
    }
  }

  /** Runs `pass` from a pg-boss cron schedule on the store's database (queue created by the caller). */
  async cron(store: Store, options: CronOptions, pass: () => Promise<void>): Promise<Stop> {
    await store.boss.schedule(options.queue, options.cron)
    await store.boss.work(
      options.queue,
      { pollingIntervalSeconds: options.pollingIntervalSeconds },
      async () => {
        await pass()
      },
    )
    return () => store.boss.offWork(options.queue)
  }

  /** Clears every timer and waits for the passes under way (at close). */
  async stop(): Promise<void> {
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
    await Promise.allSettled([...this.#runs])
  }
}

/**
 * Runs `fn` holding the advisory lock `key` on the store's database; skips it if another holds it.
 * Transaction-scoped (withTurn), so behind a transaction pooler it cannot stay with a server connection.
 */
async function withLock(store: Store, key: number, fn: () => Promise<void>): Promise<void> {
  await withTurn(store.pool, key, fn)
}

/** Active tenants whose tables are in the control database. */
export async function* controlTenants(tenants: TenantDirectory): AsyncGenerator<TenantScope> {
  for await (const scope of tenants.active()) if (!scope.database) yield scope
}
