// Configuration, parsed once at boot into a frozen object; every problem is reported at once.
import type { GroupConcurrencyConfig } from 'pg-boss'
import { type KeyRing, parseKeyRing } from './crypto/keyring.ts'
import { APP_ROLE } from './db/names.ts'
import { ConfigError } from './errors.ts'

export const ISOLATION_MODES = ['row-level', 'schema-per-tenant'] as const
export type IsolationMode = (typeof ISOLATION_MODES)[number]

export interface Config {
  databaseUrl: string | undefined
  /** The owner role's URL, for migrations and tenant administration; defaults to databaseUrl. */
  migrationDatabaseUrl: string | undefined
  /**
   * The role every run-time connection switches to (`-c role=...`): the application role, which
   * owns nothing and cannot bypass row-level security. '' keeps the login role as it is.
   */
  databaseRole: string
  /** Where new tenants' tables go: the shared schema under RLS, or a schema of their own (also under RLS). */
  isolationMode: IsolationMode
  logLevel: string
  /** Agents one worker process runs at once. */
  workerConcurrency: number
  /** Jobs fetched per query at most. */
  fetchBatchSize: number
  pollIntervalMs: number
  heartbeatIntervalMs: number
  /** A running task whose heartbeat is older than this is recovered by the sweeper. */
  staleAfterMs: number
  /** 0: the sweeper runs from a pg-boss cron schedule (every minute, once across the fleet). */
  sweepIntervalMs: number
  shutdownGraceMs: number
  /** The `worker` command kills its process when the event loop is blocked this long; 0: off. */
  watchdogMs: number
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
    databaseRole: env.DATABASE_ROLE ?? APP_ROLE,
    isolationMode: (env.TENANT_ISOLATION_MODE || 'row-level') as IsolationMode,
    logLevel: env.LOG_LEVEL || 'info',
    workerConcurrency: int('WORKER_CONCURRENCY', 16, 1, 10_000),
    fetchBatchSize: int('FETCH_BATCH_SIZE', 16, 1, 1000),
    pollIntervalMs: int('POLL_INTERVAL_MS', 2000, 50),
    heartbeatIntervalMs: int('HEARTBEAT_INTERVAL_MS', 5000, 100),
    staleAfterMs: int('STALE_AFTER_MS', 30_000, 1000),
    sweepIntervalMs: int('SWEEP_INTERVAL_MS', 0, 0),
    shutdownGraceMs: int('SHUTDOWN_GRACE_MS', 10_000, 0),
    watchdogMs: int('WATCHDOG_MS', 60_000, 0),
    maxPayloadBytes: int('MAX_PAYLOAD_BYTES', 1024 * 1024, 1024, 256 * 1024 * 1024),
    dbPoolMax: int('DB_POOL_MAX', 10, 2, 1000),
    tenantConcurrency: parseTiers(env.TENANT_CONCURRENCY, env.TENANT_CONCURRENCY_TIERS, problems),
    encryption: parseKeyRing(env.ENCRYPTION_KEYS, env.ENCRYPTION_ACTIVE_KEY, problems),
    port: int('PORT', 3000, 0, 65535),
    host: env.HOST || '0.0.0.0',
    webConcurrency: int('WEB_CONCURRENCY', 1, 1, 64),
    adminToken: env.ADMIN_TOKEN || undefined,
    metricsPort: int('METRICS_PORT', 9464, 0, 65535),
    metricsTenantLabel: bool('METRICS_TENANT_LABEL', false),
  }
  if (config.adminToken !== undefined && config.adminToken.length < 16) {
    problems.push('ADMIN_TOKEN must be at least 16 characters (or unset, which disables the admin API)')
  }
  if (!['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].includes(config.logLevel)) {
    problems.push(
      `LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent (got "${config.logLevel}")`,
    )
  }
  if (!ISOLATION_MODES.includes(config.isolationMode)) {
    problems.push(
      `TENANT_ISOLATION_MODE must be one of ${ISOLATION_MODES.join(', ')} (got "${config.isolationMode}")`,
    )
  }
  if (config.databaseRole !== '' && !/^[a-z_][a-z0-9_]{0,62}$/.test(config.databaseRole)) {
    problems.push(`DATABASE_ROLE must be a lower-case role name or empty (got "${config.databaseRole}")`)
  }
  if (config.heartbeatIntervalMs * 2 > config.staleAfterMs) {
    problems.push(
      'STALE_AFTER_MS must be at least twice HEARTBEAT_INTERVAL_MS, or live tasks would be recovered',
    )
  }
  if (problems.length > 0) throw new ConfigError(problems)
  return Object.freeze(config)
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
