// The renderer of `equilateral workflow watch`: the terminal frame (header with progress bar, one
// line per task, cut to the terminal), the escape sequence that redraws it in place, the
// line-per-change output for pipes and logs, the summary, and the polling loop with a fake workflow.
import { describe, expect, it } from 'vitest'
import {
  changeLines,
  describeError,
  formatDuration,
  progressBar,
  redraw,
  renderFrame,
  summaryLines,
  watchWorkflow,
} from '../../src/cli/watch.ts'
import type { TaskView, WorkflowView } from '../../src/engine.ts'

const T0 = Date.parse('2026-01-01T12:00:00.000Z')
const at = (ms: number) => new Date(T0 + ms)
const ID = '0190a8d2-5c1e-7a3b-9f00-123456789abc'
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g

function task(key: string, agent: string, patch: Partial<TaskView> = {}): TaskView {
  return {
    id: `task-${key}`,
    key,
    agent,
    agentVersion: null,
    type: key,
    status: 'pending',
    dependsOn: [],
    attempt: 0,
    failures: 0,
    result: null,
    error: null,
    queuedAt: null,
    startedAt: null,
    completedAt: null,
    ...patch,
  }
}

function workflow(tasks: TaskView[], patch: Partial<WorkflowView> = {}): WorkflowView {
  return {
    id: ID,
    type: 'deploy-feature',
    version: 1,
    status: 'running',
    input: null,
    error: null,
    correlationId: 'c',
    replayOf: null,
    createdAt: at(0),
    completedAt: null,
    output: {},
    tasks,
    ...patch,
  }
}

const queued = (key: string, agent: string, ms: number) =>
  task(key, agent, { status: 'queued', attempt: 1, queuedAt: at(ms) })
const running = (key: string, agent: string, ms: number) =>
  task(key, agent, { status: 'running', attempt: 1, queuedAt: at(0), startedAt: at(ms) })
const completed = (key: string, agent: string, start: number, end: number) =>
  task(key, agent, {
    status: 'completed',
    attempt: 1,
    queuedAt: at(0),
    startedAt: at(start),
    completedAt: at(end),
  })

// The deploy-feature DAG at three moments.
const v1 = workflow([
  queued('security', 'security-reviewer', 5),
  queued('tests', 'test-runner', 5),
  task('deploy', 'deployer'),
])
const v2 = workflow([
  completed('security', 'security-reviewer', 10, 52),
  running('tests', 'test-runner', 12),
  task('deploy', 'deployer'),
])
const v3 = workflow(
  [
    completed('security', 'security-reviewer', 10, 52),
    completed('tests', 'test-runner', 12, 1_512),
    completed('deploy', 'deployer', 1_520, 1_530),
  ],
  { status: 'completed', completedAt: at(1_540) },
)

describe('formatting', () => {
  it('formats durations for a glance', () => {
    expect([0, 412, 4_249, 59_949, 125_000, 3_720_000].map(formatDuration)).toEqual([
      '0ms',
      '412ms',
      '4.2s',
      '59.9s',
      '2m05s',
      '1h02m',
    ])
    expect(formatDuration(-5)).toBe('0ms') // a clock a little ahead of the database's
  })

  it('draws a progress bar with the done count', () => {
    expect(progressBar(1, 4, 8)).toBe('[██░░░░░░] 1/4 done')
    expect(progressBar(0, 0, 4)).toBe('[████] 0/0 done')
  })

  it('describes task errors, workflow errors and cancel reasons on one line', () => {
    expect(describeError({ name: 'PermanentError', message: 'deploy\nblocked' })).toBe(
      'PermanentError: deploy blocked',
    )
    expect(describeError({ name: 'Error', message: 'boom' })).toBe('boom')
    expect(describeError({ task: 't1', agent: 'deployer', error: { name: 'Error', message: 'x' } })).toBe(
      'agent deployer failed: x',
    )
    expect(describeError({ reason: 'cancelled from the command line' })).toBe(
      'cancelled from the command line',
    )
    expect(describeError(null)).toBe('')
  })
})

