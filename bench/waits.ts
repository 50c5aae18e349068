// What waiting costs (issue 11), on one server and one worker process:
//  1. Event delivery: the sendEvent call's latency, and from the delivery's commit to the dependent
//     task's completion (both on the database clock: the event_received and task_completed audit
//     rows), for W workflows whose first task waits for an event.
//  2. The cron scheduler: one pass that starts S due schedules of one tenant, and an idle pass (no
//     schedule due) over T tenants: what the fleet pays each SCHEDULER_INTERVAL_MS.
//  3. Four engines standing for four worker processes, each running startScheduler (1 s interval)
//     for 10 s over those T tenants: how many ticks took the pass, and how many skipped it.
// Usage: DATABASE_URL=<admin url> node bench/waits.ts [workflows=300] [schedules=1000] [tenants=1000]
import { pino } from 'pino'
import { createEngine, defineAgent, defineWorkflow, migrate } from '../src/index.ts'
import { percentiles, scratchDatabase } from './lib/stats.ts'

const adminUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const W = Number(process.argv[2] ?? 300)
const S = Number(process.argv[3] ?? 1000)
const T = Number(process.argv[4] ?? 1000)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const noop = defineAgent({ id: 'bench-after', handler: async () => null })
const gated = defineWorkflow({
  name: 'gated',
  tasks: [
    { key: 'scan', event: { name: 'scan.completed' } },
    { key: 'after', agent: noop, dependsOn: ['scan'] },
  ],
})
const tick = defineWorkflow({ name: 'tick', tasks: [{ key: 'after', agent: noop }] })

const db = await scratchDatabase(adminUrl, `eq_bench_waits_${process.pid}`)
try {
  await migrate(db.url)
  const engine = await createEngine({
    connectionString: db.url,
    agents: [noop],
    workflows: [gated, tick],
    log: pino({ level: 'warn' }),
    supervise: false,
    config: { workerConcurrency: 16, dbPoolMax: 20, schedulerIntervalMs: 0 },
  })
  try {
    await engine.createTenant({ id: 'acme' })
    const acme = await engine.tenant('acme')
    await engine.startWorker()

    // 1. Events.
    const ids: string[] = []
    for (let i = 0; i < W; i++) ids.push((await acme.startWorkflow('gated', { i })).id)
    for (;;) {
      const waiting = await Promise.all(ids.map(async (id) => (await acme.getWorkflow(id)).tasks))
      if (waiting.every((tasks) => tasks.some((t) => t.key === 'scan' && t.status === 'waiting'))) break
      await sleep(50)
    }
    const callMs: number[] = []
    for (const [i, id] of ids.entries()) {
      const t0 = performance.now()
      await acme.sendEvent(id, { eventId: `scan-${i}`, name: 'scan.completed', payload: { findings: 0 } })
      callMs.push(performance.now() - t0)
    }
    const dispatchMs: number[] = []
    for (const id of ids) {
      for (;;) {
        const wf = await acme.getWorkflow(id)
        if (wf.status === 'completed') break
        if (wf.status !== 'running') throw new Error(`workflow ${id} ended ${wf.status}`)
        await sleep(20)
      }
      const trail = await acme.history(id)
      const received = trail.find((e) => e.action === 'event_received')
      const done = trail.findLast((e) => e.action === 'task_completed')
      if (!received || !done) throw new Error(`workflow ${id}: no event or completion in its audit trail`)
      dispatchMs.push(done.at.getTime() - received.at.getTime())
    }

    // 2. Schedules: S due in one tenant, then an idle pass over T tenants.
    for (let i = 0; i < S; i++) {
      await acme.putSchedule({ id: `s${i}`, workflowType: 'tick', cron: '* * * * *', input: { i } })
    }
    const later = new Date(Date.now() + 61_000) // every schedule's next slot is due, on time
    let t0 = performance.now()
    const due = await engine.runSchedules({ now: later })
    const duePassMs = performance.now() - t0
    for (let i = 1; i < T; i++) await engine.createTenant({ id: `t${i}` })
    t0 = performance.now()
    const idle = await engine.runSchedules({ now: later })
    const idlePassMs = performance.now() - t0

    // 3. Four processes' schedulers, 10 s.
    const fleet = await Promise.all(
      Array.from({ length: 4 }, () =>
        createEngine({
          connectionString: db.url,
          agents: [noop],
          workflows: [gated, tick],
          log: pino({ level: 'warn' }),
          supervise: false,
          config: { schedulerIntervalMs: 1000 },
        }),
      ),
    )
    const passes = { ran: 0, skipped: 0 }
    try {
      for (const e of fleet) await e.startScheduler()
      await sleep(10_000)
    } finally {
      await Promise.all(fleet.map((e) => e.close()))
    }
    for (const e of fleet) {
      for (const v of (await e.metrics.schedulerPasses.get()).values)
        passes[v.labels.outcome as 'ran' | 'skipped'] += v.value
    }

    const round = (v: number) => Math.round(v * 10) / 10
    console.log(
      JSON.stringify(
        {
          events: {
            workflows: W,
            sendEventMs: percentiles(callMs),
            eventToDependentCompletedMs: percentiles(dispatchMs),
          },
          scheduler: {
            duePass: { schedules: due.schedules, started: due.started, ms: round(duePassMs) },
            idlePass: { tenants: idle.tenants, started: idle.started, ms: round(idlePassMs) },
            idleMsPerTenant: round(idlePassMs / idle.tenants),
            fourProcessesTenSeconds: passes,
          },
        },
        null,
        2,
      ),
    )
  } finally {
    await engine.close()
  }
} finally {
  await db.drop()
}
