// Slots and concurrency: how many agents may run at once, in the process (Slots, shared by the
// workers of one process) and per agent queue of one worker (Capacity); and the slots held for the
// tasks a completion claims for its own worker (local continuation). No database access.
import type { TenantScope } from '../db/tx.ts'
import type { ReadyJob } from '../queue/boss.ts'
import type { ClaimedTask, LocalCandidate } from './claimed.ts'
import type { Completion } from './complete.ts'

/** A wake-up for the loops waiting on it; a wake that arrives while nobody waits is remembered. */
export class Waker {
  #pending = false
  #news = 0
  readonly #waiters = new Set<() => void>()
  /**
   * How many wakes announced new jobs (a NOTIFY, or jobs this process made ready), as opposed to
   * room that came free: a loop compares it to tell whether news came since it last looked.
   */
  get news(): number {
    return this.#news
  }
  wake(news = true): void {
    if (news) this.#news++
    if (this.#waiters.size === 0) this.#pending = true
    for (const resolve of this.#waiters) resolve()
    this.#waiters.clear()
  }
  /** Forgets a remembered wake: what it announced is visible to a fetch that starts now. */
  clear(): void {
    this.#pending = false
  }
  async wait(ms: number): Promise<void> {
    if (this.#pending) {
      this.#pending = false
      return
    }
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer)
        this.#waiters.delete(done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.#waiters.add(done)
    })
  }
}

/**
 * Agent slots: how many agents may run at once. Shared by the workers of one process in
 * database-per-tenant mode, so serving more tenant databases does not multiply the agents a process
 * runs at once.
 */
export class Slots {
  readonly size: number
  #taken = 0
  /** Woken whenever a slot is given back. */
  readonly waker = new Waker()

  constructor(size: number) {
    this.size = size
  }

  get free(): number {
    return this.size - this.#taken
  }

  take(n: number): void {
    this.#taken += n
  }

  give(n: number): void {
    this.#taken = Math.max(0, this.#taken - n)
    this.waker.wake()
  }
}

/** An attempt this worker runs, from its claim to the end of its outcome's write. */
export interface Running {
  task: ClaimedTask
  scope: TenantScope
  controller: AbortController
  /** 'agent' while the handler runs; 'writing' once its outcome is being written. */
  phase: 'agent' | 'writing'
  /** Its agent slot passed to a child it made ready and claimed locally: not given back at its end. */
  donated?: boolean
  done: Promise<void>
}

/**
 * One worker's agent slots: the process's Slots, and per queue its agent's limit and the jobs in
 * flight (fetched, claimed or running).
 */
export class Capacity {
  readonly slots: Slots
  /** Per queue: how many of its agents may run at once in this worker. */
  readonly #limits: ReadonlyMap<string, number>
  readonly #inflight = new Map<string, number>()
  /** Slots held for local continuation picks whose completion transaction is under way. */
  readonly #picks = new Map<string, { queue: string; donor: Running | null }>()

  constructor(slots: Slots, limits: ReadonlyMap<string, number>) {
    this.slots = slots
    this.#limits = limits
    for (const queue of limits.keys()) this.#inflight.set(queue, 0)
  }

  /** How many more of the queue's agents may run in this worker. */
  room(queue: string): number {
    return (this.#limits.get(queue) as number) - (this.#inflight.get(queue) ?? 0)
  }

  /** Fetched jobs of a queue take its room and the process's slots. */
  take(queue: string, n: number): void {
    this.#inflight.set(queue, (this.#inflight.get(queue) ?? 0) + n)
    this.slots.take(n)
  }

  release(queue: string, n: number): void {
    this.#inflight.set(queue, Math.max(0, (this.#inflight.get(queue) ?? 0) - n))
    this.slots.give(n)
  }

  /**
   * Local continuation, inside a completion's transaction: of the tasks it made ready, picks those
   * this worker will claim and run, and holds an agent slot for each (synchronously, so the loops
   * cannot take the same slots meanwhile). A pick takes a free slot, or else the slot of a task of
   * the batch that is ending (its completion is this transaction). At most half of the ready tasks
   * (at least one) are picked: the rest are queued for any worker, so one process cannot hoard a
   * workflow's fan-out. `versions`: per queue, the agent versions this worker has.
   */
  takeLocal(
    ready: readonly ReadyJob[],
    batch: readonly Completion[],
    running: ReadonlyMap<string, Running>,
    versions: (queue: string) => readonly number[] | undefined,
  ): LocalCandidate[] {
    const eligible = ready.filter((r) => !r.startAfter && versions(r.queue) !== undefined)
    const share = Math.max(1, Math.floor(ready.length / 2))
    const donors = batch.flatMap((c) => {
      const r = running.get(c.taskId)
      return r && r.phase === 'writing' && !r.donated ? [r] : []
    })
    const picks: LocalCandidate[] = []
    for (const job of eligible) {
      if (picks.length >= share) break
      const limit = this.#limits.get(job.queue) as number
      const inflight = this.#inflight.get(job.queue) ?? 0
      let donor: Running | null = null
      if (this.slots.free > 0 && inflight < limit) {
        this.slots.take(1)
      } else {
        // A donor of the same queue frees the queue's count it takes; another queue's needs room.
        const i = donors.findIndex((d) => d.task.job.queue === job.queue || inflight < limit)
        if (i < 0) continue
        donor = donors.splice(i, 1)[0] as Running
        donor.donated = true
        this.#inflight.set(donor.task.job.queue, (this.#inflight.get(donor.task.job.queue) ?? 1) - 1)
      }
      this.#inflight.set(job.queue, (this.#inflight.get(job.queue) ?? 0) + 1)
      this.#picks.set(job.taskId, { queue: job.queue, donor })
      picks.push({
        queue: job.queue,
        taskId: job.taskId,
        attempt: job.attempt,
        versions: versions(job.queue) ?? [],
      })
    }
    return picks
  }

  /** The picks were not claimed (or their transaction did not commit): their slots go back. */
  giveBackLocal(picks: readonly LocalCandidate[]): void {
    for (const p of picks) {
      const held = this.#picks.get(p.taskId)
      if (!held) continue
      this.#picks.delete(p.taskId)
      if (held.donor) {
        held.donor.donated = false
        this.#inflight.set(held.queue, Math.max(0, (this.#inflight.get(held.queue) ?? 0) - 1))
        const q = held.donor.task.job.queue
        this.#inflight.set(q, (this.#inflight.get(q) ?? 0) + 1)
      } else this.release(held.queue, 1)
    }
  }

  /** A pick was claimed and committed: its slot is now its running task's. */
  claimedLocal(taskId: string): void {
    this.#picks.delete(taskId)
  }
}
