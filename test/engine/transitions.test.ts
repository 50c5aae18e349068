// The state machine (src/core/task-state.ts) checked against the code: workflows run down every
// path the engine has (completion, retry, permanent failure and dead letter, snooze, spawn, skip,
// cancel, release at shutdown, approvals and events with their timeouts and early deliveries, the
// sweeper's recoveries, a duplicate delivery, agent versions no worker has), then every status
// change their audit trails show (from -> to, with its cause) must be in the table, every cause in
// the table must have been seen, and every change of a row's status (recorded by a trigger this
// test adds) must be one the audit trail shows: no change without its audit row.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TASK_TRANSITIONS, WORKFLOW_TRANSITIONS } from '../../src/core/task-state.ts'
import { claimTasks } from '../../src/flow/claim.ts'
import { completeTasks } from '../../src/flow/complete.ts'
import type { TaskWorker } from '../../src/fleet.ts'
import { defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, fetchJob, settled, testEngine } from '../helpers/engine.ts'
import { allowed, type AuditRow, replay, tableEntries } from '../helpers/transitions.ts'

/** A promise the test resolves: agents wait on it. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { open, opened }
}
const doom = gate()
const hold = gate()

const ok = defineAgent({ id: 'ok', handler: async (ctx) => ({ key: ctx.taskKey }) })
const flaky = defineAgent({
  id: 'flaky',
  handler: async (ctx) => {
    if (ctx.attempt === 1) throw new Error('first attempt fails')
    return { attempt: ctx.attempt }
  },
})
const doomed = defineAgent({
  id: 'doomed',
  handler: async () => {
    await doom.opened
    throw new Error('always fails')
  },
})
const permanent = defineAgent({
  id: 'permanent',
  handler: async () => {
    throw new PermanentError('no point retrying')
  },
})
const snoozer = defineAgent({
  id: 'snoozer',
  handler: async (ctx) => (ctx.attempt === 1 ? ctx.snooze(1) : { attempt: ctx.attempt }),
})
const spawner = defineAgent({
  id: 'spawner',
  handler: async (ctx) => {
    ctx.spawn({ key: 'spawned', agent: 'ok' })
    return null
  },
})
/** Runs until its workflow is cancelled or its worker stops (its signal aborts it). */
const blocker = defineAgent({
  id: 'blocker',
  handler: async (ctx) => {
    await Promise.race([
      hold.opened,
      new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('aborted')))),
    ])
    return null
  },
})
/** Served by a worker of its own, stopped while the agent runs. */
const released = defineAgent({ id: 'released', handler: blocker.handler })
/** Served by no worker: the test fetches, claims and completes its tasks by hand. */
const manual = defineAgent({ id: 'manual', handler: async () => null })
/** Version 2, which the hand-driven claims say they lack. */
const manualV2 = defineAgent({ id: 'manual-v', version: 2, handler: async () => null })

