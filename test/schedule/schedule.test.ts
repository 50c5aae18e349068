// Cron-started workflows: one workflow per slot with three schedulers running at once, the
// missed-slot policies after downtime (judged by an explicit clock, and never walking a year of
// missed slots), bad schedules refused before anything is written, tenant isolation, and the audit
// trail naming the schedule that started a workflow.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import {
  createEngine,
  defineAgent,
  defineWorkflow,
  type Engine,
  InvalidInputError,
  isEnvelope,
  KeyRing,
  NotFoundError,
  UnknownWorkflowTypeError,
} from '../../src/index.ts'
import { MISSED_COUNT_CAP, releasePass, takePass } from '../../src/schedule/scheduler.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ got: ctx.input }) })
const report = defineWorkflow<{ region: string }>({
  name: 'report',
  tasks: [{ key: 'build', agent: echo, data: (input) => ({ region: input.region }) }],
})
const ring = KeyRing.of({ k1: KeyRing.generateKey() })
// Its task starts at a time the input names: an input without a usable time cannot start it.
const timed = defineWorkflow<{ at: string }>({
  name: 'timed',
  tasks: [{ key: 'then', agent: echo, startAfter: (input) => input.at }],
})
const definitions = { agents: [echo], workflows: [report, timed] }
const config = { schedulerIntervalMs: 100, encryption: ring }

const { engine, db } = await testEngine({ ...definitions, config })

/** The workflows a tenant's schedule started, by slot, as the owner sees them. */
async function startedBy(tenantId: string, scheduleId: string) {
  const rows = await queryOnce<{ key: string; id: string; actor: string | null }>(
    db.url,
    `SELECT w.idempotency_key AS key, w.id, a.actor
     FROM equilateral.workflows w
     LEFT JOIN equilateral.agent_audit_log a
       ON a.tenant_id = w.tenant_id AND a.workflow_id = w.id AND a.action_type = 'workflow_started'
     WHERE w.tenant_id = $1 AND w.idempotency_key LIKE $2 ORDER BY w.idempotency_key`,
    [tenantId, `schedule:${scheduleId}:%`],
  )
  return rows.map((r) => ({ ...r, slot: r.key.slice(`schedule:${scheduleId}:`.length) }))
}

async function moveBack(tenantId: string, scheduleId: string, nextSlot: Date) {
  await queryOnce(
    db.url,
    `UPDATE equilateral.workflow_schedules SET next_slot = $3, last_slot = $3::timestamptz - interval '5 minutes'
     WHERE tenant_id = $1 AND id = $2`,
    [tenantId, scheduleId, nextSlot],
  )
}

async function tenant(id: string) {
  await engine.createTenant({ id })
  return engine.tenant(id)
}

