// Retry policy (src/core/retry.ts), pure: whether a failed attempt runs again, and after how long.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { canRetry, retryDelayMs } from '../../src/core/retry.ts'

const failures = fc.integer({ min: 1, max: 200 })
const backoff = fc.integer({ min: 1, max: 3_600_000 })
const random = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })

describe('canRetry', () => {
  it('allows another attempt while failures stay under maxAttempts, never after a permanent failure', () => {
    fc.assert(
      fc.property(failures, fc.integer({ min: 1, max: 100 }), fc.boolean(), (n, max, permanent) => {
        expect(canRetry(n, max, permanent)).toBe(!permanent && n < max)
      }),
    )
  })

  it('runs a task with maxAttempts 3 three times at most', () => {
    expect([1, 2, 3].map((n) => canRetry(n, 3, false))).toEqual([true, true, false])
  })
})

describe('retryDelayMs', () => {
  it('doubles from backoffMs with each failure, up to backoffMaxMs (no jitter when random is 0)', () => {
    const delays = [1, 2, 3, 4, 5, 6].map((n) => retryDelayMs(n, 1000, 10_000, () => 0))
    expect(delays).toEqual([1000, 2000, 4000, 8000, 10_000, 10_000])
  })

  it('takes up to 20% off as jitter, and stays within [80%, 100%] of the capped exponential delay', () => {
    fc.assert(
      fc.property(failures, backoff, backoff, random, (n, base, cap, r) => {
        const raw = Math.min(cap, base * 2 ** Math.min(n - 1, 30))
        const delay = retryDelayMs(n, base, cap, () => r)
        expect(delay).toBeGreaterThanOrEqual(Math.floor(raw * 0.8))
        expect(delay).toBeLessThanOrEqual(raw)
      }),
    )
  })

  it('never waits longer than backoffMaxMs, and never less after more failures (same jitter)', () => {
    fc.assert(
      fc.property(failures, backoff, backoff, random, (n, base, cap, r) => {
        const delay = retryDelayMs(n, base, cap, () => r)
        expect(delay).toBeLessThanOrEqual(cap)
        expect(retryDelayMs(n + 1, base, cap, () => r)).toBeGreaterThanOrEqual(delay)
      }),
    )
  })

  it('retries at once without a backoff, and stays finite after any number of failures', () => {
    expect(retryDelayMs(5, 0, 60_000)).toBe(0)
    expect(retryDelayMs(1_000_000, 1000, 60_000, () => 0)).toBe(60_000)
    expect(retryDelayMs(0, 1000, 60_000, () => 0)).toBe(1000)
  })
})
