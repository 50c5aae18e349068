// The library entry point: an Engine owns the pool and the pg-boss instance of a process, knows the
// agents and workflow types, and hands out tenant-scoped handles (the only way to start or read a
// workflow), workers, and the maintenance services. It is a facade: it wires the parts below and
// each public method delegates to the part whose job it is.
//   src/engine/registry.ts      agents and workflow types (every version)
//   src/engine/connections.ts   logins: run-time, owner, maintenance; tenant servers; context secret
//   src/engine/wiring.ts        the control database's pool, pg-boss, directory, metrics, stores
//   src/engine/health.ts        start-up checks, readiness, the outage watch
//   src/engine/tenant-admin.ts  create, suspend, resume, move tenants, rotate keys, profiles
//   src/engine/workers.ts       startWorker, the workers' metrics hooks, statistics and liveness
//   src/engine/tenant-handle.ts TenantHandle (and src/engine/read.ts, its read side)
//   src/engine/end-waits.ts     callers awaiting a workflow's end (one LISTEN per database)
//   src/engine/audit.ts, compliance.ts   seal/verify the audit trail; purge, erasure, re-encryption
//   src/engine/budgets.ts       the budget pass, setting and removing a tenant's budget
//   src/maintenance/            sweeper, scheduler, retention, on one runner (services.ts, runner.ts)
// Size (just over 400 lines): the map of parts below and the public API's doc comments; the class
// itself only wires and delegates.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { AdminStatsReport, StatsWindowInput } from './analytics.ts'
import type { AuditCheckpoint } from './audit/checkpoint.ts'
import type { SealReport, VerifyReport } from './audit/seal.ts'
import type { ErasureReport } from './compliance/erasure.ts'
import type { ComplianceProfile } from './compliance/profile.ts'
import type { PurgeOptions, PurgeReport } from './compliance/retention.ts'
import { type Config, loadConfig } from './config.ts'
import type { AgentDefinition, WorkflowDefinition } from './core/definition.ts'
import type { JsonLimits } from './core/json.ts'
import type { CryptoErasureReport } from './compliance/crypto-erasure.ts'
import { type EngineKeys, engineKeys, keyRingOf } from './crypto/engine-keys.ts'
import type { KeyRing } from './crypto/keyring.ts'
import type { ReencryptOptions, ReencryptReport } from './crypto/reencrypt.ts'
import type { Db, TenantScope } from './db/tx.ts'
import { Audit } from './engine/audit.ts'
import { Budgets } from './engine/budgets.ts'
import { Compliance } from './engine/compliance.ts'
import { connectionCounts, Connections } from './engine/connections.ts'
import { type EngineContext, engineContext } from './engine/context.ts'
import { EndWaits } from './engine/end-waits.ts'
import { Health } from './engine/health.ts'
import { adminStats } from './engine/read.ts'
import { Registry } from './engine/registry.ts'
import { TenantAdmin } from './engine/tenant-admin.ts'
import { TenantHandle } from './engine/tenant-handle.ts'
import type { EngineOptions, Readiness, ResultOptions } from './engine/types.ts'
import { openControl } from './engine/wiring.ts'
import { Workers } from './engine/workers.ts'
import type { DeadWorkers } from './flow/liveness.ts'
import type { SweepReport } from './flow/sweep.ts'
import type { WorkerHooks } from './flow/worker.ts'
import { type TaskWorker, TenantFleet } from './fleet.ts'
import { createLogger } from './log.ts'
import type { BudgetPeriod, BudgetSpec, BudgetView } from './usage/budgets.ts'
import type { budgetPasses } from './usage/service.ts'
import { Maintenance } from './maintenance/services.ts'
import type { Metrics } from './metrics.ts'
import type { ScheduleReport } from './schedule/scheduler.ts'
import type { MoveOptions, MoveReport } from './tenancy/move.ts'
import type { Servers } from './tenancy/placement.ts'
import type { Store, Stores } from './tenancy/stores.ts'
import type { CreatedTenant, TenantDirectory, TenantInfo, TenantSpec } from './tenancy/tenants.ts'

