// Fuzzing the HTTP API (buildApp, through app.inject) on every route with hostile requests: random
// and malformed JSON bodies, raw bytes, wrong content types, bodies past the size limit, deep
// nesting, `__proto__` and `constructor` keys, garbage ids in paths, garbage query strings (limits,
// forged cursors, statuses, dates), and garbage headers (authorization, x-request-id). The answer is
// never a 5xx; every error is application/problem+json with a `code`; a refused request leaves the
// database as it was; no prototype is polluted; and the request id echoed back is always a sane one.
import fc from 'fast-check'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { buildApp, defineWorkflow } from '../../src/index.ts'
import { diamond, double, sum } from '../fixtures/workflows.ts'
import { testEngine } from '../helpers/engine.ts'
import {
  databaseFingerprint,
  deeplyNested,
  fuzzSeed,
  hostileJson,
  nastyString,
  prototypeKey,
  stringNear,
  unstorable,
} from './arbitraries.ts'

const seed = fuzzSeed('test/fuzz/http.test.ts')
const runs = (numRuns: number) => ({ seed, numRuns })

const ADMIN_TOKEN = 'fuzz-admin-token-0123456789'
const MAX_BYTES = 4096

// An event and an approval after it. No worker arms them: every delivery that is taken is kept.
const gated = defineWorkflow({
  name: 'gated',
  tasks: [
    { key: 'scan', event: { name: 'scan.completed' } },
    { key: 'release', approval: { approvers: ['alice'] }, dependsOn: ['scan'] },
  ],
})

// No worker runs: nothing but the requests below writes to the database.
const { engine, db } = await testEngine({
  agents: [double, sum],
  workflows: [diamond, gated],
  config: { maxPayloadBytes: MAX_BYTES },
})
const app = await buildApp(engine, { adminToken: ADMIN_TOKEN })
afterAll(() => app.close())

const acmeKey = (
  await engine.createTenant({ id: 'acme', complianceProfile: { GDPR: { retentionDays: 30 } } })
).apiKey
const globexKey = (await engine.createTenant({ id: 'globex' })).apiKey
// The admin routes may suspend this one or rotate its key: the tenants making requests are left alone.
await engine.createTenant({ id: 'victim' })
const acme = await engine.tenant('acme')
const mine = (await acme.startWorkflow('diamond', { n: 1 })).id
await acme.startWorkflow('diamond', { n: 2 })
const theirs = (await (await engine.tenant('globex')).startWorkflow('diamond', { n: 3 })).id
const mineGated = (await acme.startWorkflow('gated', null)).id
const theirsGated = (await (await engine.tenant('globex')).startWorkflow('gated', null)).id
const realCursor = (await acme.listWorkflows({ limit: 1 })).nextCursor!

const superuser = new pg.Client({ connectionString: db.url })
await superuser.connect()
afterAll(() => superuser.end())

/** Stands for a workflow started just before the request: a running one to cancel. */
const FRESH = '{fresh}'
/** The same, of the `gated` type: one that waits for an event and an approval. */
const FRESH_GATED = '{fresh-gated}'

// --- pieces of requests ----------------------------------------------------------------------------

const pad = (n: number, width: number) => String(n).padStart(width, '0')
/** `value` once in `n` times, else undefined. */
const onceIn = <T>(n: number, value: fc.Arbitrary<T>) =>
  fc.oneof({ weight: n - 1, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: value })
/** Any bytes, percent-encoded: invalid UTF-8 and NUL included. */
const encodedBytes = fc
  .uint8Array({ maxLength: 40 })
  .map((bytes) => [...bytes].map((b) => `%${b.toString(16).padStart(2, '0')}`).join(''))
/** Characters that mean something in a URL, in any order: broken escapes, dots, separators. */
const rawUrlPart = fc.string({
  unit: fc.constantFrom('%', '0', '2', 'e', 'F', 'z', '.', '/', ';', '=', '&', '+', '~', ':', '@', 'a'),
  maxLength: 24,
})
/** A string as a client would percent-encode it (a URL cannot carry half a surrogate pair). */
const encodedString = nastyString.map((s) => encodeURIComponent(s.toWellFormed()))
const garbage = fc.oneof(
  encodedBytes,
  rawUrlPart,
  encodedString,
  fc.constant('%00'),
  fc.constant('x'.repeat(3000)),
)

