// database-per-tenant: what a worker process runs on each tenant database it serves. The fleet reads
// the directory every TENANT_REFRESH_MS; a tenant that appears (created, resumed, moved to a new
// database) gets its database opened and the process's services started on it (the task worker,
// the sweeper, the retention purge: whichever this process runs); one that goes (suspended, moved
// away) gets them stopped and its database closed. A database that cannot be opened is tried again
// at the next refresh, so a tenant whose server is down starts being served when it comes back,
// and the others are served meanwhile.
import type { Logger } from 'pino'
import { selects, type TenantSelection } from './config.ts'
import { databaseKey } from './tenancy/placement.ts'
import type { Store, Stores } from './tenancy/stores.ts'
import type { TenantScope } from './db/tx.ts'
import { isTransient } from './db/errors.ts'
import type { TenantDirectory } from './tenancy/tenants.ts'

/** Something a process runs on every tenant database it serves; start returns its stop. */
export interface FleetService {
  readonly name: string
  start(store: Store, scope: TenantScope): Promise<() => Promise<void>>
}

interface Served {
  key: string
  scope: TenantScope
  store: Store
  release: () => Promise<void>
  stops: Map<string, () => Promise<void>>
}

export interface FleetOptions {
  stores: Stores
  directory: TenantDirectory
  selection: TenantSelection
  refreshMs: number
  log: Logger
}

export class TenantFleet {
  readonly #o: FleetOptions
  readonly #services: FleetService[] = []
  readonly #served = new Map<string, Served>()
  /** Tenants whose database could not be opened at the last refresh (warned once until it opens). */
  readonly #failing = new Set<string>()
  #timer: NodeJS.Timeout | null = null
  #refreshing: Promise<void> | null = null
  #stopped = false

  constructor(options: FleetOptions) {
    this.#o = options
  }

  /** Adds a service: started on every database served now and on those served later. */
  async add(service: FleetService): Promise<void> {
    this.#services.push(service)
    for (const s of this.#served.values()) await this.#startService(s, service)
    if (!this.#timer && !this.#stopped) {
      await this.refresh()
      this.#timer = setInterval(() => void this.refresh(), this.#o.refreshMs)
      this.#timer.unref()
    }
  }

  /**
   * Reads the directory once and starts or stops serving tenants to match it; nothing to do before
   * the first service is added (no database is opened for nothing).
   */
  refresh(): Promise<void> {
    if (this.#services.length === 0) return Promise.resolve()
    this.#refreshing ??= this.#refresh().finally(() => {
      this.#refreshing = null
    })
    return this.#refreshing
  }

  async #refresh(): Promise<void> {
    if (this.#stopped) return
    const wanted = new Map<string, TenantScope>()
    try {
      for await (const scope of this.#o.directory.active()) {
        if (scope.database && selects(this.#o.selection, scope.tenantId)) wanted.set(scope.tenantId, scope)
      }
    } catch (error) {
      this.#o.log.warn(
        { err: { message: (error as Error).message } },
        'tenant directory not readable; serving as before',
      )
      return
    }
    for (const [id, s] of [...this.#served]) {
      const scope = wanted.get(id)
      if (!scope || databaseKey(scope.database!) !== s.key)
        await this.#unserve(id, scope ? 'moved' : 'suspended or removed')
    }
    for (const [id, scope] of wanted) {
      if (this.#stopped) return
      if (!this.#served.has(id)) await this.#serve(scope)
    }
  }

  async #serve(scope: TenantScope): Promise<void> {
    const key = databaseKey(scope.database!)
    let held: Awaited<ReturnType<Stores['hold']>>
    try {
      held = await this.#o.stores.hold(scope)
    } catch (error) {
      if (!this.#failing.has(scope.tenantId)) {
        this.#failing.add(scope.tenantId)
        this.#o.log.warn(
          { tenant: scope.tenantId, database: key, err: { message: (error as Error).message } },
          isTransient(error)
            ? 'tenant database unreachable; serving it once it answers'
            : 'tenant database cannot be served; retrying at every directory refresh',
        )
      }
      return
    }
    if (this.#failing.delete(scope.tenantId))
      this.#o.log.info({ database: key }, 'tenant database reachable again')
    const served: Served = { key, scope, store: held.store, release: held.release, stops: new Map() }
    this.#served.set(scope.tenantId, served)
    for (const service of this.#services) await this.#startService(served, service)
  }

  async #startService(s: Served, service: FleetService): Promise<void> {
    try {
      s.stops.set(service.name, await service.start(s.store, s.scope))
    } catch (error) {
      // Left out until the tenant is served again (next move, suspension, or process start).
      this.#o.log.error({ database: s.key, service: service.name, err: error }, 'service did not start')
    }
  }

  async #unserve(id: string, why: string): Promise<void> {
    const s = this.#served.get(id)
    if (!s) return
    this.#served.delete(id)
    await Promise.allSettled([...s.stops.values()].map((stop) => stop()))
    await s.release()
    await this.#o.stores.close(s.store.database!)
    this.#o.log.info({ database: s.key, why }, 'tenant database no longer served')
  }

  async stop(): Promise<void> {
    this.#stopped = true
    if (this.#timer) clearInterval(this.#timer)
    await this.#refreshing
    await Promise.allSettled([...this.#served.keys()].map((id) => this.#unserve(id, 'process stopping')))
  }
}

/** What startWorker returns: one worker, or the workers of every database a process serves. */
export interface TaskWorker {
  readonly id: string
  /** Agents running now. */
  readonly runningCount: number
  /** Wakes the fetch loops of a queue (or all), as a NOTIFY would. */
  wake(queue?: string): void
  /** Stops fetching, lets running agents finish within the grace period, releases the rest. */
  stop(): Promise<void>
}

/**
 * database-per-tenant: the workers of one process, one per database it serves (the control
 * database's, unless WORKER_TENANTS lists tenants, and one per tenant database), sharing its slots.
 */
export class FleetWorker implements TaskWorker {
  readonly id: string
  readonly #control: TaskWorker | null
  readonly #workers: ReadonlySet<TaskWorker>

  constructor(control: TaskWorker | null, workers: ReadonlySet<TaskWorker>, id: string) {
    this.#control = control
    this.#workers = workers
    this.id = id
  }

  get runningCount(): number {
    let n = this.#control?.runningCount ?? 0
    for (const w of this.#workers) n += w.runningCount
    return n
  }

  wake(queue?: string): void {
    this.#control?.wake(queue)
    for (const w of this.#workers) w.wake(queue)
  }

  async stop(): Promise<void> {
    await Promise.allSettled([this.#control?.stop(), ...[...this.#workers].map((w) => w.stop())])
  }
}