const later = 3_600_000 // a startAfter that keeps a task queued for the whole test
const workflows = [
  defineWorkflow({
    name: 'chain',
    tasks: [
      { key: 'a', agent: ok },
      { key: 'b', agent: ok, dependsOn: ['a'] },
      { key: 'spawn', agent: spawner },
    ],
  }),
  defineWorkflow({ name: 'retry', tasks: [{ key: 'flaky', agent: flaky, backoffMs: 0 }] }),
  defineWorkflow({ name: 'permanent', tasks: [{ key: 'p', agent: permanent }] }),
  defineWorkflow({ name: 'snooze', tasks: [{ key: 's', agent: snoozer }] }),
  // A failure for good skips the tasks that have not started: pending, queued and waiting ones.
  defineWorkflow({
    name: 'doomed',
    tasks: [
      { key: 'doomed', agent: doomed, maxAttempts: 2, backoffMs: 0 },
      { key: 'after', agent: ok, dependsOn: ['doomed'] },
      { key: 'timer', agent: ok, startAfter: later },
      { key: 'gate', approval: {} },
    ],
  }),
  defineWorkflow({
    name: 'cancelled',
    tasks: [
      { key: 'running', agent: blocker },
      { key: 'after', agent: ok, dependsOn: ['running'] },
      { key: 'timer', agent: ok, startAfter: later },
      { key: 'gate', approval: {} },
    ],
  }),
  defineWorkflow({ name: 'released', tasks: [{ key: 'r', agent: released }] }),
  defineWorkflow({ name: 'approval', tasks: [{ key: 'gate', approval: {} }] }),
  defineWorkflow({ name: 'event', tasks: [{ key: 'scan', event: { name: 'scan.done' } }] }),
  defineWorkflow({
    name: 'timeout-result',
    tasks: [{ key: 'quota', event: { name: 'quota', timeoutMs: later, onTimeout: { result: 'default' } } }],
  }),
  defineWorkflow({
    name: 'timeout-fail',
    tasks: [{ key: 'gate', approval: { timeoutMs: later } }],
  }),
  // Decided before the wait is armed (its task behind a step the test holds).
  defineWorkflow({
    name: 'early',
    tasks: [
      { key: 'first', agent: manual },
      { key: 'gate', approval: {}, dependsOn: ['first'] },
    ],
  }),
  defineWorkflow({ name: 'manual', tasks: [{ key: 'm', agent: manual, maxAttempts: 2, backoffMs: 0 }] }),
  defineWorkflow({
    name: 'manual-pair',
    tasks: [
      { key: 'm', agent: manual },
      { key: 'next', agent: manual, dependsOn: ['m'] },
    ],
  }),
  defineWorkflow({ name: 'versioned', tasks: [{ key: 'v', agent: manualV2 }] }),
]

const { engine, db } = await testEngine({
  agents: [ok, flaky, doomed, permanent, snoozer, spawner, blocker, released, manual, manualV2],
  workflows,
})

// Every change of a task's status, as the row changed: the ground truth the audit trail must match.
await queryOnce(
  db.url,
  `CREATE TABLE public.status_changes (
     seq bigserial PRIMARY KEY, task_id uuid NOT NULL, old_status text NOT NULL, new_status text NOT NULL);
   CREATE FUNCTION public.record_status_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
     SET search_path = public AS $$
   BEGIN
     INSERT INTO public.status_changes (task_id, old_status, new_status) VALUES (NEW.id, OLD.status, NEW.status);
     RETURN NULL;
   END $$;
   CREATE TRIGGER record_status_change AFTER UPDATE OF status ON equilateral.agent_coordination
     FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION public.record_status_change();`,
)

await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')
const started: string[] = []
let worker: TaskWorker | undefined

async function start(type: string): Promise<string> {
  const { id } = await acme.startWorkflow(type, null)
  started.push(id)
  return id
}

async function task(workflowId: string, key: string) {
  const wf = await acme.getWorkflow(workflowId)
  return wf.tasks.find((t) => t.key === key)!
}

async function until(workflowId: string, key: string, status: string): Promise<void> {
  await eventually(
    async () => ((await task(workflowId, key)).status === status ? true : undefined),
    20_000,
    25,
    `${key} ${status}`,
  )
}

/** Brings the wait timers of the test database due now (what the test kit's fireTimers does). */
async function fireWaitTimers(): Promise<void> {
  await queryOnce(
    db.url,
    `UPDATE equilateral.agent_coordination SET wait_deadline = now() WHERE status = 'waiting' AND wait_deadline > now()`,
  )
  await queryOnce(
    db.url,
    `UPDATE pgboss.job SET start_after = now() WHERE name = 'eq/wait' AND state = 'created'`,
  )
}

/** A hand-claimed task's heartbeat, long stale: the sweeper takes its worker as lost. */
async function staleHeartbeat(taskId: string): Promise<void> {
  await queryOnce(
    db.url,
    `UPDATE equilateral.agent_coordination SET heartbeat_at = now() - interval '1 hour' WHERE id = $1`,
    [taskId],
  )
}

async function claimByHand(workflowId: string, agent: string, workerId: string) {
  const fetched = await fetchJob(engine, agent, workflowId)
  const { claimed } = await claimTasks(engine, acme.scope, [fetched], workerId)
  expect(claimed).toHaveLength(1)
  return fetched
}

