// Configuration, parsed once at boot into a frozen object; every problem is reported at once.
// Size (over 400 lines): one declaration and one parser line per setting, so every setting and its
// bounds are read in one place (docs/configuration.md lists them).
import type { GroupConcurrencyConfig } from 'pg-boss'
import { type KeyRing, parseKeyRing } from './crypto/keyring.ts'
import { type KeyProvider, providerFromEnv } from './crypto/provider.ts'
import { APP_ROLE } from './db/names.ts'
import { ConfigError } from './errors.ts'

export const DATABASE_POOLERS = ['none', 'transaction'] as const
export type DatabasePooler = (typeof DATABASE_POOLERS)[number]

export const ISOLATION_MODES = ['row-level', 'schema-per-tenant', 'database-per-tenant'] as const
export type IsolationMode = (typeof ISOLATION_MODES)[number]

export interface Config {
  databaseUrl: string | undefined
  /** The owner role's URL, for migrations and tenant administration; defaults to databaseUrl. */
  migrationDatabaseUrl: string | undefined
  /**
   * A login in equilateral_maintenance, for the retention purge and GDPR erasure (its connections
   * switch to that role); unset: they run on the owner's connection (migrationDatabaseUrl, else
   * databaseUrl), as before the role existed.
   */
  maintenanceDatabaseUrl: string | undefined
  /**
   * What DATABASE_URL reaches: the server itself (`none`), or a pooler in transaction mode
   * (`transaction`: PgBouncer's pool_mode=transaction, a managed service's pooled URL). Behind one,
   * the engine prepares no named statements, sends no startup `options` (the login must be the
   * run-time role itself: a member of equilateral_app), and opens its session connections (LISTEN,
   * worker liveness) on directDatabaseUrl, or polls without them (docs/operations-and-deploying.md).
   */
  databasePooler: DatabasePooler
  /**
   * DIRECT_DATABASE_URL: the same database reached without the pooler, for what needs a session of
   * its own (the LISTEN connections, worker liveness; migrations when MIGRATION_DATABASE_URL is
   * unset). Unset behind a pooler: workers and result waiters poll every pollIntervalMs and worker
   * liveness is off (heartbeats find lost tasks). Ignored when databasePooler is `none`.
   */
  directDatabaseUrl: string | undefined
  /**
   * The role every run-time connection switches to (`-c role=...`): the application role, which
   * owns nothing and cannot bypass row-level security. '' keeps the login role as it is.
   */
  databaseRole: string
  /**
   * Where new tenants' tables go: the shared schema under RLS, a schema of their own (also under
   * RLS), or a database of their own (database-per-tenant, on one of `tenantServers`).
   */
  isolationMode: IsolationMode
  /**
   * database-per-tenant: the PostgreSQL servers tenant databases are placed on, by name, each an
   * owner login's URL (it creates the databases; run-time connections switch to `databaseRole`).
   * From TENANT_SERVERS (`name=url name=url`); empty: one server, `default`, the control database's.
   */
  tenantServers: Readonly<Record<string, string>>
  /** database-per-tenant: tenant databases are named `<prefix><tenant id>_<6 hex>`. */
  tenantDatabasePrefix: string
  /**
   * database-per-tenant: the tenants this process's workers serve: `*` (all), a list of ids, or
   * `!id` exclusions (`!big1,!big2`: everyone but the tenants that have workers of their own).
   */
  workerTenants: TenantSelection
  /** database-per-tenant: run-time connections of one tenant database's pool. */
  tenantDbPoolMax: number
  /** database-per-tenant: tenant databases one process keeps open at once (bounds its connections). */
  maxTenantDatabases: number
  /** database-per-tenant: a tenant database no request has used this long is closed (web). */
  tenantDbIdleMs: number
  /** database-per-tenant: how often workers re-read the directory for added, moved, suspended tenants. */
  tenantRefreshMs: number
  logLevel: string
  /** Agents one worker process runs at once. */
  workerConcurrency: number
  /**
   * Local continuation: a worker's completion claims some of the tasks it makes ready (whose agents
   * the worker serves, up to its free slots and half of them) and runs them at once, without a job.
   * Off when TENANT_CONCURRENCY is set (those limits count jobs).
   */
  localContinuation: boolean
  /** Jobs fetched per query at most. */
  fetchBatchSize: number
  pollIntervalMs: number
  /**
   * A caller awaiting a workflow's end (`result()`, `GET /v1/workflows/:id?wait=`) is woken by a
   * NOTIFY from the statement that ended it; it also reads the workflow again this often, and every
   * pollIntervalMs while its LISTEN connection is down, so that no lost notification can hang it.
   */
  resultRecheckMs: number
  heartbeatIntervalMs: number
  /** A running task whose heartbeat is older than this is recovered by the sweeper. */
  staleAfterMs: number
  /** 0: the sweeper runs from a pg-boss cron schedule (every minute, once across the fleet). */
  sweepIntervalMs: number
  /**
   * How often the liveness pass looks for workers whose database session ended (killed processes)
   * and recovers their running tasks at once, without waiting for staleAfterMs; 0: off (workers do
   * not register, and only heartbeats find lost tasks).
   */
  livenessIntervalMs: number
  /**
   * How often a worker process gives the hot tables of the databases it serves their planner
   * statistics when they have none yet or changed a lot since (src/flow/statistics.ts), instead of
   * waiting for autovacuum; also once as soon as a worker starts on a database. 0: off.
   */
  statisticsIntervalMs: number
  /** How often a process's scheduler looks for due cron schedules (startScheduler); 0: it does not. */
  schedulerIntervalMs: number
  /**
   * A due cron slot at most this old (or 2 x schedulerIntervalMs, whichever is more) still starts its
   * workflow; an older one was missed and follows the schedule's missed-slot policy.
   */
  schedulerGraceMs: number
  shutdownGraceMs: number
  /**
   * The server ends a run-time session left idle inside a transaction this long (a frozen or
   * partitioned worker), rolling it back and releasing its locks (idle_in_transaction_session_timeout,
   * set at connection start); 0: the server's setting.
   */
  idleInTransactionTimeoutMs: number
  /**
   * Maintenance passes (sweeper, audit sealing, wait expiry, scheduler, retention) give up a lock
   * they waited for this long and come back to what it guards at their next pass (lock_timeout);
   * 0: the server's setting.
   */
  maintenanceLockTimeoutMs: number
  /** A statement of a maintenance pass is cancelled after this long (statement_timeout); 0: the server's setting. */
  maintenanceStatementTimeoutMs: number
  /** The `worker` command kills its process when the event loop is blocked this long; 0: off. */
  watchdogMs: number
  /** A task needing an agent version this worker lacks is left in the queue for this long before it is fetched again. */
  agentVersionRetryMs: number
  /** A task no worker with its agent version has served for this long fails for good (AgentVersionUnavailable). */
  agentVersionWaitMs: number
  maxPayloadBytes: number
  dbPoolMax: number
  /**
   * Per-tenant limit of active tasks of one agent (pg-boss group concurrency is per queue), by tier;
   * undefined means no limit. Several worker processes fetching at the same instant can overshoot it.
   */
  tenantConcurrency: GroupConcurrencyConfig | undefined
  /**
   * Keys that payloads (workflow input, task data, results) are encrypted under at rest; KeyRing.none
   * stores them unencrypted. From ENCRYPTION_KEYS (`id:base64,...`) and ENCRYPTION_ACTIVE_KEY.
   */
  encryption: KeyRing
  /**
   * Per-tenant data keys (envelope encryption, docs/encryption.md): the provider of the
   * key-encryption keys that wrap them, or undefined to encrypt under the key ring's keys directly
   * (the default). From DATA_KEYS=per-tenant with KEY_PROVIDER (local, the default, or vault and
   * VAULT_ADDR, VAULT_TOKEN, VAULT_TRANSIT_KEY).
   */
  keyProvider: KeyProvider | undefined
  /** Unwrapped data keys kept in memory at most (DATA_KEY_CACHE_ENTRIES). */
  dataKeyCacheEntries: number
  /** How long an unwrapped data key is used before it is read again (DATA_KEY_CACHE_TTL_MS). */
  dataKeyCacheTtlMs: number
  /**
   * The secret tenant credentials derive from (TENANT_CONTEXT_SECRET, at least 32 characters):
   * `equilateral migrate` stores it in every database it migrates, owner-only, and the engine uses
   * it to scope transactions (src/tenancy/tenant-context.ts). Unset: each database keeps the secret its
   * migration generated and the engine reads it through the owner's connection.
   */
  tenantContextSecret: string | undefined
  /**
   * Whether the tenant tables' policies compare with the tenant the database verified (true: SQL run
   * as the application role cannot choose another tenant) or with the app.tenant_id setting (the
   * default: the verified policies cost about a fifth of the saturated throughput, docs/security.md).
   * Applied by `migrate` (TENANT_CONTEXT_VERIFIED); transactions are sealed either way.
   */
  tenantContextVerified: boolean
  /** HTTP port of the `web` process (PORT, as on Heroku/Render). */
  port: number
  /** Interface the web process listens on. */
  host: string
  /** Processes `equilateral web` forks to serve PORT together (WEB_CONCURRENCY, as on Heroku). */
  webConcurrency: number
  /** Bearer token of the admin API (/v1/admin/...); undefined disables it. At least 16 characters. */
  adminToken: string | undefined
  /** Port of a worker's Prometheus listener (/metrics); 0 turns it off. */
  metricsPort: number
  /** Adds a `tenant` label to task and workflow counters (METRICS_TENANT_LABEL=true); mind the cardinality. */
  metricsTenantLabel: boolean
}

