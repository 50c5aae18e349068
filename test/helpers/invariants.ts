// The promise of the engine, checked from the database after a run of crashes, kills and restarts
// (see docs/architecture.md#guarantees). Read as the superuser, across every tenant. Each check
// counts what it examined, so a summary can show that the checks looked at something.
import pg from 'pg'
import { allowed, type AuditRow as TrailRow, replay } from './transitions.ts'

export type Expected = 'completed' | 'failed' | 'cancelled'

export interface InvariantReport {
  /** Check name -> items examined. */
  checked: Record<string, number>
  /** Human-readable breaches; empty when the promise held. */
  violations: string[]
  /** Attempts the sweeper took back from lost workers (task_lost, task_recovered). */
  lostAttempts: number
  /**
   * Side effects done by an attempt that then did not complete, of tasks that did complete: the
   * agent ran again (at least once), and the effect was repeated under a new idempotency key.
   */
  repeatedEffects: number
}

interface TaskRow {
  id: string
  workflow_id: string
  status: string
  attempt: number
}
interface AuditRow {
  workflow_id: string
  task_id: string | null
  action_type: string
  attempt: number | null
}

const TERMINAL_TASK = new Set(['completed', 'failed', 'skipped', 'cancelled'])
// Events that put a task's attempt n in the queue (n is the new attempt).
const QUEUEING = new Set(['task_queued', 'task_retry_queued', 'task_recovered', 'task_released'])
const TASK_END: Record<string, string> = {
  task_completed: 'completed',
  task_failed: 'failed',
  task_skipped: 'skipped',
  task_cancelled: 'cancelled',
}
const WORKFLOW_END: Record<string, Expected> = {
  workflow_completed: 'completed',
  workflow_failed: 'failed',
  workflow_cancelled: 'cancelled',
}

/**
 * Checks every workflow against its expected terminal state and the engine's invariants.
 * `effectsTable`, when given, names a table (key text) where agents recorded their side effect
 * under ctx.idempotencyKey before returning: each completion must have its attempt's effect.
 */
