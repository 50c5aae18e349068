// The library entry point: an Engine owns the pool and the pg-boss instance of a process, knows the
// agents and workflow types, and hands out tenant-scoped handles (the only way to start or read a
// workflow), workers, and the sweeper.
import { createHash } from 'node:crypto'
import pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import {
  type AdminStatsReport,
  mergeTallies,
  reportOf,
  resolveWindow,
  type StatsReport,
  type StatsTallies,
  statsTallies,
  type StatsWindowInput,
  type TenantStatsSection,
  tenantStats,
} from './analytics.ts'
import { type AuditCheckpoint, type ChainHead, chainHead, signCheckpoint } from './audit/checkpoint.ts'
import { type SealReport, sealTenant, type VerifyReport, verifyTenant } from './audit/seal.ts'
import { type ErasureReport, eraseSubject, eraseTenant } from './compliance/erasure.ts'
import {
  auditRetentionDays as auditRetentionOf,
  type ComplianceProfile,
  parseComplianceProfile,
} from './compliance/profile.ts'
import {
  canMaintain,
  ensureRetentionQueue,
  type PurgeOptions,
  type PurgeReport,
  purgeExpired,
  RETENTION_QUEUE,
} from './compliance/retention.ts'
import { type Config, loadConfig } from './config.ts'
import { dagOrder } from './core/dag-order.ts'
import type { AgentDefinition, WorkflowDefinition } from './core/definition.ts'
import { isUuid, requireUuid } from './core/ids.ts'
import { assertStorableJson, type Json, type JsonLimits } from './core/json.ts'
import { type TaskStatus, WORKFLOW_STATUSES, type WorkflowStatus } from './core/task-state.ts'
import type { KeyRing } from './crypto/keyring.ts'
import { type ReencryptOptions, type ReencryptReport, reencryptPayloads } from './crypto/reencrypt.ts'
import { latestMigrations } from './db/migrate.ts'
import { describeUrl } from './db/describe-url.ts'
import { APP_SCHEMA, BOSS_SCHEMA, MAINTENANCE_ROLE } from './db/names.ts'
import { databaseKey, Servers, type TenantDatabase } from './db/placement.ts'
import { CONTROL_STORE, type Store, Stores } from './db/stores.ts'
import {
  provideTenantContextSecret,
  readTenantContextSecret,
  secretBytes,
  TenantContextError,
} from './db/tenant-context.ts'
import {
  checkout,
  type Db,
  isTimedOut,
  runtimeConnectionString,
  type TenantScope,
  type TxTimeouts,
  withTenantTx,
  withTimeouts,
} from './db/tx.ts'
import {
  DefinitionError,
  EquilateralError,
  InvalidInputError,
  NotFoundError,
  ResultWaitError,
  SetupError,
  TenantError,
  UnknownWorkflowTypeError,
  UnknownWorkflowVersionError,
  WorkflowCancelledError,
  WorkflowFailedError,
} from './errors.ts'
import { cancelWorkflow, type CancelResult } from './flow/cancel.ts'
import { closeAgents } from './flow/close-agents.ts'
import {
  type DeadLetterFilter,
  type DeadLetterPage,
  listDeadLetters,
  redrive,
  type RedriveResult,
  type RedriveSelection,
} from './flow/dead-letters.ts'
import { type ReplayOptions, type ReplayResult, replayWorkflow } from './flow/replay.ts'
import type { OperatorRequest } from './flow/requests.ts'
import { type RetryResult, retryWorkflow } from './flow/retry.ts'
import { awaitEnd, EndListener } from './flow/ends.ts'
import { isTransient } from './flow/completer.ts'
import { type StartOptions, type StartResult, startWorkflow } from './flow/start.ts'
import { type SweepReport, sweepOnce } from './flow/sweep.ts'
import { type DeadWorkers, findDeadWorkers, LivenessRegistry, startLivenessPasses } from './flow/liveness.ts'
import { StatisticsPasses } from './flow/statistics.ts'
import { type ApprovalDecision, deliver, type DeliveryResult, type EventDelivery } from './flow/waits.ts'
import { Slots, Worker, type WorkerHooks } from './flow/worker.ts'
import { FleetWorker, type FleetService, type TaskWorker, TenantFleet } from './fleet.ts'
import { createLogger } from './log.ts'
import { Metrics } from './metrics.ts'
import { type MoveOptions, type MoveReport, moveTenant } from './placement/move.ts'
import { releasePass, type ScheduleReport, runSchedules, takePass } from './schedule/scheduler.ts'
import {
  deleteSchedule,
  listSchedules,
  putSchedule,
  type ScheduleSpec,
  type ScheduleView,
} from './schedule/schedules.ts'
import { createBoss, ensureQueues, SWEEP_QUEUE } from './queue/boss.ts'
import { ownerTenant } from './compliance/owner.ts'
import {
  type CreatedTenant,
  createTenant,
  listTenants,
  rotateApiKey,
  setComplianceProfile,
  setTenantStatus,
  TenantDirectory,
  type TenantInfo,
  type TenantSpec,
} from './tenants.ts'

export interface EngineOptions {
  /** The run-time connection (switched to the application role, see DATABASE_ROLE). */
  connectionString: string
  /**
   * The owner's connection, for tenant administration (create, suspend, rotate key), which the
   * application role may not do. Defaults to MIGRATION_DATABASE_URL, then connectionString.
   */
  adminConnectionString?: string
  /**
   * A login in equilateral_maintenance, for the retention purge and GDPR erasure (switched to that
   * role at connection start). Defaults to MAINTENANCE_DATABASE_URL, then the owner's connection.
   */
  maintenanceConnectionString?: string
  agents?: readonly AgentDefinition<any, any>[]
  workflows?: readonly WorkflowDefinition<any>[]
  /** Overrides of the configuration read from the environment. */
  config?: Partial<Config>
  log?: Logger
  /** Run pg-boss maintenance and cron in this process (default true). */
  supervise?: boolean
  /**
   * Migrate the database (with the owner's connection) before starting, as `equilateral migrate`
   * does: for single-process apps. Default false: a fleet migrates once, in its release phase.
   */
  migrate?: boolean
  /**
   * Log at start what the deployment should change: payloads stored unencrypted, run-time
   * connections that bypass row-level security (default true). The CLI's one-shot commands turn
   * it off: those warnings belong to the processes that run the fleet (web, worker), once each.
   */
  setupWarnings?: boolean
}

export interface WorkflowView {
  id: string
  type: string
  version: number
  status: WorkflowStatus
  input: Json
  error: Json | null
  correlationId: string
  createdAt: Date
  completedAt: Date | null
  /** A replay (TenantHandle.replayWorkflow): the workflow it replays; null otherwise. */
  replayOf: string | null
  /** Results of the completed tasks that nothing depends on. */
  output: Record<string, Json>
  /** Every task after the tasks it depends on (ties in creation order, then by key). */
  tasks: TaskView[]
}

export interface TaskView {
  id: string
  key: string
  agent: string
  /** The agent version the run needs (recorded when the task was created); null: any version. */
  agentVersion: number | null
  type: string
  status: TaskStatus
  dependsOn: string[]
  attempt: number
  failures: number
  result: Json | null
  error: Json | null
  queuedAt: Date | null
  startedAt: Date | null
  completedAt: Date | null
  /** A wait task: what it waits for, and until when once it waits (null without a timeout). */
  wait?: { type: 'approval' | 'event'; name: string; deadline: Date | null }
}

/** How long `result()` (and `getWorkflow(id, { waitMs })`) waits, and what stops it early. */
export interface ResultOptions {
  /** Give up after this long (ResultWaitError `result_timeout`); default: no limit. */
  timeoutMs?: number
  /** Stop waiting when aborted (ResultWaitError `result_aborted`). The workflow is not touched. */
  signal?: AbortSignal
}

/** What startWorkflow returns: the StartResult (JSON as before), and a way to await the run's end. */
export class StartedWorkflow implements StartResult {
  readonly id: string
  readonly created: boolean
  readonly status: WorkflowStatus
  readonly #handle: TenantHandle
  constructor(handle: TenantHandle, started: StartResult) {
    this.#handle = handle
    this.id = started.id
    this.created = started.created
    this.status = started.status
  }

  /**
   * The workflow's outputs once it completed: see TenantHandle.result. Started in the caller's own
   * transaction (`options.db`), call it after that transaction commits: before, the workflow is not
   * visible to other connections and the call rejects with NotFoundError.
   */
  result(options: ResultOptions = {}): Promise<Record<string, Json>> {
    return this.#handle.result(this.id, options)
  }

  toJSON(): StartResult {
    return { id: this.id, created: this.created, status: this.status }
  }
}

export interface Readiness {
  ready: boolean
  database: 'ok' | 'unreachable'
  migrations: 'current' | 'pending' | 'unknown'
  detail?: string
}

export interface WorkflowFilter {
  status?: WorkflowStatus
  type?: string
  /** 1 to 200, default 50. */
  limit?: number
  /** `nextCursor` of the previous page. */
  cursor?: string
  /** Look-ups (each an index probe): the workflow with this id, correlation id or idempotency key. */
  id?: string
  correlationId?: string
  idempotencyKey?: string
  /** Created at or after `since`, before `until` (ISO 8601 or a Date). */
  since?: string | Date
  until?: string | Date
}

export interface WorkflowSummary {
  id: string
  type: string
  version: number
  status: WorkflowStatus
  correlationId: string
  tasksRemaining: number
  createdAt: Date
  completedAt: Date | null
}

export interface WorkflowPage {
  workflows: WorkflowSummary[]
  nextCursor: string | null
}

export interface AuditEntry {
  id: string
  taskId: string | null
  agentId: string | null
  action: string
  data: Json
  actor: string | null
  correlationId: string | null
  at: Date
}

