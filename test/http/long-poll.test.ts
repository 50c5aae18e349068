// The HTTP side of awaited results and typed inputs: `GET /v1/workflows/:id?wait=` answers when the
// workflow ends or at the bound, and a start with an input its type's schema refuses is a 422
// naming the path. The OpenAPI document publishes each type's input schema.
import { afterAll, describe, expect, it } from 'vitest'
import { z } from 'zod'
import { defineAgent, defineWorkflow, type Json } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const gates = new Map<string, (v: Json) => void>()
const gate = defineAgent({
  id: 'poll-gate',
  handler: (ctx) =>
    new Promise<Json>((resolve, reject) => {
      gates.set(ctx.workflowId, resolve)
      ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))
    }),
})
const held = defineWorkflow({ name: 'held', tasks: [{ key: 'gate', agent: gate }] })
const signup = defineWorkflow({
  name: 'signup',
  input: z.object({ user: z.object({ email: z.email() }) }),
  tasks: [{ key: 'gate', agent: gate }],
})

const { engine } = await testEngine({
  agents: [gate],
  workflows: [held, signup],
  // No fallback re-read while LISTEN is up: a long-poll that ends before its bound was woken.
  config: { resultRecheckMs: 2_000_000_000 },
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
afterAll(() => web.close())
const acmeKey = (await engine.createTenant({ id: 'acme' })).apiKey
const globexKey = (await engine.createTenant({ id: 'globex' })).apiKey

async function call(method: string, path: string, body?: unknown, key = acmeKey, signal?: AbortSignal) {
  const res = await fetch(`${web.url}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    ...(signal ? { signal } : {}),
  })
  return { status: res.status, type: res.headers.get('content-type'), body: (await res.json()) as any }
}

async function start(type = 'held', input: unknown = null): Promise<string> {
  const started = await call('POST', '/v1/workflows', { type, input })
  expect(started.status).toBe(201)
  return started.body.id
}

const gateOf = (id: string) => eventually(() => gates.get(id), 20_000, 25, `the gate of ${id}`)

describe('GET /v1/workflows/:id?wait=', () => {
  // Bounded well under the 60 s wait: only the workflow's end can answer this request in time.
  it('answers with the finished workflow as soon as it ends', { timeout: 20_000 }, async () => {
    const id = await start()
    const open = await gateOf(id)
    const answer = call('GET', `/v1/workflows/${id}?wait=60s`)
    await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
    open({ ok: true })
    const { status, body } = await answer
    expect(status).toBe(200)
    expect(body).toMatchObject({ id, status: 'completed', output: { gate: { ok: true } } })
  })

  it('answers with the current state at the bound', async () => {
    const id = await start()
    const open = await gateOf(id)
    const { status, body } = await call('GET', `/v1/workflows/${id}?wait=200ms`)
    expect(status).toBe(200)
    expect(body).toMatchObject({ id, status: 'running' })
    expect(engine.resultWaiters).toBe(0)
    open(null)
  })

  it("is a 404 for another tenant's workflow, and a 400 for a wait over the bound", async () => {
    const id = await start()
    const foreign = await call('GET', `/v1/workflows/${id}?wait=30s`, undefined, globexKey)
    expect(foreign).toMatchObject({ status: 404, type: expect.stringMatching(/problem\+json/) })
    expect(foreign.body.code).toBe('not_found')
    const long = await call('GET', `/v1/workflows/${id}?wait=61s`)
    expect(long).toMatchObject({ status: 400, body: { code: 'invalid_request', path: 'querystring.wait' } })
    const bad = await call('GET', `/v1/workflows/${id}?wait=soon`)
    expect(bad).toMatchObject({ status: 400, body: { code: 'invalid_request' } })
    ;(await gateOf(id))(null)
  })

  it('frees its wait when the client disconnects', async () => {
    const id = await start()
    const open = await gateOf(id)
    const client = new AbortController()
    const answer = call('GET', `/v1/workflows/${id}?wait=60s`, undefined, acmeKey, client.signal)
    await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
    client.abort()
    await expect(answer).rejects.toThrow()
    await eventually(() => (engine.resultWaiters === 0 ? true : undefined))
    expect((await call('GET', `/v1/workflows/${id}`)).body.status).toBe('running')
    open(null)
  })
})

describe('typed inputs over HTTP', () => {
  it('refuses an input the type refuses with a 422 naming the path', async () => {
    const refused = await call('POST', '/v1/workflows', { type: 'signup', input: { user: { email: 'x' } } })
    expect(refused).toMatchObject({
      status: 422,
      type: expect.stringMatching(/problem\+json/),
      body: { code: 'invalid_input', path: '$.input.user.email' },
    })
    const id = await start('signup', { user: { email: 'ann@example.com' } })
    ;(await gateOf(id))(null)
  })

  it("publishes each type's input schema in the OpenAPI document", async () => {
    const doc = (await fetch(`${web.url}/openapi.json`).then((r) => r.json())) as any
    const start = doc.paths['/v1/workflows'].post.requestBody.content['application/json'].schema
    expect(start.oneOf).toContainEqual({ $ref: '#/components/schemas/StartWorkflow.signup' })
    expect(start.oneOf).toContainEqual(
      expect.objectContaining({
        properties: expect.objectContaining({ type: expect.objectContaining({ enum: ['held'] }) }),
      }),
    )
    expect(doc.components.schemas['StartWorkflow.signup'].properties).toMatchObject({
      type: { const: 'signup' },
      input: {
        type: 'object',
        required: ['user'],
        properties: { user: { properties: { email: { type: 'string', format: 'email' } } } },
      },
    })
  })
})

describe('shutting down', () => {
  it(
    'answers the long-polls in flight with the current state instead of holding the shutdown',
    { timeout: 20_000 },
    async () => {
      const second = await startWeb(engine, { port: 0, host: '127.0.0.1' })
      const id = await start()
      const open = await gateOf(id)
      const answer = fetch(`${second.url}/v1/workflows/${id}?wait=60s`, {
        headers: { authorization: `Bearer ${acmeKey}` },
      })
      await eventually(() => (engine.resultWaiters === 1 ? true : undefined))
      await second.close()
      const res = await answer
      expect(res.status).toBe(200)
      expect(await res.json()).toMatchObject({ id, status: 'running' })
      expect(engine.resultWaiters).toBe(0)
      open(null)
    },
  )
})
