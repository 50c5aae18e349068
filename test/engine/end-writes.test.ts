// The end of an attempt other than a completion (a snooze, a PermanentError's failure, the release
// at shutdown) written through a brief database error: retried like a completion, so the attempt
// ends as the agent asked, rather than being left running for the sweeper to count as lost. The
// error is a real one from the server: a trigger raises SQLSTATE 57P01 (the server terminating the
// connection) on the first audit row of the armed action.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, PermanentError } from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const runs: Record<string, number> = {}
const ran = (key: string) => (runs[key] = (runs[key] ?? 0) + 1)

const sleepy = defineAgent({
  id: 'end-sleepy',
  handler: async (ctx) => {
    ran(ctx.workflowId)
    if (ctx.attempt === 1) return ctx.snooze(3_600_000)
    return { attempt: ctx.attempt }
  },
})
const refuser = defineAgent({
  id: 'end-refuser',
  handler: async (ctx) => {
    ran(ctx.workflowId)
    throw new PermanentError('this input can never work')
  },
})
let blockerStarted!: () => void
const blockerRunning = new Promise<void>((resolve) => (blockerStarted = resolve))
const blocker = defineAgent({
  id: 'end-blocker',
  handler: async (ctx) => {
    ran(ctx.workflowId)
    if (ctx.attempt > 1) return { attempt: ctx.attempt }
    blockerStarted()
    await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve))
    return null
  },
})

const { engine, db } = await testEngine({
  agents: [sleepy, refuser, blocker],
  workflows: [
    defineWorkflow({ name: 'end-snooze', tasks: [{ key: 'nap', agent: sleepy, backoffMs: 100 }] }),
    defineWorkflow({ name: 'end-refuse', tasks: [{ key: 'no', agent: refuser, backoffMs: 100 }] }),
    defineWorkflow({ name: 'end-release', tasks: [{ key: 'long', agent: blocker, backoffMs: 100 }] }),
  ],
  config: { shutdownGraceMs: 100 },
})
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

// Armed by creating a sequence for the action: a sequence's count survives the failed transaction.
await queryOnce(
  db.url,
  `CREATE FUNCTION public.blip() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
   DECLARE armed regclass := to_regclass('public.blip_' || NEW.action_type);
   BEGIN
     IF armed IS NOT NULL AND nextval(armed) = 1 THEN
       RAISE EXCEPTION 'simulated: terminating connection due to administrator command' USING ERRCODE = '57P01';
     END IF;
     RETURN NEW;
   END $$;
   CREATE TRIGGER blip BEFORE INSERT ON equilateral.agent_audit_log
     FOR EACH ROW EXECUTE FUNCTION public.blip();`,
)

/** The next audit row of this action fails once, as if the connection were cut. */
async function blipOnce(action: string): Promise<void> {
  await queryOnce(db.url, `CREATE SEQUENCE public.blip_${action}`)
}

async function blipped(action: string): Promise<boolean> {
  const [row] = await queryOnce(db.url, `SELECT is_called FROM public.blip_${action}`)
  return row?.is_called === true
}

async function task(workflowId: string) {
  const [row] = await queryOnce(
    db.url,
    `SELECT status, attempt, failures, queued_at > now() + interval '50 minutes' AS held_an_hour
     FROM equilateral.agent_coordination WHERE workflow_id = $1`,
    [workflowId],
  )
  return row as { status: string; attempt: number; failures: number; held_an_hour: boolean }
}

/**
 * Once the armed error has struck, sweeps (a task running without a heartbeat for 1 s is lost)
 * until the task is no longer running.
 */
function sweptUntilSettled(workflowId: string, action: string) {
  return eventually(
    async () => {
      if (!(await blipped(action))) return undefined
      await engine.sweep({ staleAfterMs: 1000 })
      const t = await task(workflowId)
      return t.status !== 'running' ? t : undefined
    },
    20_000,
    100,
  )
}

async function actions(workflowId: string): Promise<string[]> {
  return (await acme.history(workflowId)).filter((h) => h.taskId !== null).map((h) => h.action)
}

describe('an attempt ended through a brief database error', () => {
  it('a snooze still holds the task until its time, without counting a failure', async () => {
    await blipOnce('task_snoozed')
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('end-snooze', null)
      const t = await sweptUntilSettled(id, 'task_snoozed')
      expect(t).toMatchObject({ status: 'queued', attempt: 2, failures: 0, held_an_hour: true })
      expect(runs[id]).toBe(1)
      const history = await actions(id)
      expect(history).toContain('task_snoozed')
      expect(history).not.toContain('task_lost')
    } finally {
      await worker.stop()
    }
  })

  it("a PermanentError's failure is still written: the task fails for good, never run again", async () => {
    await blipOnce('task_failed_attempt')
    const worker = await engine.startWorker()
    try {
      const { id } = await acme.startWorkflow('end-refuse', null)
      const t = await sweptUntilSettled(id, 'task_failed_attempt')
      expect(t).toMatchObject({ status: 'failed', attempt: 1, failures: 1 })
      expect(runs[id]).toBe(1)
      const wf = await acme.getWorkflow(id)
      expect(wf.status).toBe('failed')
      expect(wf.tasks[0]?.error).toMatchObject({ message: 'this input can never work' })
      expect(await actions(id)).not.toContain('task_lost')
    } finally {
      await worker.stop()
    }
  })

  it('a task released at shutdown is queued again without counting a failure', async () => {
    const worker = await engine.startWorker()
    const { id } = await acme.startWorkflow('end-release', null)
    await blockerRunning
    await blipOnce('task_released')
    await worker.stop()
    const t = await sweptUntilSettled(id, 'task_released')
    expect(t).toMatchObject({ status: 'queued', attempt: 2, failures: 0 })
    const history = await actions(id)
    expect(history).toContain('task_released')
    expect(history).not.toContain('task_lost')
  })
})