const workflowId = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(mine, theirs, FRESH, mine.toUpperCase()) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 2, arbitrary: garbage },
)
const gatedId = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(mineGated, theirsGated, FRESH_GATED, mine, FRESH) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 2, arbitrary: garbage },
)
const approvalName = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('release', 'scan', 'x'.repeat(200), 'x'.repeat(201)) },
  { weight: 1, arbitrary: garbage },
)
const tenantId = fc.oneof(
  fc.constantFrom('victim', 'ghost', 'x'.repeat(63), 'x'.repeat(64)),
  fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_-]{0,10}$/).map((s) => `fz-${s}`),
  garbage,
)

/** Dates and timestamps with digits in and out of range: stats windows, forged cursors. */
const digits = (max: number, width: number) => fc.integer({ min: 0, max }).map((n) => pad(n, width))
const dateTime = fc.tuple(
  digits(9999, 4),
  digits(13, 2),
  digits(32, 2),
  digits(25, 2),
  digits(61, 2),
  digits(61, 2),
)
const isoDate = fc.oneof(
  dateTime.map(([y, mo, d, h, mi, s]) => `${y}-${mo}-${d}T${h}:${mi}:${s}Z`),
  fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
)
const pgTimestamp = fc
  .tuple(
    dateTime,
    fc.constantFrom('', '.5', '.123456'),
    fc.constantFrom('+', '-'),
    digits(17, 2),
    fc.constantFrom('', ':00', ':30', ':60'),
  )
  .map(
    ([[y, mo, d, h, mi, s], frac, sign, oh, om]) => `${y}-${mo}-${d} ${h}:${mi}:${s}${frac}${sign}${oh}${om}`,
  )
/** The cursor the API hands out is base64url JSON: forge one with any time in it. */
const forgedCursor = fc
  .tuple(pgTimestamp, fc.uuid())
  .map((pair) => Buffer.from(JSON.stringify(pair)).toString('base64url'))

/** A query string of some of `params` (each with its own values, often wrong), or garbage. */
function queryOf(params: Record<string, fc.Arbitrary<string>>) {
  const pair = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.oneof(...Object.entries(params).map(([k, v]) => v.map((value) => `${k}=${value}`))),
    },
    {
      weight: 1,
      arbitrary: fc.tuple(fc.oneof(prototypeKey, encodedString), garbage).map(([k, v]) => `${k}=${v}`),
    },
  )
  return fc.oneof(
    { weight: 6, arbitrary: fc.array(pair, { minLength: 1, maxLength: 3 }).map((pairs) => pairs.join('&')) },
    { weight: 1, arbitrary: rawUrlPart },
  )
}
const listQuery = queryOf({
  limit: fc.oneof(
    fc.constantFrom('1', '50', '200', '0', '201', '-1', '1.5', '1e2', 'ten', ''),
    fc.integer().map(String),
  ),
  cursor: fc.oneof(fc.constant(realCursor), forgedCursor, fc.base64String().map(encodeURIComponent), garbage),
  status: fc.oneof(fc.constantFrom('running', 'completed', 'failed', 'cancelled', 'sleeping'), garbage),
  type: fc.oneof(fc.constant('diamond'), fc.constantFrom('%00', 'dia%00mond'), garbage),
})
const statsQuery = queryOf({
  since: fc.oneof(isoDate.map(encodeURIComponent), garbage),
  until: fc.oneof(isoDate.map(encodeURIComponent), garbage),
})

