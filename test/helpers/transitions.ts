// Reads the status changes of tasks and workflows out of an audit trail, for checking them against
// the state machine (src/core/task-state.ts). Pure: the rows come from the caller.
//
// Each task's rows are replayed in id order from its insertion (TASK_INSERTIONS). A row that changes
// the status (STATUS_ACTIONS) is one transition; the rows before it of the same task in the same
// transaction that say why (ANNOTATIONS: the attempt failed, the worker was lost, the wait timed
// out, the event or decision that resolved it) make its cause with it: `task_lost + task_failed`.
import {
  TASK_INSERTIONS,
  TASK_TRANSITIONS,
  type TaskStatus,
  WORKFLOW_TRANSITIONS,
  type WorkflowStatus,
} from '../../src/core/task-state.ts'

export interface AuditRow {
  id: string
  txid: string
  workflowId: string
  taskId: string | null
  action: string
}

export interface Change {
  /** A task id, or `workflow <id>` for a workflow's own rows. */
  subject: string
  from: string
  to: string
  cause: string
}

/** The status each status-changing audit action leaves a task in. */
export const STATUS_ACTIONS: Readonly<Record<string, TaskStatus>> = {
  task_queued: 'queued',
  task_started: 'running',
  task_waiting: 'waiting',
  task_completed: 'completed',
  task_retry_queued: 'queued',
  task_failed: 'failed',
  task_skipped: 'skipped',
  task_cancelled: 'cancelled',
  task_recovered: 'queued',
  task_released: 'queued',
  task_snoozed: 'queued',
  task_left: 'queued',
}

/**
 * Rows that say why the next change of the task happens (in the same transaction), and whether one
 * may stand alone: an event or decision kept for a task that does not wait yet changes nothing.
 */
export const ANNOTATIONS: Readonly<Record<string, { alone: boolean }>> = {
  task_failed_attempt: { alone: false },
  task_lost: { alone: false },
  task_wait_timed_out: { alone: false },
  event_received: { alone: true },
  approval_decided: { alone: true },
}

const WORKFLOW_ENDS: Readonly<Record<string, WorkflowStatus>> = {
  workflow_completed: 'completed',
  workflow_failed: 'failed',
  workflow_cancelled: 'cancelled',
}

export interface Replay {
  changes: Change[]
  /** Each task's and workflow's status after its last row. */
  last: Map<string, string>
  /** Rows that make no sense in the replay (an unknown action, a change before the insertion, ...). */
  problems: string[]
}

/** Replays audit rows (any order: sorted by id here) into the status changes they record. */
export function replay(rows: readonly AuditRow[]): Replay {
  const changes: Change[] = []
  const last = new Map<string, string>()
  const problems: string[] = []
  const sorted = [...rows].sort((a, b) => Number(BigInt(a.id) - BigInt(b.id)))
  for (const [subject, list] of Map.groupBy(sorted, (r) =>
    r.taskId === null ? `workflow ${r.workflowId}` : r.taskId,
  )) {
    if (subject.startsWith('workflow ')) replayWorkflow(subject, list, changes, last, problems)
    else replayTask(subject, list, changes, last, problems)
  }
  return { changes, last, problems }
}

function replayTask(
  task: string,
  rows: AuditRow[],
  changes: Change[],
  last: Map<string, string>,
  problems: string[],
) {
  let status: string | undefined
  let why: AuditRow[] = []
  const orphans = () => {
    for (const a of why)
      if (!ANNOTATIONS[a.action]?.alone) problems.push(`task ${task}: ${a.action} changed nothing`)
    why = []
  }
  for (const row of rows) {
    if (row.action in ANNOTATIONS) {
      if (why.length > 0 && why[0]!.txid !== row.txid) orphans()
      why.push(row)
      continue
    }
    if (why.length > 0 && why[0]!.txid !== row.txid) orphans()
    if (status === undefined) {
      const inserted = TASK_INSERTIONS[row.action]
      if (inserted) status = inserted.status
      else problems.push(`task ${task}: ${row.action} before the task was inserted`)
      orphans()
      continue
    }
    const to = STATUS_ACTIONS[row.action]
    if (!to) {
      problems.push(`task ${task}: unknown action ${row.action}`)
      continue
    }
    const cause = [...why.map((a) => a.action).sort(), row.action].join(' + ')
    changes.push({ subject: task, from: status, to, cause })
    status = to
    why = []
  }
  orphans()
  if (status !== undefined) last.set(task, status)
}

function replayWorkflow(
  subject: string,
  rows: AuditRow[],
  changes: Change[],
  last: Map<string, string>,
  problems: string[],
) {
  let status: string | undefined
  for (const row of rows) {
    if (row.action === 'workflow_started' && status === undefined) status = 'running'
    else if (row.action in WORKFLOW_ENDS && status !== undefined) {
      const to = WORKFLOW_ENDS[row.action] as string
      changes.push({ subject, from: status, to, cause: row.action })
      status = to
    } else problems.push(`${subject}: ${row.action} after ${status ?? 'nothing'}`)
  }
  if (status !== undefined) last.set(subject, status)
}

/** A change's table entry, or why it has none. */
export function allowed(change: Change): string | null {
  const table = change.subject.startsWith('workflow ')
    ? (WORKFLOW_TRANSITIONS as Record<string, Record<string, { causes: Record<string, string> }>>)
    : (TASK_TRANSITIONS as Record<string, Record<string, { causes: Record<string, string> }>>)
  const transition = table[change.from]?.[change.to]
  if (!transition) return `${change.from} -> ${change.to} is not in the table`
  if (!(change.cause in transition.causes)) {
    return `${change.from} -> ${change.to} is not caused by ${change.cause} in the table (causes: ${Object.keys(transition.causes).join('; ')})`
  }
  return null
}

/** Every (from, to, cause) of a table, as `from -> to: cause`. */
export function tableEntries(
  table: Readonly<Record<string, Readonly<Record<string, { causes: Readonly<Record<string, string>> }>>>>,
): string[] {
  return Object.entries(table).flatMap(([from, tos]) =>
    Object.entries(tos).flatMap(([to, t]) =>
      Object.keys(t.causes).map((cause) => `${from} -> ${to}: ${cause}`),
    ),
  )
}
