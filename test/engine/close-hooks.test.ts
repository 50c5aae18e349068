// Agents' close hooks (defineAgent({ close })): engine.close() runs each once, after its workers
// stopped (a running agent finished or was released past the grace period); a hook that throws is
// logged, one that does not finish is left behind after SHUTDOWN_GRACE_MS, and close() goes on.
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const lines: Record<string, unknown>[] = []
const sink = new Writable({
  write(chunk: Buffer, _encoding, done) {
    for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line))
    done()
  },
})

const events: string[] = []
// Runs until its signal aborts: the worker releases it when the grace period is over.
const busy = defineAgent({
  id: 'busy',
  handler: async (ctx) => {
    events.push('busy started')
    await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve))
    events.push('busy aborted')
    return null
  },
  close: () => {
    events.push('busy closed')
  },
})
// Two versions of one agent sharing a client: its close runs once.
const closeShared = async () => {
  events.push('shared closed')
}
const sharedV1 = defineAgent({ id: 'shared', handler: async () => null, close: closeShared })
const sharedV2 = defineAgent({ id: 'shared', version: 2, handler: async () => null, close: closeShared })
const broken = defineAgent({
  id: 'broken',
  handler: async () => null,
  close: async () => {
    throw new Error('could not close the client')
  },
})
const stuck = defineAgent({ id: 'stuck', handler: async () => null, close: () => new Promise(() => {}) })
const flow = defineWorkflow({ name: 'busy', tasks: [{ key: 'x', agent: busy }] })

const GRACE_MS = 300
const { engine } = await testEngine({
  agents: [busy, sharedV1, sharedV2, broken, stuck],
  workflows: [flow],
  log: pino({ level: 'info' }, sink),
  config: { shutdownGraceMs: GRACE_MS },
})
await engine.startWorker()
await engine.createTenant({ id: 'acme' })

describe('engine.close()', () => {
  it("runs each agent's close hook once after the workers stopped, logging failures, and returns though a hook never finishes", async () => {
    await (await engine.tenant('acme')).startWorkflow('busy')
    await eventually(() => (events.includes('busy started') ? true : undefined))

    await engine.close()
    expect(events.indexOf('busy closed')).toBeGreaterThan(events.indexOf('busy aborted'))
    expect(events.filter((e) => e === 'shared closed')).toHaveLength(1)
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 50,
        msg: 'agent close hook failed',
        agents: ['broken'],
        err: expect.objectContaining({ message: 'could not close the client' }),
      }),
    )
    expect(lines).toContainEqual(
      expect.objectContaining({ level: 40, agents: ['stuck'], timeoutMs: GRACE_MS }),
    )

    // A second close (the harness closes the engine again after the file) runs no hook again.
    const before = events.length
    await engine.close()
    expect(events.length).toBe(before)
  })
})
