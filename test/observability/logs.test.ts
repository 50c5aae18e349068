// Logs an on-call engineer can follow: every line about a task carries the tenant, workflow, task,
// agent, attempt and correlation ids (the HTTP request id for a workflow started over HTTP), and at
// the default level no payload (input, task data, result) appears anywhere, since it may be
// personal data.
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { startWeb } from '../../src/web/server.ts'
import { settled, testEngine } from '../helpers/engine.ts'

const SECRET = 'Jane Doe, 4111-1111-1111-1111'
const lines: Record<string, unknown>[] = []
const sink = new Writable({
  write(chunk: Buffer, _encoding, done) {
    for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line))
    done()
  },
})

let failedOnce = false
const reader = defineAgent({
  id: 'reader',
  handler: async (ctx) => {
    ctx.log.info({ step: 'read' }, 'agent reading its input')
    return { echoed: ctx.input }
  },
})
const shaky = defineAgent({
  id: 'shaky',
  handler: async (ctx) => {
    if (!failedOnce) {
      failedOnce = true
      throw new Error('upstream timed out')
    }
    return { total: ctx.results.read ?? null }
  },
})
const flow = defineWorkflow({
  name: 'private',
  tasks: [
    { key: 'read', agent: reader, data: (input) => ({ copy: input }) },
    { key: 'sum', agent: shaky, dependsOn: ['read'], backoffMs: 10, backoffMaxMs: 10 },
  ],
})

const { engine } = await testEngine({
  agents: [reader, shaky],
  workflows: [flow],
  log: pino({ level: 'info' }, sink),
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
afterAll(() => web.close())
const { apiKey } = await engine.createTenant({ id: 'acme' })

describe('logs', () => {
  it('carry every id on task lines, use the request id as correlation id, and never a payload', async () => {
    const res = await fetch(`${web.url}/v1/workflows`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${apiKey}`,
        'content-type': 'application/json',
        'x-request-id': 'req-777',
      },
      body: JSON.stringify({ type: 'private', input: { customer: SECRET } }),
    })
    const { id } = (await res.json()) as { id: string }
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const tasks = Object.fromEntries(wf.tasks.map((t) => [t.key, t]))

    const agentLine = lines.find((l) => l.msg === 'agent reading its input')
    expect(agentLine).toMatchObject({
      level: 30,
      tenant: 'acme',
      workflow: id,
      task: tasks.read!.id,
      agent: 'reader',
      attempt: 1,
      correlation: 'req-777',
      step: 'read',
    })
    const failure = lines.find((l) => l.msg === 'task attempt failed')
    expect(failure).toMatchObject({
      tenant: 'acme',
      workflow: id,
      task: tasks.sum!.id,
      agent: 'shaky',
      attempt: 1,
      correlation: 'req-777',
    })
    // The request's own log lines carry the same id.
    expect(lines.some((l) => l.reqId === 'req-777')).toBe(true)

    const all = lines.map((l) => JSON.stringify(l)).join('\n')
    expect(all).not.toContain('Jane Doe')
    // The card number whole: its first digits alone turn up in timestamps (…154111).
    expect(all).not.toContain('4111-1111')
  })
})
