// Checks that a value can be stored in a PostgreSQL jsonb column exactly as given, before anything
// is written: PostgreSQL rejects \u0000 and lone UTF-16 surrogates in jsonb text, and JSON has no
// undefined, NaN, Infinity, bigint or functions. Refusing up front means a bad value is a clear,
// typed error at the call site instead of a failed transaction (or a redelivery loop) later.
import { InvalidInputError } from '../errors.ts'

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

export interface JsonLimits {
  /** Maximum size of the serialised value in bytes. */
  maxBytes: number
  /** Maximum nesting depth of arrays and objects. */
  maxDepth: number
}

export const DEFAULT_JSON_LIMITS: JsonLimits = { maxBytes: 1024 * 1024, maxDepth: 64 }

/**
 * Returns the value's serialised size in bytes, or throws InvalidInputError naming the JSON path of
 * the first value PostgreSQL would reject.
 */
export function assertStorableJson(
  value: unknown,
  label: string,
  limits: JsonLimits = DEFAULT_JSON_LIMITS,
): number {
  walk(value, label, 0, limits.maxDepth, new Set())
  const bytes = Buffer.byteLength(JSON.stringify(value ?? null), 'utf8')
  if (bytes > limits.maxBytes) {
    throw new InvalidInputError(
      `${label} is ${bytes} bytes, over the limit of ${limits.maxBytes} bytes`,
      label,
    )
  }
  return bytes
}

function badString(s: string): string | undefined {
  if (s.includes('\u0000')) return 'contains a NUL character (\\u0000), which PostgreSQL cannot store'
  if (!s.isWellFormed()) return 'contains a lone UTF-16 surrogate, which PostgreSQL cannot store'
  return undefined
}

function walk(value: unknown, path: string, depth: number, maxDepth: number, seen: Set<object>): void {
  switch (typeof value) {
    case 'string': {
      const problem = badString(value)
      if (problem) throw new InvalidInputError(`${path} ${problem}`, path)
      return
    }
    case 'number':
      if (!Number.isFinite(value))
        throw new InvalidInputError(`${path} is ${value}, which JSON cannot represent`, path)
      return
    case 'boolean':
      return
    case 'object': {
      if (value === null) return
      if (depth >= maxDepth)
        throw new InvalidInputError(`${path} is nested deeper than ${maxDepth} levels`, path)
      if (seen.has(value)) throw new InvalidInputError(`${path} contains a circular reference`, path)
      seen.add(value)
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) walk(value[i], `${path}[${i}]`, depth + 1, maxDepth, seen)
      } else {
        const proto = Object.getPrototypeOf(value)
        if (proto !== Object.prototype && proto !== null && !(value instanceof Date)) {
          throw new InvalidInputError(
            `${path} is a ${proto?.constructor?.name ?? 'non-plain'} object, not JSON`,
            path,
          )
        }
        if (!(value instanceof Date)) {
          for (const key of Object.keys(value)) {
            const problem = badString(key)
            if (problem) throw new InvalidInputError(`${path} has a key that ${problem}`, path)
            const child = (value as Record<string, unknown>)[key]
            if (child === undefined) continue // JSON.stringify drops it, as callers expect
            walk(child, `${path}.${key}`, depth + 1, maxDepth, seen)
          }
        }
      }
      seen.delete(value)
      return
    }
    default:
      throw new InvalidInputError(`${path} is a ${typeof value}, which JSON cannot represent`, path)
  }
}

/** JSON text with object keys sorted at every level: the same for a value however jsonb ordered it. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    )
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  return JSON.stringify(value ?? null)
}
