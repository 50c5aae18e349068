// The one table that says which database errors are worth another try, and how far back the retry
// goes. Every retry loop asks it:
// - 'conflict': the transaction lost a race (serialization failure, deadlock). Running the same
//   transaction again succeeds: withTenantTx (db/tx.ts) retries it at once, a few times.
// - 'unavailable': the database (or the network to it) went away or is starting, shutting down or
//   full. The whole write is tried again after a backoff: retryTransient below (an attempt's end),
//   the sweeper and maintenance passes (a tenant database passed over), the web's 503, the CLI's
//   start-up wait.
// - 'timeout': a lock or a statement ran out of time (lock_timeout, statement_timeout): the
//   maintenance passes leave the work for the next pass (isTimedOut).
// Anything else is not transient: thrown to the caller.

export type ErrorClass = 'conflict' | 'unavailable' | 'timeout'

/** SQLSTATEs (and Node socket error codes) by class. SQLSTATE class 08 is 'unavailable' as a whole. */
const BY_CODE: Readonly<Record<string, ErrorClass>> = {
  '40001': 'conflict', // serialization_failure
  '40P01': 'conflict', // deadlock_detected
  '57P01': 'unavailable', // admin_shutdown
  '57P02': 'unavailable', // crash_shutdown
  '57P03': 'unavailable', // cannot_connect_now (starting up)
  '53300': 'unavailable', // too_many_connections
  ECONNREFUSED: 'unavailable',
  ECONNRESET: 'unavailable',
  ETIMEDOUT: 'unavailable',
  EHOSTUNREACH: 'unavailable',
  ENETUNREACH: 'unavailable',
  EAI_AGAIN: 'unavailable',
  EPIPE: 'unavailable',
  // ENOTFOUND is left out: it is usually a mistyped host name.
  '55P03': 'timeout', // lock_not_available (lock_timeout)
  '57014': 'timeout', // query_canceled (statement_timeout)
}

/** Errors node-postgres raises without a code when the connection breaks or cannot be made. */
const UNAVAILABLE_MESSAGE =
  /Connection terminated|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|EPIPE|timeout exceeded when trying to connect|Client has encountered a connection error/i

/** The class of a database error, or null when another try would not help. */
export function classify(error: unknown): ErrorClass | null {
  const code = (error as { code?: unknown } | null)?.code
  if (typeof code !== 'string') {
    const message = String((error as { message?: string } | null)?.message ?? '')
    return UNAVAILABLE_MESSAGE.test(message) ? 'unavailable' : null
  }
  if (code.startsWith('08')) return 'unavailable' // connection exceptions
  return BY_CODE[code] ?? null
}

/** Connection-level and server-availability errors: the database may come back. */
export function isTransient(error: unknown): boolean {
  return classify(error) === 'unavailable'
}

/** A serialization failure or a deadlock: the same transaction, run again, may well succeed. */
export function isConflict(error: unknown): boolean {
  return classify(error) === 'conflict'
}

/** A lock not granted within lock_timeout (55P03), or a statement cancelled by statement_timeout (57014). */
export function isTimedOut(error: unknown): boolean {
  return classify(error) === 'timeout'
}

const RETRY_FOR_MS = 30_000

/**
 * Runs a write, and runs it again after a short backoff while it fails with a transient error, for
 * up to 30 s; other errors, and the last one, are thrown. `onRetry` runs before each wait. Every
 * write of an attempt's end (completion, failure, snooze, release) goes through here: a write
 * given up leaves the task running without a heartbeat, and the sweeper would count it as lost.
 */
export async function retryTransient<T>(
  write: () => Promise<T>,
  onRetry: (error: unknown, attempt: number) => void | Promise<void>,
): Promise<T> {
  const started = Date.now()
  for (let attempt = 1; ; attempt++) {
    try {
      return await write()
    } catch (error) {
      if (!isTransient(error) || Date.now() - started > RETRY_FOR_MS) throw error
      await onRetry(error, attempt)
      await new Promise((r) => setTimeout(r, Math.min(2000, 50 * 2 ** attempt)))
    }
  }
}
