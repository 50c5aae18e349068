// The statistics pass. The hot statements (CLAIM, COMPLETE) read agent_coordination and workflows by
// tenant; on tables without planner statistics (a fresh database, a new tenant schema or tenant
// database) the planner takes `tenant_id = $1` for ~1 row and scans the tenant's whole index range,
// filtering the rest, until autovacuum's first analyze: a minute (autovacuum_naptime) or more. So
// the processes that run the hot path call analyze_hot_tables() (drizzle/tenant/0013), a SECURITY
// DEFINER function of each tenant schema that analyzes those tables when they have none yet or
// have changed a lot since, every STATISTICS_INTERVAL_MS, and once as soon as a worker starts on a
// database. The application role owns nothing and could not ANALYZE them itself.
//
// One loop per process walks the databases its workers serve one after the other (never two at
// once). In each it lists, in one read of pg_stat_user_tables, the schemas (the shared one, tenant
// schemas) whose hot tables have changed enough for the function to possibly find something due,
// and calls the function of each: nothing due costs that read. Those change counts lag behind the
// writes (a session reports them at most once a second, and up to 10 s late once it idles: the
// backlog a web process started just before the worker came up), so a worker's first pass on a
// database also calls the function of every schema with a hot table never analyzed, which judges
// those by their size on disk. A database migrated before 0013 (code deployed before `migrate`)
// has no function yet: it is passed over until it has.
import type pg from 'pg'
import type { Logger } from 'pino'
import { APP_SCHEMA, TENANT_SCHEMA_PATTERN } from '../db/names.ts'
import { type TxTimeouts, withTransaction } from '../db/tx.ts'

/** The tables analyze_hot_tables() looks after. */
export const HOT_TABLES = ['agent_coordination', 'workflows'] as const

/**
 * The fewest changed rows (n_mod_since_analyze) at which analyze_hot_tables() may find a table
 * due by its counters: its smallest threshold (100 live rows of a table never analyzed, each of
 * them an insert). Keep in step with drizzle/tenant/0013_statistics_pass.sql.
 */
export const STATISTICS_MIN_CHANGES = 100

// The shared schema and the tenant schemas that may be due; $3: also those with a hot table never
// analyzed, whatever their counters say.
const CANDIDATES = `
SELECT DISTINCT schemaname::text AS schema FROM pg_catalog.pg_stat_user_tables
WHERE relname = ANY ($1::text[])
  AND (n_mod_since_analyze >= $2 OR ($3 AND last_analyze IS NULL AND last_autoanalyze IS NULL))
  AND (schemaname = '${APP_SCHEMA}' OR schemaname ~ '${TENANT_SCHEMA_PATTERN.source}')
ORDER BY 1`

const UNDEFINED_FUNCTION = '42883'
const INVALID_SCHEMA_NAME = '3F000'

export interface AnalyzedTable {
  schema: string
  table: string
  reason: string
  /** Live rows and rows changed since the last analyze, before this one. */
  liveRows: number
  changedRows: number
}

export interface StatisticsPassOptions {
  timeouts?: TxTimeouts
  /**
   * A worker's first pass on the database: also asks every schema with a hot table never analyzed,
   * however few changes its counters show yet (the function then judges the table by its size).
   */
  fresh?: boolean
}

/**
 * One pass over a database: the hot tables of every schema of it that needed statistics, analyzed.
 * A schema without the function (not migrated yet) or dropped meanwhile is passed over.
 */
export async function statisticsPass(
  pool: pg.Pool,
  options: StatisticsPassOptions = {},
): Promise<AnalyzedTable[]> {
  const { rows } = await pool.query<{ schema: string }>(CANDIDATES, [
    HOT_TABLES,
    STATISTICS_MIN_CHANGES,
    options.fresh ?? false,
  ])
  const analyzed: AnalyzedTable[] = []
  for (const { schema } of rows) analyzed.push(...(await analyzeSchema(pool, schema, options.timeouts)))
  return analyzed
}