beforeAll(async () => {
  // The hand-driven paths first, while no worker runs: the sweeps below see only their tasks.
  // A job delivered twice: two workers claim the same attempt, one completion is written.
  {
    const id = await start('manual')
    const fetched = await claimByHand(id, 'manual', 'worker-1')
    expect((await claimTasks(engine, acme.scope, [fetched], 'worker-2')).claimed).toHaveLength(1)
    const complete = () =>
      completeTasks(engine, acme.scope, [
        { job: fetched, taskId: fetched.taskId, workflowId: id, attempt: fetched.attempt, result: null },
      ])
    expect((await complete()).completed.size).toBe(1)
    expect((await complete()).completed.size).toBe(0)
  }
  // The worker lost twice: the sweeper retries the task, then fails it (and its workflow).
  {
    const id = await start('manual')
    for (const outcome of ['queued', 'failed']) {
      const fetched = await claimByHand(id, 'manual', 'lost-worker')
      await staleHeartbeat(fetched.taskId)
      expect((await engine.sweep()).lost).toBe(1)
      expect((await task(id, 'm')).status).toBe(outcome)
    }
  }
  // The sweeper: a queued task whose job is gone gets a new one; so does a ready task without a job.
  {
    const id = await start('manual-pair')
    const m = await task(id, 'm')
    await queryOnce(db.url, `DELETE FROM pgboss.job WHERE name = 'eq.manual' AND data->>'k' = $1`, [m.id])
    await queryOnce(
      db.url,
      `UPDATE equilateral.agent_coordination SET deps_remaining = 0 WHERE workflow_id = $1 AND task_key = 'next'`,
      [id],
    )
    expect((await engine.sweep()).requeued).toBe(2)
    expect((await task(id, 'next')).status).toBe('queued')
    await acme.cancelWorkflow(id)
  }
  // Agent versions: a worker without version 2 leaves the task (queued, then running after a
  // duplicate delivery), and once it has gone unserved too long fails it for good.
  {
    const id = await start('versioned')
    const policy = (waitMs: number) => ({ versions: [1], retryMs: 0, waitMs })
    let fetched = await fetchJob(engine, 'manual-v', id)
    let claim = await claimTasks(engine, acme.scope, [fetched], 'old-worker', policy(3_600_000))
    expect(claim.unserved.map((u) => u.kind)).toEqual(['left'])
    fetched = await fetchJob(engine, 'manual-v', id)
    await claimTasks(engine, acme.scope, [fetched], 'new-worker')
    // The same job again, to a worker without the version: it leaves the running task.
    claim = await claimTasks(engine, acme.scope, [fetched], 'old-worker', policy(3_600_000))
    expect(claim.unserved.map((u) => u.kind)).toEqual(['left'])
    // Unserved long enough: a stamp an hour old, and the next claim fails it.
    await queryOnce(
      db.url,
      `UPDATE equilateral.agent_coordination SET unserved_since = now() - interval '1 hour' WHERE id = $1`,
      [fetched.taskId],
    )
    fetched = await fetchJob(engine, 'manual-v', id)
    claim = await claimTasks(engine, acme.scope, [fetched], 'old-worker', policy(60_000))
    expect(claim.unserved.map((u) => u.kind)).toEqual(['failed'])
  }

  // A worker of its own for `released`, stopped while its agent runs: the task is released.
  {
    const own = await engine.startWorker({ agents: [released] })
    const id = await start('released')
    await until(id, 'r', 'running')
    await own.stop()
    expect((await task(id, 'r')).status).toBe('queued')
    await acme.cancelWorkflow(id)
  }

  worker = await engine.startWorker({ agents: [ok, flaky, doomed, permanent, snoozer, spawner, blocker] })
  for (const type of ['chain', 'retry', 'permanent', 'snooze']) await start(type)

  // Failed for good with a task of each status that has not started.
  {
    const id = await start('doomed')
    await until(id, 'gate', 'waiting')
    await until(id, 'doomed', 'running')
    doom.open()
    await settled(engine, 'acme', id)
  }
  // Cancelled with a task of each status that has not ended.
  {
    const id = await start('cancelled')
    await until(id, 'gate', 'waiting')
    await until(id, 'running', 'running')
    await acme.cancelWorkflow(id, { reason: 'test' })
  }
  // Approvals and events: decided, received, timed out (with a declared result, and without).
  {
    const approved = await start('approval')
    const rejected = await start('approval')
    const received = await start('event')
    const timedOut = await start('timeout-result')
    const failed = await start('timeout-fail')
    for (const id of [approved, rejected]) await until(id, 'gate', 'waiting')
    await until(received, 'scan', 'waiting')
    await acme.decide(approved, { name: 'gate', approved: true, approver: 'alice' })
    await acme.decide(rejected, { name: 'gate', approved: false, approver: 'alice' })
    await acme.sendEvent(received, { eventId: 'e-1', name: 'scan.done' })
    await until(timedOut, 'quota', 'waiting')
    await until(failed, 'gate', 'waiting')
    await fireWaitTimers()
  }
  // Decisions that arrive before their approval waits: it completes, or fails, when it is armed.
  for (const approved of [true, false]) {
    const id = await start('early')
    await acme.decide(id, { name: 'gate', approved, approver: 'alice' })
    const fetched = await claimByHand(id, 'manual', 'early-worker')
    await completeTasks(engine, acme.scope, [
      { job: fetched, taskId: fetched.taskId, workflowId: id, attempt: fetched.attempt, result: null },
    ])
  }
  for (const id of started) await settled(engine, 'acme', id)
})

