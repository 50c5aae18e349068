// Whether the process can serve, and what it says when it cannot: the checks at start (migrated,
// run-time role, encryption, tenant context), the readiness probe, and the outage watch (the first
// connection error of an outage is logged, then the database is probed until it answers).
import type pg from 'pg'
import type { Logger } from 'pino'
import type { Config } from '../config.ts'
import { latestMigrations } from '../db/migrate.ts'
import { describeUrl } from '../db/describe-url.ts'
import { APP_SCHEMA, BOSS_SCHEMA } from '../db/names.ts'
import { withTenantTx } from '../db/tx.ts'
import { SetupError } from '../errors.ts'
import { isTransient } from '../flow/completer.ts'
import { TenantContextError } from '../tenancy/tenant-context.ts'
import { type Connections, connectionError } from './connections.ts'
import type { Readiness } from './types.ts'

export class Health {
  readonly #pool: pg.Pool
  readonly #log: Logger
  readonly #config: Readonly<Config>
  readonly #connections: Connections
  readonly #closing: () => boolean
  readonly #migrateOnStart: boolean
  readonly #setupWarnings: boolean
  /** Set while the database is unreachable: the timer of the probe that waits for it to answer. */
  #databaseProbe: NodeJS.Timeout | null = null
  /** Connection errors not logged during the current outage (see warn). */
  #unlogged = 0
  /** Read from the migration files on the first readiness check, not at every process start. */
  #latestMigrations: ReturnType<typeof latestMigrations> | undefined

  constructor(deps: {
    pool: pg.Pool
    log: Logger
    config: Readonly<Config>
    connections: Connections
    closing: () => boolean
    migrateOnStart: boolean
    setupWarnings: boolean
  }) {
    this.#pool = deps.pool
    this.#log = deps.log
    this.#config = deps.config
    this.#connections = deps.connections
    this.#closing = deps.closing
    this.#migrateOnStart = deps.migrateOnStart
    this.#setupWarnings = deps.setupWarnings
  }