describe('cron-started workflows', () => {
  it('starts exactly one workflow per slot with three schedulers running at once', async () => {
    // Three processes' worth of schedulers, closed at the end of this test so that the other tests
    // judge their slots by the clock they choose, with no scheduler running behind their backs.
    const schedulers: Engine[] = []
    try {
      await runThree(schedulers)
    } finally {
      await Promise.all(schedulers.map((e) => e.close()))
    }
  })

  async function runThree(schedulers: Engine[]) {
    for (let i = 0; i < 3; i++) {
      schedulers.push(
        await createEngine({
          connectionString: db.appUrl,
          adminConnectionString: db.url,
          ...definitions,
          log: pino({ level: 'silent' }),
          supervise: false,
          config,
        }),
      )
    }
    const acme = await tenant('acme')
    const put = await acme.putSchedule({
      id: 'every-second',
      workflowType: 'report',
      cron: '* * * * * *',
      input: { region: 'eu' },
    })
    expect(put).toMatchObject({ timezone: 'UTC', missed: 'skip', enabled: true, lastSlot: null })
    for (const e of schedulers) await e.startScheduler()

    await eventually(async () => ((await startedBy('acme', 'every-second')).length >= 5 ? true : undefined))
    await acme.putSchedule({
      id: 'every-second',
      workflowType: 'report',
      cron: '* * * * * *',
      input: { region: 'eu' },
      enabled: false,
    })
    const started = await startedBy('acme', 'every-second')
    const slots = started.map((s) => Date.parse(s.slot))
    // The first slot after the schedule was declared, then every second, none twice, none left out.
    expect(slots[0]).toBe(put.nextSlot.getTime())
    slots.forEach((slot, i) => expect(slot - (slots[0] ?? 0)).toBe(i * 1000))
    expect(new Set(started.map((s) => s.id)).size).toBe(started.length)
    for (const s of started) expect(s.actor).toBe('schedule:every-second')
    // The engines' own counts of workflows they started add up to the workflows there are.
    let counted = 0
    for (const e of schedulers) {
      for (const v of (await e.metrics.workflowsStarted.get()).values)
        if (v.labels.type === 'report') counted += v.value
    }
    expect(counted).toBe(started.length)
    // The three took turns: each tick either took the pass over the database or found that another
    // engine had within the interval, so the fleet did not pass over every tenant three times.
    const passes = { ran: 0, skipped: 0 }
    for (const e of schedulers) {
      for (const v of (await e.metrics.schedulerPasses.get()).values)
        passes[v.labels.outcome as 'ran' | 'skipped'] += v.value
    }
    expect(passes.ran).toBeGreaterThan(0)
    expect(passes.skipped).toBeGreaterThan(0)
    const [schedule] = await acme.listSchedules()
    expect(schedule?.lastSlot?.getTime()).toBe(slots[slots.length - 1])
    // The input is encrypted at rest in the schedule, and each workflow gets it.
    const [row] = await queryOnce(
      db.url,
      `SELECT input FROM equilateral.workflow_schedules WHERE tenant_id = 'acme'`,
    )
    expect(isEnvelope(row?.input)).toBe(true)
    expect(schedule?.input).toEqual({ region: 'eu' })
    expect((await acme.getWorkflow(started[0]?.id as string)).input).toEqual({ region: 'eu' })
  }

  it('gives the pass over a database to one process per interval, judged by the database clock', async () => {
    // Two "processes": the engine's application pool and a second one; as the application role.
    const other = new pg.Pool({ connectionString: db.appUrl, max: 1 })
    try {
      expect(await takePass(engine.pool, 'test-pass', 60_000)).toBe(true)
      expect(await takePass(other, 'test-pass', 60_000)).toBe(false)
      expect(await takePass(engine.pool, 'test-pass', 60_000)).toBe(false)
      // Another pass name is a turn of its own.
      expect(await takePass(other, 'test-pass-2', 60_000)).toBe(true)
      // A minute later on the database's clock, the next taker has it, once.
      await queryOnce(
        db.url,
        `UPDATE equilateral.fleet_passes SET last_at = last_at - interval '61 seconds' WHERE pass = 'test-pass'`,
      )
      const takes = await Promise.all([
        takePass(other, 'test-pass', 60_000),
        takePass(engine.pool, 'test-pass', 60_000),
      ])
      expect(takes.filter(Boolean)).toHaveLength(1)
      // A process that left schedules of types it does not know hands the pass back at once.
      await releasePass(engine.pool, 'test-pass')
      expect(await takePass(other, 'test-pass', 60_000)).toBe(true)
      expect(await takePass(engine.pool, 'test-pass', 60_000)).toBe(false)
    } finally {
      await other.end()
    }
  })

  it('starts each due slot once when many passes race for the same slots', async () => {
    const burst = await tenant('burst')
    const { nextSlot } = await burst.putSchedule({
      id: 'burst',
      workflowType: 'report',
      cron: '* * * * * *',
      input: { region: 'us' },
    })
    // Ten slots due at once (within the grace), fifteen passes over them at the same time.
    const now = new Date(nextSlot.getTime() + 9000)
    const reports = await Promise.all(
      Array.from({ length: 15 }, () => engine.runSchedules({ now }, [burst.scope])),
    )
    expect(reports.reduce((n, r) => n + r.started, 0)).toBe(10)
    expect(await startedBy('burst', 'burst')).toHaveLength(10)
    // Run again at the same instant: nothing is due any more.
    expect((await engine.runSchedules({ now }, [burst.scope])).started).toBe(0)
  })

  it('starts the slot of a local time that DST skips, on time or caught up, once', async () => {
    const dst = await tenant('dst')
    for (const missed of ['skip', 'catch-up-once'] as const) {
      await dst.putSchedule({
        id: missed,
        workflowType: 'report',
        cron: '30 2 * * *',
        timezone: 'America/New_York',
        input: { region: missed },
        missed,
      })
    }
    // 02:30 does not exist in New York on 2024-03-10: that day's slot is 03:30 EDT, 07:30Z.
    const slot = new Date('2024-03-10T07:30:00Z')
    await moveBack('dst', 'skip', slot)
    const onTime = await engine.runSchedules({ now: new Date(slot.getTime() + 5000) }, [dst.scope])
    expect(onTime).toMatchObject({ schedules: 1, started: 1, problems: [] })
    expect((await startedBy('dst', 'skip')).map((s) => s.slot)).toEqual([slot.toISOString()])
    // Missed by two hours, catch-up-once still starts it, for that slot.
    await moveBack('dst', 'catch-up-once', slot)
    const late = await engine.runSchedules({ now: new Date(slot.getTime() + 7_200_000) }, [dst.scope])
    expect(late).toMatchObject({ schedules: 1, started: 1, caughtUp: 1, skipped: 0 })
    expect((await startedBy('dst', 'catch-up-once')).map((s) => s.slot)).toEqual([slot.toISOString()])
    // Both go on to the next day's 02:30 EDT.
    for (const s of await dst.listSchedules()) expect(s.nextSlot).toEqual(new Date('2024-03-11T06:30:00Z'))
  })

  it('skips missed slots, or catches up once for the latest of them, and the next slot still fires', async () => {
    const ops = await tenant('ops')
    for (const missed of ['skip', 'catch-up-once'] as const) {
      await ops.putSchedule({
        id: missed,
        workflowType: 'report',
        cron: '*/5 * * * *',
        input: { region: missed },
        missed,
      })
    }
    // Schedulers were down for an hour: the due slots run from B - 60 min to B, and the clock
    // (B + 2 min) is past B by more than the grace (60 s), so none of them is on time.
    const b = new Date(Math.ceil(Date.now() / 300_000) * 300_000 + 3_600_000)
    for (const id of ['skip', 'catch-up-once']) await moveBack('ops', id, new Date(b.getTime() - 3_600_000))
    const tick = await engine.runSchedules({ now: new Date(b.getTime() + 120_000) }, [ops.scope])
    expect(tick).toMatchObject({ schedules: 2, started: 1, caughtUp: 1, skipped: 13 + 12 })
    expect(await startedBy('ops', 'skip')).toEqual([])
    const caughtUp = await startedBy('ops', 'catch-up-once')
    expect(caughtUp.map((s) => s.slot)).toEqual([b.toISOString()])
    expect(tick.starts).toMatchObject([{ scheduleId: 'catch-up-once', catchUp: true, created: true }])

    // Both schedules moved on past their missed slots ...
    for (const s of await ops.listSchedules()) {
      expect(s.lastSlot).toEqual(b)
      expect(s.nextSlot).toEqual(new Date(b.getTime() + 300_000))
    }
    // ... and the next slot fires on time for both.
    const next = await engine.runSchedules({ now: new Date(b.getTime() + 310_000) }, [ops.scope])
    expect(next).toMatchObject({ started: 2, skipped: 0, caughtUp: 0 })
    const next5 = new Date(b.getTime() + 300_000).toISOString()
    expect((await startedBy('ops', 'skip')).map((s) => s.slot)).toEqual([next5])
    expect((await startedBy('ops', 'catch-up-once')).map((s) => s.slot)).toEqual([b.toISOString(), next5])
  })

  it('handles a year of missed per-second slots in one bounded pass', async () => {
    const idle = await tenant('idle')
    await idle.putSchedule({
      id: 'tick',
      workflowType: 'report',
      cron: '* * * * * *',
      input: { region: 'x' },
      missed: 'catch-up-once',
    })
    const now = new Date(Math.floor(Date.now() / 1000) * 1000)
    await moveBack('idle', 'tick', new Date(now.getTime() - 365 * 24 * 3600_000))
    const tick = await engine.runSchedules({ now }, [idle.scope])
    // The on-time slots (the last 60 s, both ends included) start; the 31 million before them are
    // skipped without being listed (the count stops at its cap). On-time slots fired, so no catch-up.
    expect(tick).toMatchObject({ started: 61, caughtUp: 0, skipped: MISSED_COUNT_CAP })
    const [s] = await idle.listSchedules()
    expect(s?.nextSlot).toEqual(new Date(now.getTime() + 1000))
  })

  it('leaves a schedule whose workflow type it does not know to a process that knows it', async () => {
    const stranger = await createEngine({
      connectionString: db.appUrl,
      adminConnectionString: db.url,
      agents: [echo],
      log: pino({ level: 'silent' }),
      supervise: false,
      config,
    })
    afterAll(() => stranger.close())
    const mixed = await tenant('mixed')
    const put = await mixed.putSchedule({
      id: 'r',
      workflowType: 'report',
      cron: '0 * * * *',
      input: { region: 'eu' },
    })
    const now = new Date(put.nextSlot.getTime() + 1000)
    const unknown = await stranger.runSchedules({ now }, [mixed.scope])
    expect(unknown).toMatchObject({
      started: 0,
      unknownTypes: [{ tenantId: 'mixed', scheduleId: 'r', workflowType: 'report', onTime: true }],
    })
    // Past the grace, a process that knows the type would only apply the missed-slot policy: the
    // stranger's scheduler no longer hands the pass back for it.
    const later = await stranger.runSchedules({ now: new Date(now.getTime() + 3_600_000) }, [mixed.scope])
    expect(later.unknownTypes).toMatchObject([{ scheduleId: 'r', onTime: false }])
    expect((await mixed.listSchedules())[0]?.nextSlot).toEqual(put.nextSlot)
    expect(await engine.runSchedules({ now }, [mixed.scope])).toMatchObject({ started: 1, unknownTypes: [] })
  })

  it('refuses bad schedules with typed errors and writes nothing', async () => {
    const bad = await tenant('bad')
    const base = { id: 'nightly', workflowType: 'report', cron: '0 3 * * *', input: { region: 'eu' } }
    const refusals: [object, new (...args: any[]) => Error, string | undefined][] = [
      [{ workflowType: 'no-such-type' }, UnknownWorkflowTypeError, undefined],
      [{ cron: '0 25 * * *' }, InvalidInputError, '$.cron'],
      [{ cron: 'every night' }, InvalidInputError, '$.cron'],
      [{ timezone: 'Europe/Atlantis' }, InvalidInputError, '$.timezone'],
      [{ missed: 'sometimes' }, InvalidInputError, '$.missed'],
      [{ id: 'has spaces' }, InvalidInputError, '$.id'],
      [{ input: { region: 'nul\u0000' } }, InvalidInputError, '$.input.region'],
      // The workflow computes its task data from input.region: an input without it is refused now.
      [{ input: null }, InvalidInputError, undefined],
      // ... and so is one whose computed startAfter is no time, as startWorkflow would refuse it.
      [{ workflowType: 'timed', input: { at: 'tomorrow' } }, InvalidInputError, '$.tasks.then.startAfter'],
    ]
    for (const [change, type, path] of refusals) {
      const error = await bad.putSchedule({ ...base, ...change } as any).catch((e: unknown) => e)
      expect(error, JSON.stringify(change)).toBeInstanceOf(type)
      if (path) expect((error as InvalidInputError).path).toBe(path)
    }
    expect(await bad.listSchedules()).toEqual([])
    expect(
      await queryOnce(db.url, `SELECT 1 FROM equilateral.workflow_schedules WHERE tenant_id = 'bad'`),
    ).toEqual([])
    await expect(bad.deleteSchedule('nightly')).rejects.toBeInstanceOf(NotFoundError)
    await expect(engine.runSchedules({ now: new Date('not a date') })).rejects.toBeInstanceOf(
      InvalidInputError,
    )
  })

  it('does not let schedules that fail to start starve the ones behind them', async () => {
    const starve = await tenant('starve')
    const every = { workflowType: 'report', cron: '* * * * * *' }
    for (let i = 0; i < 120; i++) {
      await starve.putSchedule({ ...every, id: `bad-${i}`, input: { region: 'retired' } })
    }
    await starve.putSchedule({ ...every, id: 'good', input: { region: 'eu' } })
    // The 120 are due a second before the good one, so every batch (100) would select them first.
    const t = new Date(Math.ceil(Date.now() / 1000) * 1000 + 3_600_000)
    await queryOnce(
      db.url,
      `UPDATE equilateral.workflow_schedules SET next_slot = CASE WHEN id = 'good' THEN $2::timestamptz
         ELSE $2::timestamptz - interval '1 second' END WHERE tenant_id = $1`,
      ['starve', t],
    )
    // A release whose report refuses the region those schedules were declared with.
    const redeployed = await createEngine({
      connectionString: db.appUrl,
      adminConnectionString: db.url,
      agents: [echo],
      workflows: [
        defineWorkflow<{ region: string }>({
          name: 'report',
          version: 2,
          tasks: [
            {
              key: 'build',
              agent: echo,
              data: (input) => {
                if (input.region === 'retired') throw new Error('region "retired" is gone')
                return { region: input.region }
              },
            },
          ],
        }),
      ],
      log: pino({ level: 'silent' }),
      supervise: false,
      config,
    })
    try {
      const pass = await redeployed.runSchedules({ now: new Date(t.getTime() + 500) }, [starve.scope])
      // Each failing schedule is tried once in the pass (and keeps its slot for the next), and the
      // good one starts.
      expect(pass).toMatchObject({ started: 1, schedules: 1 })
      expect(pass.problems).toHaveLength(120)
      expect(new Set(pass.problems.map((p) => p.scheduleId)).size).toBe(120)
      expect((await startedBy('starve', 'good')).map((s) => s.slot)).toEqual([t.toISOString()])
    } finally {
      await redeployed.close()
    }
  })

  it("keeps a tenant's schedules invisible to other tenants", async () => {
    const [north, south] = [await tenant('north'), await tenant('south')]
    const n = await north.putSchedule({
      id: 'nightly',
      workflowType: 'report',
      cron: '0 3 * * *',
      input: { region: 'n' },
    })
    expect(await south.listSchedules()).toEqual([])
    await expect(south.deleteSchedule('nightly')).rejects.toBeInstanceOf(NotFoundError)
    const s = await south.putSchedule({
      id: 'nightly',
      workflowType: 'report',
      cron: '0 4 * * *',
      input: { region: 's' },
    })
    expect((await north.listSchedules()).map((s) => [s.id, s.cron])).toEqual([['nightly', '0 3 * * *']])
    expect((await south.listSchedules()).map((s) => [s.id, s.cron])).toEqual([['nightly', '0 4 * * *']])

    // Each tenant's slot starts a workflow in that tenant only, with that tenant's input. The slots
    // are those of one fixed day and the scheduler runs on an explicit clock, so the time of day
    // the test runs at does not decide which slot comes first.
    expect([n.nextSlot.getUTCHours(), s.nextSlot.getUTCHours()]).toEqual([3, 4])
    const day = '2024-06-01'
    await moveBack('north', 'nightly', new Date(`${day}T03:00:00Z`))
    await moveBack('south', 'nightly', new Date(`${day}T04:00:00Z`))
    let started = 0
    for (const slot of [`${day}T03:00:01Z`, `${day}T04:00:01Z`]) {
      const tick = await engine.runSchedules({ now: new Date(slot) }, [north.scope, south.scope])
      expect(tick).toMatchObject({ started: 1, skipped: 0 })
      started += tick.started
    }
    expect(started).toBe(2)
    for (const [handle, region] of [
      [north, 'n'],
      [south, 's'],
    ] as const) {
      const { workflows } = await handle.listWorkflows()
      expect(workflows).toHaveLength(1)
      expect((await handle.getWorkflow(workflows[0]?.id as string)).input).toEqual({ region })
    }
    await north.deleteSchedule('nightly')
    expect(await north.listSchedules()).toEqual([])
    expect(await south.listSchedules()).toHaveLength(1)
  })

  it("records the schedule as the started workflow's actor in its audit trail", async () => {
    const audited = await tenant('audited')
    const { nextSlot } = await audited.putSchedule({
      id: 'daily-digest',
      workflowType: 'report',
      cron: '0 9 * * *',
      timezone: 'Europe/Paris',
      input: { region: 'fr' },
    })
    const tick = await engine.runSchedules({ now: new Date(nextSlot.getTime() + 1000) }, [audited.scope])
    const [start] = tick.starts
    const history = await audited.history(start?.workflowId as string)
    expect(history[0]).toMatchObject({ action: 'workflow_started', actor: 'schedule:daily-digest' })
    // 09:00 in Paris, which is 07:00 or 08:00 UTC depending on the season.
    expect([7, 8]).toContain(start?.slot.getUTCHours())
  })

  it('keeps the next slot when the same schedule is declared again, and moves it when the cron changes', async () => {
    const deploys = await tenant('deploys')
    const spec = { id: 'hourly', workflowType: 'report', cron: '0 * * * *', input: { region: 'eu' } }
    const first = await deploys.putSchedule(spec)
    // A due slot not handled yet survives a redeploy that declares the schedule again.
    await moveBack('deploys', 'hourly', new Date(first.nextSlot.getTime() - 3_600_000))
    const again = await deploys.putSchedule({ ...spec, input: { region: 'us' } })
    expect(again.nextSlot.getTime()).toBe(first.nextSlot.getTime() - 3_600_000)
    expect(again.input).toEqual({ region: 'us' })
    const changed = await deploys.putSchedule({ ...spec, cron: '30 * * * *' })
    expect(changed.nextSlot.getUTCMinutes()).toBe(30)
    expect(changed.nextSlot.getTime()).toBeGreaterThan(Date.now() - 60_000)
    // Paused then enabled again: the slots that fell due while it was paused are not started.
    await deploys.putSchedule({ ...spec, cron: '30 * * * *', enabled: false })
    await moveBack('deploys', 'hourly', new Date(changed.nextSlot.getTime() - 2 * 3_600_000))
    const resumed = await deploys.putSchedule({ ...spec, cron: '30 * * * *' })
    expect(resumed.nextSlot.getTime()).toBeGreaterThanOrEqual(changed.nextSlot.getTime())
  })
})
