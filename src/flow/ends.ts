// Awaiting a workflow's end (`result()`, the HTTP long-poll, `workflow start --wait`) without
// polling: the statements that end a workflow (COMPLETE, FAIL_WORKFLOW, CANCEL) send its id on
// ENDED_CHANNEL, and one LISTEN connection per database (EndListener), shared by every caller
// waiting on that database, wakes the callers of that id, who read the workflow again.
//
// A notification can be missed: sent while the LISTEN connection was down, or by a path that ends a
// workflow without one. So a waiter also reads again when the connection comes back, every
// `downPollMs` while it is down, every `recheckMs` anyway, and at its deadline before giving up.
import pg from 'pg'
import type { Logger } from 'pino'
import { EquilateralError, ResultWaitError } from '../errors.ts'
import { ENDED_CHANNEL } from './channels.ts'

export interface EndListenerOptions {
  /** A session of its own (DIRECT_DATABASE_URL behind a pooler); null: none, waiters poll every downPollMs. */
  connectionString: string | null
  log: Logger
  /** While the LISTEN connection is down, every waiter reads again this often. */
  downPollMs: number
  /** A connection nobody waits on is closed after this long (the next waiter opens it again). */
  idleMs?: number
}

type Wake = () => void

/** One LISTEN connection on one database, opened for the first waiter and shared by all of them. */
export class EndListener {
  readonly #o: EndListenerOptions
  /** Waiters by workflow id. */
  readonly #waiters = new Map<string, Set<Wake>>()
  #client: pg.Client | null = null
  /** Settles when the connection under way is listening, or has failed (waiters poll then). */
  #connecting: Promise<void> | null = null
  #retry: NodeJS.Timeout | null = null
  #downPoll: NodeJS.Timeout | null = null
  #idle: NodeJS.Timeout | null = null
  #failures = 0
  #closed = false

  constructor(options: EndListenerOptions) {
    this.#o = options
  }

