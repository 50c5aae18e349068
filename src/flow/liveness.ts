// Worker liveness by database session. A killed process's sessions end at once, so the database
// knows within milliseconds that a worker is gone; heartbeats (src/flow/heartbeat.ts) need the
// stale threshold to pass. Each worker process keeps one dedicated session on the control database
// that holds a session-level advisory lock (LIVENESS_LOCK_CLASS, its lock id) and lists the process's
// workers in equilateral.worker_sessions, the lock taken before any of them claims a task. A listed
// worker whose lock no session of this database holds is dead (pg_locks, readable by any role).
//
// The liveness pass (every LIVENESS_INTERVAL_MS, one process at a time across the fleet by a
// try-lock) reads the dead workers in one statement and, only when it finds some, has the sweeper
// judge their running tasks lost (src/core/sweep-plan.ts: workerDead), fenced on status and attempt
// as every sweep is, then removes their rows. Heartbeats stay the fallback for hung processes and
// network partitions: a worker whose session lives on while it is stuck is not found here.
//
// A worker whose dedicated session drops (a network blip) reconnects, takes a new lock id and
// re-lists its workers. A pass may see it dead meanwhile: its running tasks are then re-queued and
// its late completions are fenced out by the attempt, as after a heartbeat loss; the tasks it claims
// after the pass saw it dead are left alone (their attempt started later, by the database clock).
import { hostname } from 'node:os'
import { randomInt } from 'node:crypto'
import pg from 'pg'
import type { Logger } from 'pino'
import { APP_SCHEMA } from '../db/names.ts'
import { checkout } from '../db/tx.ts'

/** The advisory lock space of worker sessions (two-int4 keys: this class, the session's lock id). */
export const LIVENESS_LOCK_CLASS = 0x65716c76
/** Lock id 0 of the class is the liveness pass's turn; sessions take ids from 1 up. */
const PASS_LOCK_ID = 0

/** Workers found dead, and the database time they were seen dead (ISO 8601, microseconds). */
export interface DeadWorkers {
  ids: readonly string[]
  seenAt: string
  /** Each dead worker's row as it was seen, so that removing it spares a re-registration. */
  rows: readonly { workerId: string; lockId: number }[]
}

// Advisory locks of the class held by any session of this database. objsubid 2: the two-key form.
const HELD = `
SELECT l.objid FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = ${LIVENESS_LOCK_CLASS}::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`

const DEAD = `
WITH held AS MATERIALIZED (${HELD})
SELECT w.worker_id, w.lock_id, to_json(now()) #>> '{}' AS seen_at
FROM ${APP_SCHEMA}.worker_sessions w
WHERE w.lock_id::oid NOT IN (SELECT objid FROM held)`

// The pass's turn and the dead workers in one statement; without the turn, no rows.
const TURN_AND_DEAD = `
WITH turn AS MATERIALIZED (SELECT pg_try_advisory_lock(${LIVENESS_LOCK_CLASS}, ${PASS_LOCK_ID}) AS ok),
held AS MATERIALIZED (${HELD})
SELECT turn.ok, w.worker_id, w.lock_id, to_json(now()) #>> '{}' AS seen_at
FROM turn LEFT JOIN ${APP_SCHEMA}.worker_sessions w
  ON turn.ok AND w.lock_id::oid NOT IN (SELECT objid FROM held)`

// Only rows still as they were seen, and still unlocked: a worker that re-registered keeps its row.
const REMOVE = `
WITH held AS MATERIALIZED (${HELD})
DELETE FROM ${APP_SCHEMA}.worker_sessions w
USING jsonb_to_recordset($1::jsonb) AS x(worker_id text, lock_id int)
WHERE w.worker_id = x.worker_id AND w.lock_id = x.lock_id AND w.lock_id::oid NOT IN (SELECT objid FROM held)`

// Writes only when the row is missing or names another lock id.
const UPSERT = `
INSERT INTO ${APP_SCHEMA}.worker_sessions AS w (worker_id, lock_id, host, pid)
SELECT id, $2, $3, $4 FROM unnest($1::text[]) AS id
ON CONFLICT (worker_id) DO UPDATE
SET lock_id = EXCLUDED.lock_id, host = EXCLUDED.host, pid = EXCLUDED.pid, registered_at = now()
WHERE w.lock_id IS DISTINCT FROM EXCLUDED.lock_id`

