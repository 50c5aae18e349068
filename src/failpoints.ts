// Named crash points in the hot path, for crash tests only. EQUILATERAL_FAILPOINTS lists the points
// to arm, each with an optional probability, e.g. `complete.before-commit=0.2,claim.after-commit`.
// An armed point that fires kills the process with SIGKILL: no finally blocks, no flushing, no
// ROLLBACK sent, like the OOM killer or a lost machine. A point armed with `stop` instead
// (`complete.before-commit=stop`) freezes the process with SIGSTOP the first time it is met, like a
// stopped container or a machine that stalls: its open transaction stays open, its locks held, until
// someone sends SIGCONT; it does not fire again. The variable is read once at load; when it is unset
// (production), a point costs one comparison.
//
// The points, in the order a task meets them:
//   claim.before-commit      the claim's statements ran; its transaction is still open
//   claim.after-commit       the task is running and its job active; the agent has not started
//   agent.after-return       the agent returned; the completion transaction has not begun
//   complete.after-dependents  the completion's statements and the dependents' jobs are written;
//                            the fetched jobs are not yet acknowledged and nothing is committed
//   complete.before-commit   everything is written, COMMIT not yet sent
//   complete.after-commit    committed; the worker has not yet taken note (hooks, slots, logs)
//   local.after-commit       committed with ready children claimed by this worker (local
//                            continuation): they are running, with no job, and none has started
//   fail.before-commit       a failed attempt's retry or dead letter is written, not committed
//   fail.after-commit        the failure is committed; the worker has not yet taken note
export const FAILPOINTS = [
  'claim.before-commit',
  'claim.after-commit',
  'agent.after-return',
  'complete.after-dependents',
  'complete.before-commit',
  'complete.after-commit',
  'local.after-commit',
  'fail.before-commit',
  'fail.after-commit',
] as const

export type Failpoint = (typeof FAILPOINTS)[number]

const armed = parseFailpoints(process.env.EQUILATERAL_FAILPOINTS)

/** Kills (or freezes) the process here if the point is armed (and its dice say so). */
export function failpoint(name: Failpoint): void {
  if (armed === null) return
  const p = armed.get(name)
  if (p === 'stop') {
    armed.delete(name)
    // Delivered before kill() returns: the process stops here, and goes on from here on SIGCONT.
    process.kill(process.pid, 'SIGSTOP')
  } else if (p !== undefined && Math.random() < p) process.kill(process.pid, 'SIGKILL')
}

/**
 * `a=0.5,b,c=stop` → {a: 0.5, b: 1, c: 'stop'}; unknown names and bad probabilities are refused
 * loudly.
 */
export function parseFailpoints(spec: string | undefined): Map<Failpoint, number | 'stop'> | null {
  if (!spec?.trim()) return null
  const points = new Map<Failpoint, number | 'stop'>()
  for (const part of spec.split(',')) {
    const [name = '', probability] = part.trim().split('=')
    if (!(FAILPOINTS as readonly string[]).includes(name)) {
      throw new Error(`EQUILATERAL_FAILPOINTS: unknown point "${name}" (known: ${FAILPOINTS.join(', ')})`)
    }
    if (probability === 'stop') {
      points.set(name as Failpoint, 'stop')
      continue
    }
    const p = probability === undefined ? 1 : Number(probability)
    if (!(p >= 0 && p <= 1)) {
      throw new Error(`EQUILATERAL_FAILPOINTS: probability of ${name} must be between 0 and 1, or stop`)
    }
    points.set(name as Failpoint, p)
  }
  return points
}
