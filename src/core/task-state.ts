// The task state machine. Every arrow has its cause; the SQL in src/flow guards each transition
// with the expected current state (and attempt), so these are the only changes that can happen.
//
//            deps done              claimed              agent returned
//  pending ─────────────> queued ─────────────> running ──────────────> completed
//     │                   ▲  │  ▲                 │  │
//     │                   │  │  └─────────────────┘  │ retries left / released / lost worker
//     │                   │  │                       │
//     │      lost job ────┘  │                       └─ no retries left ──> failed
//     └── workflow failed, cancelled ──> skipped / cancelled (from pending, queued or running)

export const WORKFLOW_STATUSES = ['running', 'completed', 'failed', 'cancelled'] as const
export type WorkflowStatus = (typeof WORKFLOW_STATUSES)[number]

export const TASK_STATUSES = [
  'pending', // waiting for dependencies
  'queued', // a job is in the queue for this attempt
  'running', // an agent holds the current attempt
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
    queued: 'the sweeper found its job lost and queued a new attempt',
    failed: 'its job was lost and no attempts are left',
    skipped: 'its workflow failed',
    cancelled: 'its workflow was cancelled',
  },
  running: {
    completed: 'the agent returned a result',
    queued: 'the agent failed and attempts are left, the worker shut down, or the worker was lost',
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