/** Strings for the fields of bodies: mostly fine, else hostile (NUL, lone surrogates, prototype keys) or long. */
const text = fc.oneof(
  { weight: 3, arbitrary: fc.stringMatching(/^[a-z0-9-]{1,20}$/) },
  { weight: 1, arbitrary: nastyString },
  { weight: 1, arbitrary: fc.tuple(nastyString, unstorable, nastyString).map((parts) => parts.join('')) },
  { weight: 1, arbitrary: fc.constantFrom('x'.repeat(255), 'x'.repeat(256), 'x'.repeat(1001)) },
)
const startBody = fc.record(
  {
    type: fc.oneof({ weight: 4, arbitrary: fc.constant('diamond') }, { weight: 1, arbitrary: text }),
    input: fc.oneof(
      { weight: 6, arbitrary: fc.record({ n: fc.integer() }) },
      { weight: 1, arbitrary: hostileJson.map((value) => ({ n: 1, value })) },
      { weight: 1, arbitrary: hostileJson },
      { weight: 1, arbitrary: deeplyNested },
      { weight: 1, arbitrary: stringNear(MAX_BYTES).map((s) => ({ n: 1, s })) },
    ),
    idempotencyKey: onceIn(3, text),
    subjectKey: onceIn(3, text),
  },
  { requiredKeys: ['type', 'input', 'idempotencyKey', 'subjectKey'] },
)
const tenantBody = fc.record(
  {
    id: fc.oneof(
      fc.stringMatching(/^[a-z0-9]{1,12}$/).map((s) => `fz-${s}`),
      text,
    ),
    name: text,
    tier: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('standard', 'enterprise') },
      { weight: 1, arbitrary: text },
    ),
    complianceProfile: fc.oneof(
      { weight: 2, arbitrary: fc.constant({ GDPR: { retentionDays: 30 } }) },
      {
        weight: 1,
        arbitrary: fc.record({
          SOX: fc.record({ retentionDays: fc.integer() }),
          auditRetentionDays: fc.integer(),
        }),
      },
      { weight: 1, arbitrary: hostileJson },
    ),
  },
  { requiredKeys: ['id'] },
)
const cancelBody = fc.oneof(
  { weight: 4, arbitrary: fc.record({ reason: text }) },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: hostileJson },
)
const payload = fc.oneof(
  { weight: 4, arbitrary: fc.record({ findings: fc.integer() }) },
  { weight: 1, arbitrary: hostileJson },
  { weight: 1, arbitrary: deeplyNested },
  { weight: 1, arbitrary: stringNear(MAX_BYTES).map((s) => ({ s })) },
)
const eventBody = fc.record(
  {
    // A few ids, so that the same id comes again: a duplicate, or a conflict with other contents.
    eventId: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('e-1', 'e-2', 'e-3') },
      { weight: 2, arbitrary: text },
    ),
    name: fc.oneof({ weight: 3, arbitrary: fc.constant('scan.completed') }, { weight: 1, arbitrary: text }),
    key: onceIn(3, text),
    payload: onceIn(2, payload),
    actor: onceIn(3, text),
  },
  { requiredKeys: ['eventId', 'name', 'key', 'payload', 'actor'] },
)
const decisionBody = fc.record(
  {
    approved: fc.oneof({ weight: 4, arbitrary: fc.boolean() }, { weight: 1, arbitrary: hostileJson }),
    approver: fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('alice', 'mallory') },
      { weight: 1, arbitrary: text },
    ),
    comment: onceIn(3, fc.oneof(text, fc.constantFrom('x'.repeat(2000), 'x'.repeat(2001)))),
    eventId: onceIn(3, text),
  },
  { requiredKeys: ['approved', 'approver', 'comment', 'eventId'] },
)
/** `__proto__` and `constructor.prototype` keys, as JSON.parse makes them: own properties. */
const pollutant = fc.constantFrom<[string, unknown]>(
  ['__proto__', { polluted: true }],
  ['constructor', { prototype: { polluted: true } }],
)
/**
 * A copy of `value` with the key added to every object in it, however deep; at the top too, or
 * not (there, the routes' schemas refuse any unknown key before a handler could merge it).
 */
function polluted(value: unknown, [key, payload]: [string, unknown], top: boolean): unknown {
  if (value === null || typeof value !== 'object') return value
  if (Array.isArray(value)) return value.map((v) => polluted(v, [key, payload], true))
  const entries = Object.entries(value).map(([k, v]) => [k, polluted(v, [key, payload], true)])
  return Object.fromEntries(top ? [...entries, [key, payload]] : entries)
}
/** Sends `value` as JSON; sometimes with an unknown field besides, or prototype keys everywhere. */
const asJson = (value: fc.Arbitrary<unknown>) =>
  fc
    .tuple(
      value,
      onceIn(5, fc.tuple(fc.oneof(prototypeKey, text), hostileJson)),
      onceIn(6, fc.tuple(pollutant, fc.boolean())),
    )
    .map(([v, extra, poison]) => {
      const withExtra = v !== null && typeof v === 'object' && extra ? { ...v, [extra[0]]: extra[1] } : v
      return JSON.stringify(poison ? polluted(withExtra, ...poison) : withExtra)
    })

/** Bodies that are wrong whatever the route: broken, polluting, binary, huge, nested past any limit. */
const hostileBody = fc.oneof(
  asJson(
    fc.oneof(startBody, tenantBody, cancelBody, eventBody, decisionBody, hostileJson, deeplyNested),
  ).chain((s) => fc.nat(s.length).map((n) => s.slice(0, n))), // cut short
  fc.constantFrom(
    '{"__proto__":{"polluted":true}}',
    '{"type":"diamond","input":{"__proto__":{"polluted":true}}}',
    '{"type":"diamond","input":{"n":1,"constructor":{"prototype":{"polluted":true}}}}',
    '{"constructor":{"prototype":{"polluted":true}}}',
    '{"id":"fz-proto","complianceProfile":{"__proto__":{"polluted":true}}}',
    '{"reason":"x","__proto__":{"polluted":true}}',
    '[{"__proto__":{"polluted":true}}]',
    '',
    'null',
    '"diamond"',
  ),
  asJson(hostileJson),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc
    .integer({ min: 60_000, max: 150_000 })
    .map((n) => JSON.stringify({ type: 'diamond', input: { s: 'x'.repeat(n) } })),
  fc
    .integer({ min: 50, max: 20_000 })
    .map((n) => `{"type":"diamond","input":${'['.repeat(n)}${']'.repeat(n)}}`),
)

