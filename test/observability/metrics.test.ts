// Metrics move as the work does: a run of workflows (completions, a retry, a permanent failure, a
// cancellation) is scraped from the web process's /metrics and from a worker's metrics listener,
// and the counters and histogram counts change by exactly what happened. promtool accepts the
// exposition; no tenant id appears in it unless asked for.
import { afterAll, describe, expect, it } from 'vitest'
import { pino } from 'pino'
import { defineAgent, defineWorkflow, Engine, PermanentError } from '../../src/index.ts'
import { Metrics } from '../../src/metrics.ts'
import { startMetricsServer } from '../../src/metrics-server.ts'
import { startWeb } from '../../src/web/server.ts'
import { heldAgent } from '../fixtures/workflows.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { hasPromtool, parseExposition, promtool, sample } from '../helpers/prometheus.ts'
import { inCi } from '../helpers/tools.ts'

const flakyAttempts = new Map<string, number>()

const ok = defineAgent({ id: 'ok', handler: async () => ({ fine: true }) })
const flaky = defineAgent({
  id: 'flaky',
  handler: async (ctx) => {
    const n = (flakyAttempts.get(ctx.taskId) ?? 0) + 1
    flakyAttempts.set(ctx.taskId, n)
    if (n === 1) throw new Error('transient')
    return null
  },
})
const broken = defineAgent({
  id: 'broken',
  handler: async () => {
    throw new PermanentError('cannot do this')
  },
})
const blocked = heldAgent('blocked')
const diamond = defineWorkflow({
  name: 'diamond',
  tasks: [
    { key: 'a', agent: ok },
    { key: 'b', agent: ok, dependsOn: ['a'] },
    { key: 'c', agent: ok, dependsOn: ['a'] },
    { key: 'd', agent: ok, dependsOn: ['b', 'c'] },
  ],
})
const retried = defineWorkflow({
  name: 'retried',
  tasks: [{ key: 'x', agent: flaky, maxAttempts: 3, backoffMs: 10, backoffMaxMs: 10 }],
})
const doomed = defineWorkflow({
  name: 'doomed',
  tasks: [
    { key: 'x', agent: broken },
    { key: 'after', agent: ok, dependsOn: ['x'] },
  ],
})
const waiting = defineWorkflow({ name: 'waiting', tasks: [{ key: 'x', agent: blocked.agent }] })

const { engine } = await testEngine({
  agents: [ok, flaky, broken, blocked.agent],
  workflows: [diamond, retried, doomed, waiting],
})
await engine.startWorker()
const web = await startWeb(engine, { port: 0, host: '127.0.0.1' })
const listener = await startMetricsServer(engine.metrics, { port: 0, host: '127.0.0.1' })
if (!listener) throw new Error('port 0 is never in use: the listener must start')
afterAll(async () => {
  blocked.release()
  await listener.close()
  await web.close()
})
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

async function scrape(url = `${web.url}/metrics`): Promise<{ text: string; s: Map<string, number> }> {
  const res = await fetch(url)
  expect(res.status).toBe(200)
  const text = await res.text()
  return { text, s: parseExposition(text) }
}

