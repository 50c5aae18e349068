// `equilateral workflow watch`: follows a workflow's tasks until it ends. The rendering is pure
// (a workflow view in, lines out) so it is unit-tested without a terminal; `watchWorkflow` polls and
// writes: on a terminal it redraws one frame in place, elsewhere (a pipe, a log file) it prints one
// line per task change.
import type { Json } from '../core/json.ts'
import { isTerminalTask, TASK_STATUSES, type TaskStatus, type WorkflowStatus } from '../core/task-state.ts'
import type { TaskView, WorkflowView } from '../engine.ts'

export interface FrameOptions {
  /** Milliseconds since the epoch: the duration of what is still running, and the spinner. */
  now: number
  /** Terminal width: lines are cut to it, so a redraw's cursor-up count stays right. */
  columns?: number
  /** Terminal height: a frame taller than it could not be redrawn, so completed tasks are folded. */
  rows?: number
  color?: boolean
}

const SYMBOL: Record<TaskStatus, string> = {
  pending: '·',
  queued: '○',
  running: '◐',
  waiting: '⧗',
  completed: '✓',
  failed: '✗',
  skipped: '↷',
  cancelled: '⊘',
}
const SPINNER = ['◐', '◓', '◑', '◒']
const BAR_WIDTH = 20

const ANSI = {
  green: '\x1b[32m',
  red: '\x1b[31m',
  yellow: '\x1b[33m',
  cyan: '\x1b[36m',
  dim: '\x1b[2m',
  reset: '\x1b[0m',
}
const TASK_COLOR: Record<TaskStatus, string> = {
  pending: ANSI.dim,
  queued: ANSI.cyan,
  running: ANSI.yellow,
  waiting: ANSI.cyan,
  completed: ANSI.green,
  failed: ANSI.red,
  skipped: ANSI.dim,
  cancelled: ANSI.dim,
}
const WORKFLOW_COLOR: Record<WorkflowStatus, string> = {
  running: ANSI.yellow,
  completed: ANSI.green,
  failed: ANSI.red,
  cancelled: ANSI.dim,
}