export class Engine {
  readonly pool: pg.Pool
  readonly boss: PgBoss
  readonly config: Readonly<Config>
  readonly log: Logger
  readonly tenants: TenantDirectory
  readonly metrics: Metrics
  /** database-per-tenant: the servers tenant databases are placed on. */
  readonly servers: Servers
  /** Where each tenant's transactions run: the control database, or the tenant's own. */
  readonly stores: Stores
  /** database-per-tenant: the tenant databases this process serves (see startWorker). */
  #fleet: TenantFleet | null = null
  /** startWorker calls so far (each is a service of the fleet of its own). */
  #workerCalls = 0
  readonly #connectionString: string
  readonly #adminConnectionString: string
  /** The maintenance login's connection, switched to the maintenance role; null: the owner's. */
  readonly #maintenanceConnectionString: string | null
  readonly #migrateOnStart: boolean
  readonly #setupWarnings: boolean
  #adminPool: pg.Pool | null = null
  #maintenancePool: pg.Pool | null = null
  /** Every registered version of each agent, by id then version. */
  readonly #agents = new Map<string, Map<number, AgentDefinition<any, any>>>()
  /** The latest version of each workflow type (what starts by default) ... */
  readonly #workflows = new Map<string, WorkflowDefinition<any>>()
  /** ... and every registered version of it (runs in flight keep theirs; StartOptions.version pins one). */
  readonly #workflowVersions = new Map<string, Map<number, WorkflowDefinition<any>>>()
  readonly #workers = new Set<Worker>()
  readonly #sweepTimers = new Set<NodeJS.Timeout>()
  /** Worker liveness (src/flow/liveness.ts): this process's registration, and its pass's stop. */
  #liveness: LivenessRegistry | null = null
  #stopLivenessPasses: (() => Promise<void>) | null = null
  /**
   * The statistics pass (src/flow/statistics.ts) over the databases this process's workers serve,
   * and each worker's hold on its database's place in it.
   */
  #statistics: StatisticsPasses | null = null
  readonly #statisticsHolds = new Map<Worker, () => void>()
  /** startScheduler: the timers of the local scheduler loops, and the passes under way. */
  readonly #schedulerTimers = new Set<NodeJS.Timeout>()
  readonly #schedulerRuns = new Set<Promise<void>>()
  /** Set while the database is unreachable: the timer of the probe that waits for it to answer. */
  #databaseProbe: NodeJS.Timeout | null = null
  /** Connection errors not logged during the current outage (see #warn). */
  #unlogged = 0
  #closing = false
  /** Agents given to startWorker, registered or not: their close hooks run at close() too. */
  readonly #workerAgents = new Set<AgentDefinition<any, any>>()
  #agentsClosed = false
  /** Read from the migration files on the first readiness check, not at every process start. */
  #latestMigrations: ReturnType<typeof latestMigrations> | undefined
  /** Per database (store key): the LISTEN connection shared by the callers awaiting workflows' ends. */
  readonly #ends = new Map<string, EndListener>()

  constructor(options: EngineOptions) {
    this.config = Object.freeze({ ...loadConfig(), ...options.config })
    this.log = options.log ?? createLogger(this.config.logLevel)
    // Every run-time session (the pool, pg-boss's, the LISTEN connections, the tenant databases')
    // has the server end it when it idles inside a transaction: a frozen worker's locks are released.
    const session = { idleInTransactionTimeoutMs: this.config.idleInTransactionTimeoutMs }
    this.#connectionString = runtimeConnectionString(
      options.connectionString,
      this.config.databaseRole,
      session,
    )
    this.#adminConnectionString =
      options.adminConnectionString ?? this.config.migrationDatabaseUrl ?? options.connectionString
    const maintenance = options.maintenanceConnectionString ?? this.config.maintenanceDatabaseUrl
    this.#maintenanceConnectionString = maintenance
      ? runtimeConnectionString(maintenance, MAINTENANCE_ROLE, session)
      : null
    this.#migrateOnStart = options.migrate ?? false
    this.#setupWarnings = options.setupWarnings ?? true
    this.pool = new pg.Pool({
      connectionString: this.#connectionString,
      max: this.config.dbPoolMax,
      application_name: 'equilateral',
    })
    provideTenantContextSecret(this.pool, () => this.#tenantContextSecret(null))
    // pg attaches the whole client to an idle connection's error: log what matters, not the socket.
    this.pool.on('error', (error) =>
      this.#warn(connectionError(error), error, 'idle database connection lost'),
    )
    this.boss = createBoss({
      connectionString: this.#connectionString,
      supervise: options.supervise ?? true,
      schedule: options.supervise ?? true,
    })
    // pg attaches its whole client to connection errors: log the message and code, not the client.
    this.boss.on('error', (error) => this.#warn(connectionError(error), error, 'pg-boss error'))
    this.tenants = new TenantDirectory(this.pool)
    this.metrics = new Metrics({
      tenantLabel: this.config.metricsTenantLabel,
      databaseLabel: this.config.isolationMode === 'database-per-tenant',
    })
    this.metrics.observeResources(this.pool, this.boss, 'app', CONTROL_STORE)
    this.servers = new Servers({
      configured: this.config.tenantServers,
      controlOwnerUrl: this.#adminConnectionString,
      controlRuntimeUrl: options.connectionString,
      controlMaintenanceUrl: maintenance,
      role: this.config.databaseRole,
      session,
    })
    const unobserve = new Map<string, () => void>()
    this.stores = new Stores({
      control: {
        key: CONTROL_STORE,
        pool: this.pool,
        boss: this.boss,
        connectionString: this.#connectionString,
        database: null,
      },
      servers: this.servers,
      log: this.log,
      poolMax: this.config.tenantDbPoolMax,
      maxOpen: this.config.maxTenantDatabases,
      idleMs: this.config.tenantDbIdleMs,
      supervise: options.supervise ?? true,
      onOpen: async (store) => {
        provideTenantContextSecret(store.pool, () => this.#tenantContextSecret(store.database))
        await this.#ensureQueues(this.#allAgentIds(), store.boss)
        unobserve.set(store.key, this.metrics.observeResources(store.pool, store.boss, 'app', store.key))
      },
      onClose: (store) => {
        unobserve.get(store.key)?.()
        unobserve.delete(store.key)
        const ends = this.#ends.get(store.key)
        this.#ends.delete(store.key)
        void ends?.close()
      },
    })
    for (const a of options.agents ?? []) this.#registerAgent(a)
    for (const w of options.workflows ?? []) this.registerWorkflow(w)
  }

  /**
   * Several versions of one agent id may be registered; two definitions of the same (id, version)
   * are a DefinitionError (the same definition twice is registered once).
   */
  #registerAgent(a: AgentDefinition<any, any>): void {
    let versions = this.#agents.get(a.id)
    if (!versions) this.#agents.set(a.id, (versions = new Map()))
    const known = versions.get(a.version)
    if (known === a) return
    if (known) {
      throw new DefinitionError(`agent "${a.id}" version ${a.version} is registered twice`, a.id)
    }
    versions.set(a.version, a)
    this.metrics.declareAgent(a.id)
  }

  /** Every registered agent, all versions. */
  #allAgents(): AgentDefinition<any, any>[] {
    return [...this.#agents.values()].flatMap((versions) => [...versions.values()])
  }

  /** The store (pool and pg-boss) a tenant's transactions run in: the control database's or its own. */
  storeOf(scope: TenantScope): Promise<Store> {
    return this.stores.of(scope)
  }

  /** The lock and statement timeouts of the maintenance passes' transactions. */
  get #timeouts(): TxTimeouts {
    return {
      lockTimeoutMs: this.config.maintenanceLockTimeoutMs,
      statementTimeoutMs: this.config.maintenanceStatementTimeoutMs,
    }
  }

  get limits(): JsonLimits {
    return { maxBytes: this.config.maxPayloadBytes, maxDepth: 64 }
  }

  /** The keys payloads are encrypted under at rest (KeyRing.none: unencrypted). */
  get keyRing(): KeyRing {
    return this.config.encryption
  }

  /**
   * Registers a workflow type's version; every version registered stays available to start (see
   * StartOptions.version), the highest is what starts by default. With agents given, each agent
   * (and agent version) its tasks name must be registered; the same (name, version) twice is a
   * DefinitionError (registering the same definition again does nothing).
   */
  registerWorkflow(def: WorkflowDefinition<any>): void {
    if (this.#agents.size > 0) {
      for (const t of def.tasks) {
        if (t.wait) continue
        const versions = this.#agents.get(t.agentId)
        if (!versions) {
          throw new DefinitionError(
            `workflow "${def.name}": task "${t.key}" uses unknown agent "${t.agentId}"`,
            t.key,
          )
        }
        if (t.agentVersion !== null && !versions.has(t.agentVersion)) {
          throw new DefinitionError(
            `workflow "${def.name}" version ${def.version}: task "${t.key}" uses agent "${t.agentId}" version ${t.agentVersion}, which is not registered (registered: ${[...versions.keys()].sort((a, b) => a - b).join(', ')})`,
            t.key,
          )
        }
      }
    }
    let versions = this.#workflowVersions.get(def.name)
    if (!versions) this.#workflowVersions.set(def.name, (versions = new Map()))
    const known = versions.get(def.version)
    if (known === def) return
    if (known) {
      throw new DefinitionError(`workflow "${def.name}" version ${def.version} is registered twice`)
    }
    versions.set(def.version, def)
    this.metrics.declareWorkflowType(def.name)
    const latest = this.#workflows.get(def.name)
    if (!latest || def.version > latest.version) this.#workflows.set(def.name, def)
  }

  /**
   * A workflow type's definition: the highest registered version, or the given one.
   * UnknownWorkflowTypeError for a type nobody registered, UnknownWorkflowVersionError for a
   * version of it that is not registered.
   */
  workflow(type: string, version?: number): WorkflowDefinition<any> {
    const def = this.#workflows.get(type)
    if (!def) throw new UnknownWorkflowTypeError(type)
    if (version === undefined) return def
    const pinned = this.#workflowVersions.get(type)?.get(version)
    if (!pinned) throw new UnknownWorkflowVersionError(type, version, this.workflowVersions(type))
    return pinned
  }