type Env = Record<string, string | undefined>

export function loadConfig(env: Env = process.env): Readonly<Config> {
  const problems: string[] = []
  const int = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const raw = env[name]
    if (raw === undefined || raw === '') return fallback
    const n = Number(raw)
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(`${name} must be an integer from ${min} to ${max} (got "${raw}")`)
      return fallback
    }
    return n
  }
  const bool = (name: string, fallback: boolean): boolean => {
    const raw = env[name]
    if (raw === undefined || raw === '') return fallback
    if (['true', '1', 'yes'].includes(raw)) return true
    if (['false', '0', 'no'].includes(raw)) return false
    problems.push(`${name} must be true or false (got "${raw}")`)
    return fallback
  }
  const config: Config = {
    databaseUrl: env.DATABASE_URL || undefined,
    migrationDatabaseUrl: env.MIGRATION_DATABASE_URL || undefined,
    maintenanceDatabaseUrl: env.MAINTENANCE_DATABASE_URL || undefined,
    databasePooler: (env.DATABASE_POOLER || 'none') as DatabasePooler,
    directDatabaseUrl: env.DIRECT_DATABASE_URL || undefined,
    databaseRole: env.DATABASE_ROLE ?? APP_ROLE,
    isolationMode: (env.TENANT_ISOLATION_MODE || 'row-level') as IsolationMode,
    tenantServers: parseServers(env.TENANT_SERVERS, problems),
    tenantDatabasePrefix: env.TENANT_DATABASE_PREFIX || 'tenant_',
    workerTenants: parseSelection(env.WORKER_TENANTS, problems),
    tenantDbPoolMax: int('TENANT_DB_POOL_MAX', 4, 2, 100),
    maxTenantDatabases: int('MAX_TENANT_DATABASES', 100, 1, 10_000),
    tenantDbIdleMs: int('TENANT_DB_IDLE_MS', 300_000, 1000),
    tenantRefreshMs: int('TENANT_REFRESH_MS', 5000, 100),
    logLevel: env.LOG_LEVEL || 'info',
    workerConcurrency: int('WORKER_CONCURRENCY', 16, 1, 10_000),
    localContinuation: bool('LOCAL_CONTINUATION', true),
    fetchBatchSize: int('FETCH_BATCH_SIZE', 16, 1, 1000),
    pollIntervalMs: int('POLL_INTERVAL_MS', 2000, 50),
    resultRecheckMs: int('RESULT_RECHECK_MS', 30_000, 100, 2_147_483_647),
    heartbeatIntervalMs: int('HEARTBEAT_INTERVAL_MS', 5000, 100),
    staleAfterMs: int('STALE_AFTER_MS', 30_000, 1000),
    sweepIntervalMs: int('SWEEP_INTERVAL_MS', 0, 0),
    livenessIntervalMs: int('LIVENESS_INTERVAL_MS', 1000, 0),
    statisticsIntervalMs: int('STATISTICS_INTERVAL_MS', 5000, 0),
    schedulerIntervalMs: int('SCHEDULER_INTERVAL_MS', 10_000, 0),
    schedulerGraceMs: int('SCHEDULER_GRACE_MS', 60_000, 1000),
    shutdownGraceMs: int('SHUTDOWN_GRACE_MS', 10_000, 0),
    idleInTransactionTimeoutMs: int('IDLE_IN_TRANSACTION_TIMEOUT_MS', 60_000, 0, 2_147_483_647),
    maintenanceLockTimeoutMs: int('MAINTENANCE_LOCK_TIMEOUT_MS', 2000, 0, 2_147_483_647),
    maintenanceStatementTimeoutMs: int('MAINTENANCE_STATEMENT_TIMEOUT_MS', 60_000, 0, 2_147_483_647),
    watchdogMs: int('WATCHDOG_MS', 60_000, 0),
    agentVersionRetryMs: int('AGENT_VERSION_RETRY_MS', 5000, 10),
    agentVersionWaitMs: int('AGENT_VERSION_WAIT_MS', 600_000, 0),
    maxPayloadBytes: int('MAX_PAYLOAD_BYTES', 1024 * 1024, 1024, 256 * 1024 * 1024),
    dbPoolMax: int('DB_POOL_MAX', 10, 2, 1000),
    tenantConcurrency: parseTiers(env.TENANT_CONCURRENCY, env.TENANT_CONCURRENCY_TIERS, problems),
    encryption: parseKeyRing(env.ENCRYPTION_KEYS, env.ENCRYPTION_ACTIVE_KEY, problems),
    keyProvider: undefined, // below: it needs the key ring
    dataKeyCacheEntries: int('DATA_KEY_CACHE_ENTRIES', 10_000, 16),
    dataKeyCacheTtlMs: int('DATA_KEY_CACHE_TTL_MS', 60_000, 0),
    tenantContextSecret: env.TENANT_CONTEXT_SECRET || undefined,
    tenantContextVerified: bool('TENANT_CONTEXT_VERIFIED', false),
    port: int('PORT', 3000, 0, 65535),
    host: env.HOST || '0.0.0.0',
    webConcurrency: int('WEB_CONCURRENCY', 1, 1, 64),
    adminToken: env.ADMIN_TOKEN || undefined,
    metricsPort: int('METRICS_PORT', 9464, 0, 65535),
    metricsTenantLabel: bool('METRICS_TENANT_LABEL', false),
  }
  if (config.tenantContextSecret !== undefined && Buffer.byteLength(config.tenantContextSecret) < 32) {
    problems.push(
      'TENANT_CONTEXT_SECRET must be at least 32 characters (or unset: see docs/isolation-modes.md)',
    )
  }
  if (config.adminToken !== undefined && config.adminToken.length < 16) {
    problems.push('ADMIN_TOKEN must be at least 16 characters (or unset, which disables the admin API)')
  }
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(config.logLevel)) {
    problems.push(
      `LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent (got "${config.logLevel}")`,
    )
  }
  if (!DATABASE_POOLERS.includes(config.databasePooler)) {
    problems.push(
      `DATABASE_POOLER must be one of ${DATABASE_POOLERS.join(', ')} (got "${config.databasePooler}")`,
    )
  }
  if (!ISOLATION_MODES.includes(config.isolationMode)) {
    problems.push(
      `TENANT_ISOLATION_MODE must be one of ${ISOLATION_MODES.join(', ')} (got "${config.isolationMode}")`,
    )
  }
  if (!/^[a-z_][a-z0-9_]{0,19}$/.test(config.tenantDatabasePrefix)) {
    problems.push(
      `TENANT_DATABASE_PREFIX must be 1-20 lower-case letters, digits or '_', not starting with a digit (got "${config.tenantDatabasePrefix}")`,
    )
  }
  if (config.databaseRole !== '' && !/^[a-z_][a-z0-9_]{0,62}$/.test(config.databaseRole)) {
    problems.push(`DATABASE_ROLE must be a lower-case role name or empty (got "${config.databaseRole}")`)
  }
  if (config.idleInTransactionTimeoutMs > 0 && config.idleInTransactionTimeoutMs < 1000) {
    problems.push(
      `IDLE_IN_TRANSACTION_TIMEOUT_MS must be 0 (the server's setting) or at least 1000 (got ${config.idleInTransactionTimeoutMs}): a busy process may pause that long between two statements`,
    )
  }
  if (config.heartbeatIntervalMs * 2 > config.staleAfterMs) {
    problems.push(
      'STALE_AFTER_MS must be at least twice HEARTBEAT_INTERVAL_MS, or live tasks would be recovered',
    )
  }
  config.keyProvider = parseKeyProvider(env, config.encryption, problems)
  if (problems.length > 0) throw new ConfigError(problems)
  return Object.freeze(config)
}

