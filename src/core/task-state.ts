// The task state machine. Every arrow has its cause; the SQL in src/flow guards each transition
// with the expected current state (and attempt), so these are the only changes that can happen.
//
//            deps done              claimed              agent returned
//  pending ─────────────> queued ─────────────> running ──────────────> completed
//     │                   ▲  │  ▲                 │  │                      ▲
//     │                   │  │  └─────────────────┘  │ retries left / snoozed / released / lost worker
//     │                   │  │                       │                      │
//     │      lost job ────┘  │                       └─ no retries left ──> failed
//     │                      │ wait task armed                              ▲  │
//     │                      └──────────────> waiting ── event, approval ───┘  │ (completed, or failed:
//     │                                                   or timeout ──────────┘  rejected, timed out)
//     └── workflow failed, cancelled ──> skipped / cancelled (from pending, queued, waiting or running)
//
// A task whose timer has not expired yet (startAfter, a retry's backoff, a snooze) is `queued`: its
// job exists and pg-boss holds it back until its start_after, by the database clock.

export const WORKFLOW_STATUSES = ['running', 'completed', 'failed', 'cancelled'] as const
export type WorkflowStatus = (typeof WORKFLOW_STATUSES)[number]

export const TASK_STATUSES = [
  'pending', // waiting for dependencies
  'queued', // a job is in the queue for this attempt
  'running', // an agent holds the current attempt
  'waiting', // a wait task waits for its event or approval decision
  'completed',
  'failed',
  'skipped', // can no longer run (its workflow failed)
  'cancelled',
] as const
export type TaskStatus = (typeof TASK_STATUSES)[number]

export const TASK_TRANSITIONS: Readonly<Record<TaskStatus, Readonly<Partial<Record<TaskStatus, string>>>>> = {
  pending: {
    queued: 'its last dependency completed',
    skipped: 'its workflow failed',
    cancelled: 'its workflow was cancelled',
  },
  queued: {
    running: 'a worker claimed its job',
    waiting: 'a worker armed the wait task (no matching event had arrived yet)',
    completed: 'a worker armed the wait task and an event that had arrived early completed it',
    queued:
      'the sweeper found its job lost and queued a new attempt, or a worker without its agent version left it',
    failed: 'its job was lost and no attempts are left, or no worker had its agent version within the bound',
    skipped: 'its workflow failed',
    cancelled: 'its workflow was cancelled',
  },
  waiting: {
    completed: 'its event or an approval arrived, or it timed out with a declared result',
    failed: 'the approval was rejected, or it timed out with no declared result',
    skipped: 'its workflow failed',
    cancelled: 'its workflow was cancelled',
  },
  running: {
    completed: 'the agent returned a result',
    queued: 'the agent failed and attempts are left, snoozed, the worker shut down, or the worker was lost',
    failed: 'the agent failed and no attempts are left, or the failure was permanent',
    cancelled: 'its workflow was cancelled',
  },
  completed: {},
  failed: {},
  skipped: {},
  cancelled: {},
}

export const TERMINAL_TASK_STATUSES: readonly TaskStatus[] = ['completed', 'failed', 'skipped', 'cancelled']

export function isTerminalTask(status: TaskStatus): boolean {
  return TERMINAL_TASK_STATUSES.includes(status)
}

export function canTransition(from: TaskStatus, to: TaskStatus): boolean {
  return TASK_TRANSITIONS[from][to] !== undefined
}

export const WORKFLOW_TRANSITIONS: Readonly<
  Record<WorkflowStatus, Readonly<Partial<Record<WorkflowStatus, string>>>>
> = {
  running: {
    completed: 'its last task completed',
    failed: 'a task failed with no attempts left',
    cancelled: 'it was cancelled',
  },
  completed: {},
  failed: {},
  cancelled: {},
}
