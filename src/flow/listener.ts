// The worker's LISTEN connection: a dedicated client that hears READY_CHANNEL (a transaction made
// jobs ready in a queue: wake its loop) and CANCEL_CHANNEL (tasks whose workflow was cancelled:
// abort their agents). While it is away the worker polls; it reconnects after 1 s, doubling up to
// 10 s, and wakes every loop once back (notifications may have been missed).
import pg from 'pg'
import type { Logger } from 'pino'
import { CANCEL_CHANNEL, READY_CHANNEL } from './channels.ts'

export interface ListenerOptions {
  /** A session of its own (DIRECT_DATABASE_URL behind a pooler); null: none, the worker polls. */
  connectionString: string | null
  log: Logger
  /** A queue has jobs ready; no queue: any may have (after a reconnection). */
  onReady(queue?: string): void
  onCancel(taskIds: string[]): void
}

export class Listener {
  readonly #o: ListenerOptions
  #client: pg.Client | null = null
  #retry: NodeJS.Timeout | null = null
  /** Failed LISTEN connection attempts in a row (backoff, and one warning per outage). */
  #failures = 0
  #stopped = false

  constructor(options: ListenerOptions) {
    this.#o = options
  }

  /** Whether the LISTEN session is open (the connection budget's metric). */
  get listening(): boolean {
    return this.#client !== null
  }

  async start(): Promise<void> {
    if (this.#stopped || this.#o.connectionString === null) return
    const client = new pg.Client({
      connectionString: this.#o.connectionString,
      application_name: 'equilateral-listen',
    })
    client.on('notification', (n) => {
      if (n.channel === READY_CHANNEL && n.payload) this.#o.onReady(n.payload)
      else if (n.channel === CANCEL_CHANNEL && n.payload) this.#o.onCancel(n.payload.split(','))
    })
    client.on('error', (error) => {
      this.#o.log.warn({ err: error }, 'LISTEN connection lost; polling until it is back')
      this.#client = null
      client.end().catch(() => {})
      this.#schedule()
    })
    try {
      await client.connect()
      await client.query(`LISTEN ${READY_CHANNEL}; LISTEN ${CANCEL_CHANNEL}`)
      this.#client = client
      if (this.#failures > 0) this.#o.log.info({ attempts: this.#failures }, 'LISTEN connection restored')
      this.#failures = 0
      this.#o.onReady() // notifications may have been missed while disconnected
    } catch (error) {
      this.#failures++
      if (this.#failures === 1)
        this.#o.log.warn({ err: error }, 'LISTEN connection failed; polling until it is back')
      else this.#o.log.debug({ err: error, attempts: this.#failures }, 'LISTEN connection failed again')
      client.end().catch(() => {})
      this.#schedule()
    }
  }

  /** Stops reconnecting (call first at shutdown). */
  stopRetrying(): void {
    this.#stopped = true
  }

  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#retry) clearTimeout(this.#retry)
    await this.#client?.end().catch(() => {})
    this.#client = null
  }

  /** Reconnects after 1 s, doubling up to 10 s while the database stays away. */
  #schedule(): void {
    if (this.#stopped || this.#retry) return
    const delay = Math.min(10_000, 1000 * 2 ** Math.max(0, this.#failures - 1))
    this.#retry = setTimeout(() => {
      this.#retry = null
      void this.start()
    }, delay)
  }
}