/** Header values as an HTTP parser hands them over: printable Latin-1 and tabs. */
const headerValue = fc.string({
  unit: fc
    .oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constant(9))
    .map((c) => String.fromCharCode(c)),
  maxLength: 200,
})
const hostileAuthorization = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom(
    `Bearer ${ADMIN_TOKEN}`,
    `Bearer ${globexKey}`,
    `bearer ${acmeKey}`,
    `Bearer   ${acmeKey}  `,
    `Bearer ${acmeKey}x`,
    `Basic ${acmeKey}`,
    `Bearer ${acmeKey} ${ADMIN_TOKEN}`,
    'Bearer',
    'Bearer ',
  ),
  headerValue,
  headerValue.map((v) => `Bearer ${v}`),
)
const hostileContentType = fc.oneof(
  fc.constantFrom(
    'application/json; charset=utf-8',
    'APPLICATION/JSON',
    'application/json; charset=utf-16le',
    'application/json; charset=latin1',
    'application/json;',
    'application/json; foo=bar',
    'application/problem+json',
    'text/plain',
    'text/plain; charset=utf-8',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=xyz',
    'application/octet-stream',
    '*/*',
    '',
  ),
  headerValue,
)

// --- requests ----------------------------------------------------------------------------------------

interface Draft {
  method: string
  path: string
  query: string | undefined
  /** Whose credentials the route wants. */
  auth: 'tenant' | 'admin' | 'none'
  body: string | Buffer | undefined
}

/** A request as the route expects it, with generated parameters, query and body. */
function endpoint(
  method: string,
  path: fc.Arbitrary<string> | string,
  parts: { auth?: Draft['auth']; query?: fc.Arbitrary<string>; body?: fc.Arbitrary<string | undefined> } = {},
): fc.Arbitrary<Draft> {
  return fc.record({
    method: fc.constant(method),
    path: typeof path === 'string' ? fc.constant(path) : path,
    query: parts.query ? fc.option(parts.query, { freq: 4, nil: undefined }) : fc.constant(undefined),
    auth: fc.constant(parts.auth ?? 'none'),
    body: parts.body ?? fc.constant(undefined),
  })
}

/** Every route of src/web/app.ts, in groups, and paths that lead nowhere. */
const routes = {
  'starting workflows': endpoint('POST', '/v1/workflows', { auth: 'tenant', body: asJson(startBody) }),
  'listing workflows': endpoint('GET', '/v1/workflows', { auth: 'tenant', query: listQuery }),
  'reading a workflow and its audit trail': endpoint(
    'GET',
    fc.tuple(workflowId, fc.constantFrom('', '/audit')).map(([id, audit]) => `/v1/workflows/${id}${audit}`),
    { auth: 'tenant' },
  ),
  'cancelling workflows': endpoint(
    'POST',
    workflowId.map((id) => `/v1/workflows/${id}/cancel`),
    { auth: 'tenant', body: fc.option(asJson(cancelBody), { nil: undefined }) },
  ),
  'delivering events and approval decisions': fc.oneof(
    endpoint(
      'POST',
      gatedId.map((id) => `/v1/workflows/${id}/events`),
      { auth: 'tenant', body: asJson(eventBody) },
    ),
    endpoint(
      'POST',
      fc.tuple(gatedId, approvalName).map(([id, name]) => `/v1/workflows/${id}/approvals/${name}`),
      { auth: 'tenant', body: asJson(decisionBody) },
    ),
  ),
  'creating and listing tenants': fc.oneof(
    {
      weight: 4,
      arbitrary: endpoint('POST', '/v1/admin/tenants', { auth: 'admin', body: asJson(tenantBody) }),
    },
    { weight: 1, arbitrary: endpoint('GET', '/v1/admin/tenants', { auth: 'admin' }) },
  ),
  'suspending, resuming and rotating keys': endpoint(
    'POST',
    fc
      .tuple(tenantId, fc.constantFrom('suspend', 'resume', 'rotate-key'))
      .map(([id, action]) => `/v1/admin/tenants/${id}/${action}`),
    { auth: 'admin' },
  ),
  'stats, operations, the web page and nowhere': fc.oneof(
    endpoint('GET', '/v1/stats', { auth: 'tenant', query: statsQuery }),
    endpoint('GET', '/v1/stats', { auth: 'admin', query: statsQuery }),
    endpoint('GET', fc.constantFrom('/healthz', '/readyz', '/metrics', '/openapi.json', '/ui')),
    endpoint(
      'GET',
      fc
        .oneof(fc.constantFrom('', 'index.html', 'app.js', '__proto__', '..%2fpackage.json'), garbage)
        .map((f) => `/ui/${f}`),
    ),
    endpoint(
      'GET',
      fc.array(garbage, { minLength: 1, maxLength: 3 }).map((s) => `/${s.join('/')}`),
      { query: listQuery },
    ),
  ),
}