export async function checkInvariants(
  url: string,
  expected: ReadonlyMap<string, Expected>,
  options: { effectsTable?: string; schema?: string } = {},
): Promise<InvariantReport> {
  const schema = options.schema ?? 'equilateral'
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const q = async <T>(sql: string) => (await client.query(sql)).rows as T[]
    const workflows = await q<{ id: string; status: string }>(`SELECT id, status FROM ${schema}.workflows`)
    const tasks = await q<TaskRow>(
      `SELECT id, workflow_id, status, attempt FROM ${schema}.agent_coordination`,
    )
    const audit = await q<AuditRow>(
      `SELECT workflow_id, task_id, action_type, (action_data->>'attempt')::int AS attempt
       FROM ${schema}.agent_audit_log ORDER BY id`,
    )
    const activeJobs = await q<{ n: number }>(
      `SELECT count(*)::int AS n FROM pgboss.job WHERE name LIKE 'eq.%' AND state = 'active'`,
    )
    const effects = options.effectsTable
      ? new Map(
          (await q<{ key: string; runs: number }>(`SELECT key, runs FROM ${options.effectsTable}`)).map(
            (r) => [r.key, r.runs],
          ),
        )
      : null

    const checked: Record<string, number> = {}
    const violations: string[] = []
    const check = (name: string, ok: boolean, breach: () => string) => {
      checked[name] = (checked[name] ?? 0) + 1
      if (!ok && violations.length < 50) violations.push(`${name}: ${breach()}`)
    }

    // 1. Every workflow started reached its expected terminal state, and no other workflow exists.
    const statusOf = new Map(workflows.map((w) => [w.id, w.status]))
    for (const [id, want] of expected) {
      check('workflow reached its expected terminal state', statusOf.get(id) === want, () => {
        return `${id} is ${statusOf.get(id) ?? 'missing'}, expected ${want}`
      })
    }
    check('no workflow beyond those started', workflows.length === expected.size, () => {
      return `${workflows.length} workflows in the database, ${expected.size} started`
    })

    // 2. Replay each task's and each workflow's audit history.
    const byTask = Map.groupBy(
      audit.filter((a) => a.task_id !== null),
      (a) => a.task_id as string,
    )
    const byWorkflow = Map.groupBy(
      audit.filter((a) => a.task_id === null),
      (a) => a.workflow_id,
    )
    const tasksOf = Map.groupBy(tasks, (t) => t.workflow_id)
    let repeatedEffects = 0
    const lostAttempts = audit.filter((a) => ['task_lost', 'task_recovered'].includes(a.action_type)).length
    for (const t of tasks) {
      const events = byTask.get(t.id) ?? []
      const completions = events.filter((e) => e.action_type === 'task_completed')
      check('task completed at most once', completions.length <= 1, () => {
        return `task ${t.id} has ${completions.length} completions`
      })
      check('task is not left queued or running', TERMINAL_TASK.has(t.status), () => {
        return `task ${t.id} is ${t.status} (workflow ${statusOf.get(t.workflow_id)})`
      })
      if (statusOf.get(t.workflow_id) === 'completed') {
        check(
          'task of a completed workflow completed exactly once',
          t.status === 'completed' && completions.length === 1,
          () => `task ${t.id} is ${t.status} with ${completions.length} completions`,
        )
      }
      if (t.status === 'completed') {
        check('completion is of the final attempt', completions[0]?.attempt === t.attempt, () => {
          return `task ${t.id} attempt ${t.attempt}, completion of attempt ${completions[0]?.attempt}`
        })
      }
      // The history has no gap: each attempt was queued before it started, each completion or
      // failure follows a start of the same attempt, and nothing follows the task's end.
      const queued = new Set<number>()
      const started = new Set<number>()
      let ended: string | null = null
      for (const e of events) {
        const a = e.attempt ?? -1
        check('no task event after the task ended', ended === null, () => {
          return `task ${t.id}: ${e.action_type} after ${ended}`
        })
        if (QUEUEING.has(e.action_type)) queued.add(a)
        else if (e.action_type === 'task_started') {
          check('attempt queued before it started', queued.has(a), () => {
            return `task ${t.id}: attempt ${a} started, never queued`
          })
          started.add(a)
        } else if (['task_completed', 'task_failed_attempt', 'task_lost'].includes(e.action_type)) {
          check('attempt started before it ended', started.has(a), () => {
            return `task ${t.id}: ${e.action_type} of attempt ${a}, never started`
          })
        }
        if (e.action_type in TASK_END) ended = TASK_END[e.action_type] as string
      }
      if (TERMINAL_TASK.has(t.status) && t.status !== 'completed') {
        check('task status matches its last event', ended === t.status, () => {
          return `task ${t.id} is ${t.status}, history ends ${ended}`
        })
      } else if (t.status === 'completed') {
        check('task status matches its last event', ended === 'completed', () => {
          return `task ${t.id} completed, history ends ${ended}`
        })
      }
      if (effects && t.status === 'completed') {
        const key = `${t.id}:${t.attempt}`
        check('completing attempt did its side effect', effects.has(key), () => {
          return `no effect recorded under ${key}`
        })
        const runs = [...Array(t.attempt).keys()].filter((i) => effects.has(`${t.id}:${i + 1}`)).length
        repeatedEffects += Math.max(0, runs - 1)
      }
    }
    for (const w of workflows) {
      const events = byWorkflow.get(w.id) ?? []
      check(
        'workflow history starts with workflow_started',
        events[0]?.action_type === 'workflow_started',
        () => {
          return `workflow ${w.id} starts with ${events[0]?.action_type}`
        },
      )
      const ends = events.filter((e) => e.action_type in WORKFLOW_END)
      check(
        'workflow ended exactly once, as its status says',
        ends.length === 1 && WORKFLOW_END[ends[0]?.action_type as string] === w.status,
        () =>
          `workflow ${w.id} is ${w.status}, ended ${ends.map((e) => e.action_type).join(', ') || 'never'}`,
      )
      check('workflow has tasks', (tasksOf.get(w.id)?.length ?? 0) > 0, () => `workflow ${w.id} has no tasks`)
    }

    // 3. Every status change the audit trail shows is one the state machine allows, with its cause
    // (src/core/task-state.ts), however the run was interrupted.
    const trail = replay(
      await q<TrailRow>(
        `SELECT id::text, txid::text, workflow_id AS "workflowId", task_id AS "taskId", action_type AS action
         FROM ${schema}.agent_audit_log`,
      ),
    )
    check('audit trail replays', trail.problems.length === 0, () => trail.problems.slice(0, 5).join('; '))
    for (const change of trail.changes) {
      const why = allowed(change)
      check('status change allowed by the state machine', why === null, () => `${change.subject}: ${why}`)
    }

    // 4. No job of ours is left active.
    check('no pg-boss job left active', activeJobs[0]?.n === 0, () => `${activeJobs[0]?.n} active jobs`)
    return { checked, violations, lostAttempts, repeatedEffects }
  } finally {
    await client.end()
  }
}

/** The report as lines for a test's summary. */
export function describeReport(report: InvariantReport): string[] {
  return Object.entries(report.checked).map(([name, n]) => `  ok  ${name} (${n} checked)`)
}