describe('terminal frame', () => {
  it('has a header with status, progress and elapsed time, then one line per task', () => {
    const lines = renderFrame(v2, { now: T0 + 1_000 })
    expect(lines).toEqual([
      `deploy-feature  running    [███████░░░░░░░░░░░░░] 1/3 done  1.0s  ${ID}`,
      '  ✓ security  security-reviewer  completed  attempt 1      42ms',
      '  ◐ tests     test-runner        running    attempt 1     988ms',
      '  · deploy    deployer           pending',
    ])
  })

  it('spins the running symbol and counts its time as the poll goes', () => {
    const a = renderFrame(v2, { now: T0 + 1_000 })[2]
    const b = renderFrame(v2, { now: T0 + 1_250 })[2]
    expect(a?.slice(0, 3)).not.toBe(b?.slice(0, 3))
    expect(b).toContain('1.2s')
  })

  it('shows the error of a failed task and of an attempt that will be retried', () => {
    const lines = renderFrame(
      workflow([
        task('deploy', 'deployer', {
          status: 'queued',
          attempt: 2,
          failures: 1,
          error: { name: 'Error', message: 'connection reset' },
        }),
        task('scan', 'scanner', {
          status: 'failed',
          attempt: 1,
          startedAt: at(0),
          completedAt: at(7),
          error: { name: 'PermanentError', message: 'no' },
        }),
      ]),
      { now: T0 + 100 },
    )
    expect(lines[1]).toMatch(/○ deploy .* queued +attempt 2 +connection reset$/)
    expect(lines[2]).toMatch(/✗ scan .* failed +attempt 1 +7ms {2}PermanentError: no$/)
  })

  it('cuts every line to the terminal width, leaving the last column free', () => {
    for (const line of renderFrame(v2, { now: T0 + 1_000, columns: 40 })) {
      expect([...line].length).toBeLessThan(40)
    }
    expect(renderFrame(v2, { now: T0 + 1_000, columns: 40 })[0]).toMatch(/…$/)
  })

  it('colours symbols and the status without changing the visible text', () => {
    const plain = renderFrame(v2, { now: T0 + 1_000, columns: 60 })
    const coloured = renderFrame(v2, { now: T0 + 1_000, columns: 60, color: true })
    expect(coloured.join('\n')).toMatch(ANSI)
    expect(coloured.map((l) => l.replace(ANSI, ''))).toEqual(plain)
    expect(plain.join('\n')).not.toMatch(ANSI)
  })

  it('folds completed tasks when the frame would be taller than the terminal', () => {
    const many = workflow([
      ...Array.from({ length: 10 }, (_, i) => completed(`done${i}`, 'a', 0, 5)),
      running('busy', 'a', 3),
      queued('next', 'a', 4),
    ])
    const lines = renderFrame(many, { now: T0 + 10, rows: 8 })
    expect(lines.length).toBeLessThan(8)
    expect(lines.some((l) => l.includes('busy'))).toBe(true)
    expect(lines.some((l) => l.includes('next'))).toBe(true)
    expect(lines.at(-1)).toBe('  … 7 more tasks (7 completed)')
  })

  it('redraws in place: cursor up over the previous frame, clear and rewrite each line, clear below', () => {
    expect(redraw(0, ['a', 'b'])).toBe('\r\x1b[2Ka\n\r\x1b[2Kb\n\x1b[J')
    expect(redraw(4, ['a'])).toBe('\x1b[4A\r\x1b[2Ka\n\x1b[J')
  })
})

describe('line per change', () => {
  it('describes the workflow and every task on the first poll', () => {
    expect(changeLines(undefined, v1)).toEqual([
      `workflow ${ID} (deploy-feature): running, 0/3 tasks done`,
      'task security (security-reviewer): queued, attempt 1',
      'task tests (test-runner): queued, attempt 1',
      'task deploy (deployer): pending',
    ])
  })

  it('prints only what changed since the previous poll, in the order it happened', () => {
    expect(changeLines(v1, v1)).toEqual([])
    expect(changeLines(v1, v2)).toEqual([
      'task tests (test-runner): running, attempt 1',
      'task security (security-reviewer): completed, attempt 1, 42ms',
    ])
    expect(changeLines(v2, v3)).toEqual([
      'task tests (test-runner): completed, attempt 1, 1.5s',
      'task deploy (deployer): completed, attempt 1, 10ms',
    ])
  })

  it('reports a retry with the error of the failed attempt, and tasks that were spawned', () => {
    const retried = workflow([
      task('security', 'security-reviewer', {
        status: 'queued',
        attempt: 2,
        failures: 1,
        queuedAt: at(60),
        error: { name: 'Error', message: 'timed out' },
      }),
      queued('tests', 'test-runner', 5),
      task('deploy', 'deployer'),
      queued('extra', 'test-runner', 70),
    ])
    expect(changeLines(v1, retried)).toEqual([
      'task security (security-reviewer): queued, attempt 2, after a failure: timed out',
      'task extra (test-runner): queued, attempt 1',
    ])
  })
})

