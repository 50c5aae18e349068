// When a failed attempt runs again. Pure: the random source is a parameter so tests can pin it.

/** Whether another attempt is allowed after `failures` failed attempts (the one just failed included). */
export function canRetry(failures: number, maxAttempts: number, permanent: boolean): boolean {
  return !permanent && failures < maxAttempts
}

/**
 * Delay before the next attempt: exponential in the number of failures so far, capped, with up to
 * 20% jitter taken off so a burst of failures does not come back as a burst.
 */
export function retryDelayMs(
  failures: number,
  backoffMs: number,
  backoffMaxMs: number,
  random: () => number = Math.random,
): number {
  if (backoffMs <= 0) return 0
  const exponent = Math.min(Math.max(failures - 1, 0), 30)
  const raw = Math.min(backoffMaxMs, backoffMs * 2 ** exponent)
  return Math.round(raw * (1 - 0.2 * random()))
}

/** A task's attempt counters and retry policy, as its row holds them. */
export interface AttemptState {
  /** Dispatch generation (the fence of completions). */
  attempt: number
  /** Failed attempts so far. */
  failures: number
  maxAttempts: number
  backoffMs: number
  backoffMaxMs: number
  timeoutMs: number
}

/** Reads an AttemptState from an agent_coordination row. */
export function attemptStateOf(row: Record<string, any>): AttemptState {
  return {
    attempt: row.attempt,
    failures: row.failures,
    maxAttempts: row.max_attempts,
    backoffMs: row.backoff_ms,
    backoffMaxMs: row.backoff_max_ms,
    timeoutMs: row.timeout_ms,
  }
}
