// What the fuzz tests share: the seed each file logs (FUZZ_SEED=<seed> replays a failure), generators
// of hostile values (strings PostgreSQL refuses, keys that mean something to JavaScript objects, JSON
// nested past the limits, values that are not JSON at all), and a fingerprint of the tables a request
// can write, to prove a refused one wrote nothing.
import fc from 'fast-check'
import pg from 'pg'

/** This file's seed: FUZZ_SEED when set (to replay a failure), else a fresh one; logged either way. */
export function fuzzSeed(file: string): number {
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
  if (!Number.isSafeInteger(seed))
    throw new Error(`FUZZ_SEED must be an integer (got ${process.env.FUZZ_SEED})`)
  console.log('fuzz seed', seed, `(${file}; replay with FUZZ_SEED=${seed})`)
  return seed
}

/** Either half of a surrogate pair alone: not Unicode, so PostgreSQL cannot store it in text or jsonb. */
const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c))

/** What PostgreSQL cannot store in text or jsonb: a NUL, or half a surrogate pair alone. */
export const unstorable = fc.oneof(fc.constant('\u0000'), loneSurrogate)

/** Property names that mean something to JavaScript objects, promises and prototypes. */
export const prototypeKey = fc.constantFrom(
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'valueOf',
  'hasOwnProperty',
  '__defineGetter__',
  'then',
)

/** Any one code point (NUL included, never half a surrogate pair). */
const codePoint = fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })

/** Strings of every kind: ASCII, any code point, with NULs, with lone surrogates, prototype keys. */
export const nastyString = fc.oneof(
  fc.string(),
  fc.string({ unit: 'binary' }),
  fc.string({ unit: fc.oneof(codePoint, fc.constant('\u0000')) }),
  fc.string({ unit: fc.oneof(codePoint, loneSurrogate) }),
  prototypeKey,
)

/** Strings PostgreSQL stores as they are: any code point but NUL. */
export const storableString = fc.string({ unit: 'binary' }).map((s) => s.replaceAll('\u0000', ''))

/**
 * Strings around a byte limit, some of three-byte characters: fewer characters than the limit but
 * more bytes, which a check of `.length` instead of the encoded size would let through.
 */
export function stringNear(bytes: number) {
  return fc.oneof(
    fc.integer({ min: bytes - 64, max: bytes * 4 }).map((n) => 'x'.repeat(Math.max(n, 0))),
    fc.integer({ min: Math.ceil(bytes / 3) - 16, max: bytes }).map((n) => '€'.repeat(Math.max(n, 0))),
  )
}

/** `[[[...]]]` or `{"a":{"a":...}}`, `depth` levels deep, built without recursion. */
export function nested(depth: number, kind: 'array' | 'object'): unknown {
  let value: unknown = null
  for (let i = 0; i < depth; i++) value = kind === 'array' ? [value] : { a: value }
  return value
}

/** Nesting around the engine's depth limit (64) and far past it (not so far that JSON.stringify overflows). */
export const deeplyNested = fc
  .tuple(fc.oneof(fc.integer({ min: 60, max: 70 }), fc.integer({ min: 70, max: 1000 })), fc.boolean())
  .map(([depth, arrays]) => nested(depth, arrays ? 'array' : 'object'))

/** Objects built from entries, so `__proto__` becomes an own key (as JSON.parse makes it), not a prototype. */
function objectOf<T>(entries: fc.Arbitrary<[string, T][]>) {
  return entries.map((e) => Object.fromEntries(e) as Record<string, T>)
}

/** JSON that PostgreSQL's jsonb stores as given (what a client may legitimately send). */
export const storableJson: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('leaf'), tie('array'), tie('object')),
  leaf: fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    storableString,
  ),
  array: fc.array(tie('value'), { maxLength: 5 }),
  object: objectOf(
    fc.array(fc.tuple(fc.oneof(storableString, prototypeKey), tie('value')), { maxLength: 5 }),
  ),
})).value

/** JSON-shaped values with hostile strings and numbers anywhere: keys and values, NaN and Infinity too. */
export const hostileJson: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof({ depthSize: 'small', withCrossShrink: true }, tie('leaf'), tie('array'), tie('object')),
  leaf: fc.oneof(fc.constant(null), fc.boolean(), fc.integer(), fc.double(), nastyString),
  array: fc.array(tie('value'), { maxLength: 5 }),
  object: objectOf(fc.array(fc.tuple(fc.oneof(nastyString, prototypeKey), tie('value')), { maxLength: 5 })),
})).value

class Money {
  cents = 5
}

/** Values JSON has no notation for, each made fresh (a cyclic object must not be shared between runs). */
export const notJson: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(undefined),
  fc.constant(() => 1),
  fc.bigInt(),
  fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY),
  fc.constant(null).map(() => Symbol('s')),
  fc.constant(null).map(() => new Map([['k', 1]])),
  fc.constant(null).map(() => new Set([1])),
  fc.constant(null).map(() => new Money()),
  fc.constant(null).map(() => new String('boxed')),
  fc.constant(null).map(() => new Uint8Array([1, 2])),
  fc.constant(null).map(() => /re/),
  fc.constant(null).map(() => new Error('e')),
  fc.constant(null).map(() => {
    const cyclic: Record<string, unknown> = { a: 1 }
    cyclic.self = cyclic
    return cyclic
  }),
  fc.constant(null).map(() => {
    const list: unknown[] = [1]
    list.push([list])
    return list
  }),
  fc.constant(null).map(() => {
    const sparse = [1]
    sparse[2] = 3
    return sparse
  }),
  fc.date(), // JSON.stringify writes it as a string: accepted, and read back as that string
  fc.constant(null).map(() => Object.assign(Object.create(null), { bare: true })),
)

/** A workflow input: JSON, hostile JSON, values that are not JSON, nested among JSON or alone, at the limits. */
export function startInput(maxBytes: number): fc.Arbitrary<unknown> {
  const mixed: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
    value: fc.oneof({ depthSize: 'small' }, hostileJson, notJson, tie('array'), tie('object')),
    array: fc.array(tie('value'), { maxLength: 4 }),
    object: objectOf(fc.array(fc.tuple(fc.oneof(nastyString, prototypeKey), tie('value')), { maxLength: 4 })),
  })).value
  return fc.oneof(
    storableJson,
    hostileJson,
    mixed,
    notJson,
    deeplyNested,
    stringNear(maxBytes),
    stringNear(maxBytes).map((s) => ({ s })),
    fc.constantFrom(
      JSON.parse('{"__proto__": {"polluted": true}}'),
      JSON.parse('{"constructor": {"prototype": {"polluted": true}}}'),
    ),
  )
}

const TABLES = [
  'equilateral.tenants',
  'equilateral.workflows',
  'equilateral.agent_coordination',
  'equilateral.agent_audit_log',
  'equilateral.compliance_events',
  'equilateral.workflow_events',
  'pgboss.job',
]

/**
 * Every table a request can write, summed up so that any committed write shows: an insert or a
 * delete changes the row count, an update (a new row version) the sum of the rows' creating
 * transaction ids (xmin). Read as the superuser: row-level security would hide other tenants' rows.
 */
export async function databaseFingerprint(client: pg.Client): Promise<Record<string, string>> {
  const { rows } = await client.query(
    `SELECT ${TABLES.map(
      (table, i) =>
        `(SELECT count(*) || ' rows, xmin sum ' || coalesce(sum(xmin::text::bigint), 0) FROM ${table}) AS t${i}`,
    ).join(', ')}`,
  )
  return Object.fromEntries(TABLES.map((table, i) => [table, rows[0][`t${i}`] as string]))
}