/** Which tenants a worker serves: everyone, only `only`, or everyone but `except`. */
export type TenantSelection =
  { kind: 'all' } | { kind: 'only'; ids: readonly string[] } | { kind: 'except'; ids: readonly string[] }

export function selects(selection: TenantSelection, tenantId: string): boolean {
  if (selection.kind === 'all') return true
  return selection.ids.includes(tenantId) === (selection.kind === 'only')
}

const SERVER_NAME = /^[a-z][a-z0-9_-]{0,31}$/

/** TENANT_SERVERS="a=postgres://owner:pw@host-a:5432 b=postgres://owner:pw@host-b:5432" */
function parseServers(raw: string | undefined, problems: string[]): Readonly<Record<string, string>> {
  const servers: Record<string, string> = {}
  for (const entry of (raw ?? '').split(/\s+/).filter(Boolean)) {
    const eq = entry.indexOf('=')
    const name = entry.slice(0, eq)
    const url = entry.slice(eq + 1)
    if (eq < 1 || !SERVER_NAME.test(name)) {
      problems.push(
        `TENANT_SERVERS entry "${entry.slice(0, 40)}" must be name=url, the name 1-32 lower-case letters, digits, '_' or '-'`,
      )
      continue
    }
    if (name in servers) problems.push(`TENANT_SERVERS names server "${name}" twice`)
    try {
      const u = new URL(url)
      if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') throw new Error('not postgres')
    } catch {
      problems.push(`TENANT_SERVERS server "${name}" needs a postgres:// URL`)
      continue
    }
    servers[name] = url
  }
  return Object.freeze(servers)
}

