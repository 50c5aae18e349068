// What one attempt of an agent reports spending (ctx.usage), summed in the worker's memory until the
// attempt ends; the total is written with the attempt's end, in its transaction (src/usage/sql.ts).
import { UsageError } from '../errors.ts'

/** Amounts by dimension: non-negative safe integers. */
export type Usage = Record<string, number>

export class UsageMeter {
  readonly #agentId: string
  readonly #declared: ReadonlySet<string>
  readonly #total = new Map<string, number>()

  constructor(agentId: string, declared: readonly string[]) {
    this.#agentId = agentId
    this.#declared = new Set(declared)
  }

  /** Adds amounts; refuses the whole call (nothing added) if any dimension or amount is invalid. */
  add(amounts: Readonly<Record<string, number>>): void {
    if (amounts === null || typeof amounts !== 'object' || Array.isArray(amounts)) {
      throw new UsageError(`ctx.usage takes an object of amounts by dimension`, '')
    }
    const next: [string, number][] = []
    for (const [dimension, amount] of Object.entries(amounts)) {
      if (!this.#declared.has(dimension)) {
        const declared = [...this.#declared].join(', ') || 'none'
        throw new UsageError(
          `agent "${this.#agentId}" reported usage "${dimension}", which it does not declare (declared: ${declared})`,
          dimension,
        )
      }
      if (!Number.isSafeInteger(amount) || amount < 0) {
        throw new UsageError(
          `usage "${dimension}" must be a non-negative integer (got ${String(amount)}); report money in micro-units`,
          dimension,
        )
      }
      const sum = (this.#total.get(dimension) ?? 0) + amount
      if (!Number.isSafeInteger(sum)) throw new UsageError(`usage "${dimension}" overflows`, dimension)
      next.push([dimension, sum])
    }
    for (const [dimension, sum] of next) this.#total.set(dimension, sum)
  }

  /** The attempt's usage, or undefined when it reported nothing above zero (then nothing is written). */
  total(): Usage | undefined {
    const entries = [...this.#total].filter(([, amount]) => amount > 0)
    return entries.length > 0 ? Object.fromEntries(entries) : undefined
  }
}