/** `412ms`, `4.2s`, `2m05s`, `1h02m`. */
export function formatDuration(ms: number): string {
  const t = Math.max(0, Math.round(ms))
  if (t < 1000) return `${t}ms`
  if (t < 60_000) return `${(t / 1000).toFixed(1)}s`
  const s = Math.floor(t / 1000)
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`
}

/** How long the task's current attempt has run (running) or ran (completed, failed); '' otherwise. */
export function taskDuration(task: TaskView, now: number): string {
  if (!task.startedAt) return ''
  if (task.status === 'running') return formatDuration(now - task.startedAt.getTime())
  if ((task.status === 'completed' || task.status === 'failed') && task.completedAt) {
    return formatDuration(task.completedAt.getTime() - task.startedAt.getTime())
  }
  return ''
}

function doneCount(view: WorkflowView): number {
  return view.tasks.filter((t) => t.status === 'completed').length
}

/** `[██████░░░░] 3/5 done` */
export function progressBar(done: number, total: number, width = BAR_WIDTH): string {
  const filled = total === 0 ? width : Math.round((done / total) * width)
  return `[${'█'.repeat(filled)}${'░'.repeat(width - filled)}] ${done}/${total} done`
}

/** One line for an error stored as JSON: a task's `{name, message}`, a workflow's failed task or cancel reason. */
export function describeError(error: Json | null): string {
  if (error === null || typeof error !== 'object' || Array.isArray(error)) {
    return error === null ? '' : JSON.stringify(error)
  }
  const message = typeof error.message === 'string' ? error.message : undefined
  if (message !== undefined) {
    const name = typeof error.name === 'string' && error.name !== 'Error' ? `${error.name}: ` : ''
    return oneLine(`${name}${message}`)
  }
  if (typeof error.task === 'string' || typeof error.agent === 'string') {
    // A workflow's error: the task that failed it (its id) and that task's error.
    const inner = describeError(error.error ?? null)
    return oneLine(`${typeof error.agent === 'string' ? `agent ${error.agent}` : 'a task'} failed: ${inner}`)
  }
  if (typeof error.reason === 'string') return oneLine(error.reason)
  return oneLine(JSON.stringify(error))
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim()
}

/**
 * Cuts a line to fit a terminal `columns` wide (in code points), ending it with '…' when cut. The last
 * column stays free: a line that fills it makes some terminals wrap, and the redraw go wrong.
 */
function fit(text: string, columns: number | undefined): string {
  if (!columns || columns < 3) return text
  const chars = [...text]
  return chars.length < columns ? text : `${chars.slice(0, columns - 2).join('')}…`
}

function paint(text: string, color: string, enabled: boolean | undefined): string {
  return enabled ? `${color}${text}${ANSI.reset}` : text
}

/**
 * The terminal frame: a header (workflow type, status, progress bar, elapsed time, id), then one line per
 * task: status symbol, key, agent, attempt, duration, and the error of a failed or retried attempt.
 */
export function renderFrame(view: WorkflowView, options: FrameOptions): string[] {
  const { now, columns, color, rows } = options
  const elapsed = formatDuration((view.completedAt?.getTime() ?? now) - view.createdAt.getTime())
  const prefix = `${view.type}  `
  const header = `${prefix}${view.status.padEnd(9)}  ${progressBar(doneCount(view), view.tasks.length)}  ${elapsed}  ${view.id}`
  // Cut first, colour after: escape codes take up no columns.
  const cut = fit(header, columns)
  const lines = [
    cut.startsWith(`${prefix}${view.status}`)
      ? prefix +
        paint(view.status, WORKFLOW_COLOR[view.status], color) +
        cut.slice(prefix.length + view.status.length)
      : cut,
  ]
  const keyWidth = Math.max(0, ...view.tasks.map((t) => t.key.length))
  const agentWidth = Math.max(0, ...view.tasks.map((t) => t.agent.length))
  // Taller than the terminal: completed tasks go first into one summary line, then the last ones.
  let shown = view.tasks
  if (rows && rows >= 4 && view.tasks.length > rows - 2) {
    const room = rows - 3 // the header, the folded line, and the line the cursor rests on
    const open = view.tasks.filter((t) => t.status !== 'completed')
    const completed = view.tasks.filter((t) => t.status === 'completed')
    const kept = new Set(
      open.length >= room ? open.slice(0, room) : [...completed.slice(-(room - open.length)), ...open],
    )
    shown = view.tasks.filter((t) => kept.has(t))
  }
  for (const task of shown) {
    const symbol =
      task.status === 'running'
        ? (SPINNER[Math.floor(now / 250) % SPINNER.length] ?? '◐')
        : SYMBOL[task.status]
    const attempt = task.attempt > 0 && task.status !== 'pending' ? `attempt ${task.attempt}` : ''
    const error =
      task.status === 'failed' || (task.failures > 0 && !isTerminalTask(task.status))
        ? describeError(task.error)
        : ''
    const rest = [
      task.key.padEnd(keyWidth),
      task.agent.padEnd(agentWidth),
      task.status.padEnd(9),
      attempt.padEnd(10),
      taskDuration(task, now).padStart(7),
      error,
    ]
      .join('  ')
      .trimEnd()
    const line = fit(`  ${symbol} ${rest}`, columns)
    lines.push(`  ${paint(symbol, TASK_COLOR[task.status], color)}${line.slice(2 + symbol.length)}`)
  }
  if (shown.length < view.tasks.length) {
    const hidden = view.tasks.filter((t) => !shown.includes(t))
    const completed = hidden.filter((t) => t.status === 'completed').length
    lines.push(
      fit(
        `  … ${hidden.length} more task${hidden.length === 1 ? '' : 's'} (${completed} completed)`,
        columns,
      ),
    )
  }
  return lines
}

/**
 * The escape sequence that replaces the previous frame (`previousLines` lines, 0 for the first) with
 * `lines`: cursor up to the frame's first line, then each line cleared and rewritten, then whatever
 * is left below (a longer previous frame) cleared.
 */
export function redraw(previousLines: number, lines: readonly string[]): string {
  const up = previousLines > 0 ? `\x1b[${previousLines}A` : ''
  return `${up}${lines.map((line) => `\r\x1b[2K${line}\n`).join('')}\x1b[J`
}

/** The line describing a task's state, for the line-per-change output. */
export function taskLine(task: TaskView): string {
  const details: string[] = []
  if (task.attempt > 0 && task.status !== 'pending') details.push(`attempt ${task.attempt}`)
  if (task.status === 'completed' || task.status === 'failed') {
    const took = taskDuration(task, 0)
    if (took) details.push(took)
  }
  if (
    task.status === 'failed' ||
    (task.failures > 0 && (task.status === 'queued' || task.status === 'running'))
  ) {
    const error = describeError(task.error)
    if (error) details.push(task.status === 'failed' ? error : `after a failure: ${error}`)
  }
  return `task ${task.key} (${task.agent}): ${task.status}${details.length ? `, ${details.join(', ')}` : ''}`
}

/** When the task entered its current state, as far as the view tells (for ordering change lines). */
function changedAt(task: TaskView): number {
  const at =
    task.status === 'queued'
      ? task.queuedAt
      : task.status === 'running'
        ? task.startedAt
        : task.status === 'pending'
          ? null
          : task.completedAt
  return at?.getTime() ?? 0
}

/**
 * Lines for what changed between two polls (`previous` undefined: the first poll, which describes the
 * workflow and every task): one per task whose status or attempt changed, or that appeared (spawned),
 * in the order the changes happened.
 */
export function changeLines(previous: WorkflowView | undefined, next: WorkflowView): string[] {
  if (!previous) {
    return [
      `workflow ${next.id} (${next.type}): ${next.status}, ${doneCount(next)}/${next.tasks.length} tasks done`,
      ...next.tasks.map(taskLine),
    ]
  }
  const before = new Map(previous.tasks.map((t) => [t.id, t]))
  return next.tasks
    .filter((task) => {
      const old = before.get(task.id)
      return !old || old.status !== task.status || old.attempt !== task.attempt
    })
    .sort((a, b) => changedAt(a) - changedAt(b)) // stable: ties keep the workflow's task order
    .map(taskLine)
}

/** The closing lines: how the workflow ended, how long it took, its tasks by state, and its error. */
export function summaryLines(view: WorkflowView, now: number): string[] {
  const byStatus = TASK_STATUSES.map(
    (status) => [status, view.tasks.filter((t) => t.status === status).length] as const,
  )
    .filter(([, n]) => n > 0)
    .map(([status, n]) => `${n} ${status}`)
    .join(', ')
  const elapsed = formatDuration((view.completedAt?.getTime() ?? now) - view.createdAt.getTime())
  const lines = [
    `workflow ${view.id} ${view.status} in ${elapsed}: ${doneCount(view)}/${view.tasks.length} tasks completed${
      byStatus && doneCount(view) !== view.tasks.length ? ` (${byStatus})` : ''
    }`,
  ]
  if (view.status !== 'completed' && view.error !== null) {
    const failed = view.tasks.find((t) => t.status === 'failed')
    lines.push(
      failed
        ? `  task ${failed.key} (${failed.agent}) failed: ${describeError(failed.error)}`
        : `  ${view.status}: ${describeError(view.error)}`,
    )
  }
  return lines
}

export interface WatchOutput {
  write(text: string): unknown
}

export interface WatchOptions {
  out: WatchOutput
  /** Redraw a frame in place (a terminal) instead of printing a line per change. */
  tty: boolean
  color?: boolean
  /** Terminal width and height, read at every frame (they change when the window is resized). */
  columns?: () => number | undefined
  rows?: () => number | undefined
  intervalMs?: number
  signal?: AbortSignal
  now?: () => number
}

/**
 * Polls `getWorkflow` until the workflow is no longer running (or `signal` aborts), writing as it
 * goes, then writes the summary. Returns the last view.
 */
export async function watchWorkflow(
  getWorkflow: () => Promise<WorkflowView>,
  options: WatchOptions,
): Promise<WorkflowView> {
  const now = options.now ?? Date.now
  const interval = options.intervalMs ?? 250
  let previous: WorkflowView | undefined
  let frameLines = 0
  for (;;) {
    const view = await getWorkflow()
    if (options.tty) {
      const lines = renderFrame(view, {
        now: now(),
        columns: options.columns?.(),
        rows: options.rows?.(),
        color: options.color ?? false,
      })
      options.out.write(redraw(frameLines, lines))
      frameLines = lines.length
    } else {
      const lines = changeLines(previous, view)
      if (lines.length) options.out.write(`${lines.join('\n')}\n`)
    }
    previous = view
    if (view.status !== 'running' || options.signal?.aborted) break
    await sleep(interval, options.signal)
    if (options.signal?.aborted) break
  }
  if (previous.status !== 'running') options.out.write(`${summaryLines(previous, now()).join('\n')}\n`)
  return previous
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms)
    function done() {
      clearTimeout(timer)
      signal?.removeEventListener('abort', done)
      resolve()
    }
    signal?.addEventListener('abort', done, { once: true })
  })
}
