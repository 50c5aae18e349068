// One fetch loop serves all of a worker's agents (src/flow/worker.ts, FETCH_ACROSS): each agent
// keeps its own concurrency limit, and a queue full of one agent's work does not hold back the
// others'.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'

let running = 0
let most = 0
const releases: (() => void)[] = []
const started: string[] = []
// At most two at once in a worker, however many slots the worker has.
const slow = defineAgent({
  id: 'slow',
  concurrency: 2,
  handler: async (ctx) => {
    started.push(`slow:${ctx.workflowId}`)
    running++
    most = Math.max(most, running)
    await new Promise<void>((resolve) => releases.push(resolve))
    running--
    return null
  },
})
const quick = defineAgent({
  id: 'quick',
  handler: async (ctx) => {
    started.push(`quick:${ctx.workflowId}`)
    return null
  },
})
const heavy = defineWorkflow({ name: 'heavy', tasks: [{ key: 's', agent: slow }] })
const light = defineWorkflow({ name: 'light', tasks: [{ key: 'q', agent: quick }] })

const { engine } = await testEngine({ agents: [slow, quick], workflows: [heavy, light] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

describe('a worker serving several agents', () => {
  it('keeps each agent within its limit and runs the others beside it', async () => {
    // Six slow tasks queued first, then three quick ones, all before the worker starts.
    const heavies = []
    for (let i = 0; i < 6; i++) heavies.push((await acme.startWorkflow('heavy')).id)
    const lights = []
    for (let i = 0; i < 3; i++) lights.push((await acme.startWorkflow('light')).id)
    const worker = await engine.startWorker({ agents: [slow, quick], concurrency: 8 })
    try {
      // The quick tasks all run while the slow agent sits at its limit of two.
      for (const id of lights) expect((await settled(engine, 'acme', id)).status).toBe('completed')
      expect(running).toBe(2)
      expect(started.filter((s) => s.startsWith('slow:'))).toHaveLength(2)
      // Released one at a time, the rest follow, never more than two at once.
      const done = Promise.all(heavies.map((id) => settled(engine, 'acme', id)))
      const release = setInterval(() => releases.shift()?.(), 10)
      try {
        for (const wf of await done) expect(wf.status).toBe('completed')
      } finally {
        clearInterval(release)
      }
      expect(most).toBe(2)
      expect(started.filter((s) => s.startsWith('slow:'))).toHaveLength(6)
    } finally {
      for (const r of releases.splice(0)) r()
      await worker.stop()
    }
  })
})
