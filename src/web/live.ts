// The console's live view: `GET /v1/events`, a server-sent event stream per signed-in page, fed by
// LISTEN (no polling). The statements that change tasks notify PROGRESS_CHANNEL with their tenant
// and workflow ids (src/flow/progress.ts), but only while a console watches the tenant: this hub
// keeps the tenant's console_watchers row alive (its expiry pushed forward) while a stream is open.
//
// One LISTEN connection per database (store), opened for the first stream. A notification goes to
// the streams of ITS tenant only: the hub reads the tenant from the payload, so a stream never
// carries another tenant's ids. Events carry ids (`<boot>.<n>`); a client that reconnects with
// Last-Event-ID gets what it missed from a bounded buffer, or `resync` (read everything again)
// when the buffer no longer holds it, the id is from another process, or the LISTEN connection was
// down meanwhile. Every stream starts with `ready`: the client reads the state after it, so nothing
// that commits between its read and the stream is lost.
import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import pg from 'pg'
import type { Logger } from 'pino'
import type { Engine, TenantHandle } from '../engine.ts'
import { withTenantTx } from '../db/tx.ts'
import type { Store } from '../tenancy/stores.ts'
import { PROGRESS_CHANNEL } from '../flow/channels.ts'

/** How long a watcher row lives without being renewed; renewed every third of it. */
export const WATCH_TTL_MS = 60_000
/** A comment line this often keeps proxies from closing an idle stream. */
const HEARTBEAT_MS = 15_000
/** Events kept per tenant for a client that reconnects. */
const BUFFER = 500

export interface ProgressEvent {
  /** Ids of the workflows that changed, or '*' (too many in one transaction: read everything). */
  workflows: string[] | '*'
}

interface Stream {
  tenantId: string
  storeKey: string
  send: (event: string, data: unknown, id?: string) => void
  close: () => void
}

interface TenantBuffer {
  events: { seq: number; data: ProgressEvent }[]
  /** Sequence numbers below this may have been missed (the LISTEN connection was down). */
  since: number
}

interface Listener {
  client: pg.Client | null
  connecting: Promise<void> | null
  retry: NodeJS.Timeout | null
  store: Store
  release: () => Promise<void>
}

/** Without a session connection for LISTEN (behind a pooler): how often the streams re-read. */
const NO_LISTEN_POLL_MS = 2_000

export class LiveHub {
  readonly #engine: Engine
  readonly #log: Logger
  readonly #boot = randomUUID().slice(0, 8)
  #seq = 0
  readonly #streams = new Set<Stream>()
  readonly #buffers = new Map<string, TenantBuffer>()
  readonly #listeners = new Map<string, Listener>()
  /** Renewal timers of the watched tenants' rows, by tenant. */
  readonly #watching = new Map<string, { timer: NodeJS.Timeout; handle: TenantHandle }>()
  #closed = false

  constructor(engine: Engine) {
    this.#engine = engine
    this.#log = engine.log
  }

  /** Streams open now (tests). */
  get streams(): number {
    return this.#streams.size
  }