function deadOf(rows: Record<string, any>[]): DeadWorkers | null {
  const found = rows.filter((r) => r.worker_id !== null)
  if (found.length === 0) return null
  return {
    ids: found.map((r) => r.worker_id as string),
    seenAt: found[0]!.seen_at as string,
    rows: found.map((r) => ({ workerId: r.worker_id as string, lockId: r.lock_id as number })),
  }
}

/** The registry is not there yet: new code before `migrate` (liveness then waits for it). */
function unmigrated(error: unknown): boolean {
  return (error as { code?: string } | null)?.code === '42P01'
}

/** The registered workers whose session has ended (null: none), read from the control database. */
export async function findDeadWorkers(pool: pg.Pool): Promise<DeadWorkers | null> {
  try {
    return deadOf((await pool.query(DEAD)).rows)
  } catch (error) {
    if (unmigrated(error)) return null
    throw error
  }
}

/**
 * One liveness pass: if no other process is in one, finds the dead workers, has `recover` judge their
 * tasks, then removes their rows. Returns what it found ('busy': another process's pass runs).
 */
export async function livenessPass(
  pool: pg.Pool,
  recover: (dead: DeadWorkers) => Promise<void>,
): Promise<DeadWorkers | null | 'busy'> {
  const { client, release } = await checkout(pool)
  let broken = false
  try {
    const { rows } = await client.query(TURN_AND_DEAD)
    if (!rows[0]?.ok) return 'busy'
    try {
      const dead = deadOf(rows)
      if (dead) {
        await recover(dead)
        await client.query(REMOVE, [
          JSON.stringify(dead.rows.map((r) => ({ worker_id: r.workerId, lock_id: r.lockId }))),
        ])
      }
      return dead
    } finally {
      await client
        .query(`SELECT pg_advisory_unlock(${LIVENESS_LOCK_CLASS}, ${PASS_LOCK_ID})`)
        .catch(() => (broken = true))
    }
  } catch (error) {
    broken = true
    if (unmigrated(error)) return null
    throw error
  } finally {
    // A session that may still hold the turn is not given back to the pool.
    release(broken)
  }
}

/**
 * A process's registration: one dedicated session on the control database holding the process's
 * liveness lock, and a row per worker of the process. Shared by the workers of the process (in
 * database-per-tenant mode, one per tenant database it serves).
 */
export class LivenessRegistry {
  readonly #connectionString: string
  readonly #log: Logger
  readonly #checkMs: number
  readonly #ids = new Set<string>()
  #client: pg.Client | null = null
  #lockId = 0
  #connecting: Promise<pg.Client> | null = null
  #retry: NodeJS.Timeout | null = null
  #check: NodeJS.Timeout | null = null
  #failures = 0
  #verifying = false
  #closed = false

  constructor(options: { connectionString: string; log: Logger; checkMs: number }) {
    this.#connectionString = options.connectionString
    this.#log = options.log
    this.#checkMs = options.checkMs
  }