/** WORKER_TENANTS="*" | "acme,globex" | "!acme,!globex" */
function parseSelection(raw: string | undefined, problems: string[]): TenantSelection {
  const parts = (raw ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
  if (parts.length === 0 || (parts.length === 1 && parts[0] === '*')) return { kind: 'all' }
  const excluded = parts.filter((p) => p.startsWith('!'))
  if (excluded.length > 0 && excluded.length < parts.length) {
    problems.push('WORKER_TENANTS is either a list of tenant ids or a list of !exclusions, not both')
  }
  const ids = parts.map((p) => p.replace(/^!/, ''))
  for (const id of ids) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/.test(id))
      problems.push(`WORKER_TENANTS: "${id}" is not a tenant id`)
  }
  return excluded.length > 0 ? { kind: 'except', ids } : { kind: 'only', ids }
}

/** TENANT_CONCURRENCY=8 and TENANT_CONCURRENCY_TIERS=enterprise:32,free:2 */
function parseTiers(
  base: string | undefined,
  tiers: string | undefined,
  problems: string[],
): GroupConcurrencyConfig | undefined {
  if (!base && !tiers) return undefined
  const n = Number(base ?? '')
  if (!Number.isInteger(n) || n < 1) {
    problems.push(`TENANT_CONCURRENCY must be a positive integer when tiers are set (got "${base ?? ''}")`)
    return undefined
  }
  const result: GroupConcurrencyConfig = { default: n, tiers: {} }
  for (const part of (tiers ?? '').split(',').filter(Boolean)) {
    const [name, value] = part.split(':')
    const v = Number(value)
    if (!name || !Number.isInteger(v) || v < 1)
      problems.push(`TENANT_CONCURRENCY_TIERS entry "${part}" must be tier:positive-integer`)
    else (result.tiers as Record<string, number>)[name.trim()] = v
  }
  return result
}

/**
 * DATA_KEYS=per-tenant turns per-tenant data keys on, wrapped by KEY_PROVIDER's keys (local by
 * default: derived from ENCRYPTION_KEYS, which it needs); unset or "off": undefined.
 */
function parseKeyProvider(env: Env, ring: KeyRing, problems: string[]): KeyProvider | undefined {
  const mode = (env.DATA_KEYS ?? '').trim()
  if (mode === '' || mode === 'off') return undefined
  if (mode !== 'per-tenant') {
    problems.push(`DATA_KEYS must be per-tenant or off (got "${mode}")`)
    return undefined
  }
  if (!ring.enabled) {
    problems.push(
      'DATA_KEYS=per-tenant needs ENCRYPTION_KEYS (older values, signatures, and the local provider)',
    )
    return undefined
  }
  try {
    return providerFromEnv(env, ring)
  } catch (error) {
    problems.push((error as Error).message)
    return undefined
  }
}