  /**
   * Opens a stream for the tenant on `res` (headers written here): replays what `lastEventId` missed
   * (or sends `resync`), then `ready`. Resolves once the stream is registered and listening.
   */
  async open(tenant: TenantHandle, res: ServerResponse, lastEventId: string | undefined): Promise<void> {
    const store = await this.#engine.storeOf(tenant.scope)
    let ended = false
    // Kept: a hijacked response is detached from its socket when it closes.
    const socket = res.socket
    const write = (text: string) => {
      if (!ended) res.write(text)
    }
    const stream: Stream = {
      tenantId: tenant.id,
      storeKey: store.key,
      send: (event, data, id) =>
        write(`${id ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`),
      close: () => {
        if (ended) return
        ended = true
        // The connection goes with the stream (a client reconnects, to another process if need be).
        res.end(() => socket?.destroy())
      },
    }
    const heartbeat = setInterval(() => write(': keep-alive\n\n'), HEARTBEAT_MS)
    heartbeat.unref()
    res.on('close', () => {
      // The client went away: its connection is not kept (a hijacked response never "finished",
      // so the server's close would wait for the socket to time out).
      socket?.destroy()
      ended = true
      clearInterval(heartbeat)
      this.#streams.delete(stream)
      this.#maybeUnwatch(tenant.id)
    })
    // Listening and watched before `ready`: whatever commits after the client's read is notified.
    await this.#listen(store, tenant)
    await this.#watch(tenant)
    if (ended) return
    this.#streams.add(stream)
    this.#replay(stream, lastEventId)
    stream.send('ready', { at: new Date().toISOString() }, this.#lastId(tenant.id))
  }

  /** Ends every stream (a shutdown: clients reconnect to another process) and the LISTEN connections. */
  async close(): Promise<void> {
    this.#closed = true
    for (const stream of this.#streams) stream.close()
    this.#streams.clear()
    for (const { timer } of this.#watching.values()) clearInterval(timer)
    this.#watching.clear()
    for (const listener of this.#listeners.values()) {
      if (listener.retry) clearTimeout(listener.retry)
      await listener.client?.end().catch(() => {})
      await listener.release().catch(() => {})
    }
    this.#listeners.clear()
  }

  #lastId(tenantId: string): string {
    const buffer = this.#buffers.get(tenantId)
    const last = buffer?.events.at(-1)?.seq ?? buffer?.since ?? this.#seq
    return `${this.#boot}.${last}`
  }

  #replay(stream: Stream, lastEventId: string | undefined): void {
    if (lastEventId === undefined) return
    const match = /^([0-9a-f]{8})\.(\d{1,15})$/.exec(lastEventId)
    const buffer = this.#buffers.get(stream.tenantId)
    const seen = match && match[1] === this.#boot ? Number(match[2]) : null
    // Complete only if nothing after `seen` can be missing: not before the buffer's start.
    if (seen === null || !buffer || seen < buffer.since) {
      stream.send('resync', { reason: 'events may have been missed' })
      return
    }
    for (const e of buffer.events) if (e.seq > seen) stream.send('progress', e.data, `${this.#boot}.${e.seq}`)
  }

  #dispatch(storeKey: string, payload: string | undefined): void {
    let tenantId: string
    let workflows: ProgressEvent['workflows']
    try {
      const p = JSON.parse(payload ?? '') as { t: unknown; w: unknown }
      if (typeof p.t !== 'string') return
      tenantId = p.t
      workflows = Array.isArray(p.w) ? p.w.filter((x): x is string => typeof x === 'string') : '*'
    } catch {
      return
    }
    const seq = ++this.#seq
    const data: ProgressEvent = { workflows }
    let buffer = this.#buffers.get(tenantId)
    if (!buffer) this.#buffers.set(tenantId, (buffer = { events: [], since: seq - 1 }))
    buffer.events.push({ seq, data })
    if (buffer.events.length > BUFFER) buffer.since = buffer.events.shift()!.seq
    for (const stream of this.#streams) {
      // The tenant named by the statement that sent it: never another tenant's stream.
      if (stream.tenantId === tenantId && stream.storeKey === storeKey)
        stream.send('progress', data, `${this.#boot}.${seq}`)
    }
  }

  /** The LISTEN connection was down: every tenant of that database may have missed events. */
  #missed(storeKey: string): void {
    const seq = ++this.#seq
    for (const stream of this.#streams) {
      if (stream.storeKey !== storeKey) continue
      stream.send('resync', { reason: 'the server lost its LISTEN connection' }, `${this.#boot}.${seq}`)
      const buffer = this.#buffers.get(stream.tenantId)
      if (buffer) buffer.since = seq
    }
    for (const buffer of this.#buffers.values()) buffer.since = Math.max(buffer.since, seq)
  }