describe('summary', () => {
  it('says how the workflow ended and how long it took', () => {
    expect(summaryLines(v3, T0 + 99_999)).toEqual([`workflow ${ID} completed in 1.5s: 3/3 tasks completed`])
  })

  it('names the failed task and its error', () => {
    const failed = workflow(
      [
        completed('security', 'security-reviewer', 0, 5),
        task('deploy', 'deployer', {
          status: 'failed',
          attempt: 1,
          error: { name: 'PermanentError', message: 'deploy blocked' },
        }),
        task('notify', 'notifier', { status: 'skipped' }),
      ],
      {
        status: 'failed',
        completedAt: at(2_000),
        error: { task: 'task-deploy', agent: 'deployer', error: { message: 'deploy blocked' } },
      },
    )
    expect(summaryLines(failed, 0)).toEqual([
      `workflow ${ID} failed in 2.0s: 1/3 tasks completed (1 completed, 1 failed, 1 skipped)`,
      '  task deploy (deployer) failed: PermanentError: deploy blocked',
    ])
  })

  it('gives the reason of a cancellation', () => {
    const cancelled = workflow([task('a', 'x', { status: 'cancelled' })], {
      status: 'cancelled',
      completedAt: at(300),
      error: { reason: 'not needed' },
    })
    expect(summaryLines(cancelled, 0)).toEqual([
      `workflow ${ID} cancelled in 300ms: 0/1 tasks completed (1 cancelled)`,
      '  cancelled: not needed',
    ])
  })
})

describe('watchWorkflow', () => {
  function fake(views: WorkflowView[]) {
    let i = 0
    return async () => views[Math.min(i++, views.length - 1)] as WorkflowView
  }

  it('without a terminal: prints the changes of each poll, then the summary, and returns the end state', async () => {
    let out = ''
    const last = await watchWorkflow(fake([v1, v1, v2, v3]), {
      out: { write: (text) => (out += text) },
      tty: false,
      intervalMs: 1,
      now: () => T0 + 2_000,
    })
    expect(last.status).toBe('completed')
    expect(out.split('\n')).toEqual([
      ...changeLines(undefined, v1),
      ...changeLines(v1, v2),
      ...changeLines(v2, v3),
      ...summaryLines(v3, 0),
      '',
    ])
    expect(out).not.toMatch(ANSI)
  })

  it('on a terminal: redraws one frame per poll in place, then prints the summary below it', async () => {
    let out = ''
    await watchWorkflow(fake([v1, v2, v3]), {
      out: { write: (text) => (out += text) },
      tty: true,
      columns: () => 120,
      intervalMs: 1,
      now: () => T0 + 2_000,
    })
    // The first frame is written as it is; the next two each move up over the 4 lines before them.
    expect(out.match(/\x1b\[4A/g)).toHaveLength(2)
    expect(out.startsWith('\r\x1b[2Kdeploy-feature  running')).toBe(true)
    expect(out.endsWith(`\x1b[J${summaryLines(v3, 0).join('\n')}\n`)).toBe(true)
  })

  it('stops polling when its signal aborts, without a summary', async () => {
    const stop = new AbortController()
    let out = ''
    let polls = 0
    const last = await watchWorkflow(
      async () => {
        if (++polls === 3) stop.abort()
        return v1
      },
      { out: { write: (text) => (out += text) }, tty: false, intervalMs: 1, signal: stop.signal },
    )
    expect(last.status).toBe('running')
    expect(polls).toBe(3)
    expect(out).not.toContain('completed in')
  })
})