afterAll(async () => {
  hold.open()
  await worker?.stop()
})

async function auditRows(): Promise<AuditRow[]> {
  return queryOnce<AuditRow>(
    db.url,
    `SELECT id::text, txid::text, workflow_id AS "workflowId", task_id AS "taskId", action_type AS action
     FROM equilateral.agent_audit_log ORDER BY id`,
  )
}

describe('the transition table against the audit trail', () => {
  it('allows every status change the audit trail shows, with its cause', async () => {
    const { changes, problems } = replay(await auditRows())
    expect(problems).toEqual([])
    expect(changes.length).toBeGreaterThan(50)
    const refused = changes.flatMap((c) => {
      const why = allowed(c)
      return why ? [`${c.subject}: ${why}`] : []
    })
    expect(refused).toEqual([])
  })

  it('has every cause in the table happen', async () => {
    const { changes } = replay(await auditRows())
    const seen = new Set(changes.map((c) => `${c.from} -> ${c.to}: ${c.cause}`))
    const table = [...tableEntries(TASK_TRANSITIONS), ...tableEntries(WORKFLOW_TRANSITIONS)]
    expect(table.filter((entry) => !seen.has(entry))).toEqual([])
  })

  it('ends each task and workflow in the status its audit trail ends in', async () => {
    const { last } = replay(await auditRows())
    const rows = await queryOnce<{ id: string; status: string }>(
      db.url,
      `SELECT id::text, status FROM equilateral.agent_coordination
       UNION ALL SELECT 'workflow ' || id, status FROM equilateral.workflows`,
    )
    expect(rows.length).toBeGreaterThan(started.length)
    expect(rows.filter((r) => last.get(r.id) !== r.status)).toEqual([])
  })

  it('writes an audit row for every change of a task row’s status, in order', async () => {
    const { changes } = replay(await auditRows())
    const audited = Map.groupBy(
      changes.filter((c) => !c.subject.startsWith('workflow ') && c.from !== c.to),
      (c) => c.subject,
    )
    const rows = await queryOnce<{ task_id: string; old_status: string; new_status: string }>(
      db.url,
      'SELECT task_id, old_status, new_status FROM public.status_changes ORDER BY seq',
    )
    expect(rows.length).toBeGreaterThan(50)
    const actual = Map.groupBy(rows, (r) => r.task_id)
    const differ: string[] = []
    for (const id of new Set([...audited.keys(), ...actual.keys()])) {
      const a = (audited.get(id) ?? []).map((c) => `${c.from}->${c.to}`).join(', ')
      const b = (actual.get(id) ?? []).map((r) => `${r.old_status}->${r.new_status}`).join(', ')
      if (a !== b) differ.push(`task ${id}: audit trail ${a || 'nothing'}; rows ${b || 'nothing'}`)
    }
    expect(differ).toEqual([])
  })
})
