// Retry, replay and dead letters over HTTP (issue 23), in each isolation mode, against the real
// server on an ephemeral port and a real worker: the answers' shapes (what the console relies on),
// the problems (409 for a workflow that is not failed or cancelled, 422 for an unknown task), and
// another tenant's key getting 404 and changing nothing. In row-level mode, SQL as the application
// role scoped to the other tenant can neither see nor change the first tenant's request keys.
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { errorCode } from '../helpers/errors.ts'
import { enterTenant, tenantSecret } from '../helpers/tenant-context.ts'

/** Inputs (`{ cause }`) whose `ops-fragile` task fails for good until fixed (removed from here). */
const broken = new Set<string>()
const calls = new Map<string, number>()
const step = defineAgent({
  id: 'ops-step',
  handler: async (ctx) => {
    calls.set(`${ctx.workflowId}/${ctx.taskKey}`, (calls.get(`${ctx.workflowId}/${ctx.taskKey}`) ?? 0) + 1)
    return { step: ctx.taskKey }
  },
})
const fragile = defineAgent({
  id: 'ops-fragile',
  handler: async (ctx) => {
    calls.set(`${ctx.workflowId}/${ctx.taskKey}`, (calls.get(`${ctx.workflowId}/${ctx.taskKey}`) ?? 0) + 1)
    if (broken.has((ctx.input as { cause: string }).cause)) throw new PermanentError('upstream down')
    return { fixed: true }
  },
})
const flow = defineWorkflow({
  name: 'ops-flow',
  tasks: [
    { key: 'fetch', agent: step },
    { key: 'call', agent: fragile, dependsOn: ['fetch'] },
    { key: 'store', agent: step, dependsOn: ['call'] },
  ],
})

const MODES: IsolationMode[] = ['row-level', 'schema-per-tenant', 'database-per-tenant']
const setups = await Promise.all(
  MODES.map(async (mode) => {
    const { engine, db } = await testEngine({
      agents: [step, fragile],
      workflows: [flow],
      config: { isolationMode: mode },
    })
    await engine.startWorker()
    const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
    afterAll(() => web.close())
    const keys = {
      acme: (await engine.createTenant({ id: 'acme' })).apiKey,
      globex: (await engine.createTenant({ id: 'globex' })).apiKey,
    }
    return { mode, engine, db, web, keys }
  }),
)

let causes = 0