  /**
   * Lists the worker; resolves once its row and the lock it stands for are in place. Before the
   * control database is migrated (no registry yet), the worker runs on heartbeats alone, and the
   * periodic check lists it once the registry is there.
   */
  async register(workerId: string): Promise<void> {
    this.#ids.add(workerId)
    this.#check ??= setInterval(() => void this.#verify(), this.#checkMs).unref()
    const client = await this.#session()
    try {
      await client.query(UPSERT, [[workerId], this.#lockId, hostname(), process.pid])
    } catch (error) {
      if (!unmigrated(error)) throw error
      this.#log.warn('worker liveness waits for `migrate`: killed workers are found by heartbeats only')
    }
  }

  /** Removes the worker's row (graceful shutdown: its tasks were finished or released). */
  async unregister(workerId: string): Promise<void> {
    this.#ids.delete(workerId)
    const client = this.#client
    if (!client) return // the row names a lock nobody holds: the next pass removes it
    await client
      .query(`DELETE FROM ${APP_SCHEMA}.worker_sessions WHERE worker_id = $1 AND lock_id = $2`, [
        workerId,
        this.#lockId,
      ])
      .catch((error) => {
        if (!unmigrated(error))
          this.#log.warn({ err: error, worker: workerId }, 'could not unregister the worker')
      })
  }

  /** Ends the session, which releases the lock: rows still listed are then dead workers. */
  async close(): Promise<void> {
    this.#closed = true
    if (this.#check) clearInterval(this.#check)
    if (this.#retry) clearTimeout(this.#retry)
    const client = this.#client ?? (await this.#connecting?.catch(() => null))
    this.#client = null
    await client?.end().catch(() => {})
  }

  /** The session holding the lock, connecting (and locking) first if there is none. */
  #session(): Promise<pg.Client> {
    if (this.#client) return Promise.resolve(this.#client)
    this.#connecting ??= this.#connect().finally(() => (this.#connecting = null))
    return this.#connecting
  }

  async #connect(): Promise<pg.Client> {
    const client = new pg.Client({
      connectionString: this.#connectionString,
      application_name: 'equilateral-liveness',
      // A session that died without a word (a half-open connection) is noticed by the periodic
      // check's timeout, and by TCP keepalives on an idle one.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      query_timeout: 10_000,
    })
    client.on('error', (error) => this.#lost(client, error))
    client.on('end', () => this.#lost(client, null))
    try {
      await client.connect()
      // A random id; one another session holds (a collision, or a previous life's) is not ours to take.
      for (let tries = 0; ; tries++) {
        const id = randomInt(1, 2 ** 31 - 1)
        const { rows } = await client.query(`SELECT pg_try_advisory_lock(${LIVENESS_LOCK_CLASS}, $1) AS ok`, [
          id,
        ])
        if (rows[0]?.ok) {
          this.#lockId = id
          break
        }
        if (tries >= 10) throw new Error('no free liveness lock id')
      }
      if (this.#closed) throw new Error('liveness registry closed')
      this.#client = client
      return client
    } catch (error) {
      client.removeAllListeners('end')
      client.on('error', () => {})
      await client.end().catch(() => {})
      throw error
    }
  }

  /** The session ended under us: whatever it held is gone; reconnect and list the workers again. */
  #lost(client: pg.Client, error: Error | null): void {
    if (this.#client !== client) return
    this.#client = null
    client.on('error', () => {})
    client.end().catch(() => {})
    if (this.#closed) return
    this.#log.warn({ err: error ?? undefined }, 'liveness session lost; registering the workers again')
    this.#scheduleReconnect()
  }

  /** Reconnects after 0.2 s, doubling up to 10 s while the database stays away. */
  #scheduleReconnect(): void {
    if (this.#closed || this.#retry) return
    const delay = Math.min(10_000, 200 * 2 ** this.#failures)
    this.#retry = setTimeout(() => {
      this.#retry = null
      void this.#verify()
    }, delay)
    this.#retry.unref()
  }

  /**
   * Re-lists every worker of the process under the current lock if a row is missing or stale (a
   * read when none is, since an upsert locks the rows it leaves): run periodically, it also finds
   * out that a silently dropped session is gone.
   */
  async #verify(): Promise<void> {
    if (this.#closed || this.#ids.size === 0 || this.#verifying) return
    this.#verifying = true
    try {
      const client = await this.#session()
      const ids = [...this.#ids]
      const { rows } = await client.query(
        `SELECT count(*)::int AS n FROM ${APP_SCHEMA}.worker_sessions WHERE worker_id = ANY($1) AND lock_id = $2`,
        [ids, this.#lockId],
      )
      if (rows[0]?.n !== ids.length) await client.query(UPSERT, [ids, this.#lockId, hostname(), process.pid])
      if (this.#failures > 0) this.#log.info({ attempts: this.#failures }, 'liveness session restored')
      this.#failures = 0
    } catch (error) {
      if (this.#closed || unmigrated(error)) return
      this.#failures++
      if (this.#failures === 1) this.#log.warn({ err: error }, 'liveness registration failed; retrying')
      const client = this.#client
      if (client) this.#lost(client, error as Error)
      else this.#scheduleReconnect()
    } finally {
      this.#verifying = false
    }
  }
}
