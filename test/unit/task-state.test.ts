// The state machine (src/core/task-state.ts), pure: its shape (terminal states end, every state is
// reachable and can end), the replay of audit rows into its transitions (test/helpers/transitions.ts,
// which test/engine/transitions.test.ts runs on real audit trails), and the README's diagram, which
// is generated from the table: a table change without the README's fails here.
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import {
  canTransition,
  isTerminalTask,
  TASK_INSERTIONS,
  TASK_STATUSES,
  TASK_TRANSITIONS,
  taskStateDiagram,
  TERMINAL_TASK_STATUSES,
  type TaskStatus,
  WORKFLOW_STATUSES,
  WORKFLOW_TRANSITIONS,
} from '../../src/core/task-state.ts'
import { ANNOTATIONS, allowed, type AuditRow, replay, STATUS_ACTIONS } from '../helpers/transitions.ts'

/** The states reachable from `from` (itself included). */
function reachable(from: readonly TaskStatus[]): Set<TaskStatus> {
  const seen = new Set(from)
  for (const s of seen) for (const to of Object.keys(TASK_TRANSITIONS[s]) as TaskStatus[]) seen.add(to)
  return seen
}

describe('the task state machine', () => {
  it('ends in the terminal states: none has a way out, every other state has one', () => {
    for (const s of TASK_STATUSES) {
      expect(Object.keys(TASK_TRANSITIONS[s]).length === 0, s).toBe(isTerminalTask(s))
      expect(TERMINAL_TASK_STATUSES.includes(s)).toBe(isTerminalTask(s))
    }
    for (const s of WORKFLOW_STATUSES) {
      expect(Object.keys(WORKFLOW_TRANSITIONS[s]).length === 0, s).toBe(s !== 'running')
    }
  })

  it('reaches every state from an insertion, and a terminal state from every state', () => {
    const inserted = Object.values(TASK_INSERTIONS).map((i) => i.status)
    expect([...reachable(inserted)].sort()).toEqual([...TASK_STATUSES].sort())
    for (const s of TASK_STATUSES) {
      expect([...reachable([s])].some(isTerminalTask), s).toBe(true)
    }
  })

  it('gives every transition a label and at least one cause, each recorded by a status-changing row', () => {
    for (const from of TASK_STATUSES) {
      for (const [to, t] of Object.entries(TASK_TRANSITIONS[from])) {
        expect(canTransition(from, to as TaskStatus)).toBe(true)
        expect(t.label).toMatch(/\w/)
        expect(Object.keys(t.causes).length).toBeGreaterThan(0)
        for (const cause of Object.keys(t.causes)) {
          // The last action changes the status to `to`; those before it say why.
          const actions = cause.split(' + ')
          expect(STATUS_ACTIONS[actions.at(-1)!], `${from} -> ${to}: ${cause}`).toBe(to)
          for (const why of actions.slice(0, -1)) expect(ANNOTATIONS, cause).toHaveProperty(why)
          expect(actions.slice(0, -1)).toEqual(actions.slice(0, -1).sort())
        }
      }
    }
    expect(canTransition('completed', 'queued')).toBe(false)
    expect(canTransition('pending', 'running')).toBe(false)
  })
})

describe('replaying an audit trail', () => {
  let id = 0
  const row = (action: string, txid: number, taskId: string | null = 't1'): AuditRow => ({
    id: String(++id),
    txid: String(txid),
    workflowId: 'w1',
    taskId,
    action,
  })

  it('turns rows into changes, with the rows of the same transaction that say why as the cause', () => {
    const { changes, last, problems } = replay([
      row('workflow_started', 1, null),
      row('task_queued', 1),
      row('task_started', 2),
      row('task_failed_attempt', 3),
      row('task_retry_queued', 3),
      row('event_received', 4), // kept for later: changes nothing
      row('task_started', 5),
      row('task_lost', 6),
      row('task_failed', 6),
      row('workflow_failed', 6, null),
    ])
    expect(problems).toEqual([])
    expect(changes.map((c) => `${c.subject}: ${c.from} -> ${c.to}: ${c.cause}`)).toEqual([
      'workflow w1: running -> failed: workflow_failed',
      't1: queued -> running: task_started',
      't1: running -> queued: task_failed_attempt + task_retry_queued',
      't1: queued -> running: task_started',
      't1: running -> failed: task_lost + task_failed',
    ])
    expect(changes.map(allowed)).toEqual([null, null, null, null, null])
    expect(last).toEqual(
      new Map([
        ['t1', 'failed'],
        ['workflow w1', 'failed'],
      ]),
    )
  })

  it('names what the table does not allow, and rows that make no sense', () => {
    const { changes, problems } = replay([
      row('task_created', 1),
      row('task_started', 2), // pending -> running: never
      row('task_lost', 3), // a failure row with no change after it
      row('task_teleported', 4),
    ])
    expect(changes.map(allowed)).toEqual(['pending -> running is not in the table'])
    expect(problems).toEqual([
      'task t1: task_lost changed nothing',
      'task t1: unknown action task_teleported',
    ])
    expect(replay([row('task_started', 1)]).problems).toEqual([
      'task t1: task_started before the task was inserted',
    ])
  })
})

describe('the README', () => {
  it('shows the diagram generated from the table', () => {
    const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
    const block = /### Task states\n\n<!--[^\n]*-->\n\n```mermaid\n([\s\S]*?)\n```\n/.exec(readme)
    expect(block, 'the README has a Task states section with a mermaid block').not.toBeNull()
    // To update it: paste the expected text (node -e "import('./src/core/task-state.ts').then(m => console.log(m.taskStateDiagram()))").
    expect(block![1]).toBe(taskStateDiagram())
  })
})
