// Event-loop watchdog for worker processes. An agent that blocks the event loop (a synchronous
// endless loop, a catastrophic regex) ignores its AbortSignal and freezes the whole process: no
// heartbeat, no completion, no other agent. The sweeper recovers its tasks on other workers, but
// the frozen process keeps its connections and never comes back, and a platform supervisor
// (Heroku, Render, Kubernetes) only restarts processes that exit. Each retry of such a task would
// freeze one more process. A thread of its own therefore watches a counter the main thread bumps
// in shared memory; when the counter has not moved for `limitMs`, the thread writes one log line
// to stderr and kills the process with SIGKILL, so the supervisor starts a fresh one.
import { Worker } from 'node:worker_threads'

const TICK_MS = 250

const THREAD = `
const { workerData } = require('node:worker_threads')
const { writeSync } = require('node:fs')
const ticks = new Int32Array(workerData.buffer)
let seen = Atomics.load(ticks, 0)
let since = Date.now()
setInterval(() => {
  const now = Date.now()
  const current = Atomics.load(ticks, 0)
  if (current !== seen) {
    seen = current
    since = now
    return
  }
  if (now - since < workerData.limitMs) return
  writeSync(2, JSON.stringify({
    level: 60, time: now, pid: workerData.pid, msg: 'event loop blocked; killing the process',
    blockedMs: now - since, limitMs: workerData.limitMs,
  }) + '\\n')
  process.kill(workerData.pid, 'SIGKILL')
}, ${TICK_MS})
`

export interface Watchdog {
  stop(): Promise<void>
}

/** Starts watching this process's event loop; it is killed after `limitMs` without a turn. */
export function startWatchdog(limitMs: number): Watchdog {
  const buffer = new SharedArrayBuffer(4)
  const ticks = new Int32Array(buffer)
  const timer = setInterval(() => Atomics.add(ticks, 0, 1), TICK_MS)
  timer.unref()
  const thread = new Worker(THREAD, { eval: true, workerData: { buffer, limitMs, pid: process.pid } })
  thread.unref()
  return {
    async stop() {
      clearInterval(timer)
      await thread.terminate()
    },
  }
}
