// The HTTP API, driven with real HTTP requests against the real server on an ephemeral port: the
// happy path, every kind of bad request (each with its status and problem+json body), and a tenant
// trying to reach another tenant's workflows.
import { readFile } from 'node:fs/promises'
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { defineWorkflow, Engine } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { double, diamond, heldAgent, sum } from '../fixtures/workflows.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const ADMIN_TOKEN = 'test-admin-token-0123456789'

const waits = heldAgent('waits')
const slow = defineWorkflow({ name: 'slow', tasks: [{ key: 'wait', agent: waits.agent }] })

const { engine, db } = await testEngine({
  agents: [double, sum, waits.agent],
  workflows: [diamond, slow],
  config: { maxPayloadBytes: 4096 },
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1', adminToken: ADMIN_TOKEN })
afterAll(async () => {
  waits.release()
  await web.close()
})
const acmeKey = (await engine.createTenant({ id: 'acme' })).apiKey
const globexKey = (await engine.createTenant({ id: 'globex' })).apiKey

interface Answer {
  status: number
  headers: Headers
  body: any
}

async function call(
  method: string,
  path: string,
  options: { key?: string | null; body?: unknown; raw?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers }
  const key = options.key === undefined ? acmeKey : options.key
  if (key !== null) headers.authorization = `Bearer ${key}`
  let body: string | undefined
  if (options.raw !== undefined || options.body !== undefined) {
    headers['content-type'] ??= 'application/json'
    body = options.raw ?? JSON.stringify(options.body)
  }
  const res = await fetch(`${web.url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) })
  const text = await res.text()
  let parsed: unknown = text
  try {
    parsed = JSON.parse(text)
  } catch {
    // not JSON (e.g. /metrics)
  }
  return { status: res.status, headers: res.headers, body: parsed }
}

function expectProblem(answer: Answer, status: number, code: string) {
  expect({ status: answer.status, code: answer.body?.code }).toEqual({ status, code })
  expect(answer.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  expect(answer.body).toMatchObject({
    status,
    type: expect.stringContaining(code),
    title: expect.any(String),
  })
}

async function completed(id: string, key = acmeKey) {
  return eventually(async () => {
    const r = await call('GET', `/v1/workflows/${id}`, { key })
    return r.body.status === 'running' ? undefined : r
  })
}

async function tableCounts() {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    const { rows } = await c.query(`SELECT
      (SELECT count(*) FROM equilateral.workflows)::int AS workflows,
      (SELECT count(*) FROM equilateral.agent_coordination)::int AS tasks,
      (SELECT count(*) FROM equilateral.agent_audit_log)::int AS audit,
      (SELECT count(*) FROM equilateral.tenants)::int AS tenants`)
    return rows[0]
  } finally {
    await c.end()
  }
}

describe('workflows over HTTP', () => {
  it('starts a workflow, which can be polled to completion with its tasks, results and timings', async () => {
    const started = await call('POST', '/v1/workflows', {
      body: { type: 'diamond', input: { n: 3 } },
      headers: { 'x-request-id': 'req-happy-1' },
    })
    expect(started.status).toBe(201)
    expect(started.body).toMatchObject({ id: expect.any(String), status: 'running', created: true })
    expect(started.headers.get('location')).toBe(`/v1/workflows/${started.body.id}`)
    expect(started.headers.get('x-request-id')).toBe('req-happy-1')

    const done = await completed(started.body.id)
    expect(done.status).toBe(200)
    expect(done.body).toMatchObject({
      id: started.body.id,
      type: 'diamond',
      status: 'completed',
      input: { n: 3 },
      correlationId: 'req-happy-1',
      output: { d: { total: 2 } },
    })
    const tasks = Object.fromEntries(done.body.tasks.map((t: any) => [t.key, t]))
    expect(Object.keys(tasks).sort()).toEqual(['a', 'b', 'c', 'd'])
    expect(tasks.a).toMatchObject({ status: 'completed', attempt: 1, failures: 0, result: { n: 6 } })
    expect(tasks.d.dependsOn.sort()).toEqual(['b', 'c'])
    for (const t of done.body.tasks) {
      expect(Date.parse(t.startedAt)).toBeGreaterThanOrEqual(Date.parse(t.queuedAt))
      expect(Date.parse(t.completedAt)).toBeGreaterThanOrEqual(Date.parse(t.startedAt))
    }

    const audit = await call('GET', `/v1/workflows/${started.body.id}/audit`)
    expect(audit.status).toBe(200)
    const actions = audit.body.entries.map((e: any) => e.action)
    expect(actions[0]).toBe('workflow_started')
    expect(actions.at(-1)).toBe('workflow_completed')
    expect(actions.filter((a: string) => a === 'task_completed')).toHaveLength(4)
    expect(audit.body.entries.every((e: any) => e.correlationId === 'req-happy-1')).toBe(true)
  })

  it('returns the first workflow, with 200, when an idempotency key is repeated', async () => {
    const body = { type: 'diamond', input: { n: 1 }, idempotencyKey: 'order-42' }
    const first = await call('POST', '/v1/workflows', { body })
    const again = await call('POST', '/v1/workflows', { body })
    expect([first.status, again.status]).toEqual([201, 200])
    expect(again.body).toMatchObject({ id: first.body.id, created: false })
    const conflict = await call('POST', '/v1/workflows', { body: { ...body, type: 'slow' } })
    expectProblem(conflict, 409, 'idempotency_conflict')
  })

  it('lists workflows newest first, a page at a time, filtered by status and type', async () => {
    const ids: string[] = []
    for (let i = 0; i < 5; i++) {
      ids.push(
        (await call('POST', '/v1/workflows', { key: globexKey, body: { type: 'diamond', input: { n: i } } }))
          .body.id,
      )
    }
    for (const id of ids) await completed(id, globexKey)
    const seen: string[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const query: string = `?type=diamond&status=completed&limit=2${cursor ? `&cursor=${cursor}` : ''}`
      const page = await call('GET', `/v1/workflows${query}`, { key: globexKey })
      expect(page.status).toBe(200)
      expect(page.body.workflows.length).toBeLessThanOrEqual(2)
      seen.push(...page.body.workflows.map((w: any) => w.id))
      cursor = page.body.nextCursor
      pages++
    } while (cursor)
    expect(seen).toEqual([...ids].reverse())
    expect(pages).toBe(3)

    const running = await call('GET', '/v1/workflows?status=running', { key: globexKey })
    expect(running.body).toEqual({ workflows: [], nextCursor: null })
  })

  it('cancels a running workflow once; cancelling again reports its status', async () => {
    const started = await call('POST', '/v1/workflows', { body: { type: 'slow' } })
    await eventually(async () => {
      const r = await call('GET', `/v1/workflows/${started.body.id}`)
      return r.body.tasks[0].status === 'running' ? r : undefined
    })
    // A reason PostgreSQL cannot store is refused before anything changes.
    for (const reason of ['nul \u0000 byte', 'lone \ud800 surrogate']) {
      expectProblem(
        await call('POST', `/v1/workflows/${started.body.id}/cancel`, { body: { reason } }),
        422,
        'invalid_input',
      )
    }
    const cancel = await call('POST', `/v1/workflows/${started.body.id}/cancel`, {
      body: { reason: 'changed my mind' },
    })
    expect(cancel.status).toBe(200)
    expect(cancel.body).toEqual({ cancelled: true, status: 'cancelled', tasksCancelled: 1 })
    const again = await call('POST', `/v1/workflows/${started.body.id}/cancel`)
    expect(again.body).toEqual({ cancelled: false, status: 'cancelled', tasksCancelled: 0 })
    const wf = await call('GET', `/v1/workflows/${started.body.id}`)
    expect(wf.body).toMatchObject({ status: 'cancelled', error: { reason: 'changed my mind' } })
  })
})

describe('bad requests get the right status, a problem+json body, and write nothing', () => {
  it('refuses an unknown workflow type, malformed JSON, bad fields and the wrong media type', async () => {
    const before = await tableCounts()
    expectProblem(
      await call('POST', '/v1/workflows', { body: { type: 'nope' } }),
      422,
      'unknown_workflow_type',
    )
    expectProblem(await call('POST', '/v1/workflows', { raw: '{"type": "diamond",' }), 400, 'invalid_json')
    expectProblem(await call('POST', '/v1/workflows', { raw: '' }), 400, 'invalid_json')
    expectProblem(await call('POST', '/v1/workflows', { body: { input: {} } }), 400, 'invalid_request')
    expectProblem(
      await call('POST', '/v1/workflows', { body: { type: { name: 'diamond' } } }),
      400,
      'invalid_request',
    )
    expectProblem(await call('POST', '/v1/workflows', { body: [1, 2] }), 400, 'invalid_request')
    const typo = await call('POST', '/v1/workflows', { body: { type: 'diamond', idempotency_key: 'k' } })
    expectProblem(typo, 400, 'invalid_request')
    expect(typo.body.detail).toContain('idempotency_key')
    expectProblem(
      await call('POST', '/v1/workflows', { raw: '{"type":"diamond","input":{"__proto__":{"admin":true}}}' }),
      400,
      'invalid_json',
    )
    expectProblem(
      await call('POST', '/v1/workflows', { raw: 'type=diamond', headers: { 'content-type': 'text/plain' } }),
      415,
      'unsupported_media_type',
    )
    expect(await tableCounts()).toEqual(before)
  })

  it('refuses oversized bodies (413) and inputs over the payload limit (422)', async () => {
    const before = await tableCounts()
    const huge = await call('POST', '/v1/workflows', {
      body: { type: 'diamond', input: { s: 'x'.repeat(200_000) } },
    })
    expectProblem(huge, 413, 'payload_too_large')
    const large = await call('POST', '/v1/workflows', {
      body: { type: 'diamond', input: { s: 'x'.repeat(10_000) } },
    })
    expectProblem(large, 422, 'invalid_input')
    expect(await tableCounts()).toEqual(before)
  })

  it('refuses numbers JSON cannot carry exactly (invalid_input naming the path), and takes those it can', async () => {
    const before = await tableCounts()
    for (const [n, path] of [
      ['1234567890123456789012345678901234567890', '$.input.n'],
      ['1e-400', '$.input.n'],
      ['1e400', '$.input.n'],
      ['9007199254740993', '$.input.n'],
    ] as const) {
      const answer = await call('POST', '/v1/workflows', {
        raw: `{"type":"diamond","input":{"ok":1,"n":${n}}}`,
      })
      expectProblem(answer, 422, 'invalid_input')
      expect(answer.body.path, n).toBe(path)
      expect(answer.body.detail).toContain(n.slice(0, 20))
    }
    const nested = await call('POST', '/v1/workflows', {
      raw: '{"type":"diamond","input":{"list":["1e-400",{"x\\"y":"\\\\","x":12345678.123456789012}]}}',
    })
    expect(nested.body.path).toBe('$.input.list[1].x')
    expect(await tableCounts()).toEqual(before)
    const fine = await call('POST', '/v1/workflows', {
      raw: '{"type":"diamond","input":{"a":0.1,"b":1.0,"c":1e21,"d":9007199254740992,"e":-0,"f":2.5e-7,"g":"12345678901234567890 \\" 1e-400"}}',
    })
    expect(fine.status, JSON.stringify(fine.body)).toBe(201)
  })

  it('answers headers over the limit (100 KB) with 431 problem+json', async () => {
    const answer = await call('GET', '/v1/workflows', { headers: { 'x-padding': 'x'.repeat(100 * 1024) } })
    expectProblem(answer, 431, 'headers_too_large')
  })

  it('refuses bad ids, cursors and query parameters with 400 or 422, and unknown ids with 404', async () => {
    expectProblem(await call('GET', '/v1/workflows/not-a-uuid'), 400, 'invalid_request')
    expectProblem(await call('GET', '/v1/workflows/not-a-uuid/audit'), 400, 'invalid_request')
    expectProblem(await call('POST', '/v1/workflows/42/cancel'), 400, 'invalid_request')
    const unknown = '00000000-0000-4000-8000-000000000000'
    expectProblem(await call('GET', `/v1/workflows/${unknown}`), 404, 'not_found')
    expectProblem(await call('GET', `/v1/workflows/${unknown}/audit`), 404, 'not_found')
    expectProblem(await call('POST', `/v1/workflows/${unknown}/cancel`), 404, 'not_found')
    expectProblem(await call('GET', '/v1/workflows?limit=0'), 400, 'invalid_request')
    expectProblem(await call('GET', '/v1/workflows?limit=many'), 400, 'invalid_request')
    expectProblem(await call('GET', '/v1/workflows?status=sleeping'), 400, 'invalid_request')
    expectProblem(await call('GET', '/v1/workflows?cursor=bogus'), 422, 'invalid_input')
    // Cursors forged in the right shape, with a time PostgreSQL cannot read; a NUL in a filter.
    for (const at of ['2024-13-45 99:99:99+00', '2023-02-29 00:00:00+00', '2024-01-01 00:00:00+99']) {
      const forged = Buffer.from(JSON.stringify([at, unknown])).toString('base64url')
      expectProblem(await call('GET', `/v1/workflows?cursor=${forged}`), 422, 'invalid_input')
    }
    expectProblem(await call('GET', '/v1/workflows?type=%00'), 422, 'invalid_input')
    expectProblem(await call('GET', '/v1/nothing-here'), 404, 'not_found')
    // Fastify answers these itself: a broken %-escape, a path parameter over its length limit.
    for (const path of ['/v1/workflows/%', '/v1/workflows/%zz/audit', `/v1/workflows/${'x'.repeat(200)}`]) {
      const answer = await call('GET', path)
      expectProblem(answer, 400, 'invalid_request')
      expect(answer.headers.get('x-request-id')).toBeTruthy()
    }
  })

  it('asks for a key (401) when it is missing or wrong, and refuses a suspended tenant (403)', async () => {
    const missing = await call('GET', '/v1/workflows', { key: null })
    expectProblem(missing, 401, 'unauthorized')
    expect(missing.headers.get('www-authenticate')).toBe('Bearer')
    expectProblem(await call('GET', '/v1/workflows', { key: 'eq_wrong' }), 401, 'unauthorized')
    expectProblem(
      await call('GET', '/v1/workflows', { key: null, headers: { authorization: `Basic ${acmeKey}` } }),
      401,
      'unauthorized',
    )
    const { apiKey } = await engine.createTenant({ id: 'initech' })
    await engine.suspendTenant('initech')
    expectProblem(
      await call('POST', '/v1/workflows', { key: apiKey, body: { type: 'diamond' } }),
      403,
      'tenant_suspended',
    )
  })
})

describe('tenants cannot reach each other', () => {
  it("answers 404 for another tenant's workflow, its audit trail and its cancellation, and changes nothing", async () => {
    const mine = await call('POST', '/v1/workflows', { key: globexKey, body: { type: 'slow' } })
    const id = mine.body.id
    for (const [method, path] of [
      ['GET', `/v1/workflows/${id}`],
      ['GET', `/v1/workflows/${id}/audit`],
      ['POST', `/v1/workflows/${id}/cancel`],
    ] as const) {
      const answer = await call(method, path, { key: acmeKey })
      expectProblem(answer, 404, 'not_found')
      expect(answer.body.detail).toBe(`workflow ${id} not found`)
    }
    const listed = await call('GET', '/v1/workflows?status=running&type=slow', { key: acmeKey })
    expect(listed.body.workflows.map((w: any) => w.id)).not.toContain(id)
    expect((await call('GET', `/v1/workflows/${id}`, { key: globexKey })).body.status).toBe('running')
  })
})

describe('admin API', () => {
  it('needs the admin token; creates, suspends, resumes tenants and rotates their keys', async () => {
    expectProblem(await call('GET', '/v1/admin/tenants', { key: null }), 401, 'unauthorized')
    expectProblem(await call('GET', '/v1/admin/tenants', { key: acmeKey }), 401, 'unauthorized')
    const admin = ADMIN_TOKEN

    const created = await call('POST', '/v1/admin/tenants', {
      key: admin,
      body: { id: 'umbrella', tier: 'enterprise' },
    })
    expect(created.status).toBe(201)
    expect(created.body).toMatchObject({ id: 'umbrella', tier: 'enterprise', apiKey: expect.any(String) })
    const key = created.body.apiKey as string
    expect((await call('GET', '/v1/workflows', { key })).status).toBe(200)

    expectProblem(
      await call('POST', '/v1/admin/tenants', { key: admin, body: { id: 'umbrella' } }),
      409,
      'tenant_exists',
    )
    expectProblem(
      await call('POST', '/v1/admin/tenants', { key: admin, body: { id: 'bad id!' } }),
      422,
      'invalid_tenant_id',
    )
    for (const name of ['nul \u0000 byte', 'lone \ud800 surrogate']) {
      expectProblem(
        await call('POST', '/v1/admin/tenants', { key: admin, body: { id: 'odd-name', name } }),
        422,
        'invalid_input',
      )
    }
    expectProblem(
      await call('POST', '/v1/admin/tenants', {
        key: admin,
        body: { id: 'x', complianceProfile: { HIPPA: {} } },
      }),
      422,
      'invalid_input',
    )
    const listed = await call('GET', '/v1/admin/tenants', { key: admin })
    expect(listed.body.tenants.map((t: any) => t.id)).toEqual(
      expect.arrayContaining(['acme', 'globex', 'umbrella']),
    )

    expect((await call('POST', '/v1/admin/tenants/umbrella/suspend', { key: admin })).body).toEqual({
      id: 'umbrella',
      status: 'suspended',
    })
    expectProblem(await call('GET', '/v1/workflows', { key }), 403, 'tenant_suspended')
    await call('POST', '/v1/admin/tenants/umbrella/resume', { key: admin })
    expect((await call('GET', '/v1/workflows', { key })).status).toBe(200)

    const rotated = await call('POST', '/v1/admin/tenants/umbrella/rotate-key', { key: admin })
    expect(rotated.status).toBe(200)
    expectProblem(await call('GET', '/v1/workflows', { key }), 401, 'unauthorized')
    expect((await call('GET', '/v1/workflows', { key: rotated.body.apiKey })).status).toBe(200)

    expectProblem(
      await call('POST', '/v1/admin/tenants/nobody/suspend', { key: admin }),
      404,
      'unknown_tenant',
    )
  })

  it('is disabled (503) when no admin token is configured', async () => {
    const closed = await startWeb(engine, { port: 0, host: '127.0.0.1', adminToken: undefined })
    try {
      const res = await fetch(`${closed.url}/v1/admin/tenants`, {
        headers: { authorization: 'Bearer anything' },
      })
      expect(res.status).toBe(503)
      expect(await res.json()).toMatchObject({ code: 'admin_disabled' })
    } finally {
      await closed.close()
    }
  })
})

describe('operations endpoints', () => {
  it('reports health, readiness, metrics and the OpenAPI document that is committed', async () => {
    expect(await call('GET', '/healthz', { key: null })).toMatchObject({
      status: 200,
      body: { status: 'ok' },
    })
    expect(await call('GET', '/readyz', { key: null })).toMatchObject({
      status: 200,
      body: { ready: true, database: 'ok', migrations: 'current' },
    })
    const metrics = await call('GET', '/metrics', { key: null })
    expect(metrics.status).toBe(200)
    expect(metrics.headers.get('content-type')).toMatch(/^text\/plain/)
    expect(metrics.body).toContain('process_cpu_user_seconds_total')

    const served = (await call('GET', '/openapi.json', { key: null })).body
    const committed = JSON.parse(await readFile(new URL('../../openapi.json', import.meta.url), 'utf8'))
    expect(served).toEqual(committed)
    expect(Object.keys(served.paths).sort()).toEqual([
      '/healthz',
      '/readyz',
      '/v1/admin/tenants',
      '/v1/admin/tenants/{id}/budgets',
      '/v1/admin/tenants/{id}/budgets/{dimension}',
      '/v1/admin/tenants/{id}/resume',
      '/v1/admin/tenants/{id}/rotate-key',
      '/v1/admin/tenants/{id}/suspend',
      '/v1/budgets',
      '/v1/dead-letters',
      '/v1/dead-letters/redrive',
      '/v1/events',
      '/v1/stats',
      '/v1/usage',
      '/v1/workflows',
      '/v1/workflows/{id}',
      '/v1/workflows/{id}/approvals/{name}',
      '/v1/workflows/{id}/attempts',
      '/v1/workflows/{id}/audit',
      '/v1/workflows/{id}/cancel',
      '/v1/workflows/{id}/events',
      '/v1/workflows/{id}/replay',
      '/v1/workflows/{id}/retry',
      '/v1/workflows/{id}/tasks/{key}',
    ])
  })

  it('is not ready (503) on a database that is not migrated or does not answer', async () => {
    const empty = await createTestDatabase({ migrated: false })
    const quiet = pino({ level: 'silent' })
    const engines = [
      new Engine({ connectionString: empty.url, log: quiet, config: { databaseRole: '' } }),
      new Engine({ connectionString: 'postgres://nobody@127.0.0.1:1/none', log: quiet }),
    ]
    try {
      const [unmigrated, down] = await Promise.all(engines.map((e) => e.readiness(1000)))
      expect(unmigrated).toMatchObject({ ready: false, database: 'ok', migrations: 'pending' })
      expect(down).toMatchObject({ ready: false, database: 'unreachable' })
    } finally {
      for (const e of engines) await e.close()
      await empty.drop()
    }
  })
})

describe('analytics over HTTP', () => {
  it("gives a tenant its own figures, the admin every tenant's, and refuses a bad window", async () => {
    const mine = await call('GET', '/v1/workflows?type=diamond&limit=200')
    const stats = await call('GET', '/v1/stats')
    expect(stats.status).toBe(200)
    const diamond = stats.body.workflows.find((w: any) => w.type === 'diamond')
    expect(diamond.executions).toBe(mine.body.workflows.length)
    expect(diamond.completed).toBe(mine.body.workflows.filter((w: any) => w.status === 'completed').length)
    expect(stats.body.agents.map((a: any) => a.agent)).toEqual(expect.arrayContaining(['double', 'sum']))
    expect(stats.body).not.toHaveProperty('tenants')

    const admin = await call('GET', '/v1/stats', { key: ADMIN_TOKEN })
    expect(admin.status).toBe(200)
    expect(admin.body.tenants.map((t: any) => t.tenantId)).toEqual(expect.arrayContaining(['acme', 'globex']))
    const totals = admin.body.totals.workflows.find((w: any) => w.type === 'diamond')
    const perTenant = admin.body.tenants.flatMap((t: any) =>
      t.workflows.filter((w: any) => w.type === 'diamond'),
    )
    expect(totals.executions).toBe(perTenant.reduce((n: number, w: any) => n + w.executions, 0))

    const future = new Date(Date.now() + 3600_000).toISOString()
    const empty = await call('GET', '/v1/stats?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z')
    expect(empty.body).toMatchObject({ workflows: [], agents: [] })
    expectProblem(await call('GET', '/v1/stats?since=yesterday'), 400, 'invalid_request')
    expectProblem(
      await call(
        'GET',
        `/v1/stats?since=${encodeURIComponent(future)}&until=${encodeURIComponent(new Date().toISOString())}`,
      ),
      422,
      'invalid_input',
    )
    expectProblem(await call('GET', '/v1/stats', { key: 'eq_wrong' }), 401, 'unauthorized')
  })
})
