// The console's read routes and live stream, over HTTP against a real engine: a task's detail with
// its data and result decrypted and its attempts (a failed one, then the one that completed); the
// look-ups by id, correlation id and idempotency key and the time window; and GET /v1/events, fed by
// LISTEN: a completion reaches the stream of its tenant only, a reconnect with Last-Event-ID gets
// what it missed, and nothing is notified while no console watches the tenant.
import http from 'node:http'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { KeyRing } from '../../src/crypto/keyring.ts'
import { PROGRESS_CHANNEL } from '../../src/flow/channels.ts'
import { defineAgent, defineWorkflow, type Json } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

let flaky = 0
const once = defineAgent({
  id: 'flaky-once',
  handler: async (ctx) => {
    if (flaky++ === 0) throw new Error('first attempt fails')
    return { got: ctx.input, done: true }
  },
})
const gates = new Map<string, () => void>()
const held = defineAgent({
  id: 'console-held',
  handler: (ctx) =>
    new Promise<Json>((resolve, reject) => {
      gates.set(ctx.workflowId, () => resolve({ released: true }))
      ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))
    }),
})
const retried = defineWorkflow({
  name: 'retried',
  tasks: [{ key: 'try', agent: once, data: { secret: 'task-data' }, maxAttempts: 3, backoffMs: 10 }],
})
const gated = defineWorkflow({ name: 'gated-run', tasks: [{ key: 'hold', agent: held }] })

const { engine, db } = await testEngine({
  agents: [once, held],
  workflows: [retried, gated],
  config: { encryption: KeyRing.of({ k1: KeyRing.generateKey() }) },
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
afterAll(() => web.close())
const acmeKey = (await engine.createTenant({ id: 'acme' })).apiKey
const globexKey = (await engine.createTenant({ id: 'globex' })).apiKey
const acme = await engine.tenant('acme')
const globex = await engine.tenant('globex')

async function call(path: string, key = acmeKey) {
  const res = await fetch(`${web.url}${path}`, { headers: { authorization: `Bearer ${key}` } })
  return { status: res.status, body: (await res.json()) as any }
}

/**
 * An open event stream: its events as they arrive. Over node:http without an agent, so closing it
 * closes its connection (fetch's pool may keep a spare connection open past the server's close).
 */
async function openStream(key: string, lastEventId?: string) {
  const events: { event: string; id: string | null; data: any }[] = []
  const req = http.get(`${web.url}/v1/events`, {
    agent: false,
    headers: { authorization: `Bearer ${key}`, ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
  })
  const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
    req.on('response', resolve).on('error', reject),
  )
  const ended = new Promise<void>((resolve) => res.on('close', resolve))
  res.setEncoding('utf8')
  let buffer = ''
  res.on('data', (chunk: string) => {
    buffer += chunk
    let end
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      if (block.startsWith(':')) continue
      const e = { event: 'message', id: null as string | null, data: null as any }
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) e.event = line.slice(7)
        else if (line.startsWith('id: ')) e.id = line.slice(4)
        else if (line.startsWith('data: ')) e.data = JSON.parse(line.slice(6))
      }
      events.push(e)
    }
  })
  res.on('error', () => {})
  const close = async () => {
    req.destroy()
    await ended
  }
  return { res, events, close }
}

const progressOf = (events: { event: string; data: any }[]) =>
  events.filter((e) => e.event === 'progress').flatMap((e) => e.data.workflows as string[])

describe('a task in detail', () => {
  it('shows its data and result decrypted, its error, and one attempt per try with its timings', async () => {
    const { id } = await acme.startWorkflow('retried', { n: 1 })
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
    // Stored encrypted: the row holds an envelope, not the values.
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    const stored = await owner.query(
      `SELECT data::text, result::text FROM equilateral.agent_coordination WHERE workflow_id = $1`,
      [id],
    )
    await owner.end()
    expect(stored.rows[0].data).not.toContain('task-data')
    expect(stored.rows[0].result).not.toContain('"done"')

    const { status, body } = await call(`/v1/workflows/${id}/tasks/try`)
    expect(status).toBe(200)
    expect(body.task).toMatchObject({
      key: 'try',
      agent: 'flaky-once',
      status: 'completed',
      attempt: 2,
      failures: 1,
      data: { secret: 'task-data' },
      result: { done: true },
    })
    expect(body.attempts.map((a: any) => [a.attempt, a.outcome])).toEqual([
      [1, 'failed'],
      [2, 'completed'],
    ])
    const [first, second] = body.attempts
    expect(first.error).toMatchObject({ message: 'first attempt fails' })
    for (const a of [first, second]) {
      expect(Date.parse(a.queuedAt)).toBeLessThanOrEqual(Date.parse(a.startedAt))
      expect(Date.parse(a.startedAt)).toBeLessThanOrEqual(Date.parse(a.endedAt))
    }
    // The retry was queued after the first attempt ended (its backoff), not before.
    expect(Date.parse(second.queuedAt)).toBeGreaterThanOrEqual(Date.parse(first.endedAt))

    const timeline = await call(`/v1/workflows/${id}/attempts`)
    expect(timeline.status).toBe(200)
    expect(timeline.body.tasks).toEqual([{ taskId: body.task.id, key: 'try', attempts: body.attempts }])
  })

  it("is not found for another tenant's workflow, or a task key it does not have", async () => {
    const { id } = await acme.startWorkflow('retried', null)
    await settled(engine, 'acme', id)
    for (const path of [`/v1/workflows/${id}/tasks/try`, `/v1/workflows/${id}/attempts`]) {
      const theirs = await call(path, globexKey)
      expect([path, theirs.status, theirs.body.code]).toEqual([path, 404, 'not_found'])
    }
    expect((await call(`/v1/workflows/${id}/tasks/nope`)).status).toBe(404)
    expect((await call(`/v1/workflows/not-a-uuid/tasks/try`)).status).toBe(400)
  })
})