/** Calls one schema's analyze_hot_tables(); [] when it has none (or the schema is gone). */
export async function analyzeSchema(
  pool: pg.Pool,
  schema: string,
  timeouts?: TxTimeouts,
): Promise<AnalyzedTable[]> {
  try {
    // A transaction of its own: the function's try-lock is held to its end.
    return await withTransaction(pool, async (client) => {
      // A maintenance pass's limits (0: the server's setting); the function itself never waits for
      // a table's lock.
      const limits = [
        ...(timeouts?.statementTimeoutMs
          ? [`set_config('statement_timeout', '${timeouts.statementTimeoutMs}ms', true)`]
          : []),
        ...(timeouts?.lockTimeoutMs
          ? [`set_config('lock_timeout', '${timeouts.lockTimeoutMs}ms', true)`]
          : []),
      ]
      if (limits.length > 0) await client.query(`SELECT ${limits.join(', ')}`)
      const { rows } = await client.query<{
        table_name: string
        reason: string
        live_rows: string
        changed_rows: string
      }>(`SELECT * FROM ${client.escapeIdentifier(schema)}.analyze_hot_tables()`)
      return rows.map((r) => ({
        schema,
        table: r.table_name,
        reason: r.reason,
        liveRows: Number(r.live_rows),
        changedRows: Number(r.changed_rows),
      }))
    })
  } catch (error) {
    const code = (error as { code?: string } | null)?.code
    if (code === UNDEFINED_FUNCTION || code === INVALID_SCHEMA_NAME) return []
    throw error
  }
}

interface Held {
  pool: pg.Pool
  holds: number
  /** The last pass on it failed (warned once; the next success is logged). */
  failing: boolean
}

export interface StatisticsPassesOptions {
  /** Between the end of one round over the databases and the start of the next. */
  everyMs: number
  log: Logger
  timeouts?: TxTimeouts
}

/**
 * The process's statistics loop: one round over the databases held every `everyMs`, one database
 * at a time; a database held for the first time gets a fresh pass of its own at once (a worker
 * starting on a database that filled before it started). Errors are logged, a database's first
 * failure at warn and the next ones at debug until it passes again; nothing here ever waits for
 * the hot path or makes it wait.
 */
export class StatisticsPasses {
  readonly #o: StatisticsPassesOptions
  readonly #held = new Map<string, Held>()
  /** Databases held since the last round: passed at once, before the next round is due. */
  readonly #fresh = new Set<string>()
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | null = null
  #nextRoundAt = 0
  #stopped = false

  constructor(options: StatisticsPassesOptions) {
    this.#o = options
    this.#nextRoundAt = Date.now() + options.everyMs
  }

  /** Passes over the database (by store key) until every hold is released. */
  hold(key: string, pool: pg.Pool): () => void {
    const held = this.#held.get(key)
    if (held) held.holds++
    else {
      this.#held.set(key, { pool, holds: 1, failing: false })
      this.#fresh.add(key)
      this.#schedule()
    }
    let released = false
    return () => {
      if (released) return
      released = true
      const h = this.#held.get(key)
      if (h && --h.holds === 0) {
        this.#held.delete(key)
        this.#fresh.delete(key)
      }
    }
  }

  /** Stops the loop; waits for a pass under way. */
  async stop(): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await this.#running
  }

  #schedule(): void {
    if (this.#stopped || this.#running) return
    clearTimeout(this.#timer)
    const delay = this.#fresh.size > 0 ? 0 : Math.max(0, this.#nextRoundAt - Date.now())
    this.#timer = setTimeout(() => void this.#tick(), delay)
    this.#timer.unref()
  }

  async #tick(): Promise<void> {
    const round = Date.now() >= this.#nextRoundAt
    const fresh = new Set(this.#fresh)
    this.#fresh.clear()
    const keys = round ? [...this.#held.keys()] : [...fresh]
    this.#running = (async () => {
      for (const key of keys) {
        if (this.#stopped) return
        await this.#pass(key, fresh.has(key))
      }
    })()
    await this.#running
    this.#running = null
    if (round) this.#nextRoundAt = Date.now() + this.#o.everyMs
    this.#schedule()
  }

  async #pass(key: string, fresh: boolean): Promise<void> {
    const held = this.#held.get(key)
    if (!held) return
    const log = this.#o.log
    try {
      const analyzed = await statisticsPass(held.pool, {
        ...(this.#o.timeouts ? { timeouts: this.#o.timeouts } : {}),
        fresh,
      })
      if (analyzed.length > 0) log.debug({ database: key, analyzed }, 'statistics pass analyzed tables')
      if (held.failing) log.info({ database: key }, 'statistics pass works again')
      held.failing = false
    } catch (error) {
      // Released meanwhile (its pool may be closing): nothing to report.
      if (this.#held.get(key) !== held || this.#stopped) return
      const err = { message: (error as Error).message, code: (error as { code?: string }).code }
      if (held.failing) log.debug({ database: key, err }, 'statistics pass failed again')
      else log.warn({ database: key, err }, 'statistics pass failed; retrying every interval')
      held.failing = true
    }
  }
}