  /** The registered versions of a workflow type, lowest first (empty for an unknown type). */
  workflowVersions(type: string): number[] {
    return [...(this.#workflowVersions.get(type)?.keys() ?? [])].sort((a, b) => a - b)
  }

  get workflowTypes(): string[] {
    return [...this.#workflows.keys()]
  }

  /** Callers awaiting a workflow's end in this process now (result(), long-polls), all databases. */
  get resultWaiters(): number {
    let n = 0
    for (const listener of this.#ends.values()) n += listener.waiters
    return n
  }

  /**
   * Waits until `read` (run in a tenant transaction of the tenant's database) answers non-null, woken
   * by the NOTIFY of the statement that ends a workflow (src/flow/ends.ts) through the one LISTEN
   * connection this process has on that database; 'timeout' after `timeoutMs`. For TenantHandle.
   */
  async awaitWorkflowEnd<T>(
    scope: TenantScope,
    workflowId: string,
    read: (db: Db) => Promise<T | null>,
    options: ResultOptions,
  ): Promise<T | 'timeout'> {
    // Held while waiting: an idle tenant database is not closed under a waiter.
    const { store, release } = await this.stores.hold(scope)
    try {
      let listener = this.#ends.get(store.key)
      if (!listener || listener.closed) {
        if (this.#closing) throw new EquilateralError('engine_closed', 'the engine is closed')
        listener = new EndListener({
          connectionString: store.connectionString,
          log: store.database ? this.log.child({ database: store.key }) : this.log,
          downPollMs: this.config.pollIntervalMs,
        })
        this.#ends.set(store.key, listener)
      }
      return await awaitEnd({
        listener,
        workflowId,
        read: () => withTenantTx(store.pool, scope, read),
        timeoutMs: options.timeoutMs,
        signal: options.signal,
        recheckMs: this.config.resultRecheckMs,
      })
    } finally {
      await release()
    }
  }

  /** Starts pg-boss and creates the queues of every known agent (idempotent, safe from many processes). */
  async start(): Promise<this> {
    await this.#checkMigrated()
    if (this.#setupWarnings) {
      const { rows } = await this.pool.query(
        'SELECT current_user AS role, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user',
      )
      if (rows[0]?.rolsuper || rows[0]?.rolbypassrls) {
        this.log.warn(
          { role: rows[0].role },
          'run-time connections can bypass row-level security (superuser or BYPASSRLS); set DATABASE_ROLE',
        )
      }
    }
    if (this.keyRing.enabled) {
      this.log.info(
        { activeKey: this.keyRing.activeKeyId, keys: this.keyRing.keyIds },
        'payloads are encrypted at rest (AES-256-GCM)',
      )
    } else if (this.#setupWarnings) {
      this.log.warn('payloads are stored unencrypted: set ENCRYPTION_KEYS to encrypt them at rest')
    }
    // The tenant context of the control database: a secret configured that the database refuses is
    // a misconfiguration, refused here rather than at the first request. A secret this process
    // cannot have (no TENANT_CONTEXT_SECRET, no owner login) is only a warning: a worker serving
    // only tenant databases reads theirs through TENANT_SERVERS' owner logins; transactions in the
    // control database fail with the same message. A database still without migration 0016 (a
    // rollout in progress) is the warning above.
    await withTenantTx(this.pool, { tenantId: '-', searchPath: APP_SCHEMA, tier: '' }, async () => {}).catch(
      (error: unknown) => {
        if (error instanceof TenantContextError) this.log.warn(error.message)
        else if ((error as { code?: string }).code !== '42883') throw error
      },
    )
    await this.boss.start()
    await this.#ensureQueues(this.#allAgentIds())
    return this
  }

  /**
   * Refuses, in one line that names the fix, a database that was never migrated (instead of
   * pg-boss's "not installed" or a missing relation deep in a request); with `migrate: true`,
   * migrates it. A database that lacks only newer migrations is a warning: the web process must
   * still start to report it on /readyz during a rollout.
   */
  async #checkMigrated(): Promise<void> {
    const state = async () => {
      let found
      try {
        const { rows } = await this.pool.query<{ app: boolean; boss: boolean }>(
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
      const { migrate } = await import('./db/migrate.ts')
      await migrate(this.#adminConnectionString, {
        onStep: (m) => this.log.info(`migrate: ${m}`),
        tenantContextSecret: this.config.tenantContextSecret,
        tenantContextVerified: this.config.tenantContextVerified,
      })
      found = await state()
    }
    if (!found.migrated) {
      throw new SetupError(
        'not_migrated',
        `the database ${describeUrl(this.#connectionString)} is not migrated: run \`equilateral migrate\` ` +
          "(with the owner's DATABASE_URL or MIGRATION_DATABASE_URL), or pass createEngine({ migrate: true })",
      )
    }
    if (found.pending) {
      this.log.warn('the database lacks migrations this build ships: run `equilateral migrate`')
    }
  }

  #allAgentIds(): string[] {
    return [
      ...new Set([
        ...this.#agents.keys(),
        ...[...this.#workflowVersions.values()]
          .flatMap((versions) => [...versions.values()])
          .flatMap((w) => w.tasks.filter((t) => !t.wait).map((t) => t.agentId)),
      ]),
    ]
  }

  #ensureQueues(agentIds: string[], boss = this.boss): Promise<void> {
    return ensureQueues(boss, agentIds, {
      heartbeatSeconds: Math.max(30, Math.ceil((this.config.staleAfterMs * 2) / 1000)),
      deleteAfterSeconds: 24 * 3600,
    })
  }

  /**
   * The secret a database's tenant credentials derive from (src/db/tenant-context.ts): the
   * database's own, read once through the owner's connection (the run-time pools' role cannot read
   * it), else the configured TENANT_CONTEXT_SECRET (which `migrate` stores in every database).
   */
  async #tenantContextSecret(database: TenantDatabase | null): Promise<Buffer> {
    try {
      if (!database) return await readTenantContextSecret(this.#admin)
      const owner = new pg.Client({
        connectionString: this.servers.ownerUrl(database.server, database.name),
        application_name: 'equilateral-admin',
      })
      owner.on('error', () => {})
      await owner.connect()
      try {
        return await readTenantContextSecret(owner)
      } finally {
        await owner.end().catch(() => {})
      }
    } catch (error) {
      const configured = this.config.tenantContextSecret
      if (!(error instanceof TenantContextError) || configured === undefined) throw error
      return secretBytes(configured)
    }
  }

  /** The owner's pool, opened on first use by a tenant administration call. */
  get #admin(): pg.Pool {
    if (!this.#adminPool) {
      this.#adminPool = new pg.Pool({
        connectionString: this.#adminConnectionString,
        max: 2,
        application_name: 'equilateral-admin',
      })
      this.#adminPool.on('error', (error) =>
        this.#warn(connectionError(error), error, 'idle admin connection lost'),
      )
    }
    return this.#adminPool
  }