describe('finding workflows', () => {
  it('looks up by id, correlation id and idempotency key, filters by a time window, and never across tenants', async () => {
    const a = await acme.startWorkflow('retried', null, {
      idempotencyKey: 'order-42',
      correlationId: 'corr-7',
    })
    const b = await acme.startWorkflow('retried', null)
    const g = await globex.startWorkflow('retried', null, {
      idempotencyKey: 'order-42',
      correlationId: 'corr-7',
    })
    for (const [t, id] of [
      ['acme', a.id],
      ['acme', b.id],
      ['globex', g.id],
    ] as const)
      await settled(engine, t, id)
    const ids = async (query: string, key = acmeKey) => {
      const { status, body } = await call(`/v1/workflows?${query}`, key)
      expect(status, query).toBe(200)
      return body.workflows.map((w: any) => w.id)
    }
    expect(await ids('idempotencyKey=order-42')).toEqual([a.id])
    expect(await ids('idempotencyKey=order-42', globexKey)).toEqual([g.id])
    expect(await ids('correlationId=corr-7')).toEqual([a.id])
    expect(await ids(`id=${b.id}`)).toEqual([b.id])
    expect(await ids(`id=${g.id}`)).toEqual([])
    expect(await ids('idempotencyKey=nothing-like-it')).toEqual([])

    const created = (await acme.getWorkflow(b.id)).createdAt
    const since = new Date(created.getTime()).toISOString()
    const until = new Date(created.getTime() + 1).toISOString()
    expect(await ids(`since=${since}&until=${until}&type=retried`)).toEqual([b.id])
    expect(await ids(`until=${since}&type=retried`)).not.toContain(b.id)
    const bad = await call('/v1/workflows?since=yesterday')
    expect([bad.status, bad.body.code]).toEqual([400, 'invalid_request'])
  })
})

describe('GET /v1/events', () => {
  it('refuses a request without a valid key', async () => {
    const res = await fetch(`${web.url}/v1/events`)
    expect(res.status).toBe(401)
    await res.body?.cancel()
  })

  it("sends a completion to its tenant's stream only, as it happens, fed by LISTEN", async () => {
    const mine = await openStream(acmeKey)
    const theirs = await openStream(globexKey)
    expect(mine.res.headers['content-type']).toBe('text/event-stream; charset=utf-8')
    await eventually(() => (mine.events.some((e) => e.event === 'ready') ? true : undefined))
    await eventually(() => (theirs.events.some((e) => e.event === 'ready') ? true : undefined))

    const { id } = await acme.startWorkflow('gated-run', null)
    const release = await eventually(() => gates.get(id))
    release()
    await eventually(() => (progressOf(mine.events).includes(id) ? true : undefined))
    // globex's stream got nothing of acme's.
    const other = await globex.startWorkflow('retried', null)
    await eventually(() => (progressOf(theirs.events).includes(other.id) ? true : undefined))
    expect(progressOf(theirs.events)).not.toContain(id)
    expect(JSON.stringify(theirs.events)).not.toContain(id)
    await mine.close()
    await theirs.close()
  })

  it('resumes after a dropped connection: Last-Event-ID gets what was missed; an unknown id, resync', async () => {
    const first = await openStream(acmeKey)
    await eventually(() => (first.events.some((e) => e.event === 'ready') ? true : undefined))
    const lastId = first.events.at(-1)!.id!
    await first.close()
    // While nobody listens (the watcher row lives on), a workflow progresses.
    const { id } = await acme.startWorkflow('gated-run', null)
    ;(await eventually(() => gates.get(id)))()
    await settled(engine, 'acme', id)

    const again = await openStream(acmeKey, lastId)
    await eventually(() => (again.events.some((e) => e.event === 'ready') ? true : undefined))
    expect(progressOf(again.events)).toContain(id)
    expect(again.events.findIndex((e) => e.event === 'ready')).toBeGreaterThan(
      again.events.findIndex((e) => e.event === 'progress'),
    )
    await again.close()

    const stale = await openStream(acmeKey, '00000000.1')
    await eventually(() => (stale.events.some((e) => e.event === 'ready') ? true : undefined))
    expect(stale.events.map((e) => e.event)).toEqual(['resync', 'ready'])
    await stale.close()
  })

  it('notifies nothing while no console watches the tenant (its watcher row expired)', async () => {
    const listener = new pg.Client({ connectionString: db.url })
    await listener.connect()
    const heard: string[] = []
    listener.on('notification', (n) => heard.push(n.payload ?? ''))
    listener.on('error', () => {})
    await listener.query(`LISTEN ${PROGRESS_CHANNEL}`)
    // No stream of globex is open; its row (if any) is expired, as after a minute without one.
    const owner = new pg.Client({ connectionString: db.url })
    await owner.connect()
    await owner.query(`UPDATE equilateral.console_watchers SET expires_at = now() - interval '1 second'`)
    await owner.end()
    const quiet = await globex.startWorkflow('retried', null)
    await settled(engine, 'globex', quiet.id)
    // Once watched, the same kind of workflow is notified.
    const watching = await openStream(globexKey)
    await eventually(() => (watching.events.some((e) => e.event === 'ready') ? true : undefined))
    const loud = await globex.startWorkflow('retried', null)
    await settled(engine, 'globex', loud.id)
    await eventually(() => (heard.some((p) => p.includes(loud.id)) ? true : undefined))
    expect(heard.some((p) => p.includes(quiet.id))).toBe(false)
    expect(heard.map((p) => JSON.parse(p).t)).toEqual(heard.map(() => 'globex'))
    await watching.close()
    await listener.end()
  })
})
