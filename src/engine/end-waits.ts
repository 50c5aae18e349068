// Callers awaiting a workflow's end (TenantHandle.result, getWorkflow with waitMs): one LISTEN
// connection per database (src/flow/ends.ts), shared by every waiter of this process.
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import { EquilateralError } from '../errors.ts'
import { awaitEnd, EndListener } from '../flow/ends.ts'
import type { EngineContext } from './context.ts'
import type { ResultOptions } from './types.ts'

export class EndWaits {
  readonly #ctx: EngineContext
  /** Per database (store key): the LISTEN connection shared by the callers awaiting workflows' ends. */
  readonly #ends = new Map<string, EndListener>()

  constructor(ctx: EngineContext) {
    this.#ctx = ctx
  }

  /** Callers awaiting a workflow's end in this process now (result(), long-polls), all databases. */
  get waiters(): number {
    let n = 0
    for (const listener of this.#ends.values()) n += listener.waiters
    return n
  }

  /**
   * Waits until `read` (run in a tenant transaction of the tenant's database) answers non-null, woken
   * by the NOTIFY of the statement that ends a workflow (src/flow/ends.ts) through the one LISTEN
   * connection this process has on that database; 'timeout' after `timeoutMs`. For TenantHandle.
   */
  async await<T>(
    scope: TenantScope,
    workflowId: string,
    read: (db: Db) => Promise<T | null>,
    options: ResultOptions,
  ): Promise<T | 'timeout'> {
    // Held while waiting: an idle tenant database is not closed under a waiter.
    const { store, release } = await this.#ctx.stores.hold(scope)
    try {
      let listener = this.#ends.get(store.key)
      if (!listener || listener.closed) {
        if (this.#ctx.closing) throw new EquilateralError('engine_closed', 'the engine is closed')
        listener = new EndListener({
          connectionString: store.connectionString,
          log: store.database ? this.#ctx.log.child({ database: store.key }) : this.#ctx.log,
          downPollMs: this.#ctx.config.pollIntervalMs,
        })
        this.#ends.set(store.key, listener)
      }
      return await awaitEnd({
        listener,
        workflowId,
        read: () => withTenantTx(store.pool, scope, read),
        timeoutMs: options.timeoutMs,
        signal: options.signal,
        recheckMs: this.#ctx.config.resultRecheckMs,
      })
    } finally {
      await release()
    }
  }

  /** A tenant database's store closed: its listener goes with it. */
  storeClosed(key: string): void {
    const ends = this.#ends.get(key)
    this.#ends.delete(key)
    void ends?.close()
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.#ends.values()].map((l) => l.close()))
    this.#ends.clear()
  }
}
