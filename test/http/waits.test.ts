// Events and approvals over HTTP, against the real server on an ephemeral port and a real worker:
// an approval decided through the API (approve: the workflow deploys; reject: it fails with the
// reason), an event that arrives before its task waits (202, kept) and is consumed later, retried
// deliveries answered as duplicates with one audit row, another tenant's key refused with 404 and
// nothing written, and bad bodies refused as problem+json that names the field.
import { readFileSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, type Json } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { agents, workflows } from '../../workers/registry.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const example = JSON.parse(
  readFileSync(new URL('../../examples/deploy-feature.json', import.meta.url), 'utf8'),
) as Json

// A gate the test opens: `prepare` does not end until then, so `scan` cannot wait before it.
let openGate: () => void = () => {}
const gate = new Promise<void>((r) => (openGate = r))
const prepare = defineAgent({
  id: 'prepare-step',
  handler: async (ctx) => {
    await Promise.race([gate, new Promise((r) => ctx.signal.addEventListener('abort', r))])
    return { prepared: true }
  },
})
const report = defineAgent({ id: 'report-step', handler: async (ctx) => ({ saw: ctx.results }) })
const scanFlow = defineWorkflow<{ repo: string }>({
  name: 'scan-and-report',
  tasks: [
    { key: 'prepare', agent: prepare },
    { key: 'scan', event: { name: 'scan.completed', match: (i) => i.repo }, dependsOn: ['prepare'] },
    { key: 'report', agent: report, dependsOn: ['scan'] },
  ],
})
const quickScan = defineWorkflow({
  name: 'quick-scan',
  tasks: [
    { key: 'scan', event: { name: 'scan.completed' } },
    { key: 'report', agent: report, dependsOn: ['scan'] },
  ],
})
const guarded = defineWorkflow({
  name: 'guarded',
  tasks: [{ key: 'ok', approval: { approvers: ['alice', 'bob'] } }],
})

const MAX_PAYLOAD_BYTES = 8192
const { engine, db } = await testEngine({
  agents: [...agents, prepare, report],
  workflows: [...workflows, scanFlow, quickScan, guarded],
  config: { maxPayloadBytes: MAX_PAYLOAD_BYTES },
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
afterAll(async () => {
  openGate()
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
  options: { key?: string; body?: unknown; raw?: string; contentType?: string } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${options.key ?? acmeKey}` }
  let body: string | undefined
  if (options.raw !== undefined || options.body !== undefined) {
    headers['content-type'] = options.contentType ?? 'application/json'
    body = options.raw ?? JSON.stringify(options.body)
  }
  const res = await fetch(`${web.url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) })
  const text = await res.text()
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined }
}

