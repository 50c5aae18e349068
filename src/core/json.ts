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

/** `${sign}${significant digits}e${exponent}`: the same for every spelling of one decimal value. */
function decimalKey(text: string): string | null {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)
  if (!m) return null
  const [, sign = '', int = '', frac = '', exp = '0'] = m
  let digits = (int + frac).replace(/^0+/, '')
  if (digits === '') return '0'
  let e = Number(exp) - frac.length
  const trimmed = digits.replace(/0+$/, '')
  e += digits.length - trimmed.length
  digits = trimmed
  return `${sign}${digits}e${e}`
}

/** Whether the number `value` (parsed from `text`) is the decimal value `text` spells. */
function exactText(text: string, value: number): boolean {
  if (!Number.isFinite(value)) return false
  const shortest = String(value)
  return shortest === text || decimalKey(text) === decimalKey(shortest)
}

const NUMBER_AT = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/y

/**
 * Refuses, in JSON text that parses, (InvalidInputError naming its path from `label`) a number that a
 * JavaScript number cannot carry exactly: an integer past 2^53 that is not a double (a 40-digit
 * id), a magnitude that overflows (1e400) or underflows to 0 (1e-400), or more significant digits
 * than a double keeps. Stored as parsed, they would be another value, silently. Numbers that round
 * trip (0.1, 1.0, 1e21) are accepted. The text is not parsed again: a regular expression finds the
 * number-like tokens (in strings too), and only when one looks inexact is the text walked to know
 * whether it is a number and where.
 */
export function assertExactNumbers(text: string, label = '$'): void {
  for (const m of text.matchAll(NUMBER_TOKEN)) {
    const token = m[0]
    if (inexact(token)) {
      locateInexact(text, label)
      return
    }
  }
}

const NUMBER_TOKEN = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g

/** At most 15 digits and no exponent is always exact; anything else is checked. */
function inexact(token: string): boolean {
  return (token.length >= 16 || /[eE]/.test(token)) && !exactText(token, Number(token))
}

/** Walks the JSON text to the first inexact number outside strings, and throws naming its path. */
function locateInexact(text: string, label: string): void {
  const stack: { array: boolean; key: string; index: number }[] = []
  let expectKey = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === 0x22) {
      // A string: to its closing quote (one not escaped by an odd number of backslashes).
      let end = text.indexOf('"', i + 1)
      for (;;) {
        let slashes = 0
        while (text.charCodeAt(end - 1 - slashes) === 0x5c) slashes++
        if (slashes % 2 === 0) break
        end = text.indexOf('"', end + 1)
      }
      if (expectKey) {
        const top = stack.at(-1)
        if (top) top.key = JSON.parse(text.slice(i, end + 1)) as string
        expectKey = false
      }
      i = end
    } else if (c === 0x7b) {
      stack.push({ array: false, key: '', index: 0 })
      expectKey = true
    } else if (c === 0x5b) {
      stack.push({ array: true, key: '', index: 0 })
    } else if (c === 0x7d || c === 0x5d) {
      stack.pop()
    } else if (c === 0x2c) {
      const top = stack.at(-1)
      if (top?.array) top.index++
      else expectKey = true
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      NUMBER_AT.lastIndex = i
      const token = NUMBER_AT.exec(text)?.[0] ?? text.charAt(i)
      if (inexact(token)) {
        const path = label + stack.map((f) => (f.array ? `[${f.index}]` : `.${f.key}`)).join('')
        const shown = token.length > 40 ? `${token.slice(0, 40)}…` : token
        throw new InvalidInputError(
          `${path} is ${shown}, a number JSON here cannot carry exactly (it would be stored as ${String(Number(token))}): send it as a string`,
          path,
        )
      }
      i += token.length - 1
    }
  }
}
