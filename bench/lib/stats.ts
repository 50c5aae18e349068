// Small numeric helpers shared by the benchmarks.
import pg from 'pg'

export interface Percentiles {
  n: number
  p50: number
  p95: number
  p99: number
  max: number
}

/** Nearest-rank percentiles of a sample, in the sample's unit, rounded to 0.1. */
export function percentiles(values: readonly number[]): Percentiles {
  if (values.length === 0) return { n: 0, p50: NaN, p95: NaN, p99: NaN, max: NaN }
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number
  const r = (v: number) => Math.round(v * 10) / 10
  return {
    n: sorted.length,
    p50: r(at(0.5)),
    p95: r(at(0.95)),
    p99: r(at(0.99)),
    max: r(sorted.at(-1) as number),
  }
}

/** Wall-clock milliseconds with sub-millisecond precision, comparable across processes on one machine. */
export function wallMs(): number {
  return performance.timeOrigin + performance.now()
}

/** Creates a fresh database on the server and returns its URL; drop() removes it. */
export async function scratchDatabase(
  adminUrl: string,
  name: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`)
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`)
  } finally {
    await admin.end()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return {
    url: url.href,
    drop: async () => {
      const c = new pg.Client({ connectionString: adminUrl })
      await c.connect()
      try {
        await c.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`)
      } finally {
        await c.end()
      }
    },
  }
}

let statementsSent = 0
let counting = false
/**
 * Counts every statement this process sends through pg (pg-boss's included) from the first call
 * on; returns the count so far. A wrapper around pg.Client.prototype.query, installed once.
 */
export function statementsSentSoFar(): number {
  if (!counting) {
    counting = true
    // `this` is passed through with apply().
    // eslint-disable-next-line @typescript-eslint/unbound-method
    const original = pg.Client.prototype.query
    pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
      statementsSent++
      return (original as (...a: unknown[]) => unknown).apply(this, args)
    } as typeof original
  }
  return statementsSent
}