  /** The checks of Engine.start() before pg-boss starts (see the comments). */
  async checkSetup(): Promise<void> {
    await this.checkMigrated()
    if (this.#setupWarnings) {
      const { rows } = await this.#pool.query(
        'SELECT current_user AS role, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user',
      )
      if (rows[0]?.rolsuper || rows[0]?.rolbypassrls) {
        this.#log.warn(
          { role: rows[0].role },
          'run-time connections can bypass row-level security (superuser or BYPASSRLS); set DATABASE_ROLE',
        )
      }
    }
    if (this.#config.encryption.enabled) {
      this.#log.info(
        { activeKey: this.#config.encryption.activeKeyId, keys: this.#config.encryption.keyIds },
        'payloads are encrypted at rest (AES-256-GCM)',
      )
    } else if (this.#setupWarnings) {
      this.#log.warn('payloads are stored unencrypted: set ENCRYPTION_KEYS to encrypt them at rest')
    }
    // The tenant context of the control database: a secret configured that the database refuses is
    // a misconfiguration, refused here rather than at the first request. A secret this process
    // cannot have (no TENANT_CONTEXT_SECRET, no owner login) is only a warning: a worker serving
    // only tenant databases reads theirs through TENANT_SERVERS' owner logins; transactions in the
    // control database fail with the same message. A database still without migration 0016 (a
    // rollout in progress) is the warning above.
    await withTenantTx(this.#pool, { tenantId: '-', searchPath: APP_SCHEMA, tier: '' }, async () => {}).catch(
      (error: unknown) => {
        if (error instanceof TenantContextError) this.#log.warn(error.message)
        else if ((error as { code?: string }).code !== '42883') throw error
      },
    )
  }

  /**
   * Refuses, in one line that names the fix, a database that was never migrated (instead of
   * pg-boss's "not installed" or a missing relation deep in a request); with `migrate: true`,
   * migrates it. A database that lacks only newer migrations is a warning: the web process must
   * still start to report it on /readyz during a rollout.
   */
  async checkMigrated(): Promise<void> {
    const state = async () => {
      let found
      try {
        const { rows } = await this.#pool.query<{ app: boolean; boss: boolean }>(
          `SELECT to_regclass('${APP_SCHEMA}.__tenant_migrations') IS NOT NULL AS app,
             to_regclass('${BOSS_SCHEMA}.version') IS NOT NULL AS boss`,
        )
        found = rows[0]!
      } catch (error) {
        // A new server: the application role every connection switches to (`-c role=...`) is
        // created by the first migration, so connecting fails before anything can be read.
        if (!isMissingRole(error)) throw error
        return { migrated: false, pending: false }
      }
      const migrated = found.app && found.boss
      return { migrated, pending: migrated && (await this.readiness(30_000)).migrations === 'pending' }
    }
    let found = await state()
    if (this.#migrateOnStart && (!found.migrated || found.pending)) {
      const { migrate } = await import('../db/migrate.ts')
      await migrate(this.#connections.adminConnectionString, {
        onStep: (m) => this.#log.info(`migrate: ${m}`),
        tenantContextSecret: this.#config.tenantContextSecret,
        tenantContextVerified: this.#config.tenantContextVerified,
      })
      found = await state()
    }
    if (!found.migrated) {
      throw new SetupError(
        'not_migrated',
        `the database ${describeUrl(this.#connections.connectionString)} is not migrated: run \`equilateral migrate\` ` +
          "(with the owner's DATABASE_URL or MIGRATION_DATABASE_URL), or pass createEngine({ migrate: true })",
      )
    }
    if (found.pending) {
      this.#log.warn('the database lacks migrations this build ships: run `equilateral migrate`')
    }
  }

  /**
   * Whether this process can serve: the database answers (within `timeoutMs`) and has every
   * migration this build ships (control tables and the shared tenant schema; tenant schemas are
   * migrated by the same `migrate` run, after these).
   */
  async readiness(timeoutMs = 2000): Promise<Readiness> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs)
    })
    try {
      const { rows } = await Promise.race([
        this.#pool.query(
          `SELECT (SELECT max(created_at) FROM drizzle.__equilateral_control_migrations)::text AS control,
             (SELECT max(created_at) FROM ${APP_SCHEMA}.__tenant_migrations)::text AS tenant`,
        ),
        timeout,
      ])
      const want = (this.#latestMigrations ??= latestMigrations())
      const control = Number(rows[0]?.control ?? 0)
      const tenant = Number(rows[0]?.tenant ?? 0)
      const pending = control < want.control || tenant < want.tenant
      return {
        ready: !pending,
        database: 'ok',
        migrations: pending ? 'pending' : 'current',
        ...(pending
          ? { detail: 'the database lacks migrations this build ships: run `equilateral migrate`' }
          : {}),
      }
    } catch (error) {
      const code = (error as { code?: string }).code
      // 42P01/3F000: the tracking tables do not exist yet (never migrated).
      if (code === '42P01' || code === '3F000' || code === '42501') {
        return { ready: false, database: 'ok', migrations: 'pending', detail: 'the database is not migrated' }
      }
      this.databaseLost(error)
      return {
        ready: false,
        database: 'unreachable',
        migrations: 'unknown',
        detail: (error as Error).message,
      }
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Logs a warning about a failed database operation of the engine's own. While an outage is being
   * waited out (#databaseLost), a connection error is counted instead: it would only repeat, every
   * poll of every pg-boss worker, what the outage's first line said.
   */
  warn(details: object, error: unknown, msg: string): void {
    if (this.#databaseProbe && isTransient(error)) {
      this.#unlogged++
      return
    }
    this.#log.warn(details, msg)
    this.databaseLost(error)
  }

  /**
   * Called with the connection errors the engine sees (an idle connection lost, a pg-boss query or a
   * readiness check refused). The first one of an outage is logged, then the database is tried once
   * a second until it answers, and that is logged too: the process itself stays up throughout.
   */
  databaseLost(error: unknown): void {
    if (this.#databaseProbe || this.#closing() || !isTransient(error)) return
    const since = Date.now()
    this.#unlogged = 0
    this.#log.warn(connectionError(error as Error), 'database unreachable; waiting for it to come back')
    const probe = () => {
      this.#databaseProbe = setTimeout(() => {
        this.#pool.query('SELECT 1').then(
          () => {
            this.#databaseProbe = null
            this.#log.info(
              { downMs: Date.now() - since, errorsNotLogged: this.#unlogged },
              'database reachable again',
            )
          },
          () => {
            if (!this.#closing()) probe()
          },
        )
      }, 1000)
      this.#databaseProbe.unref()
    }
    probe()
  }

  /** Stops the outage probe (at close). */
  close(): void {
    if (this.#databaseProbe) clearTimeout(this.#databaseProbe)
  }
}

/** `-c role=<name>` at connection naming a role the server does not have (invalid_parameter_value). */
function isMissingRole(error: unknown): boolean {
  const e = error as { code?: unknown; message?: unknown }
  return e.code === '22023' && typeof e.message === 'string' && /^role ".*" does not exist$/.test(e.message)
}
