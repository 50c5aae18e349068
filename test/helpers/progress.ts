// Deadlines that follow progress: a wait on worker processes fails when what it watches has not
// moved for a while, not at a fixed time from its start. On a busy machine a run may take several
// times as long as on an idle one and still be healthy; a stuck run stops moving.
import { queryOnce } from './db.ts'

/**
 * How long a watched quantity may stand still before a wait gives up: TEST_STALL_SECONDS, 60 s by
 * default (a worker process boots in a few seconds on an idle machine, several times that on a
 * busy one, and nothing moves in the database while every worker of a test is booting).
 */
export const STALL_MS = Number(process.env.TEST_STALL_SECONDS ?? 60) * 1000

export interface Poll {
  /** The wait is over. */
  done: boolean
  /** What moves while the work goes on (compared as JSON): a change restarts the stall clock. */
  progress: unknown
  /** Said in the error when the wait gives up. */
  state: string
}

/**
 * Polls until `poll` says done; fails when its progress has not changed for `stallMs`. A poll that
 * throws (the database restarting) counts as no progress and is tried again.
 */
export async function untilSettled(
  what: string,
  poll: () => Promise<Poll>,
  { stallMs = STALL_MS, everyMs = 300 }: { stallMs?: number; everyMs?: number } = {},
): Promise<void> {
  let last: string | undefined
  let movedAt = performance.now()
  let state = 'not polled yet'
  for (;;) {
    const seen = await poll().catch((error: unknown) => ({
      done: false,
      progress: last,
      state: String(error),
    }))
    if (seen.done) return
    state = seen.state
    const mark = JSON.stringify(seen.progress)
    if (mark !== last) {
      last = mark
      movedAt = performance.now()
    } else if (performance.now() - movedAt > stallMs) {
      throw new Error(`${what}: nothing moved for ${stallMs / 1000} s (${state})`)
    }
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/**
 * Running workflows and the length of the audit trail: every claim, completion, failure and
 * recovery of a task writes an audit row, so the trail grows while any work moves.
 */
export async function workProgress(url: string): Promise<{ running: number; events: number }> {
  const [row] = await queryOnce<{ running: number; events: number }>(
    url,
    `SELECT (SELECT count(*)::int FROM equilateral.workflows WHERE status = 'running') AS running,
            (SELECT count(*)::int FROM equilateral.agent_audit_log) AS events`,
  )
  return { running: row?.running ?? -1, events: row?.events ?? -1 }
}

/** Waits until no workflow runs (calling `between` before each look, e.g. a sweep). */
export async function untilNoneRunning(
  url: string,
  what: string,
  between: () => Promise<unknown> = async () => {},
  options?: { stallMs?: number; everyMs?: number },
): Promise<void> {
  await untilSettled(
    what,
    async () => {
      await between()
      const { running, events } = await workProgress(url)
      return { done: running === 0, progress: [running, events], state: `${running} workflows still running` }
    },
    options,
  )
}