function expectProblem(answer: Answer, status: number, code: string, path?: string) {
  expect({ status: answer.status, code: answer.body?.code }).toEqual({ status, code })
  expect(answer.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  expect(answer.body).toMatchObject({ status, title: expect.any(String), ...(path ? { path } : {}) })
}

async function start(type: string, input: Json): Promise<string> {
  const started = await call('POST', '/v1/workflows', { body: { type, input } })
  expect(started.status).toBe(201)
  return started.body.id
}

const workflow = async (id: string, key = acmeKey) => (await call('GET', `/v1/workflows/${id}`, { key })).body
const audit = async (id: string): Promise<any[]> =>
  (await call('GET', `/v1/workflows/${id}/audit`)).body.entries
const task = async (id: string, key: string) => (await workflow(id)).tasks.find((t: any) => t.key === key)

async function waitingFor(id: string, key: string): Promise<any> {
  return eventually(
    async () => {
      const t = await task(id, key)
      return t?.status === 'waiting' ? t : undefined
    },
    20_000,
    25,
    `task ${key} waiting`,
  )
}

async function ended(id: string): Promise<any> {
  return eventually(async () => {
    const wf = await workflow(id)
    return wf.status === 'running' ? undefined : wf
  })
}

async function storedEvents(id: string): Promise<number> {
  const rows = await queryOnce(db.url, 'SELECT 1 FROM equilateral.workflow_events WHERE workflow_id = $1', [
    id,
  ])
  return rows.length
}

describe('approvals over HTTP: deploy-feature-approved', () => {
  it('shows what the task waits for; an approval deploys, recorded with the approver', async () => {
    const id = await start('deploy-feature-approved', example)
    const release = await waitingFor(id, 'release')
    // The view says what to decide and until when (the declared one-day timeout).
    expect(release.wait).toEqual({ type: 'approval', name: 'release', deadline: expect.any(String) })
    const day = Date.parse(release.wait.deadline) - Date.parse(release.startedAt)
    expect(day).toBe(24 * 3600_000)
    expect((await task(id, 'deploy')).status).toBe('pending')

    const decided = await call('POST', `/v1/workflows/${id}/approvals/release`, {
      body: { approved: true, approver: 'release-manager@acme.test', comment: 'scan and tests are clean' },
    })
    expect(decided.status).toBe(200)
    expect(decided.body).toEqual({
      eventId: 'release:release-manager@acme.test:approved',
      status: 'consumed',
      taskId: release.id,
      taskStatus: 'completed',
    })

    const wf = await ended(id)
    expect(wf.status).toBe('completed')
    expect(wf.output.deploy).toMatchObject({ service: 'storefront-text', environment: 'staging' })
    expect(wf.tasks.find((t: any) => t.key === 'release').result).toEqual({
      approved: true,
      approver: 'release-manager@acme.test',
      comment: 'scan and tests are clean',
    })
    const decisions = (await audit(id)).filter((e) => e.action === 'approval_decided')
    expect(decisions).toEqual([
      expect.objectContaining({
        taskId: release.id,
        actor: 'release-manager@acme.test',
        data: {
          eventId: 'release:release-manager@acme.test:approved',
          name: 'release',
          approved: true,
          consumed: true,
        },
      }),
    ])
  })

  it("fails the workflow with the approver's reason on a rejection, and never deploys", async () => {
    const id = await start('deploy-feature-approved', example)
    await waitingFor(id, 'release')
    const decided = await call('POST', `/v1/workflows/${id}/approvals/release`, {
      body: { approved: false, approver: 'cto', comment: 'code freeze until Monday' },
    })
    expect(decided.status).toBe(200)
    expect(decided.body).toMatchObject({ status: 'consumed', taskStatus: 'failed' })

    const wf = await ended(id)
    expect(wf.status).toBe('failed')
    expect(wf.error).toMatchObject({
      error: {
        code: 'approval_rejected',
        message: 'approval "release" rejected by cto: code freeze until Monday',
      },
    })
    expect(wf.tasks.find((t: any) => t.key === 'deploy').status).toBe('skipped')
    expect((await audit(id)).filter((e) => e.action === 'approval_decided')).toEqual([
      expect.objectContaining({ actor: 'cto', data: expect.objectContaining({ approved: false }) }),
    ])

    // The workflow has ended: a later decision is a conflict with its state, and writes nothing.
    const before = await audit(id)
    const late = await call('POST', `/v1/workflows/${id}/approvals/release`, {
      body: { approved: true, approver: 'ceo' },
    })
    expectProblem(late, 409, 'workflow_not_running')
    expect(await audit(id)).toEqual(before)
  })

  it('takes decisions only from the named approvers (403), and refuses approvals nothing waits for (409)', async () => {
    const id = await start('guarded', null)
    await waitingFor(id, 'ok')
    const before = await audit(id)
    expectProblem(
      await call('POST', `/v1/workflows/${id}/approvals/ok`, {
        body: { approved: true, approver: 'mallory' },
      }),
      403,
      'not_an_approver',
    )
    expectProblem(
      await call('POST', `/v1/workflows/${id}/approvals/release`, {
        body: { approved: true, approver: 'bob' },
      }),
      409,
      'no_such_wait',
    )
    expectProblem(
      await call('POST', `/v1/workflows/${id}/events`, { body: { eventId: 'e1', name: 'ok' } }),
      409,
      'no_such_wait',
    )
    expect(await audit(id)).toEqual(before)
    expect(await storedEvents(id)).toBe(0)
    expect((await task(id, 'ok')).status).toBe('waiting')

    const decided = await call('POST', `/v1/workflows/${id}/approvals/ok`, {
      body: { approved: true, approver: 'bob', eventId: 'ticket-42' },
    })
    expect(decided.status).toBe(200)
    expect(decided.body).toMatchObject({ eventId: 'ticket-42', status: 'consumed' })
    expect((await ended(id)).status).toBe('completed')
  })
})

describe('events over HTTP', () => {
  it('keeps an event that arrives before its task waits (202), and consumes it when the task waits', async () => {
    const id = await start('scan-and-report', { repo: 'storefront' })
    await eventually(async () => ((await task(id, 'prepare')).status === 'running' ? true : undefined))
    const early = await call('POST', `/v1/workflows/${id}/events`, {
      body: {
        eventId: 'scan-1',
        name: 'scan.completed',
        key: 'storefront',
        payload: { findings: 0 },
        actor: 'scanner-webhook',
      },
    })
    expect(early.status).toBe(202)
    expect(early.body).toMatchObject({ eventId: 'scan-1', status: 'kept', taskStatus: 'pending' })
    expect((await task(id, 'scan')).status).toBe('pending')

    openGate()
    const wf = await ended(id)
    expect(wf.status).toBe('completed')
    expect(wf.output.report).toEqual({ saw: { scan: { findings: 0 } } })
    const received = (await audit(id)).filter((e) => e.action === 'event_received')
    expect(received).toEqual([
      expect.objectContaining({
        actor: 'scanner-webhook',
        data: { eventId: 'scan-1', name: 'scan.completed', key: 'storefront', consumed: false },
      }),
    ])
    // The webhook retries after the task consumed it: still a success, and nothing is written.
    const retried = await call('POST', `/v1/workflows/${id}/events`, {
      body: {
        eventId: 'scan-1',
        name: 'scan.completed',
        key: 'storefront',
        payload: { findings: 0 },
        actor: 'scanner-webhook',
      },
    })
    expect(retried.status).toBe(200)
    expect(retried.body).toMatchObject({ status: 'duplicate', taskStatus: 'completed' })
  })

  it('answers retried deliveries as duplicates with one audit row, and refuses the same id with other contents', async () => {
    const id = await start('quick-scan', null)
    const scan = await waitingFor(id, 'scan')
    expect(scan.wait).toEqual({ type: 'event', name: 'scan.completed', deadline: null })
    const event = { eventId: 'scan-7', name: 'scan.completed', payload: { findings: 2 } }
    // Five deliveries at once, as a retrying webhook might send them; no actor: recorded as `api`.
    const answers = await Promise.all(
      Array.from({ length: 5 }, () => call('POST', `/v1/workflows/${id}/events`, { body: event })),
    )
    expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200])
    expect(answers.map((a) => a.body.status).sort()).toEqual([
      'consumed',
      'duplicate',
      'duplicate',
      'duplicate',
      'duplicate',
    ])
    expect(new Set(answers.map((a) => a.body.taskId))).toEqual(new Set([scan.id]))

    const wf = await ended(id)
    expect(wf.status).toBe('completed')
    expect(wf.output.report).toEqual({ saw: { scan: { findings: 2 } } })
    const conflict = await call('POST', `/v1/workflows/${id}/events`, {
      body: { ...event, payload: { findings: 3 } },
    })
    expectProblem(conflict, 409, 'event_conflict')
    const entries = await audit(id)
    expect(entries.filter((e) => e.action === 'event_received')).toEqual([
      expect.objectContaining({
        taskId: scan.id,
        actor: 'api',
        data: { eventId: 'scan-7', name: 'scan.completed', consumed: true },
      }),
    ])
    expect(entries.filter((e) => e.action === 'task_completed' && e.taskId === scan.id)).toHaveLength(1)
    expect(await storedEvents(id)).toBe(1)
  })
})