/** A request to a route: mostly as the route expects it, with one part or another hostile now and then. */
const requestTo = (draft: fc.Arbitrary<Draft>) =>
  fc.record({
    draft,
    method: onceIn(10, fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS')),
    authorization: onceIn(6, hostileAuthorization),
    contentType: onceIn(6, hostileContentType),
    body: onceIn(5, hostileBody),
    requestId: onceIn(3, fc.oneof(headerValue, fc.constantFrom('req-1', 'x'.repeat(128), 'x'.repeat(129)))),
  })
type Request = typeof requestTo extends (draft: fc.Arbitrary<Draft>) => fc.Arbitrary<infer R> ? R : never

// --- what must hold of every answer ------------------------------------------------------------------

/** The built-in prototypes, with their own properties as they were before any request. */
const PROTOTYPES = [Object.prototype, Array.prototype, Function.prototype, String.prototype]
const pristine = PROTOTYPES.map((p) => new Set(Object.getOwnPropertyNames(p)))

/**
 * Properties a request added to a built-in prototype, removed again so that the next request (and
 * fast-check's shrinking) starts clean and the failure names the request that did it.
 */
function pollution(): string[] {
  return PROTOTYPES.flatMap((p, i) =>
    Object.getOwnPropertyNames(p)
      .filter((name) => !pristine[i]!.has(name))
      .map((name) => {
        delete (p as Record<string, unknown>)[name]
        return name
      }),
  )
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

async function send(r: Request): Promise<void> {
  const method = r.method ?? r.draft.method
  const path = r.draft.path.includes(FRESH)
    ? r.draft.path.replace(FRESH, (await acme.startWorkflow('diamond', { n: 1 })).id)
    : r.draft.path.includes(FRESH_GATED)
      ? r.draft.path.replace(FRESH_GATED, (await acme.startWorkflow('gated', null)).id)
      : r.draft.path
  const url = r.draft.query === undefined ? path : `${path}?${r.draft.query}`
  const body = r.body ?? r.draft.body
  const credentials = { tenant: `Bearer ${acmeKey}`, admin: `Bearer ${ADMIN_TOKEN}`, none: undefined }
  const authorization = r.authorization ?? credentials[r.draft.auth]
  const headers: Record<string, string> = {}
  if (authorization !== undefined) headers.authorization = authorization
  if (r.requestId !== undefined) headers['x-request-id'] = r.requestId
  if (r.contentType !== undefined || body !== undefined) {
    headers['content-type'] = r.contentType ?? 'application/json'
  }
  const before = await databaseFingerprint(superuser)

  const res = await app.inject({
    method: method as 'GET',
    url,
    headers,
    ...(body !== undefined ? { payload: body } : {}),
  })

  const what = `${method} ${url.slice(0, 300)} answered ${res.statusCode} ${res.body.slice(0, 300)}`
  expect(String(res.headers['x-request-id']), what).toMatch(REQUEST_ID)
  if (path === '/readyz' && res.statusCode === 503) {
    expect(res.json(), what).toMatchObject({ ready: false }) // the database is slow to answer: not a client error
    return
  }
  expect(res.statusCode, what).toBeLessThan(500)
  if (res.statusCode >= 400) {
    expect(res.headers['content-type'], what).toMatch(/^application\/problem\+json/)
    if (method !== 'HEAD') {
      expect(res.json(), what).toMatchObject({ status: res.statusCode, code: expect.any(String) })
    }
    expect(await databaseFingerprint(superuser), `${what}: the database changed`).toEqual(before)
  }
  expect(pollution(), `${what}: polluted a prototype`).toEqual([])
}

describe('hostile requests get no 5xx, every error as problem+json, and write nothing when refused', () => {
  it.each(Object.entries(routes))('%s', async (_group, draft) => {
    await fc.assert(
      fc.asyncProperty(requestTo(draft), async (r) => {
        await send(r)
      }),
      runs(150),
    )
  })
})