  /**
   * The maintenance pool (retention purge, erasure), opened on first use: the maintenance login's
   * (MAINTENANCE_DATABASE_URL) when there is one, else the owner's, as before the role existed.
   */
  get #maintenance(): pg.Pool {
    if (!this.#maintenanceConnectionString) return this.#admin
    if (!this.#maintenancePool) {
      this.#maintenancePool = new pg.Pool({
        connectionString: this.#maintenanceConnectionString,
        max: 2,
        application_name: 'equilateral-maintenance',
      })
      this.#maintenancePool.on('error', (error) =>
        this.#warn(connectionError(error), error, 'idle maintenance connection lost'),
      )
      // The maintenance role cannot read the secret: the same source as the app's pools.
      provideTenantContextSecret(this.#maintenancePool, () => this.#tenantContextSecret(null))
    }
    return this.#maintenancePool
  }

  /** The maintenance pool on the tenant's database (the control one's for a shared-database tenant). */
  #maintenanceOf(scope: TenantScope): pg.Pool {
    const pool = this.stores.maintenance(scope, this.#maintenance)
    // The maintenance role cannot read the secret either: the same source as the app's pools.
    if (scope.database)
      provideTenantContextSecret(pool, () => this.#tenantContextSecret(scope.database ?? null))
    return pool
  }

  /**
   * Runs a tenant administration call on the owner's connection. Tenant administration stays with
   * the owner, not the maintenance role: creating a tenant creates schemas or databases and migrates
   * them, and rotating a key or resuming a tenant hands the tenant to whoever asks. A process given
   * no owner URL (web and worker in the recommended setup) is refused by the database; that is
   * reported as `owner_required`, not as an internal error.
   */
  async #asOwner<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (error) {
      if ((error as { code?: unknown }).code !== '42501') throw error
      throw new TenantError(
        'owner_required',
        'tenant administration needs the database owner: this process has no MIGRATION_DATABASE_URL ' +
          '(run `equilateral tenant ...` with it, as the release step does)',
      )
    }
  }

  /**
   * Creates a tenant (in schema-per-tenant mode with its schema, in database-per-tenant mode with
   * its database, created and migrated) and returns its API key, once. Workers start serving a new
   * tenant database within TENANT_REFRESH_MS.
   */
  async createTenant(spec: TenantSpec): Promise<CreatedTenant> {
    const created = await this.#asOwner(() =>
      createTenant(this.#admin, spec, this.config.isolationMode, {
        servers: this.servers,
        prefix: this.config.tenantDatabasePrefix,
        tenantContextSecret: this.config.tenantContextSecret,
        tenantContextVerified: this.config.tenantContextVerified,
      }),
    )
    // This process may have looked the tenant up before it existed.
    this.tenants.invalidate(spec.id)
    return created
  }

  listTenants(): Promise<TenantInfo[]> {
    return listTenants(this.#admin)
  }

  /**
   * A suspended tenant's API key and handles are refused and its queued tasks wait (workers leave
   * their jobs, the sweeper skips them) until it is resumed. Other processes notice within the
   * directory's cache time (5 s).
   */
  async suspendTenant(id: string): Promise<void> {
    await this.#asOwner(() => setTenantStatus(this.#admin, id, 'suspended'))
    this.tenants.invalidate(id)
  }

  async resumeTenant(id: string): Promise<void> {
    await this.#asOwner(() => setTenantStatus(this.#admin, id, 'active'))
    this.tenants.invalidate(id)
  }

  /**
   * database-per-tenant: switches a suspended, drained tenant's directory entry to a copy of its
   * database on another server, after checking the copy holds exactly what the source holds (see
   * docs/moving-tenants.md); `check` only reports. Never changes or drops the source.
   */
  async moveTenant(
    id: string,
    to: MoveOptions['to'],
    options: Pick<MoveOptions, 'force' | 'check'> = {},
  ): Promise<MoveReport> {
    try {
      return await moveTenant({
        controlOwner: this.#admin,
        servers: this.servers,
        tenantId: id,
        to,
        ...options,
      })
    } finally {
      this.tenants.invalidate(id)
    }
  }

  /** A new API key for the tenant; the old one stops working at once. */
  rotateApiKey(id: string): Promise<string> {
    return this.#asOwner(() => rotateApiKey(this.#admin, id))
  }

  /** Replaces a tenant's compliance profile (owner connection); returns it as stored. */
  setComplianceProfile(id: string, profile: ComplianceProfile): Promise<ComplianceProfile> {
    return this.#asOwner(() => setComplianceProfile(this.#admin, id, profile, this.servers))
  }

  /**
   * Retention: purges, for every tenant, coordination data, compliance events and sealed audit
   * blocks past their retention, in bounded batches, recording a `purge` compliance event
   * (src/compliance/retention.ts). Maintenance connection.
   */
  purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    return purgeExpired(this.#maintenance, { timeouts: this.#timeouts, ...options }, (scope) =>
      this.#maintenanceOf(scope),
    )
  }

  /** GDPR erasure of one data subject's personal data (workflows started with that subjectKey). */
  async eraseSubject(tenantId: string, subjectKey: string): Promise<ErasureReport> {
    return eraseSubject(await this.#erasureDeps(tenantId), tenantId, subjectKey)
  }

  /** GDPR erasure of a whole tenant's personal data; the tenant stays (suspend it to stop intake). */
  async eraseTenantData(tenantId: string): Promise<ErasureReport> {
    return eraseTenant(await this.#erasureDeps(tenantId), tenantId)
  }

  /**
   * The maintenance pools (the tenant's database's, the control database's) and the store of the
   * database the tenant's data is in (any status), whose pool and pg-boss cancel its running workflows.
   */
  async #erasureDeps(
    tenantId: string,
  ): Promise<{ maintenance: pg.Pool; app: pg.Pool; boss: PgBoss; control: pg.Pool }> {
    const { scope } = await ownerTenant(this.#maintenance, tenantId)
    const store = await this.stores.of(scope)
    return {
      maintenance: this.#maintenanceOf(scope),
      app: store.pool,
      boss: store.boss,
      control: this.#maintenance,
    }
  }

  /**
   * Runs the retention purge from a pg-boss cron schedule (hourly by default, sent once across the
   * fleet). Needs the maintenance connection (MAINTENANCE_DATABASE_URL, else the owner's:
   * MIGRATION_DATABASE_URL, or an owner DATABASE_URL): without one that may purge, logs a warning
   * and returns false; run `equilateral retention purge` from a scheduler then.
   */
  async startRetention(cron = '17 * * * *'): Promise<boolean> {
    if (!(await canMaintain(this.#maintenance))) {
      this.log.warn(
        'retention purge not scheduled: the maintenance connection may not purge (set MAINTENANCE_DATABASE_URL to a login in equilateral_maintenance)',
      )
      return false
    }
    const schedule = async (store: Store, purge: () => Promise<PurgeReport>) => {
      await ensureRetentionQueue(store.boss)
      await store.boss.schedule(RETENTION_QUEUE, cron)
      await store.boss.work(RETENTION_QUEUE, { pollingIntervalSeconds: 30 }, async () => {
        const { problems, ...report } = await purge()
        for (const p of problems) this.log.warn(p, 'retention purge skipped part of a tenant')
        this.log.info({ ...report, database: store.key }, 'retention purge')
      })
    }
    // The control database's tenants (all of them in the shared modes).
    await schedule(this.stores.control, () =>
      purgeExpired(this.#maintenance, { timeouts: this.#timeouts }, (scope) =>
        scope.database ? null : this.#maintenance,
      ),
    )
    // database-per-tenant: each tenant database has its own schedule, run by the workers serving it.
    if (this.config.isolationMode === 'database-per-tenant') {
      await this.#serve({
        name: 'retention',
        start: async (store, scope) => {
          await schedule(store, () => purgeExpired(this.#maintenanceOf(scope), { timeouts: this.#timeouts }))
          return () => store.boss.offWork(RETENTION_QUEUE)
        },
      })
    }
    return true
  }

  /** Runs a service on every tenant database this process serves (database-per-tenant). */
  async #serve(service: FleetService): Promise<void> {
    this.#fleet ??= new TenantFleet({
      stores: this.stores,
      directory: this.tenants,
      selection: this.config.workerTenants,
      refreshMs: this.config.tenantRefreshMs,
      log: this.log,
    })
    await this.#fleet.add(service)
  }

  /** database-per-tenant: reads the directory now instead of at the next TENANT_REFRESH_MS. */
  async refreshTenants(): Promise<void> {
    await this.#fleet?.refresh()
  }

  /** A handle on one active tenant, by id (for trusted backend code) ... */
  async tenant(id: string): Promise<TenantHandle> {
    return new TenantHandle(this, await this.tenants.require(id))
  }

  /** ... or by API key (for requests from outside). */
  async tenantByApiKey(key: string): Promise<TenantHandle> {
    return new TenantHandle(this, await this.tenants.byApiKey(key))
  }

  /**
   * Creates the agents' queues and starts a worker running them in this process. In
   * database-per-tenant mode it also serves the tenant databases WORKER_TENANTS selects: one worker
   * per database (sharing this process's agent slots), started and stopped as the directory changes.
   */
  async startWorker(
    options: {
      agents?: readonly AgentDefinition<any, any>[]
      concurrency?: number
      hooks?: WorkerHooks
    } = {},
  ): Promise<TaskWorker> {
    const agents = options.agents ?? this.#allAgents()
    for (const a of options.agents ?? []) this.#workerAgents.add(a)
    const slots = new Slots(options.concurrency ?? this.config.workerConcurrency)
    const control =
      this.config.workerTenants.kind === 'only' && this.config.isolationMode === 'database-per-tenant'
        ? null
        : await this.#startStoreWorker(this.stores.control, agents, slots, options.hooks, (ids) =>
            this.tenants.scopeOf(ids).then((m) => new Map([...m].filter(([, scope]) => !scope.database))),
          )
    if (this.config.isolationMode !== 'database-per-tenant') return control as Worker
    // Stopping the returned worker stops its tenant databases' workers; none is started after that.
    let stopped = false
    const workers = new Set<Worker>()
    await this.#serve({
      // One service per startWorker call (each has its own agents and hooks).
      name: `tasks-${++this.#workerCalls}`,
      start: async (store, scope) => {
        if (stopped) return async () => {}
        const key = store.key
        const worker = await this.#startStoreWorker(store, agents, slots, options.hooks, (ids) =>
          // Only the tenant this database belongs to, and only while the directory still puts it here.
          this.tenants
            .scopeOf(ids)
            .then(
              (m) =>
                new Map(
                  [...m].filter(
                    ([id, s]) => id === scope.tenantId && s.database && databaseKey(s.database) === key,
                  ),
                ),
            ),
        )
        workers.add(worker)
        return async () => {
          workers.delete(worker)
          this.#workers.delete(worker)
          this.#statisticsHolds.get(worker)?.()
          this.#statisticsHolds.delete(worker)
          await worker.stop()
        }
      },
    })
    const fleetWorker = new FleetWorker(control, workers, control?.id ?? `fleet:${process.pid}`)
    const stop = fleetWorker.stop.bind(fleetWorker)
    fleetWorker.stop = async () => {
      stopped = true
      await stop()
    }
    return fleetWorker
  }

  async #startStoreWorker(
    store: Store,
    agents: readonly AgentDefinition<any, any>[],
    slots: Slots,
    hooks: WorkerHooks | undefined,
    scopeOf: (ids: string[]) => Promise<Map<string, TenantScope>>,
  ): Promise<Worker> {
    await this.#ensureQueues([...new Set(agents.map((a) => a.id))], store.boss)
    const worker = new Worker({
      pool: store.pool,
      boss: store.boss,
      connectionString: store.connectionString,
      agents,
      scopeOf,
      log: store.database ? this.log.child({ database: store.key }) : this.log,
      concurrency: slots.size,
      slots,
      batchSize: this.config.fetchBatchSize,
      pollIntervalMs: this.config.pollIntervalMs,
      heartbeatIntervalMs: this.config.heartbeatIntervalMs,
      shutdownGraceMs: this.config.shutdownGraceMs,
      limits: this.limits,
      keyRing: this.keyRing,
      tenantConcurrency: this.config.tenantConcurrency,
      localContinuation: this.config.localContinuation,
      agentVersionRetryMs: this.config.agentVersionRetryMs,
      agentVersionWaitMs: this.config.agentVersionWaitMs,
      hooks: this.#metricsHooks(hooks, store.key),
      liveness: this.#livenessRegistry() ?? undefined,
    })
    await worker.start()
    this.#workers.add(worker)
    const statistics = this.#statisticsPasses()
    if (statistics) this.#statisticsHolds.set(worker, statistics.hold(store.key, store.pool))
    return worker
  }

  /**
   * The process's statistics loop, created with its first worker; null when STATISTICS_INTERVAL_MS
   * is 0. A worker's database gets its first pass at once: the tables a backlog filled before the
   * worker started are the ones its first claims read.
   */
  #statisticsPasses(): StatisticsPasses | null {
    if (this.config.statisticsIntervalMs === 0 || this.#closing) return null
    this.#statistics ??= new StatisticsPasses({
      everyMs: this.config.statisticsIntervalMs,
      log: this.log,
      timeouts: this.#timeouts,
    })
    return this.#statistics
  }

  /** The process's liveness registration, on the control database; null when LIVENESS_INTERVAL_MS is 0. */
  #livenessRegistry(): LivenessRegistry | null {
    if (this.config.livenessIntervalMs === 0) return null
    this.#liveness ??= new LivenessRegistry({
      connectionString: this.#connectionString,
      log: this.log,
      checkMs: this.config.heartbeatIntervalMs,
    })
    return this.#liveness
  }

  /** Worker hooks that feed the metrics, then call the caller's own hooks. */
  #metricsHooks(extra: WorkerHooks = {}, database: string): WorkerHooks {
    const m = this.metrics
    return {
      taskStarted: (task, tenant, dispatchMs) => {
        m.tasksStarted.inc(m.withTenant({ agent: task.agentId }, tenant, database))
        m.taskQueueWait.observe({ agent: task.agentId }, task.queueWaitMs / 1000)
        m.taskDispatchLatency.observe({ agent: task.agentId }, dispatchMs / 1000)
        extra.taskStarted?.(task, tenant, dispatchMs)
      },
      taskFinished: (task, tenant, outcome, ms) => {
        m.tasksFinished.inc(m.withTenant({ agent: task.agentId, outcome }, tenant, database))
        if (outcome !== 'released') m.taskRunDuration.observe({ agent: task.agentId }, ms / 1000)
        if (outcome === 'failed') m.deadLettered.inc({ agent: task.agentId })
        extra.taskFinished?.(task, tenant, outcome, ms)
      },
      workflowFinished: (tenant, type, status, ms) => {
        m.workflowFinished(type, status, ms, tenant, database)
        extra.workflowFinished?.(tenant, type, status, ms)
      },
    }
  }

  /**
   * Seals every active tenant's new audit rows into its hash chain (runs with the sweeper; safe
   * beside writers and beside another sealer). A tenant another sealer is on, or whose transaction
   * times out, is left for the next pass; the others are sealed.
   */
  async sealAudit(
    options: { maxRowsPerBlock?: number } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.tenants.active(),
  ): Promise<SealReport> {
    const total: SealReport = { blocks: 0, rows: 0 }
    for await (const scope of scopes) {
      const { pool } = await this.stores.of(scope)
      // Bounded per run, so a tenant that writes without pause cannot hold the sealer.
      for (let blocks = 0; blocks < 20; blocks++) {
        const r = await withTimeouts(this.#timeouts)(pool, scope, (db) =>
          sealTenant(db, scope.tenantId, options.maxRowsPerBlock),
        ).catch((error: unknown) => {
          if (isTimedOut(error)) return { blocks: 0, rows: 0 }
          throw error
        })
        total.blocks += r.blocks
        total.rows += r.rows
        if (r.blocks === 0) break
      }
    }
    return total
  }

  /**
   * Every active tenant's chain head, signed (src/audit/checkpoint.ts): keep it outside the
   * database, and `verifyAudit(…, { against })` shows later whether anything up to it changed.
   */
  async auditCheckpoint(): Promise<AuditCheckpoint> {
    const heads: ChainHead[] = []
    for await (const scope of this.tenants.active()) {
      const { pool } = await this.stores.of(scope)
      heads.push(await withTenantTx(pool, scope, (db) => chainHead(db, scope.tenantId)))
    }
    return signCheckpoint(this.keyRing, heads)
  }

  /**
   * Recomputes audit hash chains: one tenant's, or every active tenant's; with `against`, also
   * checks each tenant head of that checkpoint.
   */
  async verifyAudit(tenantId?: string, options: { against?: AuditCheckpoint } = {}): Promise<VerifyReport[]> {
    const scopes = tenantId ? [await this.tenants.require(tenantId)] : this.tenants.active()
    const reports: VerifyReport[] = []
    for await (const scope of scopes) {
      const { pool } = await this.stores.of(scope)
      const head = options.against?.heads.find((h) => h.tenantId === scope.tenantId)
      // Purged blocks are checked against the tenant's audit retention (none: nothing may be purged).
      const { rows } = await this.pool.query(
        `SELECT compliance_profile FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
        [scope.tenantId],
      )
      let auditRetentionDays: number | null | undefined
      try {
        auditRetentionDays =
          auditRetentionOf(parseComplianceProfile(rows[0]?.compliance_profile ?? {})) ?? null
      } catch {
        auditRetentionDays = undefined // an invalid profile: purges are checked for order only
      }
      reports.push(
        await withTenantTx(pool, scope, (db) =>
          verifyTenant(db, scope.tenantId, {
            auditRetentionDays,
            ...(head ? { head: { ...head, takenAt: options.against?.takenAt ?? '' } } : {}),
          }),
        ),
      )
    }
    return reports
  }

  /**
   * Workflow and agent performance over a window (default: the last 24 hours) for the admin: a
   * section per tenant (suspended ones too) with anything in the window, and all-tenant totals of
   * the additive figures (counts, averages from sums, maxima). Percentiles are in the tenant
   * sections only: percentiles of different tenants cannot be combined. One transaction per tenant.
   */
  async stats(window: StatsWindowInput = {}): Promise<AdminStatsReport> {
    const w = resolveWindow(window)
    const tenants: TenantStatsSection[] = []
    const tallies: StatsTallies[] = []
    for await (const scope of this.tenants.all()) {
      const { pool } = await this.stores.of(scope)
      const t = await withTenantTx(pool, scope, (db) => statsTallies(db, scope.tenantId, w))
      if (t.workflows.length === 0 && t.agents.length === 0) continue
      tallies.push(t)
      tenants.push({ tenantId: scope.tenantId, ...reportOf(t) })
    }
    return { window: w, tenants, totals: mergeTallies(tallies) }
  }

  /**
   * Rewrites stored payloads (every tenant's, suspended ones too, or one tenant's) that are plain or
   * under another key, under the active key; in pages of `batchSize` rows, resumable.
   */
  reencrypt(options: ReencryptOptions = {}): Promise<ReencryptReport> {
    return reencryptPayloads(
      {
        poolOf: async (scope) => (await this.stores.of(scope)).pool,
        tenants: this.tenants,
        keyRing: this.keyRing,
      },
      options,
    )
  }

  /**
   * One pass of the stale-task sweeper over every active tenant (or the given ones), each in its
   * own database; a tenant database that cannot be reached is listed in `unreachable`. Running
   * tasks of workers whose database session ended (see startSweeper) are lost too, stale or not.
   */
  async sweep(
    options: { staleAfterMs?: number; deadWorkers?: DeadWorkers | null } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.tenants.active(),
  ): Promise<SweepReport> {
    const deadWorkers =
      options.deadWorkers === undefined ? await findDeadWorkers(this.pool) : options.deadWorkers
    const report = await sweepOnce((scope) => this.stores.of(scope), scopes, {
      keyRing: this.keyRing,
      limits: this.limits,
      staleAfterMs: options.staleAfterMs ?? this.config.staleAfterMs,
      batchSize: 500,
      maxPages: 20,
      timeouts: this.#timeouts,
      deadWorkers: deadWorkers ?? undefined,
    })
    this.#countSweep(report)
    return report
  }

  /**
   * A sweep's outcomes in the metrics, whoever ran it (the sweeper, a liveness pass, `equilateral
   * sweep`, the test kit): what it recovered, and the tasks and workflows it failed for good, which
   * the lost worker never counted.
   */
  #countSweep(report: SweepReport): void {
    const m = this.metrics
    m.sweeperRecovered.inc({ action: 'requeued' }, report.requeued)
    m.sweeperRecovered.inc({ action: 'lost' }, report.lost)
    for (const t of report.ended.tasks) {
      m.tasksFinished.inc(m.withTenant({ agent: t.agentId, outcome: 'failed' }, t.tenantId, t.database))
      m.deadLettered.inc({ agent: t.agentId })
    }
    for (const w of report.ended.workflows)
      m.workflowFinished(w.type, 'failed', w.durationMs, w.tenantId, w.database)
  }

  /**
   * Every LIVENESS_INTERVAL_MS, one process of the fleet at a time looks for workers whose
   * database session ended; when it finds some, it sweeps every active tenant with their running
   * tasks taken as lost, then forgets them (src/flow/liveness.ts).
   */
  #startLivenessPasses(): void {
    if (this.config.livenessIntervalMs === 0 || this.#stopLivenessPasses) return
    this.#stopLivenessPasses = startLivenessPasses({
      pool: this.pool,
      everyMs: this.config.livenessIntervalMs,
      recover: async (dead) => {
        const report = await this.sweep({ deadWorkers: dead })
        this.log.info({ ...report, workers: dead.ids }, 'liveness pass: workers gone, their tasks recovered')
        for (const f of report.failed) this.log.warn({ ...f }, 'sweep of a tenant failed')
      },
      onError: (error) => this.#warn({ err: error }, error, 'liveness pass failed'),
    })
  }

  /**
   * Runs the sweeper across the fleet: from a pg-boss cron schedule (every minute, sent once
   * whatever the number of processes), or, with SWEEP_INTERVAL_MS, on a local timer guarded by an
   * advisory lock so only one process sweeps at a time.
   */
  async startSweeper(): Promise<void> {
    this.#startLivenessPasses()
    const run = async (store: Store, scopes: () => AsyncIterable<TenantScope> | Iterable<TenantScope>) => {
      const report = await this.sweep({}, scopes())
      if (report.requeued > 0 || report.lost > 0) {
        this.log.info({ ...report, database: store.key }, 'sweeper recovered tasks')
      }
      for (const f of report.failed) this.log.warn({ ...f, database: store.key }, 'sweep of a tenant failed')
      if (report.blocked.length > 0 || report.skipped > 0)
        this.log.warn(
          { blocked: report.blocked, skipped: report.skipped, database: store.key },
          'sweep passed over what another transaction holds; the next sweep comes back to it',
        )
      const sealed = await this.sealAudit({}, scopes())
      if (sealed.rows > 0) this.log.debug({ ...sealed, database: store.key }, 'audit rows sealed')
    }
    // The control database sweeps its own tenants; each tenant database is swept on its own schedule.
    await this.#sweepOn(this.stores.control, () => run(this.stores.control, () => this.#controlTenants()))
    if (this.config.isolationMode === 'database-per-tenant') {
      await this.#serve({
        name: 'sweeper',
        start: (store, scope) => this.#sweepOn(store, () => run(store, () => [scope])),
      })
    }
  }

  /** Active tenants whose tables are in the control database. */
  async *#controlTenants(): AsyncGenerator<TenantScope> {
    for await (const scope of this.tenants.active()) if (!scope.database) yield scope
  }

  /**
   * Runs `run` on the store's database: from a pg-boss cron schedule (every minute, sent once
   * whatever the number of processes), or, with SWEEP_INTERVAL_MS, on a local timer guarded by an
   * advisory lock so only one process sweeps a database at a time. Returns its stop.
   */
  async #sweepOn(store: Store, run: () => Promise<void>): Promise<() => Promise<void>> {
    if (this.config.sweepIntervalMs > 0) {
      const timer = setInterval(() => {
        void this.#withSweepLock(store, run).catch((error) =>
          this.#warn({ err: error, database: store.key }, error, 'sweep failed'),
        )
      }, this.config.sweepIntervalMs)
      this.#sweepTimers.add(timer)
      return async () => {
        clearInterval(timer)
        this.#sweepTimers.delete(timer)
      }
    }
    // The sweep queue exists: start() (or opening the store) created it with the agents' queues.
    await store.boss.schedule(SWEEP_QUEUE, '* * * * *')
    await store.boss.work(SWEEP_QUEUE, { pollingIntervalSeconds: 5 }, async () => {
      await run()
    })
    return () => store.boss.offWork(SWEEP_QUEUE)
  }

  async #withSweepLock(store: Store, fn: () => Promise<void>): Promise<void> {
    // Held for the whole sweep, idle while the sweep's own transactions run on other connections.
    const { client, release } = await checkout(store.pool)
    try {
      const { rows } = await client.query('SELECT pg_try_advisory_lock($1) AS ok', [0x65717377])
      if (!rows[0]?.ok) return
      try {
        await fn()
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [0x65717377])
      }
    } finally {
      release()
    }
  }

  /**
   * How old a due cron slot may be and still start its workflow: SCHEDULER_GRACE_MS, or twice the
   * scheduler interval if that is more (a slot a running scheduler sees late is not a missed slot).
   */
  get scheduleGraceMs(): number {
    return Math.max(this.config.schedulerGraceMs, 2 * this.config.schedulerIntervalMs)
  }

  /**
   * One scheduler pass over every active tenant (or the given ones): starts a workflow for each
   * due slot of their cron schedules, once per slot whatever the number of processes doing this at
   * the same time, and applies the missed-slot policy to slots older than the grace (see
   * src/schedule/scheduler.ts). `now` judges slots by that instant instead of the database clock.
   */
  async runSchedules(
    options: { now?: Date } = {},
    scopes: AsyncIterable<TenantScope> | Iterable<TenantScope> = this.tenants.active(),
  ): Promise<ScheduleReport> {
    if (
      options.now !== undefined &&
      !(options.now instanceof Date && Number.isFinite(options.now.getTime()))
    ) {
      throw new InvalidInputError('now must be a valid Date', '$.now')
    }
    return runSchedules(
      {
        keyRing: this.keyRing,
        limits: this.limits,
        definition: (type) => this.#workflows.get(type),
        types: () => this.workflowTypes,
        storeOf: (scope) => this.stores.of(scope),
        started: (start, database) =>
          this.metrics.workflowsStarted.inc(
            this.metrics.withTenant({ type: start.workflowType }, start.tenantId, database),
          ),
      },
      scopes,
      {
        graceMs: this.scheduleGraceMs,
        timeouts: this.#timeouts,
        ...(options.now ? { now: options.now } : {}),
      },
    )
  }

  /**
   * Runs the scheduler in this process every SCHEDULER_INTERVAL_MS (0: not at all): over the control
   * database's tenants and, in database-per-tenant mode, over each tenant database this process
   * serves. Every process may run it: each tick first takes the pass over its database (takePass),
   * so one process per interval passes over the tenants, and each slot starts one workflow (SKIP
   * LOCKED and the slot's idempotency key). Stopped by close().
   */
  async startScheduler(): Promise<void> {
    const every = this.config.schedulerIntervalMs
    if (every === 0) return
    const loop = (store: Store, scopes: () => AsyncIterable<TenantScope> | Iterable<TenantScope>) => {
      const database = store.key
      const pass = async () => {
        // One pass per interval across the fleet, whatever the number of processes ticking.
        if (!(await takePass(store.pool, 'scheduler', every))) {
          this.metrics.schedulerPasses.inc({ outcome: 'skipped' })
          return
        }
        this.metrics.schedulerPasses.inc({ outcome: 'ran' })
        const report = await this.runSchedules({}, scopes())
        const { starts: _starts, ...counts } = report
        if (report.skipped > 0 || report.caughtUp > 0)
          this.log.info({ ...counts, database }, 'missed cron slots')
        else if (report.started > 0)
          this.log.debug({ ...counts, database }, 'cron schedules started workflows')
        for (const p of report.problems)
          this.log.warn({ ...p, database }, 'cron schedule failed to start its workflow')
        for (const u of report.unknownTypes)
          this.log.warn({ ...u, database }, 'cron schedule of a workflow type this process does not know')
        // Only while such a slot is on time: a type no process knows (removed from the code) must not
        // make every process pass on every tick for ever.
        if (report.unknownTypes.some((u) => u.onTime)) await releasePass(store.pool, 'scheduler')
      }
      let timer: NodeJS.Timeout | undefined
      let stopped = false
      const tick = () => {
        const run = pass().catch((error) =>
          this.#warn({ err: error, database }, error, 'scheduler pass failed'),
        )
        this.#schedulerRuns.add(run)
        void run.finally(() => {
          this.#schedulerRuns.delete(run)
          if (timer) this.#schedulerTimers.delete(timer)
          if (!stopped && !this.#closing) arm()
        })
      }
      // The next pass is armed when one ends: passes of one loop never overlap.
      const arm = () => {
        timer = setTimeout(tick, every)
        this.#schedulerTimers.add(timer)
      }
      arm()
      return async () => {
        stopped = true
        if (timer) clearTimeout(timer)
        if (timer) this.#schedulerTimers.delete(timer)
      }
    }
    loop(this.stores.control, () => this.#controlTenants())
    if (this.config.isolationMode === 'database-per-tenant') {
      await this.#serve({
        name: 'scheduler',
        start: async (store, scope) => loop(store, () => [scope]),
      })
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
        this.pool.query(
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
      this.#databaseLost(error)
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
  #warn(details: object, error: unknown, msg: string): void {
    if (this.#databaseProbe && isTransient(error)) {
      this.#unlogged++
      return
    }
    this.log.warn(details, msg)
    this.#databaseLost(error)
  }

  /**
   * Called with the connection errors the engine sees (an idle connection lost, a pg-boss query or a
   * readiness check refused). The first one of an outage is logged, then the database is tried once
   * a second until it answers, and that is logged too: the process itself stays up throughout.
   */
  #databaseLost(error: unknown): void {
    if (this.#databaseProbe || this.#closing || !isTransient(error)) return
    const since = Date.now()
    this.#unlogged = 0
    this.log.warn(connectionError(error as Error), 'database unreachable; waiting for it to come back')
    const probe = () => {
      this.#databaseProbe = setTimeout(() => {
        this.pool.query('SELECT 1').then(
          () => {
            this.#databaseProbe = null
            this.log.info(
              { downMs: Date.now() - since, errorsNotLogged: this.#unlogged },
              'database reachable again',
            )
          },
          () => {
            if (!this.#closing) probe()
          },
        )
      }, 1000)
      this.#databaseProbe.unref()
    }
    probe()
  }

  /** Stops workers (gracefully), the sweeper, pg-boss and the pool. */
  async close(): Promise<void> {
    this.#closing = true
    if (this.#databaseProbe) clearTimeout(this.#databaseProbe)
    for (const timer of this.#sweepTimers) clearInterval(timer)
    for (const timer of this.#schedulerTimers) clearTimeout(timer)
    await Promise.allSettled([...this.#schedulerRuns])
    await Promise.allSettled([...this.#ends.values()].map((l) => l.close()))
    this.#ends.clear()
    await this.#fleet?.stop()
    await Promise.allSettled([...this.#workers].map((w) => w.stop()))
    this.#workers.clear()
    // Once, with no agent running any more: what the agents opened themselves (defineAgent close).
    if (!this.#agentsClosed) {
      this.#agentsClosed = true
      await closeAgents(new Set([...this.#allAgents(), ...this.#workerAgents]), {
        timeoutMs: this.config.shutdownGraceMs,
        log: this.log,
      })
    }
    await this.#stopLivenessPasses?.()
    await this.#statistics?.stop()
    this.#statisticsHolds.clear()
    await this.#liveness?.close()
    await this.stores.closeAll()
    await this.boss.stop({ graceful: false, close: true }).catch(() => {})
    await this.pool.end().catch(() => {})
    await this.#adminPool?.end().catch(() => {})
    await this.#maintenancePool?.end().catch(() => {})
  }
}

/** Everything a caller can do for one tenant; obtained from Engine.tenant() or tenantByApiKey(). */
export class TenantHandle {
  readonly #engine: Engine
  readonly scope: TenantScope

  constructor(engine: Engine, scope: TenantScope) {
    this.#engine = engine
    this.scope = scope
  }

  get id(): string {
    return this.scope.tenantId
  }

  /**
   * Starts a workflow of the type's latest registered version, or of `options.version`
   * (UnknownWorkflowVersionError if that version is not registered in this process). Given the
   * definition instead of its name, the input is typed by the definition's input schema (and the
   * definition's own version starts). The input is checked against that schema first: a refusal is
   * an InvalidInputError naming the path of the first problem, and nothing is written. The answer
   * serialises as the StartResult (id, created, status); its `result()` awaits the run's end.
   */
  async startWorkflow<TStart>(
    workflow: WorkflowDefinition<any, TStart>,
    input: TStart,
    options?: StartOptions,
  ): Promise<StartedWorkflow>
  async startWorkflow(
    type: string,
    input?: Json,
    options?: StartOptions & { version?: number },
  ): Promise<StartedWorkflow>
  async startWorkflow(
    type: string | WorkflowDefinition<any, unknown>,
    input: unknown = null,
    options: StartOptions & { version?: number } = {},
  ): Promise<StartedWorkflow> {
    const e = this.#engine
    const { version, ...rest } = options
    const def =
      typeof type === 'string' ? e.workflow(type, version) : e.workflow(type?.name, type?.version ?? version)
    const { pool, boss, key } = await e.storeOf(this.scope)
    const started = await startWorkflow(
      { pool, boss, limits: e.limits, keyRing: e.keyRing },
      this.scope,
      def,
      input,
      rest,
    )
    // In the caller's own transaction (options.db) this counts a start that may still roll back.
    if (started.created)
      e.metrics.workflowsStarted.inc(e.metrics.withTenant({ type: def.name }, this.id, key))
    return new StartedWorkflow(this, started)
  }

  /**
   * Waits for the workflow to end and resolves with its outputs (the results of its completed
   * final tasks, by task key, decrypted), also when it had ended before the call. Rejects with
   * WorkflowFailedError (its `error` is the failure) or WorkflowCancelledError; with ResultWaitError
   * `result_timeout` once `timeoutMs` passed or `result_aborted` when `signal` aborts, leaving the
   * workflow running; NotFoundError for a workflow this tenant does not have. Woken by a NOTIFY
   * from the statement that ends the workflow, not by polling (see src/flow/ends.ts).
   */
  async result(id: string, options: ResultOptions = {}): Promise<Record<string, Json>> {
    requireUuid(id, 'workflow id')
    checkWait(options)
    const ring = this.#engine.keyRing
    const tenant = this.scope.tenantId
    const ended = await this.#engine.awaitWorkflowEnd(
      this.scope,
      id,
      async (db) => {
        const { rows } = await db.executeSql(
          `SELECT w.status, w.error,
             CASE WHEN w.status = 'completed' THEN (
               SELECT coalesce(jsonb_agg(jsonb_build_array(t.task_key, t.result)), '[]'::jsonb) FROM agent_coordination t
               WHERE t.tenant_id = $1 AND t.workflow_id = w.id AND t.status = 'completed' AND cardinality(t.dependents) = 0
             ) END AS outputs
           FROM workflows w WHERE w.tenant_id = $1 AND w.id = $2`,
          [tenant, id],
        )
        const w = rows[0]
        if (!w) throw new NotFoundError(`workflow ${id}`)
        return w.status === 'running' ? null : (w as { status: WorkflowStatus; error: Json; outputs: Json })
      },
      options,
    )
    if (ended === 'timeout') {
      throw new ResultWaitError(
        'result_timeout',
        id,
        `workflow ${id} did not end within ${options.timeoutMs} ms (it goes on)`,
      )
    }
    if (ended.status === 'failed') throw new WorkflowFailedError(id, ended.error)
    if (ended.status === 'cancelled') {
      const reason = (ended.error as { reason?: unknown } | null)?.reason
      throw new WorkflowCancelledError(id, typeof reason === 'string' ? reason : null)
    }
    const output: Record<string, Json> = {}
    for (const [key, result] of ended.outputs as [string, Json][]) {
      output[key] = ring.decrypt(tenant, 'task.result', result)
    }
    return output
  }

  async cancelWorkflow(id: string, options: { reason?: string; actor?: string } = {}): Promise<CancelResult> {
    const m = this.#engine.metrics
    requireUuid(id, 'workflow id')
    const store = await this.#engine.storeOf(this.scope)
    return cancelWorkflow(store, this.scope, id, options, (wf) =>
      m.workflowFinished(wf.type, 'cancelled', wf.durationMs, this.id, store.key),
    )
  }

  /**
   * Runs a failed or cancelled workflow again from where it stopped (src/flow/retry.ts): its tasks
   * that did not complete get new attempts, completed ones keep their results. Idempotent on
   * `requestKey`; OperationError `workflow_not_retryable` for a running or completed workflow.
   */
  async retryWorkflow(id: string, request: OperatorRequest = {}): Promise<RetryResult> {
    requireUuid(id, 'workflow id')
    const store = await this.#engine.storeOf(this.scope)
    return retryWorkflow(store, this.scope, id.toLowerCase(), request)
  }

  /**
   * A new workflow of the same type and version, linked to this one (`replayOf`), that runs task
   * `from` and everything downstream of it again and reuses the other tasks' results
   * (src/flow/replay.ts). OperationError `unknown_task` for a key the workflow does not have.
   */
  async replayWorkflow(id: string, options: ReplayOptions): Promise<ReplayResult> {
    requireUuid(id, 'workflow id')
    if (options === null || typeof options !== 'object')
      throw new InvalidInputError('options must be an object')
    const store = await this.#engine.storeOf(this.scope)
    return replayWorkflow(store, this.scope, id.toLowerCase(), options)
  }

  /** The tenant's dead letters (tasks failed for good), newest first, a page at a time. */
  async deadLetters(filter: DeadLetterFilter = {}): Promise<DeadLetterPage> {
    const { pool } = await this.#engine.storeOf(this.scope)
    return listDeadLetters(pool, this.scope, filter)
  }

  /** Runs a dead letter (`taskId`) or an agent's dead letters again, once each (src/flow/dead-letters.ts). */
  async redrive(selection: RedriveSelection, request: OperatorRequest = {}): Promise<RedriveResult> {
    const store = await this.#engine.storeOf(this.scope)
    return redrive(store, this.scope, selection, request)
  }

  /**
   * Delivers an external event to a workflow: the task waiting for it completes with its payload
   * (and its dependents are dispatched) in the same transaction; if its task is not waiting yet,
   * the event is kept for it. Idempotent on `eventId`. WaitError when nothing in the workflow waits
   * for it, or the workflow has ended.
   */
  async sendEvent(workflowId: string, event: EventDelivery): Promise<DeliveryResult> {
    requireUuid(workflowId, 'workflow id')
    if (event === null || typeof event !== 'object') throw new InvalidInputError('an event must be an object')
    return this.#deliver(workflowId, {
      kind: 'event',
      eventId: event.eventId,
      name: event.name,
      key: event.key ?? null,
      payload: event.payload ?? null,
      actor: event.actor ?? null,
    })
  }

  /**
   * Records an approver's decision on a workflow's approval: approved, the approval task completes
   * and the workflow goes on; rejected, the workflow fails with the approver's reason. Idempotent
   * (see ApprovalDecision.eventId); kept until the approval is waiting, like an event.
   */
  async decide(workflowId: string, decision: ApprovalDecision): Promise<DeliveryResult> {
    requireUuid(workflowId, 'workflow id')
    if (decision === null || typeof decision !== 'object')
      throw new InvalidInputError('a decision must be an object')
    if (typeof decision.approved !== 'boolean')
      throw new InvalidInputError('approved must be true or false', '$.approved')
    if (
      decision.comment !== undefined &&
      (typeof decision.comment !== 'string' || decision.comment.length > 2000)
    )
      throw new InvalidInputError('comment must be a string of at most 2000 characters', '$.comment')
    if (typeof decision.approver !== 'string' || decision.approver.length === 0)
      throw new InvalidInputError('approver must name who decides', '$.approver')
    return this.#deliver(workflowId, {
      kind: 'approval',
      eventId: decision.eventId ?? decisionId(decision),
      name: decision.name,
      key: null,
      payload: {
        approved: decision.approved,
        ...(decision.comment !== undefined ? { comment: decision.comment } : {}),
      },
      actor: decision.approver,
    })
  }

  /**
   * Creates or replaces a cron schedule that starts `workflowType` with `input` at every slot of
   * `cron` in `timezone` (see ScheduleSpec). Validated before anything is written: an unknown type
   * is UnknownWorkflowTypeError, a bad cron expression, time zone or input InvalidInputError.
   */
  async putSchedule(spec: ScheduleSpec): Promise<ScheduleView> {
    const e = this.#engine
    return this.#tx((db) =>
      putSchedule(
        db,
        { keyRing: e.keyRing, limits: e.limits, workflow: (type) => e.workflow(type) },
        this.id,
        spec,
      ),
    )
  }

  /** The tenant's cron schedules, by id. */
  async listSchedules(): Promise<ScheduleView[]> {
    return this.#tx((db) => listSchedules(db, this.#engine.keyRing, this.id))
  }

  /** Deletes a cron schedule (workflows it started are not touched); NotFoundError if there is none. */
  async deleteSchedule(id: string): Promise<void> {
    return this.#tx((db) => deleteSchedule(db, this.id, id))
  }

  async #deliver(workflowId: string, delivery: Parameters<typeof deliver>[3]): Promise<DeliveryResult> {
    const e = this.#engine
    const store = await e.storeOf(this.scope)
    const { outcome, ...result } = await deliver(
      { pool: store.pool, boss: store.boss, keyRing: e.keyRing, limits: e.limits },
      this.scope,
      workflowId,
      delivery,
    )
    for (const wf of outcome.workflowsCompleted)
      e.metrics.workflowFinished(wf.type, 'completed', wf.durationMs, this.id, store.key)
    for (const wf of outcome.workflowsFailed)
      e.metrics.workflowFinished(wf.type, 'failed', wf.durationMs, this.id, store.key)
    return result
  }

  /** Runs `fn` in a transaction scoped to this tenant, in the tenant's database. */
  async #tx<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    const { pool } = await this.#engine.storeOf(this.scope)
    return withTenantTx(pool, this.scope, fn)
  }

  /**
   * The tenant's workflows, newest first, `limit` at a time (keyset pagination on the
   * workflows_recent index: a page costs the same however deep it is). Pass the returned
   * `nextCursor` to read the next page; it is null on the last one.
   */
  async listWorkflows(filter: WorkflowFilter = {}): Promise<WorkflowPage> {
    const limit = filter.limit ?? 50
    if (!Number.isInteger(limit) || limit < 1 || limit > 200) {
      throw new InvalidInputError(`limit must be an integer from 1 to 200 (got ${limit})`)
    }
    if (filter.status !== undefined && !WORKFLOW_STATUSES.includes(filter.status)) {
      throw new InvalidInputError(`status must be one of ${WORKFLOW_STATUSES.join(', ')}`)
    }
    // A NUL cannot even be a query parameter of PostgreSQL's.
    if (filter.type !== undefined) assertStorableJson(filter.type, 'type')
    if (filter.id !== undefined) requireUuid(filter.id, 'id')
    for (const name of ['correlationId', 'idempotencyKey'] as const)
      if (filter[name] !== undefined) assertStorableJson(filter[name], name)
    const instant = (value: string | Date | undefined, name: string) => {
      if (value === undefined) return null
      const d = value instanceof Date ? value : new Date(value)
      if (Number.isNaN(d.getTime()))
        throw new InvalidInputError(`${name} must be a date and time`, `$.${name}`)
      return d.toISOString()
    }
    const since = instant(filter.since, 'since')
    const until = instant(filter.until, 'until')
    const after = filter.cursor === undefined ? null : decodeCursor(filter.cursor)
    return this.#tx(async (db) => {
      const { rows } = await db.executeSql(
        `SELECT id, type, version, status, correlation_id, created_at, completed_at, tasks_remaining,
           created_at::text AS cursor_at
         FROM workflows
         WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR type = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
           AND ($7::uuid IS NULL OR id = $7) AND ($8::text IS NULL OR correlation_id = $8)
           AND ($9::text IS NULL OR idempotency_key = $9)
           AND ($10::timestamptz IS NULL OR created_at >= $10) AND ($11::timestamptz IS NULL OR created_at < $11)
         ORDER BY created_at DESC, id DESC
         LIMIT $6`,
        [
          this.scope.tenantId,
          filter.status ?? null,
          filter.type ?? null,
          after?.at ?? null,
          after?.id ?? null,
          limit + 1,
          filter.id ?? null,
          filter.correlationId ?? null,
          filter.idempotencyKey ?? null,
          since,
          until,
        ],
      )
      const page = rows.slice(0, limit)
      const last = page[page.length - 1]
      return {
        workflows: page.map((r) => ({
          id: r.id,
          type: r.type,
          version: r.version,
          status: r.status,
          correlationId: r.correlation_id,
          tasksRemaining: r.tasks_remaining,
          createdAt: r.created_at,
          completedAt: r.completed_at,
        })),
        nextCursor: rows.length > limit && last ? encodeCursor(last.cursor_at, last.id) : null,
      }
    })
  }

  /**
   * The tenant's workflow performance per type and agent performance per agent over a window
   * (default: the last 24 hours; see src/analytics.ts for what each figure counts).
   */
  async stats(window: StatsWindowInput = {}): Promise<StatsReport> {
    const w = resolveWindow(window)
    return this.#tx((db) => tenantStats(db, this.scope.tenantId, w))
  }

  /**
   * Decrypts the input and results; a missing or wrong key throws EncryptionError. With `waitMs`,
   * waits (as result() does, woken by the workflow's end) up to that long for a running workflow
   * to end, then answers with its state, ended or not; `signal` stops the wait early the same way.
   */
  async getWorkflow(
    id: string,
    options: { waitMs?: number; signal?: AbortSignal } = {},
  ): Promise<WorkflowView> {
    requireUuid(id, 'workflow id')
    if (options.waitMs !== undefined && options.waitMs > 0) {
      checkWait({ timeoutMs: options.waitMs, signal: options.signal })
      await this.#engine
        .awaitWorkflowEnd(
          this.scope,
          id,
          async (db) => {
            const { rows } = await db.executeSql(
              'SELECT status FROM workflows WHERE tenant_id = $1 AND id = $2',
              [this.scope.tenantId, id],
            )
            if (!rows[0]) throw new NotFoundError(`workflow ${id}`)
            return rows[0].status === 'running' ? null : true
          },
          { timeoutMs: options.waitMs, signal: options.signal },
        )
        .catch((error: unknown) => {
          // Stopped early: the state as it is now (a disconnected HTTP client gets nothing anyway).
          if ((error as { code?: unknown }).code !== 'result_aborted') throw error
        })
    }
    const ring = this.#engine.keyRing
    const tenant = this.scope.tenantId
    return this.#tx(async (db) => {
      const wf = await db.executeSql('SELECT * FROM workflows WHERE tenant_id = $1 AND id = $2', [
        this.scope.tenantId,
        id,
      ])
      const w = wf.rows[0]
      if (!w) throw new NotFoundError(`workflow ${id}`)
      const { rows } = await db.executeSql(
        `SELECT id, task_key, agent_id, agent_version, task_type, status, dependencies, dependents, attempt, failures, result, error,
           queued_at, started_at, completed_at, wait->>'type' AS wait_type, wait->>'name' AS wait_name, wait_deadline
         FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY created_at, task_key`,
        [this.scope.tenantId, id],
      )
      for (const r of rows) r.result = ring.decrypt(tenant, 'task.result', r.result)
      const output: Record<string, Json> = {}
      for (const r of rows)
        if (r.status === 'completed' && r.dependents.length === 0) output[r.task_key] = r.result
      return {
        id: w.id,
        type: w.type,
        version: w.version,
        status: w.status,
        input: ring.decrypt(tenant, 'workflow.input', w.input),
        error: w.error,
        correlationId: w.correlation_id,
        createdAt: w.created_at,
        completedAt: w.completed_at,
        replayOf: w.replay_of ?? null,
        output,
        tasks: dagOrder(
          rows.map((r) => ({
            id: r.id,
            key: r.task_key,
            agent: r.agent_id,
            agentVersion: r.agent_version,
            type: r.task_type,
            status: r.status,
            dependsOn: r.dependencies,
            attempt: r.attempt,
            failures: r.failures,
            result: r.result,
            error: r.error,
            queuedAt: r.queued_at,
            startedAt: r.started_at,
            completedAt: r.completed_at,
            ...(r.wait_type
              ? { wait: { type: r.wait_type, name: r.wait_name, deadline: r.wait_deadline ?? null } }
              : {}),
          })),
        ),
      }
    })
  }

  /** The workflow's audit trail, in the order it was written; NotFoundError for an unknown workflow. */
  async history(workflowId: string): Promise<AuditEntry[]> {
    requireUuid(workflowId, 'workflow id')
    return this.#tx(async (db) => {
      const { rows } = await db.executeSql(
        `SELECT id, task_id, agent_id, action_type, action_data, actor, correlation_id, timestamp
         FROM agent_audit_log WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY id`,
        [this.scope.tenantId, workflowId],
      )
      if (rows.length === 0) {
        // Every workflow has a workflow_started row until retention purges it with the workflow.
        const wf = await db.executeSql('SELECT 1 FROM workflows WHERE tenant_id = $1 AND id = $2', [
          this.scope.tenantId,
          workflowId,
        ])
        if (wf.rows.length === 0) throw new NotFoundError(`workflow ${workflowId}`)
      }
      return rows.map((r) => ({
        id: String(r.id),
        taskId: r.task_id,
        agentId: r.agent_id,
        action: r.action_type,
        data: r.action_data,
        actor: r.actor,
        correlationId: r.correlation_id,
        at: r.timestamp,
      }))
    })
  }
}

/** Checks result()'s options: a bad timeout or signal is an InvalidInputError, before any wait. */
function checkWait(options: ResultOptions): void {
  if (options === null || typeof options !== 'object')
    throw new InvalidInputError('options must be an object')
  const t = options.timeoutMs
  if (t !== undefined && !(Number.isInteger(t) && t >= 0 && t <= 2_147_483_647)) {
    throw new InvalidInputError(
      'timeoutMs must be an integer number of milliseconds, 0 to 2^31-1',
      '$.timeoutMs',
    )
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new InvalidInputError('signal must be an AbortSignal', '$.signal')
  }
}

/**
 * A decision's default idempotency id: `<name>:<approver>:<approved|rejected>`, or its SHA-256 when
 * that is over the 200 characters an event id may have (long names are still a valid decision).
 */
function decisionId(d: ApprovalDecision): string {
  const id = `${String(d.name)}:${d.approver}:${d.approved ? 'approved' : 'rejected'}`
  return id.length <= 200 ? id : `sha256:${createHash('sha256').update(id).digest('hex')}`
}

/** An opaque page cursor: the last row's exact created_at (as PostgreSQL prints it) and id. */
function encodeCursor(at: string, id: string): string {
  return Buffer.from(JSON.stringify([at, id])).toString('base64url')
}

function decodeCursor(cursor: string): { at: string; id: string } {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
    if (Array.isArray(value) && value.length === 2 && isCursorTime(value[0]) && isUuid(value[1])) {
      return { at: value[0], id: value[1] }
    }
  } catch {
    // reported below
  }
  throw new InvalidInputError('cursor is not one this API returned')
}

/**
 * Whether a cursor's time is one PostgreSQL prints and reads back: the shape alone is not enough, a
 * forged cursor's 2024-13-45 or +99 offset would be a database error (a 500) instead of a refusal.
 */
function isCursorTime(value: unknown): value is string {
  const m =
    typeof value === 'string'
      ? /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.\d{1,6})?[+-](\d\d)(?::(\d\d))?$/.exec(value)
      : null
  if (!m) return false
  const [year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, offsetHours = 0, offsetMinutes = 0] =
    m.slice(1).map((digits) => Number(digits ?? 0))
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0)
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1] ?? 0
  return (
    year >= 1 &&
    day >= 1 &&
    day <= days &&
    hour < 24 &&
    minute < 60 &&
    second < 60 &&
    offsetHours <= 15 &&
    offsetMinutes < 60
  )
}

function connectionError(error: Error): { err: { message: string; code?: string } } {
  const code = (error as { code?: string }).code
  return { err: { message: error.message, ...(code ? { code } : {}) } }
}

/** `-c role=<name>` at connection naming a role the server does not have (invalid_parameter_value). */
function isMissingRole(error: unknown): boolean {
  const e = error as { code?: unknown; message?: unknown }
  return e.code === '22023' && typeof e.message === 'string' && /^role ".*" does not exist$/.test(e.message)
}

export async function createEngine(options: EngineOptions): Promise<Engine> {
  return new Engine(options).start()
}