describe('tenant scoping and bad requests', () => {
  it("gives another tenant's key 404 for both routes and writes nothing", async () => {
    const id = await start('guarded', null)
    await waitingFor(id, 'ok')
    const before = await audit(id)
    const asGlobex = { key: globexKey }
    expectProblem(
      await call('POST', `/v1/workflows/${id}/approvals/ok`, {
        ...asGlobex,
        body: { approved: true, approver: 'alice' },
      }),
      404,
      'not_found',
    )
    expectProblem(
      await call('POST', `/v1/workflows/${id}/events`, {
        ...asGlobex,
        body: { eventId: 'x', name: 'ok', payload: 1 },
      }),
      404,
      'not_found',
    )
    // The same answer as for a workflow that does not exist: ids do not leak across tenants.
    const unknown = await call('POST', `/v1/workflows/${crypto.randomUUID()}/approvals/ok`, {
      body: { approved: true, approver: 'alice' },
    })
    expectProblem(unknown, 404, 'not_found')
    expect(await audit(id)).toEqual(before)
    expect(await storedEvents(id)).toBe(0)
    expect((await task(id, 'ok')).status).toBe('waiting')
    expect((await call('GET', `/v1/workflows/${id}`, asGlobex)).status).toBe(404)
  })

  it('refuses bad bodies and values with problem+json naming the field, and writes nothing', async () => {
    const id = await start('guarded', null)
    await waitingFor(id, 'ok')
    const before = await audit(id)
    const approval = `/v1/workflows/${id}/approvals/ok`
    const events = `/v1/workflows/${id}/events`
    const refusals: [Answer, number, string, string?][] = [
      [await call('POST', approval, { body: { approver: 'alice' } }), 400, 'invalid_request', '$.approved'],
      [
        await call('POST', approval, { body: { approved: 'yes', approver: 'alice' } }),
        400,
        'invalid_request',
        '$.approved',
      ],
      [await call('POST', approval, { body: { approved: true } }), 400, 'invalid_request', '$.approver'],
      [
        await call('POST', approval, { body: { approved: true, approver: '' } }),
        400,
        'invalid_request',
        '$.approver',
      ],
      [
        await call('POST', approval, {
          body: { approved: true, approver: 'alice', comment: 'x'.repeat(2001) },
        }),
        400,
        'invalid_request',
        '$.comment',
      ],
      [
        await call('POST', approval, { body: { approved: true, approver: 'alice', aproved: true } }),
        400,
        'invalid_request',
        '$.aproved',
      ],
      [await call('POST', approval, { body: [true] }), 400, 'invalid_request', '$'],
      [await call('POST', approval, { raw: '{"approved":tru' }), 400, 'invalid_json'],
      [
        await call('POST', approval, { raw: 'approved', contentType: 'text/plain' }),
        415,
        'unsupported_media_type',
      ],
      [
        await call('POST', `/v1/workflows/${id}/approvals/${'x'.repeat(201)}`, {
          body: { approved: true, approver: 'alice' },
        }),
        400,
        'invalid_request',
        'params.name',
      ],
      [
        await call('POST', '/v1/workflows/not-a-uuid/approvals/ok', {
          body: { approved: true, approver: 'alice' },
        }),
        400,
        'invalid_request',
        'params.id',
      ],
      [await call('POST', events, { body: { name: 'ok' } }), 400, 'invalid_request', '$.eventId'],
      [
        await call('POST', events, { body: { eventId: 'e', name: 'x'.repeat(201) } }),
        400,
        'invalid_request',
        '$.name',
      ],
      [
        await call('POST', events, { body: { eventId: 'e', name: 'ok', key: { repo: 'x' } } }),
        400,
        'invalid_request',
        '$.key',
      ],
      [await call('POST', events, {}), 400, 'invalid_request', '$'],
      // Valid JSON the database cannot store, and payloads past the payload limit: the library's
      // invalid_input, with the JSON path it names.
      [
        await call('POST', events, { body: { eventId: 'e', name: 'ok\u0000' } }),
        422,
        'invalid_input',
        '$.name',
      ],
      [
        await call('POST', events, {
          body: { eventId: 'e', name: 'ok', payload: { blob: 'x'.repeat(MAX_PAYLOAD_BYTES) } },
        }),
        422,
        'invalid_input',
        '$.payload',
      ],
      [
        await call('POST', events, {
          body: { eventId: 'e', name: 'ok', payload: 'x'.repeat(MAX_PAYLOAD_BYTES + 128 * 1024) },
        }),
        413,
        'payload_too_large',
      ],
    ]
    for (const [i, [answer, status, code, path]] of refusals.entries()) {
      // The index names the refusal that failed; `path` is exactly the field (absent when none).
      const got = { refusal: i, status: answer.status, code: answer.body?.code, path: answer.body?.path }
      expect(got).toEqual({ refusal: i, status, code, path })
      expectProblem(answer, status, code)
    }
    expect(await audit(id)).toEqual(before)
    expect(await storedEvents(id)).toBe(0)
    expect((await task(id, 'ok')).status).toBe('waiting')
  })
})