  async #listen(store: Store, tenant: TenantHandle): Promise<void> {
    let listener = this.#listeners.get(store.key)
    if (!listener) {
      const held = await this.#engine.stores.hold(tenant.scope)
      listener = this.#listeners.get(store.key)
      if (listener) await held.release()
      else {
        listener = { client: null, connecting: null, retry: null, store, release: held.release }
        this.#listeners.set(store.key, listener)
      }
    }
    if (!listener.client) {
      listener.connecting ??= this.#connect(listener)
      await listener.connecting
    }
  }

  async #connect(listener: Listener): Promise<void> {
    const { store } = listener
    if (store.connectionString === null) {
      // Behind a pooler without DIRECT_DATABASE_URL there is no session to LISTEN on: the tenant's
      // streams are told to read again (resync) every NO_LISTEN_POLL_MS instead.
      listener.retry ??= setInterval(() => this.#missed(store.key), NO_LISTEN_POLL_MS)
      listener.retry.unref()
      return
    }
    const client = new pg.Client({
      connectionString: store.connectionString,
      application_name: 'equilateral-console',
    })
    client.on('notification', (n) => {
      if (n.channel === PROGRESS_CHANNEL) this.#dispatch(store.key, n.payload)
    })
    const lost = (error?: Error) => {
      if (listener.client !== client) return
      this.#log.warn(
        { err: { message: error?.message ?? 'the server closed it' } },
        'console LISTEN connection lost; reconnecting',
      )
      listener.client = null
      client.end().catch(() => {})
      this.#missed(store.key)
      this.#reconnect(listener)
    }
    client.on('error', lost)
    client.on('end', () => lost())
    try {
      await client.connect()
      await client.query(`LISTEN ${PROGRESS_CHANNEL}`)
      if (this.#closed) {
        await client.end().catch(() => {})
        return
      }
      listener.client = client
    } catch (error) {
      this.#log.warn({ err: { message: (error as Error).message } }, 'console LISTEN connection failed')
      client.end().catch(() => {})
      this.#reconnect(listener)
    } finally {
      listener.connecting = null
    }
  }

  #reconnect(listener: Listener): void {
    if (this.#closed || listener.retry) return
    listener.retry = setTimeout(() => {
      listener.retry = null
      if (this.#closed || listener.client) return
      listener.connecting ??= this.#connect(listener).then(() => {
        // Back: whatever committed while it was down was not heard.
        if (listener.client) this.#missed(listener.store.key)
      })
    }, 1000)
    listener.retry.unref()
  }

  /** Writes (or renews) the tenant's watcher row, and renews it while the tenant has streams. */
  async #watch(tenant: TenantHandle): Promise<void> {
    await this.#renew(tenant)
    if (this.#watching.has(tenant.id)) return
    const timer = setInterval(() => {
      void this.#renew(tenant).catch((error: unknown) =>
        this.#log.warn({ err: { message: (error as Error).message } }, 'console watcher not renewed'),
      )
    }, WATCH_TTL_MS / 3)
    timer.unref()
    this.#watching.set(tenant.id, { timer, handle: tenant })
  }

  async #renew(tenant: TenantHandle): Promise<void> {
    const store = await this.#engine.storeOf(tenant.scope)
    await withTenantTx(store.pool, tenant.scope, (db) =>
      db.executeSql(
        `INSERT INTO console_watchers (tenant_id, expires_at)
         VALUES ($1, now() + $2::int * interval '1 millisecond')
         ON CONFLICT (tenant_id) DO UPDATE SET expires_at = EXCLUDED.expires_at`,
        [tenant.id, WATCH_TTL_MS],
      ),
    )
  }

  /** The tenant's last stream closed: stop renewing (its row expires; another process may renew it). */
  #maybeUnwatch(tenantId: string): void {
    for (const s of this.#streams) if (s.tenantId === tenantId) return
    const watching = this.#watching.get(tenantId)
    if (!watching) return
    clearInterval(watching.timer)
    this.#watching.delete(tenantId)
  }
}
