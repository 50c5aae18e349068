// The task state machine. Every arrow has its causes, each named by the audit rows that record it;
// the SQL in src/flow guards each transition with the expected current state (and attempt), so
// these are the only changes that can happen. test/engine/transitions.test.ts runs workflows down
// every path the engine has and checks each status change their audit trails show against this
// table, and that each cause here is seen; the diagram in README.md#task-states is generated from
// it (test/unit/task-state.test.ts).
//
// A cause is named by its audit actions: the rows of the same task in the same transaction that say
// why, sorted by name, then the row of the change itself (`task_failed_attempt + task_retry_queued`:
// the agent failed and a new attempt was queued). A task is inserted `pending` (`task_created`) or,
// with no dependencies left, `queued` (`task_queued`): an insertion, not a transition.
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

/** One arrow of the state machine: its label in the diagram, and its causes by the audit rows that record them. */
export interface Transition {
  label: string
  causes: Readonly<Record<string, string>>
}

export const TASK_TRANSITIONS: Readonly<
  Record<TaskStatus, Readonly<Partial<Record<TaskStatus, Transition>>>>
> = {
  pending: {
    queued: {
      label: 'deps done',
      causes: {
        task_queued: 'its last dependency completed',
        task_recovered: 'the sweeper found it ready without a job (only after a bug or a manual edit)',
      },
    },
    skipped: { label: 'workflow failed', causes: { task_skipped: 'its workflow failed' } },
    cancelled: { label: 'workflow cancelled', causes: { task_cancelled: 'its workflow was cancelled' } },
  },
  queued: {
    running: { label: 'claimed', causes: { task_started: 'a worker claimed its job' } },
    waiting: {
      label: 'wait armed',
      causes: {
        task_waiting: 'a worker armed the wait task (an event that arrived early completes it at once)',
      },
    },
    queued: {
      label: 'lost job, left',
      causes: {
        task_recovered:
          'the sweeper found its job gone, finished, or fetched and never started, and queued a new attempt',
        task_left:
          'a worker without its agent version left it for one that has it (audited on the first leave only)',
      },
    },
    failed: {
      label: 'no agent version',
      causes: {
        'task_failed_attempt + task_failed': 'no worker had its agent version within AGENT_VERSION_WAIT_MS',
      },
    },
    skipped: { label: 'workflow failed', causes: { task_skipped: 'its workflow failed' } },
    cancelled: { label: 'workflow cancelled', causes: { task_cancelled: 'its workflow was cancelled' } },
  },
  waiting: {
    completed: {
      label: 'event, approval, timeout',
      causes: {
        'event_received + task_completed': 'its event arrived',
        'approval_decided + task_completed': 'it was approved',
        'task_wait_timed_out + task_completed': 'it timed out with a declared result',
        task_completed:
          'an event or an approval that arrived before it waited completed it when it was armed',
      },
    },
    failed: {
      label: 'rejected, timed out',
      causes: {
        'approval_decided + task_failed_attempt + task_failed': 'the approval was rejected',
        'task_failed_attempt + task_wait_timed_out + task_failed':
          'it timed out with no declared result (or one that can no longer be stored)',
        'task_failed_attempt + task_failed':
          'a rejection that arrived before it waited failed it when it was armed',
      },
    },
    skipped: { label: 'workflow failed', causes: { task_skipped: 'its workflow failed' } },
    cancelled: { label: 'workflow cancelled', causes: { task_cancelled: 'its workflow was cancelled' } },
  },
  running: {
    completed: { label: 'agent returned', causes: { task_completed: 'the agent returned a result' } },
    queued: {
      label: 'retry, snooze, release, lost worker',
      causes: {
        'task_failed_attempt + task_retry_queued': 'the agent failed and attempts are left',
        'task_lost + task_retry_queued': 'the sweeper found its worker lost and attempts are left',
        task_snoozed: 'the agent snoozed',
        task_released: 'its worker shut down before the agent finished',
        task_left: 'a job of its attempt delivered again reached a worker without its agent version',
      },
    },
    running: {
      label: 'delivered again',
      causes: {
        task_started:
          'a job of its attempt delivered again was claimed by another worker (only one completion is written)',
      },
    },
    failed: {
      label: 'no retries left, permanent',
      causes: {
        'task_failed_attempt + task_failed':
          'the agent failed and no attempts are left, or the failure was permanent (PermanentError, a result that cannot be stored)',
        'task_lost + task_failed': 'the sweeper found its worker lost and no attempts are left',
      },
    },
    cancelled: { label: 'workflow cancelled', causes: { task_cancelled: 'its workflow was cancelled' } },
  },
  completed: {},
  failed: {},
  skipped: {},
  cancelled: {},
}

/** The audit actions that insert a task (a workflow's start, or an agent spawning tasks), and its first status. */
export const TASK_INSERTIONS: Readonly<Record<string, { status: TaskStatus; label: string }>> = {
  task_created: { status: 'pending', label: 'inserted, dependencies left' },
  task_queued: { status: 'queued', label: 'inserted ready' },
}

export const TERMINAL_TASK_STATUSES: readonly TaskStatus[] = ['completed', 'failed', 'skipped', 'cancelled']

export function isTerminalTask(status: TaskStatus): boolean {
  return TERMINAL_TASK_STATUSES.includes(status)
}

export function canTransition(from: TaskStatus, to: TaskStatus): boolean {
  return TASK_TRANSITIONS[from][to] !== undefined
}

export const WORKFLOW_TRANSITIONS: Readonly<
  Record<WorkflowStatus, Readonly<Partial<Record<WorkflowStatus, Transition>>>>
> = {
  running: {
    completed: { label: 'last task completed', causes: { workflow_completed: 'its last task completed' } },
    failed: { label: 'a task failed', causes: { workflow_failed: 'a task failed for good' } },
    cancelled: { label: 'cancelled', causes: { workflow_cancelled: 'it was cancelled' } },
  },
  completed: {},
  failed: {},
  cancelled: {},
}

/** Mermaid source of the task state diagram (README.md#task-states shows it), from the table. */
export function taskStateDiagram(): string {
  const lines = ['stateDiagram-v2', '  direction LR']
  for (const { status, label } of Object.values(TASK_INSERTIONS)) lines.push(`  [*] --> ${status}: ${label}`)
  for (const from of TASK_STATUSES) {
    for (const [to, t] of Object.entries(TASK_TRANSITIONS[from]))
      lines.push(`  ${from} --> ${to}: ${t.label}`)
  }
  return lines.join('\n')
}