describe('metrics', () => {
  it('count tasks, retries, failures, dead letters and workflows by agent, type and outcome', async () => {
    const before = (await scrape()).s
    const delta = (after: Map<string, number>, name: string, labels: Record<string, string>) =>
      sample(after, name, labels) - sample(before, name, labels)

    const ids = []
    for (let i = 0; i < 2; i++) ids.push((await acme.startWorkflow('diamond')).id)
    ids.push((await acme.startWorkflow('retried')).id)
    ids.push((await acme.startWorkflow('doomed')).id)
    for (const id of ids) await settled(engine, 'acme', id)
    const held = await acme.startWorkflow('waiting')
    await eventually(async () =>
      (await acme.getWorkflow(held.id)).tasks[0]?.status === 'running' ? true : undefined,
    )
    await acme.cancelWorkflow(held.id)

    const after = await eventually(async () => {
      const s = (await scrape()).s
      // The cancelled agent's attempt ends (lease_lost) just after the cancellation commits.
      return delta(s, 'equilateral_tasks_finished_total', { agent: 'blocked', outcome: 'lease_lost' }) === 1
        ? s
        : undefined
    })
    const d = (name: string, labels: Record<string, string>) => delta(after, name, labels)

    expect(d('equilateral_tasks_started_total', { agent: 'ok' })).toBe(8)
    expect(d('equilateral_tasks_finished_total', { agent: 'ok', outcome: 'completed' })).toBe(8)
    expect(d('equilateral_tasks_started_total', { agent: 'flaky' })).toBe(2)
    expect(d('equilateral_tasks_finished_total', { agent: 'flaky', outcome: 'retrying' })).toBe(1)
    expect(d('equilateral_tasks_finished_total', { agent: 'flaky', outcome: 'completed' })).toBe(1)
    expect(d('equilateral_tasks_finished_total', { agent: 'broken', outcome: 'failed' })).toBe(1)
    expect(d('equilateral_tasks_dead_lettered_total', { agent: 'broken' })).toBe(1)

    expect(d('equilateral_task_run_duration_seconds_count', { agent: 'ok' })).toBe(8)
    expect(d('equilateral_task_dispatch_latency_seconds_count', { agent: 'ok' })).toBe(8)
    expect(d('equilateral_task_queue_wait_seconds_count', { agent: 'flaky' })).toBe(2)
    // Every dispatch of the diamonds took under 60 s: all of them are in the top finite bucket.
    expect(d('equilateral_task_dispatch_latency_seconds_bucket', { agent: 'ok', le: '60' })).toBe(8)

    expect(d('equilateral_workflows_started_total', { type: 'diamond' })).toBe(2)
    expect(d('equilateral_workflows_finished_total', { type: 'diamond', status: 'completed' })).toBe(2)
    expect(d('equilateral_workflows_finished_total', { type: 'retried', status: 'completed' })).toBe(1)
    expect(d('equilateral_workflows_finished_total', { type: 'doomed', status: 'failed' })).toBe(1)
    expect(d('equilateral_workflows_finished_total', { type: 'waiting', status: 'cancelled' })).toBe(1)
    expect(d('equilateral_workflow_duration_seconds_count', { type: 'diamond', status: 'completed' })).toBe(2)
    expect(d('equilateral_workflow_duration_seconds_count', { type: 'doomed', status: 'failed' })).toBe(1)
  })

  it('expose queue depths, pool connections and process metrics, on web and on the worker listener', async () => {
    for (const url of [`${web.url}/metrics`, `http://127.0.0.1:${listener.port}/metrics`]) {
      const { text, s } = await scrape(url)
      for (const queue of ['eq.ok', 'eq.flaky', 'eq/dead-letter']) {
        for (const state of ['queued', 'deferred', 'active', 'failed']) {
          expect(text, `${queue} ${state}`).toContain(
            `equilateral_queue_jobs{queue="${queue}",state="${state}"}`,
          )
        }
      }
      expect(text).toContain('equilateral_queue_oldest_ready_job_age_seconds{queue="eq.ok"}')
      expect(sample(s, 'equilateral_db_pool_connections', { pool: 'app', state: 'waiting' })).toBe(0)
      expect(text).toContain('equilateral_db_pool_connections{pool="app",state="in_use"}')
      expect(sample(s, 'process_resident_memory_bytes')).toBeGreaterThan(0)
    }
    expect((await fetch(`http://127.0.0.1:${listener.port}/other`)).status).toBe(404)
  })

  it('show every known agent and workflow type at zero before anything ran', async () => {
    const approval = defineWorkflow({
      name: 'approved',
      tasks: [
        { key: 'ok', approval: { approvers: ['ana'] } },
        { key: 'then', agent: ok, dependsOn: ['ok'] },
      ],
    })
    const fresh = new Engine({
      connectionString: 'postgres://127.0.0.1:1/unused',
      agents: [ok, broken],
      workflows: [doomed, approval],
      log: pino({ level: 'silent' }),
    })
    try {
      const s = parseExposition((await fresh.metrics.expose()).body)
      for (const outcome of ['completed', 'retrying', 'failed', 'lease_lost', 'released'])
        expect(s.get(`equilateral_tasks_finished_total{agent="broken",outcome="${outcome}"}`)).toBe(0)
      expect(s.get('equilateral_tasks_started_total{agent="ok"}')).toBe(0)
      expect(s.get('equilateral_tasks_dead_lettered_total{agent="broken"}')).toBe(0)
      expect(s.get('equilateral_task_dispatch_latency_seconds_count{agent="ok"}')).toBe(0)
      expect(s.get('equilateral_workflows_started_total{type="approved"}')).toBe(0)
      expect(s.get('equilateral_workflows_finished_total{type="doomed",status="cancelled"}')).toBe(0)
      expect(s.get('equilateral_sweeper_recovered_tasks_total{action="lost"}')).toBe(0)
      // Wait tasks have no agent to chart.
      expect([...s.keys()].filter((k) => k.includes('agent="@'))).toEqual([])
    } finally {
      await fresh.close()
    }
  })

  it('carry no tenant label unless asked for', async () => {
    const { text } = await scrape()
    expect(text).not.toMatch(/tenant="/)
    const labelled = new Metrics({ tenantLabel: true })
    labelled.tasksStarted.inc(labelled.withTenant({ agent: 'ok' }, 'acme'))
    expect((await labelled.expose()).body).toContain(
      'equilateral_tasks_started_total{agent="ok",tenant="acme"} 1',
    )
  })

  it.skipIf(!hasPromtool() && !inCi)('pass `promtool check metrics`', async () => {
    expect(hasPromtool(), 'promtool is missing: apt-get install prometheus').toBe(true)
    const { text } = await scrape()
    const checked = promtool(['check', 'metrics'], text)
    expect(checked.output).toBe('')
    expect(checked.status).toBe(0)
  })
})
