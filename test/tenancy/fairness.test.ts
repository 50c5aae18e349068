// Fairness between tenants: a per-tenant limit of active tasks (pg-boss group concurrency, one group
// per tenant, limits by tier) keeps one tenant's burst from holding back another tenant's task.
//
// Measured in task starts, not in milliseconds (timings belong to bench/fairness.ts): K is the number
// of tenant A's tasks that start between tenant B's enqueue and the start of B's single task.
//
// The bound, with A's limit N: K <= 2N. At B's commit at most N of A's jobs are already fetched or
// being fetched (A never has more than N active jobs on the queue). Any later fetch that finds A at
// its limit skips all of A's jobs and returns B's; one that finds A below it returns A's jobs before
// B's (they are older), but only as many as A has free slots, and a slot frees only when one of A's
// tasks finishes. A task takes TASK_MS, far longer than the few fetches it takes to reach B's job, so
// each of A's N slots frees at most once in that time: at most N more of A's tasks start first.
//
// B's enqueue is taken while A is frozen at its cap: every running A task waits on a gate, so no slot
// of A frees (and none of A's tasks starts) while B's start call is under way, however long a busy
// machine makes that call; the gate opens once B's workflow is committed. Counting from the call
// instead would count A's starts during the call, which grow with the machine's load, not the bound.
//
// The control runs the same flood without limits and shows the assertion can fail: B's job waits
// behind the whole backlog that A queued before it.
import type { GroupConcurrencyConfig } from 'pg-boss'
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

const FLOOD_TASKS = 600
const TASK_MS = 50
const WORKER_CONCURRENCY = 24
const LIMITS: GroupConcurrencyConfig = { default: 4, tiers: { enterprise: 12 } }
const STANDARD = LIMITS.default
const ENTERPRISE = 12

interface Stats {
  started: number
  running: number
  peak: number
}
const stats = new Map<string, Stats>()
const statsOf = (tenant: string): Stats => {
  let s = stats.get(tenant)
  if (!s) stats.set(tenant, (s = { started: 0, running: 0, peak: 0 }))
  return s
}
let onStart: ((tenant: string) => void) | undefined
// While set, each task waits for it before it finishes (counted in `frozen`).
let gate: Promise<void> | undefined
let frozen = 0

// Counts, per tenant, the agents running at this moment (one worker runs them all) and the peak.
const work = defineAgent({
  id: 'work',
  handler: async (ctx) => {
    const s = statsOf(ctx.tenantId)
    s.started++
    s.running++
    s.peak = Math.max(s.peak, s.running)
    onStart?.(ctx.tenantId)
    try {
      await new Promise((r) => setTimeout(r, TASK_MS))
      if (gate) {
        frozen++
        await gate.finally(() => frozen--)
      }
    } finally {
      s.running--
    }
    return null
  },
})
// One start queues FLOOD_TASKS jobs at once, all older than anything queued after it.
const flood = defineWorkflow({
  name: 'flood',
  tasks: Array.from({ length: FLOOD_TASKS }, (_, i) => ({ key: `t${i}`, agent: work })),
})
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: work }] })

/** A fresh engine with tenants a (standard), b (standard) and e (enterprise), and one worker. */
async function setup(tenantConcurrency: GroupConcurrencyConfig | undefined) {
  stats.clear()
  onStart = undefined
  gate = undefined
  frozen = 0
  const { engine, db } = await testEngine({
    agents: [work],
    workflows: [flood, single],
    config: {
      tenantConcurrency,
      workerConcurrency: WORKER_CONCURRENCY,
      fetchBatchSize: 16,
      // Never poll: a fetch that finds every waiting tenant at its limit comes back empty, and only a
      // finished task (or a NOTIFY) may set the loop going again, or tenants would stall here.
      pollIntervalMs: 60_000,
    },
  })
  await engine.createTenant({ id: 'a', tier: 'standard' })
  await engine.createTenant({ id: 'b', tier: 'standard' })
  await engine.createTenant({ id: 'e', tier: 'enterprise' })
  return {
    engine,
    close: async () => {
      await engine.close()
      await db.drop()
    },
  }
}

/**
 * A floods the queue; once its tasks are flowing and frozen at A's cap, B starts one workflow; then A
 * goes on. Counts A's starts between B's enqueue and B's start.
 */
async function floodThenSingle(tenantConcurrency: GroupConcurrencyConfig | undefined, capA: number) {
  const { engine, close } = await setup(tenantConcurrency)
  try {
    await (await engine.tenant('a')).startWorkflow('flood')
    await engine.startWorker()
    await eventually(async () => (statsOf('a').started >= 40 ? true : undefined))
    let aStartedAtBStart = -1
    onStart = (tenant) => {
      if (tenant === 'b') aStartedAtBStart = statsOf('a').started
    }
    let open!: () => void
    gate = new Promise((resolve) => (open = resolve))
    await eventually(async () => (frozen === capA && statsOf('a').running === capA ? true : undefined))
    const aStartedAtEnqueue = statsOf('a').started
    const { id } = await (await engine.tenant('b')).startWorkflow('single')
    gate = undefined
    open()
    expect((await settled(engine, 'b', id)).status).toBe('completed')
    return {
      aStartedAtEnqueue,
      k: aStartedAtBStart - aStartedAtEnqueue,
      peakA: statsOf('a').peak,
    }
  } finally {
    await close()
  }
}

describe('fairness between tenants', () => {
  it("with limits, a flooding tenant starts at most 2N tasks before another tenant's single task", async () => {
    const { k, peakA } = await floodThenSingle(LIMITS, STANDARD)
    // A ran at its limit (so the limit, not the worker, was what held it), never above it.
    expect(peakA).toBe(STANDARD)
    expect(k).toBeGreaterThanOrEqual(0)
    expect(k).toBeLessThanOrEqual(2 * STANDARD)
  })

  it('a tenant of a higher tier gets its higher limit', async () => {
    const { engine, close } = await setup(LIMITS)
    try {
      await (await engine.tenant('a')).startWorkflow('flood')
      await (await engine.tenant('e')).startWorkflow('flood')
      await engine.startWorker()
      await eventually(async () =>
        statsOf('a').started >= 5 * STANDARD && statsOf('e').started >= 5 * ENTERPRISE ? true : undefined,
      )
      expect(statsOf('a').peak).toBe(STANDARD)
      expect(statsOf('e').peak).toBe(ENTERPRISE)
    } finally {
      await close()
    }
  })

  it("control: without limits, the other tenant's task waits behind the flooding tenant's backlog", async () => {
    const { aStartedAtEnqueue, k, peakA } = await floodThenSingle(undefined, WORKER_CONCURRENCY)
    expect(peakA).toBeGreaterThan(STANDARD)
    // Jobs are fetched oldest first: B's job comes after every job A queued before it, so at most a
    // worker's worth of A's jobs (fetched with B's, or being claimed) can start after B's task.
    expect(k).toBeGreaterThanOrEqual(FLOOD_TASKS - aStartedAtEnqueue - WORKER_CONCURRENCY)
    expect(k).toBeGreaterThan(2 * STANDARD)
  })
})