  /** Waiters registered now (tests, and the engine's bookkeeping). */
  get waiters(): number {
    let n = 0
    for (const set of this.#waiters.values()) n += set.size
    return n
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Whether the LISTEN connection is up. */
  get listening(): boolean {
    return this.#client !== null
  }

  /**
   * Registers `wake` for the workflow's end; resolves once the LISTEN connection is listening (so a
   * read made after it cannot miss the notification of an end that commits later), or has failed
   * (the waiter is then woken every downPollMs until it is back). Returns the unregistration.
   */
  async add(workflowId: string, wake: Wake): Promise<() => void> {
    if (this.#closed) throw new EquilateralError('engine_closed', 'the engine is closed')
    if (this.#idle) clearTimeout(this.#idle)
    this.#idle = null
    let set = this.#waiters.get(workflowId)
    if (!set) this.#waiters.set(workflowId, (set = new Set()))
    set.add(wake)
    const remove = () => {
      const found = this.#waiters.get(workflowId)
      if (!found?.delete(wake)) return
      if (found.size === 0) this.#waiters.delete(workflowId)
      if (this.#waiters.size === 0) this.#scheduleIdle()
    }
    if (!this.#client) {
      this.#connecting ??= this.#connect()
      await this.#connecting
    }
    return remove
  }

  /** Closes the connection; every waiter is woken (and finds the listener closed). */
  async close(): Promise<void> {
    this.#closed = true
    for (const t of [this.#retry, this.#downPoll, this.#idle]) if (t) clearTimeout(t)
    this.#wakeAll()
    const client = this.#client
    this.#client = null
    await client?.end().catch(() => {})
  }

  async #connect(): Promise<void> {
    if (this.#o.connectionString === null) {
      // No session to LISTEN on: waiters read again every downPollMs (settled after the caller
      // stored this promise, so that the next waiter arms the poll again after an idle close).
      await Promise.resolve()
      this.#downPoll ??= setInterval(() => this.#wakeAll(), this.#o.downPollMs)
      this.#downPoll.unref()
      this.#connecting = null
      return
    }
    const client = new pg.Client({
      connectionString: this.#o.connectionString,
      application_name: 'equilateral-results',
    })
    client.on('notification', (n) => {
      if (n.channel !== ENDED_CHANNEL || !n.payload) return
      for (const id of n.payload.split(',')) for (const wake of this.#waiters.get(id) ?? []) wake()
    })
    const lost = (error?: Error) => {
      if (this.#client !== client) return
      this.#o.log.warn(
        { err: { message: error?.message ?? 'the server closed it' } },
        'result LISTEN connection lost; polling until it is back',
      )
      this.#client = null
      client.end().catch(() => {})
      this.#down()
    }
    client.on('error', lost)
    client.on('end', () => lost())
    try {
      await client.connect()
      await client.query(`LISTEN ${ENDED_CHANNEL}`)
      if (this.#closed || this.#waiters.size === 0) {
        await client.end().catch(() => {})
        return
      }
      this.#client = client
      if (this.#failures > 0)
        this.#o.log.info({ attempts: this.#failures }, 'result LISTEN connection restored')
      this.#failures = 0
      if (this.#downPoll) clearInterval(this.#downPoll)
      this.#downPoll = null
      // Ends that committed while it was down sent notifications nobody heard: everyone reads again.
      this.#wakeAll()
    } catch (error) {
      this.#failures++
      if (this.#failures === 1)
        this.#o.log.warn(
          { err: { message: (error as Error).message } },
          'result LISTEN connection failed; polling',
        )
      client.end().catch(() => {})
      this.#down()
    } finally {
      this.#connecting = null
    }
  }

  /** The connection is down: waiters poll, and it is tried again after 1 s, doubling up to 10 s. */
  #down(): void {
    if (this.#closed) return
    this.#downPoll ??= setInterval(() => this.#wakeAll(), this.#o.downPollMs)
    this.#downPoll.unref()
    if (this.#retry || this.#waiters.size === 0) return
    const delay = Math.min(10_000, 1000 * 2 ** Math.max(0, this.#failures - 1))
    this.#retry = setTimeout(() => {
      this.#retry = null
      if (this.#closed || this.#client || this.#waiters.size === 0) return
      this.#connecting ??= this.#connect()
    }, delay)
    this.#retry.unref()
  }

  #scheduleIdle(): void {
    if (this.#closed) return
    this.#idle = setTimeout(() => {
      this.#idle = null
      if (this.#waiters.size > 0) return
      if (this.#downPoll) clearInterval(this.#downPoll)
      this.#downPoll = null
      const client = this.#client
      this.#client = null
      void client?.end().catch(() => {})
    }, this.#o.idleMs ?? 30_000)
    this.#idle.unref()
  }

  #wakeAll(): void {
    for (const set of [...this.#waiters.values()]) for (const wake of [...set]) wake()
  }
}

export interface AwaitEndOptions<T> {
  listener: EndListener
  workflowId: string
  /** Reads the workflow: its end (whatever the caller needs of it), or null while it runs. */
  read: () => Promise<T | null>
  /** Give up (resolve 'timeout') after this long; undefined: wait until the end or the signal. */
  timeoutMs?: number | undefined
  signal?: AbortSignal | undefined
  /** Read again this often even without a notification. */
  recheckMs: number
}

/**
 * Resolves with `read()`'s first non-null answer, or 'timeout' once timeoutMs passed (after a last
 * read at the deadline). An aborted signal rejects with ResultWaitError `result_aborted` at once.
 */
export async function awaitEnd<T>(o: AwaitEndOptions<T>): Promise<T | 'timeout'> {
  const aborted = () =>
    new ResultWaitError(
      'result_aborted',
      o.workflowId,
      `stopped waiting for workflow ${o.workflowId}: the signal was aborted (the workflow goes on)`,
      o.signal?.reason,
    )
  if (o.signal?.aborted) throw aborted()
  const deadline = o.timeoutMs === undefined ? Infinity : Date.now() + o.timeoutMs
  // Ended already (the common case of a late caller): answered without touching the LISTEN
  // connection. Otherwise the loop below reads again once listening, so no end falls in between.
  const ended = await o.read()
  if (ended !== null) return ended
  let woken = false
  let wakeUp: () => void = () => {}
  const unregister = await o.listener.add(o.workflowId, () => {
    woken = true
    wakeUp()
  })
  let onAbort: (() => void) | undefined
  try {
    const abortedPromise = new Promise<never>((_, reject) => {
      onAbort = () => reject(aborted())
      o.signal?.addEventListener('abort', onAbort, { once: true })
    })
    abortedPromise.catch(() => {})
    const loop = async (): Promise<T | 'timeout'> => {
      for (;;) {
        woken = false
        const found = await o.read()
        if (found !== null) return found
        if (o.listener.closed) throw new EquilateralError('engine_closed', 'the engine is closed')
        if (o.signal?.aborted) throw aborted()
        const left = deadline - Date.now()
        if (left <= 0) return 'timeout'
        if (woken) continue
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(left, o.recheckMs))
          function done() {
            clearTimeout(timer)
            o.signal?.removeEventListener('abort', done)
            wakeUp = () => {}
            resolve()
          }
          wakeUp = done
          o.signal?.addEventListener('abort', done, { once: true })
        })
      }
    }
    return await Promise.race([loop(), abortedPromise])
  } finally {
    if (onAbort) o.signal?.removeEventListener('abort', onAbort)
    unregister()
  }
}