describe.each(setups)('operations over HTTP with $mode', ({ mode, engine, web, keys }) => {
  const call = async (method: string, path: string, body?: unknown, key = keys.acme) => {
    const res = await fetch(`${web.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${key}`,
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    })
    return { status: res.status, type: res.headers.get('content-type'), body: (await res.json()) as any }
  }
  const failed = async () => {
    const cause = `${mode}-${++causes}`
    broken.add(cause)
    const started = await call('POST', '/v1/workflows', { type: 'ops-flow', input: { cause } })
    expect(started.status).toBe(201)
    const wf = await settled(engine, 'acme', started.body.id)
    expect(wf.status).toBe('failed')
    return { id: started.body.id as string, fix: () => broken.delete(cause) }
  }
  const counts = (id: string) => ['fetch', 'call', 'store'].map((k) => calls.get(`${id}/${k}`) ?? 0)

  it('retries a failed workflow: 200 with the retry, the same answer for the same request key, 409 once it runs', async () => {
    const { id, fix } = await failed()
    // Another tenant's key: not found, and nothing changes.
    const intruder = await call('POST', `/v1/workflows/${id}/retry`, {}, keys.globex)
    expect(intruder.status).toBe(404)
    expect(intruder.body.code).toBe('not_found')
    expect((await call('GET', `/v1/workflows/${id}`)).body.status).toBe('failed')

    fix()
    const retried = await call('POST', `/v1/workflows/${id}/retry`, {
      requestKey: 'r-1',
      actor: 'console:ann',
    })
    expect(retried).toMatchObject({ status: 200, body: { id, status: 'running', previousStatus: 'failed' } })
    expect(retried.body).toEqual({
      id,
      status: 'running',
      previousStatus: 'failed',
      tasksRetried: 2,
      tasksQueued: 1,
    })
    const again = await call('POST', `/v1/workflows/${id}/retry`, { requestKey: 'r-1', actor: 'console:ann' })
    expect(again).toMatchObject({ status: 200, body: retried.body })
    const done = await settled(engine, 'acme', id)
    expect(done.status).toBe('completed')
    expect(counts(id)).toEqual([1, 2, 1])

    const refused = await call('POST', `/v1/workflows/${id}/retry`)
    expect(refused.status).toBe(409)
    expect(refused.type).toContain('application/problem+json')
    expect(refused.body.code).toBe('workflow_not_retryable')
    const audit = (await call('GET', `/v1/workflows/${id}/audit`)).body.entries as {
      action: string
      actor: string
    }[]
    expect(audit.filter((e) => e.action === 'workflow_retried').map((e) => e.actor)).toEqual(['console:ann'])
    // An unknown body field is refused, not ignored.
    const bad = await call('POST', `/v1/workflows/${id}/retry`, { nope: 1 })
    expect(bad.status).toBe(400)
  })

  it('replays from a task: 201 with the new workflow, 422 for an unknown task, 404 for another tenant', async () => {
    const { id, fix } = await failed()
    fix()
    expect((await call('POST', `/v1/workflows/${id}/replay`, { from: 'call' }, keys.globex)).status).toBe(404)
    const unknown = await call('POST', `/v1/workflows/${id}/replay`, { from: 'nope' })
    expect(unknown.status).toBe(422)
    expect(unknown.body.code).toBe('unknown_task')
    expect((await call('POST', `/v1/workflows/${id}/replay`, {})).status).toBe(400)

    const replay = await call('POST', `/v1/workflows/${id}/replay`, { from: 'call', requestKey: 'p-1' })
    expect(replay.status).toBe(201)
    expect(replay.body).toEqual({
      id: expect.any(String),
      status: 'running',
      replayOf: id,
      from: 'call',
      type: 'ops-flow',
      version: 1,
      rerun: ['call', 'store'],
      reused: ['fetch'],
    })
    const same = await call('POST', `/v1/workflows/${id}/replay`, { from: 'call', requestKey: 'p-1' })
    expect(same.body).toEqual(replay.body)
    const wf = await settled(engine, 'acme', replay.body.id)
    expect(wf.status).toBe('completed')
    expect(counts(replay.body.id)).toEqual([0, 1, 1])
    const view = await call('GET', `/v1/workflows/${replay.body.id}`)
    expect(view.body.replayOf).toBe(id)
    expect((await call('GET', `/v1/workflows/${replay.body.id}`, undefined, keys.globex)).status).toBe(404)
  })

  it('lists dead letters and redrives them: each runs once; another tenant sees none and redrives none', async () => {
    const first = await failed()
    const second = await failed()
    const listed = await call('GET', '/v1/dead-letters?agent=ops-fragile&limit=200')
    expect(listed.status).toBe(200)
    const mine = (listed.body.deadLetters as { workflowId: string }[]).filter((d) =>
      [first.id, second.id].includes(d.workflowId),
    )
    expect(mine).toHaveLength(2)
    expect(mine[0]).toEqual({
      taskId: expect.any(String),
      workflowId: expect.any(String),
      workflowType: 'ops-flow',
      taskKey: 'call',
      agent: 'ops-fragile',
      attempt: 1,
      failures: 1,
      error: expect.objectContaining({ message: 'upstream down' }),
      failedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    })
    expect(listed.body.nextCursor).toBeNull()
    const page = await call('GET', '/v1/dead-letters?limit=1')
    expect(page.body.deadLetters).toHaveLength(1)
    const next = await call('GET', `/v1/dead-letters?limit=1&cursor=${page.body.nextCursor}`)
    expect(next.status).toBe(200)
    expect(next.body.deadLetters[0].taskId).not.toBe(page.body.deadLetters[0].taskId)
    expect((await call('GET', '/v1/dead-letters?cursor=forged')).status).toBe(422)

    const theirs = await call('GET', '/v1/dead-letters', undefined, keys.globex)
    expect(theirs.body).toEqual({ deadLetters: [], nextCursor: null })
    const taskId = (mine[0] as unknown as { taskId: string }).taskId
    const stolen = await call('POST', '/v1/dead-letters/redrive', { taskId }, keys.globex)
    expect(stolen.status).toBe(404)
    expect(
      (await call('POST', '/v1/dead-letters/redrive', { agent: 'ops-fragile' }, keys.globex)).body,
    ).toEqual({
      redriven: [],
      workflowsRetried: 0,
      more: false,
    })
    expect((await call('POST', '/v1/dead-letters/redrive', {})).status).toBe(400)
    expect((await call('POST', '/v1/dead-letters/redrive', { taskId, agent: 'ops-fragile' })).status).toBe(
      400,
    )

    broken.clear()
    const one = await call('POST', '/v1/dead-letters/redrive', { taskId, actor: 'console:ann' })
    expect(one.body).toEqual({
      redriven: [{ taskId, workflowId: expect.any(String) }],
      workflowsRetried: 1,
      more: false,
    })
    const rest = await call('POST', '/v1/dead-letters/redrive', {
      agent: 'ops-fragile',
      actor: 'console:ann',
    })
    expect(rest.status).toBe(200)
    expect((rest.body.redriven as { taskId: string }[]).map((r) => r.taskId)).not.toContain(taskId)
    for (const { id } of [first, second]) {
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      expect(counts(id)).toEqual([1, 2, 1])
    }
    expect((await call('POST', '/v1/dead-letters/redrive', { agent: 'ops-fragile' })).body.redriven).toEqual(
      [],
    )
  })
})