export { StartedWorkflow, TenantHandle } from './engine/tenant-handle.ts'
export type {
  AuditEntry,
  EngineOptions,
  Readiness,
  ResultOptions,
  TaskView,
  WorkflowFilter,
  WorkflowPage,
  WorkflowSummary,
  WorkflowView,
} from './engine/types.ts'

type Scopes = AsyncIterable<TenantScope> | Iterable<TenantScope>

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
  /** The keys payloads are encrypted under at rest (KeyRing.none: unencrypted), with this engine's data keys. */
  readonly keyRing: KeyRing
  readonly #ctx: EngineContext
  readonly #connections: Connections
  readonly #health: Health
  readonly #registry: Registry
  readonly #admin: TenantAdmin
  readonly #workers: Workers
  readonly #ends: EndWaits
  readonly #audit: Audit
  readonly #compliance: Compliance
  readonly #maintenance: Maintenance
  readonly #budgets: Budgets
  /** database-per-tenant: the tenant databases this process serves (see startWorker). */
  readonly #fleet: TenantFleet
  #closing = false

  constructor(options: EngineOptions) {
    this.config = Object.freeze({ ...loadConfig(), ...options.config })
    this.keyRing = keyRingOf(this.config)
    this.log = options.log ?? createLogger(this.config.logLevel)
    const warn = (details: object, error: unknown, msg: string) => this.#health.warn(details, error, msg)
    const connections = (this.#connections = new Connections(options, this.config, warn))
    this.servers = connections.servers
    const control = openControl(options, this.config, this.log, connections, {
      warn,
      ensureQueues: (boss) => this.#workers.ensureQueues(this.#registry.allAgentIds(), boss),
      storeClosed: (key) => this.#ends.storeClosed(key),
    })
    this.pool = control.pool
    this.boss = control.boss
    this.tenants = control.tenants
    this.metrics = control.metrics
    this.stores = control.stores
    connections.useStores(this.stores)
    this.#fleet = new TenantFleet({
      stores: this.stores,
      directory: this.tenants,
      selection: this.config.workerTenants,
      refreshMs: this.config.tenantRefreshMs,
      log: this.log,
    })
    this.#ctx = engineContext(this, {
      closing: () => this.#closing,
      warn,
      serve: (service) => this.#fleet.add(service),
    })
    this.#health = new Health({
      pool: this.pool,
      log: this.log,
      config: this.config,
      connections,
      closing: () => this.#closing,
      migrateOnStart: options.migrate ?? false,
      setupWarnings: options.setupWarnings ?? true,
    })
    this.#registry = new Registry(this.metrics)
    this.#admin = new TenantAdmin(connections, this.config, this.tenants)
    this.#workers = new Workers(this.#ctx, this.#registry, connections.sessionConnectionString)
    this.#ends = new EndWaits(this.#ctx)
    this.metrics.observeConnections(() =>
      connectionCounts(this.config, this.pool, this.boss, this.stores, connections, {
        ...this.#workers.sessions,
        results: this.#ends.listening,
      }),
    )
    this.#audit = new Audit(this.#ctx)
    this.#compliance = new Compliance(this.#ctx, connections)
    this.#budgets = new Budgets(this.#ctx)
    this.#maintenance = new Maintenance(this.#ctx, {
      registry: this.#registry,
      connections,
      seal: (o, scopes) => this.sealAudit(o, scopes),
      budgetPass: (scopes) => this.budgetPass({ scopes }),
    })
    for (const a of options.agents ?? []) this.#registry.registerAgent(a)
    for (const w of options.workflows ?? []) this.registerWorkflow(w)
  }

  /** The store (pool and pg-boss) a tenant's transactions run in: the control database's or its own. */
  storeOf(scope: TenantScope): Promise<Store> {
    return this.stores.of(scope)
  }

  get limits(): JsonLimits {
    return { maxBytes: this.config.maxPayloadBytes, maxDepth: 64 }
  }

  /** Registers a workflow type's version (see Registry.registerWorkflow, src/engine/registry.ts). */
  registerWorkflow(def: WorkflowDefinition<any>): void {
    this.#registry.registerWorkflow(def)
  }

  /** A workflow type's definition: the highest registered version, or the given one. */
  workflow(type: string, version?: number): WorkflowDefinition<any> {
    return this.#registry.workflow(type, version)
  }

  /** The registered versions of a workflow type, lowest first (empty for an unknown type). */
  workflowVersions(type: string): number[] {
    return this.#registry.workflowVersions(type)
  }

  get workflowTypes(): string[] {
    return this.#registry.workflowTypes
  }

  /** Callers awaiting a workflow's end in this process now (result(), long-polls), all databases. */
  get resultWaiters(): number {
    return this.#ends.waiters
  }

  /** Waits until `read` answers non-null, woken by the workflow's end (src/engine/end-waits.ts). */
  awaitWorkflowEnd<T>(
    scope: TenantScope,
    workflowId: string,
    read: (db: Db) => Promise<T | null>,
    options: ResultOptions,
  ): Promise<T | 'timeout'> {
    return this.#ends.await(scope, workflowId, read, options)
  }

  /** Starts pg-boss and creates the queues of every known agent (idempotent, safe from many processes). */
  async start(): Promise<this> {
    await this.#health.checkSetup()
    await this.boss.start()
    await this.#workers.ensureQueues(this.#registry.allAgentIds())
    return this
  }

  // Tenant administration, on the owner's connection (src/engine/tenant-admin.ts).
  createTenant(spec: TenantSpec): Promise<CreatedTenant> {
    return this.#admin.createTenant(spec)
  }
  listTenants(): Promise<TenantInfo[]> {
    return this.#admin.listTenants()
  }
  suspendTenant(id: string): Promise<void> {
    return this.#admin.suspendTenant(id)
  }
  resumeTenant(id: string): Promise<void> {
    return this.#admin.resumeTenant(id)
  }
  moveTenant(
    id: string,
    to: MoveOptions['to'],
    options: Pick<MoveOptions, 'force' | 'check'> = {},
  ): Promise<MoveReport> {
    return this.#admin.moveTenant(id, to, options)
  }
  rotateApiKey(id: string): Promise<string> {
    return this.#admin.rotateApiKey(id)
  }
  setComplianceProfile(id: string, profile: ComplianceProfile): Promise<ComplianceProfile> {
    return this.#admin.setComplianceProfile(id, profile)
  }

  // Compliance: retention, GDPR erasure, re-encryption (src/engine/compliance.ts).
  purgeExpired(options: PurgeOptions = {}): Promise<PurgeReport> {
    return this.#compliance.purgeExpired(options)
  }
  eraseSubject(tenantId: string, subjectKey: string): Promise<ErasureReport> {
    return this.#compliance.eraseSubject(tenantId, subjectKey)
  }
  eraseTenantData(tenantId: string): Promise<ErasureReport> {
    return this.#compliance.eraseTenantData(tenantId)
  }
  /** Crypto-erasure: the subject's (or tenant's) data keys destroyed (src/compliance/crypto-erasure.ts). */
  cryptoErase(tenantId: string, subjectKey?: string): Promise<CryptoErasureReport> {
    return this.#compliance.cryptoErase(tenantId, subjectKey)
  }
  /** Per-tenant data keys (src/crypto/engine-keys.ts): rotation, KEK re-wrap. */
  get keys(): EngineKeys {
    return engineKeys(this, async (scope) => (await this.stores.of(scope)).pool)
  }
  reencrypt(options: ReencryptOptions = {}): Promise<ReencryptReport> {
    return this.#compliance.reencrypt(options)
  }

  /** database-per-tenant: reads the directory now instead of at the next TENANT_REFRESH_MS. */
  async refreshTenants(): Promise<void> {
    await this.#fleet.refresh()
  }

  /** A handle on one active tenant, by id (for trusted backend code) ... */
  async tenant(id: string): Promise<TenantHandle> {
    return new TenantHandle(this, await this.tenants.require(id))
  }

  /** ... or by API key (for requests from outside). */
  async tenantByApiKey(key: string): Promise<TenantHandle> {
    return new TenantHandle(this, await this.tenants.byApiKey(key))
  }

  /** Starts a worker running the agents in this process (src/engine/workers.ts). */
  startWorker(
    options: {
      agents?: readonly AgentDefinition<any, any>[]
      concurrency?: number
      hooks?: WorkerHooks
    } = {},
  ): Promise<TaskWorker> {
    return this.#workers.startWorker(options)
  }

  // The audit trail's hash chains (src/engine/audit.ts).
  sealAudit(
    options: { maxRowsPerBlock?: number } = {},
    scopes: Scopes = this.tenants.active(),
  ): Promise<SealReport> {
    return this.#audit.sealAudit(options, scopes)
  }
  auditCheckpoint(): Promise<AuditCheckpoint> {
    return this.#audit.auditCheckpoint()
  }
  verifyAudit(tenantId?: string, options: { against?: AuditCheckpoint } = {}): Promise<VerifyReport[]> {
    return this.#audit.verifyAudit(tenantId, options)
  }

  /** Workflow and agent performance over a window, per tenant and in total (src/engine/read.ts). */
  stats(window: StatsWindowInput = {}): Promise<AdminStatsReport> {
    return adminStats(this.tenants, this.stores, window)
  }

  // Maintenance (src/maintenance/): the sweeper, the cron scheduler, the retention purge.
  sweep(
    options: { staleAfterMs?: number; deadWorkers?: DeadWorkers | null } = {},
    scopes: Scopes = this.tenants.active(),
  ): Promise<SweepReport> {
    return this.#maintenance.sweeper.sweep(options, scopes)
  }
  startSweeper(): Promise<void> {
    return this.#maintenance.sweeper.start()
  }
  get scheduleGraceMs(): number {
    return this.#maintenance.scheduler.graceMs
  }
  runSchedules(
    options: { now?: Date } = {},
    scopes: Scopes = this.tenants.active(),
  ): Promise<ScheduleReport> {
    return this.#maintenance.scheduler.run(options, scopes)
  }
  startScheduler(): Promise<void> {
    return this.#maintenance.scheduler.start()
  }
  startRetention(cron = '17 * * * *'): Promise<boolean> {
    return this.#maintenance.retention.start(cron)
  }

  // Usage budgets (src/usage/, docs/usage-and-budgets.md).
  /** The budget pass (rolls ended periods by `clock`, default the database's; releases held tasks). */
  budgetPass(options: { clock?: Date; scopes?: Scopes } = {}): ReturnType<typeof budgetPasses> {
    return this.#budgets.pass(options)
  }
  /** Sets (creates or changes) a tenant's budget, audited with `actor`. */
  setBudget(
    tenantId: string,
    spec: BudgetSpec,
    options: { actor?: string; clock?: Date } = {},
  ): Promise<BudgetView & { released: number }> {
    return this.#budgets.set(tenantId, spec, options)
  }
  /** Removes a tenant's budget (audited); its held tasks are released if no hard budget is exhausted. */
  deleteBudget(
    tenantId: string,
    dimension: string,
    period: BudgetPeriod,
    options: { actor?: string } = {},
  ): Promise<{ deleted: boolean; released: number }> {
    return this.#budgets.delete(tenantId, dimension, period, options)
  }

  /** Whether this process can serve: the database answers and has every migration this build ships. */
  readiness(timeoutMs = 2000): Promise<Readiness> {
    return this.#health.readiness(timeoutMs)
  }

  /** Stops workers (gracefully), the maintenance passes, pg-boss and the pools. */
  async close(): Promise<void> {
    this.#closing = true
    this.#health.close()
    await this.#maintenance.stop()
    await this.#ends.close()
    await this.#fleet.stop()
    await this.#workers.stop()
    await this.#workers.close()
    await this.stores.closeAll()
    await this.boss.stop({ graceful: false, close: true }).catch(() => {})
    await this.pool.end().catch(() => {})
    await this.#connections.close()
  }
}

export async function createEngine(options: EngineOptions): Promise<Engine> {
  return new Engine(options).start()
}