describe('request keys in row-level mode', () => {
  const { engine, db, web, keys } = setups[0]!
  const call = (path: string, body: unknown) =>
    fetch(`${web.url}${path}`, {
      method: 'POST',
      headers: { authorization: `Bearer ${keys.acme}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }))
  const failed = async () => {
    const cause = `row-level-keys-${++causes}`
    broken.add(cause)
    const started = await call('/v1/workflows', { type: 'ops-flow', input: { cause } })
    await settled(engine, 'acme', started.body.id)
    return { id: started.body.id as string, fix: () => broken.delete(cause) }
  }
  it('keeps request keys per tenant: SQL as the app role scoped to another tenant sees and changes none of them', async () => {
    const { id, fix } = await failed()
    fix()
    await call(`/v1/workflows/${id}/retry`, { requestKey: 'secret-key' })
    await settled(engine, 'acme', id)
    const secret = await tenantSecret(db.url)
    const app = new pg.Client({ connectionString: db.appUrl })
    await app.connect()
    try {
      const asGlobex = async <T>(fn: () => Promise<T>) => {
        await app.query('BEGIN')
        try {
          await enterTenant(app, secret, 'globex')
          return await fn()
        } finally {
          await app.query('ROLLBACK')
        }
      }
      expect(
        await asGlobex(
          async () =>
            (await app.query('SELECT count(*)::int AS n FROM equilateral.workflow_requests')).rows[0].n,
        ),
      ).toBe(0)
      expect(
        await asGlobex(
          async () =>
            (await app.query(`UPDATE equilateral.workflows SET status = 'failed' WHERE id = $1`, [id]))
              .rowCount,
        ),
      ).toBe(0)
      expect(
        await asGlobex(() =>
          errorCode(
            app.query(
              `INSERT INTO equilateral.workflow_requests (tenant_id, request_key, operation, target, result)
                 VALUES ('acme', 'forged', 'retry', $1, '{}')`,
              [id],
            ),
          ),
        ),
      ).toBe('42501')
      // Acme's own scope sees its key.
      await app.query('BEGIN')
      await enterTenant(app, secret, 'acme')
      const own = await app.query('SELECT request_key FROM equilateral.workflow_requests')
      await app.query('ROLLBACK')
      expect(own.rows.map((r) => r.request_key)).toContain('secret-key')
    } finally {
      await app.end()
    }
  })
})
