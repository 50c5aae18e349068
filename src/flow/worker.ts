// Steps 3-5 of the data flow in one process: fetch jobs -> claim tasks -> run agents -> complete.
//
// One loop fetches min(free slots, batch size) jobs across the agents' queues (each within its
// agent's own limit) and fetches again at once while it gets full batches; when a fetch comes back
// short it sleeps until a NOTIFY names one of its queues (sent by the transaction that made a task
// ready) or the poll interval passes. With tenant limits (or a pg-boss schema our statements were
// not written for, see queue/direct.ts) each queue has such a loop of its own, through pg-boss's
// fetch(), which applies the limits. pg-boss's work()
// is not used for task queues: with batch size 1 it sleeps a full polling interval after every job
// unless notified, and batches hold every slot until the slowest job of the batch finishes.
import { hostname } from 'node:os'
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import type { GroupConcurrencyConfig, PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import {
  type AgentContext,
  type AgentDefinition,
  isZonedTime,
  NO_ZONE,
  type SpawnedTask,
} from '../core/definition.ts'
import { assertStorableJson, type Json, type JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TenantScope } from '../db/tx.ts'
import { DefinitionError, InvalidInputError, isPermanent, serializeError, Snooze } from '../errors.ts'
import { failpoint } from '../failpoints.ts'
import { queueName, type TaskJobData, WAIT_QUEUE } from '../queue/boss.ts'
import { FETCH_ACROSS, usesDirectJobs } from '../queue/direct.ts'
import { CANCEL_CHANNEL, READY_CHANNEL } from './channels.ts'
import { type ClaimedTask, claimTasks, type FetchedJob, type LocalCandidate, openClaimed } from './claim.ts'
import { type Completion, SpawnLeaseLostError } from './complete.ts'
import type { ReadyJob } from '../queue/boss.ts'
import { Completer, isTransient, keepAlive, retryTransient } from './completer.ts'
import { failAttempt } from './fail.ts'
import { heartbeat } from './heartbeat.ts'
import { requeueTasks } from './requeue.ts'
import type { UnservedOutcome, VersionPolicy } from './versions.ts'
import { armWaits, expireWaits, type WaitOutcome } from './waits.ts'
import { type Usage, UsageMeter } from '../usage/meter.ts'
import { withTenantTx } from '../db/tx.ts'

export interface WorkerOptions {
  pool: pg.Pool
  boss: PgBoss
  /** For the dedicated LISTEN connection. */
  connectionString: string
  agents: readonly AgentDefinition<any, any>[]
  scopeOf: (tenantIds: string[]) => Promise<Map<string, TenantScope>>
  log: Logger
  /** Agents running at once in this worker. */
  concurrency: number
  /**
   * The process's agent slots, when several workers share them (one worker per tenant database);
   * default: `concurrency` slots of this worker's own.
   */
  slots?: Slots
  /** Jobs fetched per query at most. */
  batchSize: number
  /** Fetch this often when no NOTIFY arrives (delayed retries, missed notifications). */
  pollIntervalMs: number
  heartbeatIntervalMs: number
  /** On shutdown, how long running agents may finish before their tasks are released. */
  shutdownGraceMs: number
  limits: JsonLimits
  /** Decrypts what agents read (in the claim) and encrypts what they return. */
  keyRing: KeyRing
  /** Per-tenant limit of active jobs across the fleet (pg-boss group concurrency). */
  tenantConcurrency?: GroupConcurrencyConfig | undefined
  /** A task needing an agent version this worker lacks is left for this long (default 5 s) ... */
  agentVersionRetryMs?: number
  /** ... and fails for good once no worker has served it for this long (default 10 minutes). */
  agentVersionWaitMs?: number
  workerId?: string
  /**
   * Local continuation (default on): a completion that makes tasks ready claims some of those whose
   * agents this worker serves, in its own transaction, and runs them at once (see LOCAL_CLAIM in
   * claim.ts). Off when tenant concurrency limits are set: those count pg-boss jobs, and a locally
   * claimed task has none.
   */
  localContinuation?: boolean
  hooks?: WorkerHooks
  /**
   * The process's liveness registration (src/flow/liveness.ts): the worker is listed before it
   * claims a task, and removed when it has stopped.
   */
  liveness?:
    { register(workerId: string): Promise<void>; unregister(workerId: string): Promise<void> } | undefined
}

/** Observation points for metrics; every hook is optional and must not throw. */
export interface WorkerHooks {
  /** The agent is about to run; `dispatchLatencyMs` runs from the task becoming ready to now. */
  taskStarted?(t: ClaimedTask, tenantId: string, dispatchLatencyMs: number): void
  taskFinished?(
    t: ClaimedTask,
    tenantId: string,
    outcome: 'completed' | 'retrying' | 'failed' | 'lease_lost' | 'released' | 'snoozed',
    durationMs: number,
  ): void
  /** The attempt's usage (ctx.usage) was written with its completion or failure. */
  usageRecorded?(t: ClaimedTask, tenantId: string, usage: Usage): void
  /** A completion or a failure of this worker ended the workflow. */
  workflowFinished?(tenantId: string, type: string, status: 'completed' | 'failed', durationMs: number): void
}

class AbortReason extends Error {
  readonly kind: 'timeout' | 'cancelled' | 'shutdown'
  constructor(kind: 'timeout' | 'cancelled' | 'shutdown', message: string) {
    super(message)
    this.name = kind === 'timeout' ? 'TimeoutError' : 'AbortError'
    this.kind = kind
  }
}

interface Running {
  task: ClaimedTask
  scope: TenantScope
  controller: AbortController
  /** 'agent' while the handler runs; 'writing' once its outcome is being written. */
  phase: 'agent' | 'writing'
  /** Its agent slot passed to a child it made ready and claimed locally: not given back at its end. */
  donated?: boolean
  done: Promise<void>
}

/** A job as a fetch returns it: its id, queue, what it carries and the attempt it was fetched at. */
interface FetchedRow {
  id: string
  name: string
  data: TaskJobData
  retryCount: number
}

/** A wake-up for the loops waiting on it; a wake that arrives while nobody waits is remembered. */
class Waker {
  #pending = false
  readonly #waiters = new Set<() => void>()
  wake(): void {
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

export class Worker {
  readonly id: string
  readonly #o: WorkerOptions
  /** The agents this worker runs, by id, then version (several versions of one id may run side by side). */
  readonly #agents = new Map<string, Map<number, AgentDefinition<any, any>>>()
  /** Per queue: the versions of its agent this worker has, for the claim. */
  readonly #versions = new Map<string, VersionPolicy>()
  readonly #running = new Map<string, Running>()
  readonly #inflight = new Map<string, number>()
  readonly #wakers = new Map<string, Waker>()
  readonly #slots: Slots
  /** Per queue: how many of its agents may run at once in this worker. */
  readonly #limits = new Map<string, number>()
  /** Slots held for local continuation picks whose completion transaction is under way. */
  readonly #picks = new Map<string, { queue: string; donor: Running | null }>()
  readonly #completer: Completer
  #loops: Promise<void>[] = []
  #stopping = false
  #listener: pg.Client | null = null
  #listenerRetry: NodeJS.Timeout | null = null
  /** Failed LISTEN connection attempts in a row (backoff, and one warning per outage). */
  #listenFailures = 0
  #heartbeatTimer: NodeJS.Timeout | null = null

  constructor(options: WorkerOptions) {
    this.#o = options
    this.id = options.workerId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`
    this.#slots = options.slots ?? new Slots(options.concurrency)
    for (const a of options.agents) {
      let versions = this.#agents.get(a.id)
      if (!versions) this.#agents.set(a.id, (versions = new Map()))
      const known = versions.get(a.version)
      if (known && known !== a) {
        throw new DefinitionError(`agent "${a.id}" version ${a.version} is given twice`, a.id)
      }
      versions.set(a.version, a)
    }
    for (const [id, versions] of this.#agents) {
      this.#versions.set(queueName(id), {
        versions: [...versions.keys()].sort((x, y) => x - y),
        retryMs: options.agentVersionRetryMs ?? 5000,
        waitMs: options.agentVersionWaitMs ?? 600_000,
      })
    }
    for (const id of this.#agents.keys()) {
      const agent = this.#latest(id)
      // One loop per agent id, whatever the versions; the highest version's concurrency applies.
      this.#limits.set(queueName(id), Math.min(agent.concurrency ?? options.concurrency, options.concurrency))
    }
    const local = (options.localContinuation ?? true) && !options.tenantConcurrency
    this.#completer = new Completer(
      options,
      (error, attempt) => options.log.warn({ err: error, attempt }, 'completion write failed; retrying'),
      local
        ? {
            workerId: this.id,
            take: (ready, batch) => this.#takeLocal(ready, batch),
            giveBack: (picks) => this.#giveBackLocal(picks),
            run: (scope, tasks) => this.#runLocal(scope, tasks),
          }
        : undefined,
    )
  }

  get runningCount(): number {
    return this.#running.size
  }

  async start(): Promise<void> {
    await this.#o.liveness?.register(this.id)
    await this.#listen()
    // Where our statements read pg-boss's jobs (queue/direct.ts) and no tenant limits apply, one
    // loop fetches for every agent queue of this worker in one statement; else one loop per queue
    // through pg-boss's fetch(), which also applies the tenant limits.
    const queues = [...this.#agents.keys()].map(queueName)
    for (const queue of queues) this.#inflight.set(queue, 0)
    if (usesDirectJobs(this.#o.boss) && !this.#o.tenantConcurrency) {
      const waker = new Waker()
      for (const queue of queues) this.#wakers.set(queue, waker)
      this.#loops.push(this.#agentLoop('agents', waker, queues, true))
    } else {
      for (const queue of queues) {
        const waker = new Waker()
        this.#wakers.set(queue, waker)
        this.#loops.push(this.#agentLoop(queue, waker, [queue], false))
      }
    }
    // Wait tasks: arming and timeouts are short transactions, handled in the loop, no agent slot.
    const waitWaker = new Waker()
    this.#wakers.set(WAIT_QUEUE, waitWaker)
    this.#loops.push(
      this.#loop(WAIT_QUEUE, waitWaker, {
        free: () => this.#o.batchSize,
        untilFree: async () => {},
        fetch: async (n) =>
          (await this.#o.boss.fetch<TaskJobData>(WAIT_QUEUE, { batchSize: n })).map((j) => ({
            id: j.id,
            name: WAIT_QUEUE,
            data: j.data,
            retryCount: j.retryCount,
          })),
        handle: (jobs) => this.#handleWaits(jobs),
      }),
    )
    this.#heartbeatTimer = setInterval(() => void this.#beat(), this.#o.heartbeatIntervalMs)
    this.#o.log.info(
      {
        worker: this.id,
        agents: [...this.#agents].map(([id, v]) => `${id}@${[...v.keys()].sort((x, y) => x - y).join(',')}`),
        concurrency: this.#o.concurrency,
      },
      'worker started',
    )
  }

  /** Wakes the loop of a queue (as a NOTIFY would). */
  wake(queue?: string): void {
    if (queue) this.#wakers.get(queue)?.wake()
    else for (const w of new Set(this.#wakers.values())) w.wake()
  }

  /**
   * The loop fetching the jobs of agent queues: as many as there are free slots of the process and
   * of each queue's agent; the jobs of each queue are claimed (per tenant) and their agents run.
   * `across`: all of `queues` in one statement of ours (FETCH_ACROSS); else pg-boss's fetch() of the
   * one queue.
   */
  #agentLoop(name: string, waker: Waker, queues: readonly string[], across: boolean): Promise<void> {
    const room = (queue: string) => (this.#limits.get(queue) as number) - (this.#inflight.get(queue) ?? 0)
    let turn = 0
    return this.#loop(name, waker, {
      // Agents run after the loop moves on: they hold slots (theirs and the process's) until they end.
      free: () =>
        Math.min(
          queues.reduce((n, q) => n + Math.max(0, room(q)), 0),
          this.#slots.free,
        ),
      untilFree: () => this.#slots.waker.wait(this.#o.pollIntervalMs),
      fetch: async (n) => {
        if (!across) {
          const queue = queues[0] as string
          const jobs = await this.#o.boss.fetch<TaskJobData>(queue, {
            batchSize: n,
            ...(this.#o.tenantConcurrency ? { groupConcurrency: this.#o.tenantConcurrency } : {}),
          })
          return jobs.map((j) => ({ id: j.id, name: queue, data: j.data, retryCount: j.retryCount }))
        }
        // Each fetch starts with the next queue, so a busy queue cannot starve the others.
        turn = (turn + 1) % queues.length
        const order = [...queues.slice(turn), ...queues.slice(0, turn)].filter((q) => room(q) > 0)
        const { rows } = await this.#o.pool.query({
          name: 'eq_fetch_across',
          text: FETCH_ACROSS,
          values: [order, order.map((q) => Math.min(n, room(q))), n],
        })
        return rows as FetchedRow[]
      },
      handle: async (jobs) => {
        const byQueue = Map.groupBy(jobs, (j) => j.name)
        for (const [queue, list] of byQueue) {
          this.#inflight.set(queue, (this.#inflight.get(queue) ?? 0) + list.length)
          this.#slots.take(list.length)
        }
        await Promise.all([...byQueue].map(([queue, list]) => this.#dispatch(queue, list)))
      },
    })
  }

  /** Fetches jobs while there are some and room for them; sleeps until woken when there are none. */
  async #loop(
    name: string,
    waker: Waker,
    room: {
      free: () => number
      untilFree: () => Promise<void>
      fetch: (n: number) => Promise<FetchedRow[]>
      handle: (jobs: FetchedRow[]) => Promise<void>
    },
  ): Promise<void> {
    let failures = 0
    while (!this.#stopping) {
      const free = room.free()
      if (free <= 0) {
        await room.untilFree()
        continue
      }
      let jobs: FetchedRow[]
      // A wake (a NOTIFY sent at commit, or our own) that came before this fetch starts is answered
      // by it; remembered, it would cost an empty fetch after this one.
      waker.clear()
      const wanted = Math.min(free, this.#o.batchSize)
      try {
        jobs = await room.fetch(wanted)
        if (failures > 0) this.#o.log.info({ queue: name, failures }, 'fetch recovered')
        failures = 0
      } catch (error) {
        failures++
        // One warning per outage and loop; the retries that follow are debug lines.
        if (failures === 1) this.#o.log.warn({ err: error, queue: name }, 'fetch failed; backing off')
        else this.#o.log.debug({ err: error, queue: name, failures }, 'fetch failed again')
        await waker.wait(Math.min(10_000, 100 * 2 ** failures))
        continue
      }
      if (jobs.length === 0) {
        await waker.wait(this.#o.pollIntervalMs)
        continue
      }
      try {
        await room.handle(jobs)
      } catch (error) {
        this.#o.log.error(
          { err: error, queue: name, jobs: jobs.length },
          'claiming fetched jobs failed; the sweeper will recover them',
        )
      }
      // Fewer jobs than asked for: the queues had no more when the fetch ran. Fetch again when a
      // NOTIFY (or the poll) says there is more, not at once: that fetch would come back empty.
      if (jobs.length < wanted) await waker.wait(this.#o.pollIntervalMs)
    }
  }

  /**
   * Arms the fetched wait tasks, or times them out (their timer jobs), per tenant. A failure leaves
   * the jobs active: pg-boss expires them and the sweeper recovers the tasks.
   */
  async #handleWaits(jobs: FetchedRow[]): Promise<void> {
    const fetched = jobs.flatMap((j) =>
      j.data && typeof j.data.t === 'string'
        ? [
            {
              tenantId: j.data.t,
              timeout: j.data.x === 'timeout',
              job: {
                queue: WAIT_QUEUE,
                jobId: j.id,
                retryCount: j.retryCount,
                taskId: j.data.k,
                workflowId: j.data.w,
                attempt: j.data.a,
              },
            },
          ]
        : [],
    )
    const scopes = await this.#o.scopeOf([...new Set(fetched.map((f) => f.tenantId))])
    for (const [tenantId, list] of Map.groupBy(fetched, (f) => f.tenantId)) {
      const scope = scopes.get(tenantId)
      if (!scope) continue
      const arm = list.filter((f) => !f.timeout).map((f) => f.job)
      const expire = list.filter((f) => f.timeout).map((f) => f.job)
      try {
        if (arm.length > 0) this.#waitOutcome(scope, await armWaits(this.#o, scope, arm))
        if (expire.length > 0) this.#waitOutcome(scope, await expireWaits(this.#o, scope, expire, expire))
      } catch (error) {
        this.#o.log.error(
          { err: error, tenant: tenantId, jobs: list.length },
          'wait tasks could not be handled',
        )
      }
    }
  }

  #waitOutcome(scope: TenantScope, outcome: WaitOutcome): void {
    for (const wf of outcome.workflowsCompleted)
      this.#o.hooks?.workflowFinished?.(scope.tenantId, wf.type, 'completed', wf.durationMs)
    for (const wf of outcome.workflowsFailed)
      this.#o.hooks?.workflowFinished?.(scope.tenantId, wf.type, 'failed', wf.durationMs)
    for (const d of outcome.dispatched) this.wake(d.queue)
  }

  #release(queue: string, n: number): void {
    this.#inflight.set(queue, Math.max(0, (this.#inflight.get(queue) ?? 0) - n))
    this.#slots.give(n)
  }

  async #dispatch(queue: string, jobs: FetchedRow[]): Promise<void> {
    let unclaimed = jobs.length
    try {
      const fetched: FetchedJob[] = []
      const tenants = new Map<string, FetchedJob[]>()
      for (const j of jobs) {
        const d = j.data
        if (!d || typeof d.t !== 'string' || typeof d.k !== 'string' || typeof d.a !== 'number') {
          this.#o.log.error({ queue, job: j.id }, 'job without task ids; failing it')
          await this.#o.boss.fail(queue, j.id, { error: 'job data is not a task reference' })
          continue
        }
        const f: FetchedJob = {
          queue,
          jobId: j.id,
          retryCount: j.retryCount,
          taskId: d.k,
          workflowId: d.w,
          attempt: d.a,
        }
        fetched.push(f)
        let list = tenants.get(d.t)
        if (!list) tenants.set(d.t, (list = []))
        list.push(f)
      }
      const scopes = await this.#o.scopeOf([...tenants.keys()])
      for (const [tenantId, list] of tenants) {
        const scope = scopes.get(tenantId)
        if (!scope) {
          this.#o.log.warn(
            { queue, tenant: tenantId, jobs: list.length },
            'jobs of an unknown or suspended tenant; leaving them',
          )
          continue
        }
        const { claimed, unserved } = await claimTasks(
          this.#o,
          scope,
          list,
          this.id,
          this.#versions.get(queue),
        )
        for (const task of claimed) {
          unclaimed--
          this.#run(task, scope)
        }
        if (unserved.length > 0) this.#unserved(scope, unserved)
      }
    } finally {
      this.#release(queue, unclaimed)
    }
  }

  /**
   * Local continuation, inside a completion's transaction: of the tasks it made ready, picks those
   * this worker will claim and run, and holds an agent slot for each (synchronously, so the loops
   * cannot take the same slots meanwhile). A pick takes a free slot, or else the slot of a task of
   * the batch that is ending (its completion is this transaction). At most half of the ready tasks
   * (at least one) are picked: the rest are queued for any worker, so one process cannot hoard a
   * workflow's fan-out.
   */
  #takeLocal(ready: readonly ReadyJob[], batch: readonly Completion[]): LocalCandidate[] {
    if (this.#stopping) return []
    const eligible = ready.filter((r) => !r.startAfter && this.#versions.has(r.queue))
    const share = Math.max(1, Math.floor(ready.length / 2))
    const donors = batch.flatMap((c) => {
      const r = this.#running.get(c.taskId)
      return r && r.phase === 'writing' && !r.donated ? [r] : []
    })
    const picks: LocalCandidate[] = []
    for (const job of eligible) {
      if (picks.length >= share) break
      const limit = this.#limits.get(job.queue) as number
      const inflight = this.#inflight.get(job.queue) ?? 0
      let donor: Running | null = null
      if (this.#slots.free > 0 && inflight < limit) {
        this.#slots.take(1)
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
        versions: this.#versions.get(job.queue)?.versions ?? [],
      })
    }
    return picks
  }

  /** The picks were not claimed (or their transaction did not commit): their slots go back. */
  #giveBackLocal(picks: readonly LocalCandidate[]): void {
    for (const p of picks) {
      const held = this.#picks.get(p.taskId)
      if (!held) continue
      this.#picks.delete(p.taskId)
      if (held.donor) {
        held.donor.donated = false
        this.#inflight.set(held.queue, Math.max(0, (this.#inflight.get(held.queue) ?? 0) - 1))
        const q = held.donor.task.job.queue
        this.#inflight.set(q, (this.#inflight.get(q) ?? 0) + 1)
      } else this.#release(held.queue, 1)
    }
  }

  /** The completion committed: the locally claimed tasks run on the slots held for them. */
  #runLocal(scope: TenantScope, tasks: ClaimedTask[]): void {
    openClaimed(this.#o.keyRing, scope, tasks)
    for (const task of tasks) {
      this.#picks.delete(task.taskId)
      this.#run(task, scope)
    }
  }

  /** The agent's highest version this worker has. */
  #latest(id: string): AgentDefinition<any, any> {
    const versions = this.#agents.get(id) as Map<number, AgentDefinition<any, any>>
    return versions.get(Math.max(...versions.keys())) as AgentDefinition<any, any>
  }

  /** Logs the tasks the claim left for a worker with their agent version, or failed for good. */
  #unserved(scope: TenantScope, outcomes: readonly UnservedOutcome[]): void {
    for (const u of outcomes) {
      const fields = {
        tenant: scope.tenantId,
        workflow: u.task.workflowId,
        task: u.task.taskId,
        agent: u.task.agentId,
        agentVersion: u.task.agentVersion,
        versions: this.#versions.get(u.task.job.queue)?.versions,
      }
      if (u.kind === 'left') {
        this.#o.log[u.firstLeft ? 'info' : 'debug'](fields, 'task left for a worker with its agent version')
        continue
      }
      this.#o.log.warn({ ...fields, err: u.error }, 'no worker had the agent version; task failed')
      // Counted as any attempt that fails (for good), with no run time: the agent never ran.
      this.#o.hooks?.taskFinished?.(u.task, scope.tenantId, u.outcome.kind, 0)
      if (u.outcome.kind === 'failed' && u.outcome.workflow) {
        const { type, durationMs } = u.outcome.workflow
        this.#o.hooks?.workflowFinished?.(scope.tenantId, type, 'failed', durationMs)
      }
    }
  }

  #run(task: ClaimedTask, scope: TenantScope): void {
    const controller = new AbortController()
    const entry = { task, scope, controller, phase: 'agent' } as Running
    this.#running.set(task.taskId, entry)
    entry.done = this.#execute(entry)
      .catch((error: unknown) => {
        // #execute records every outcome itself; reaching here is a bug, not a reason to crash.
        this.#o.log.error({ err: error, task: task.taskId }, 'unexpected error running a task')
      })
      .finally(() => {
        this.#running.delete(task.taskId)
        if (!entry.donated) this.#release(task.job.queue, 1)
        // With tenant limits an empty fetch may only mean that every tenant with jobs waiting was at
        // its limit. This task's job has normally been completed by now, freeing a slot of its tenant:
        // fetch again at once, or a tenant at its limit would start at most its limit per poll interval.
        if (this.#o.tenantConcurrency) this.wake(task.job.queue)
      })
  }

  async #execute(entry: Running): Promise<void> {
    const { task, scope, controller } = entry
    // The version the task's run needs (the claim only returns those this worker has), or the highest.
    const agent =
      task.agentVersion === null
        ? this.#latest(task.agentId)
        : (this.#agents.get(task.agentId)?.get(task.agentVersion) as AgentDefinition<any, any>)
    const started = performance.now()
    const log = this.#o.log.child({
      tenant: scope.tenantId,
      workflow: task.workflowId,
      task: task.taskId,
      taskKey: task.taskKey,
      agent: task.agentId,
      attempt: task.attempt,
      correlation: task.correlationId,
    })
    this.#o.hooks?.taskStarted?.(task, scope.tenantId, task.queueWaitMs + (started - task.claimedAt))
    const spawned: SpawnedTask[] = []
    const meter = new UsageMeter(agent.id, agent.usage)
    const timer = setTimeout(
      () => controller.abort(new AbortReason('timeout', `task timed out after ${task.timeoutMs} ms`)),
      task.timeoutMs,
    )
    const ctx: AgentContext<any> = {
      tenantId: scope.tenantId,
      workflowId: task.workflowId,
      workflowType: task.workflowType,
      taskId: task.taskId,
      taskKey: task.taskKey,
      taskType: task.taskType,
      attempt: task.attempt,
      idempotencyKey: `${task.taskId}:${task.attempt}`,
      correlationId: task.correlationId,
      data: task.data,
      input: task.input,
      results: task.results,
      log,
      signal: controller.signal,
      heartbeat: async () => {
        const held = await heartbeat(this.#o.pool, scope, [task])
        if (!held.has(task.taskId)) {
          controller.abort(new AbortReason('cancelled', 'the task is no longer held by this attempt'))
          throw controller.signal.reason
        }
      },
      spawn: (t) => {
        spawned.push(...(Array.isArray(t) ? t : [t]))
      },
      snooze: (delay) => {
        throw new Snooze(snoozeDelay(delay))
      },
      agentVersion: agent.version,
      usage: (amounts) => meter.add(amounts),
    }
    let result: Json = null
    let failure: { error: ReturnType<typeof serializeError>; permanent: boolean } | null = null
    try {
      // A payload that could not be decrypted fails the attempt without running the agent.
      if (task.payloadError) throw task.payloadError
      // Promise.resolve: a handler written without async may return a plain value.
      const returned = await raceAbort(Promise.resolve(agent.handler(ctx)), controller.signal)
      failpoint('agent.after-return')
      assertStorableJson(returned ?? null, '$.result', this.#o.limits)
      result = this.#o.keyRing.encrypt(scope.tenantId, 'task.result', (returned ?? null) as Json, '$.result')
    } catch (thrown) {
      if (isSnooze(thrown) && !controller.signal.aborted) {
        clearTimeout(timer)
        entry.phase = 'writing'
        await this.#snooze(entry, thrown, log, performance.now() - started)
        return
      }
      const reason = controller.signal.aborted ? controller.signal.reason : undefined
      if (reason instanceof AbortReason && reason.kind !== 'timeout') {
        // Cancelled or released: another transaction already decided this task's fate.
        log.info({ reason: reason.kind }, 'agent aborted')
        this.#o.hooks?.taskFinished?.(
          task,
          scope.tenantId,
          reason.kind === 'shutdown' ? 'released' : 'lease_lost',
          performance.now() - started,
        )
        return
      }
      const error = reason instanceof AbortReason ? reason : thrown
      failure = {
        error: serializeError(error),
        permanent: isPermanent(error),
      }
    } finally {
      clearTimeout(timer)
    }
    if (controller.signal.aborted && (controller.signal.reason as AbortReason).kind === 'shutdown') return
    entry.phase = 'writing'
    const duration = performance.now() - started
    const usage = meter.total()
    try {
      if (!failure) {
        try {
          const written = await this.#completer.submit(scope, {
            job: task.job,
            taskId: task.taskId,
            workflowId: task.workflowId,
            attempt: task.attempt,
            result,
            ...(spawned.length
              ? { spawn: { tasks: spawned, limits: this.#o.limits, keyRing: this.#o.keyRing } }
              : {}),
            ...(usage ? { usage } : {}),
          })
          if (written.written && usage) this.#o.hooks?.usageRecorded?.(task, scope.tenantId, usage)
          if (written.written) log.debug({ ms: Math.round(duration) }, 'task completed')
          else discarded(log, duration)
          this.#o.hooks?.taskFinished?.(
            task,
            scope.tenantId,
            written.written ? 'completed' : 'lease_lost',
            duration,
          )
          for (const wf of written.workflowsCompleted)
            this.#o.hooks?.workflowFinished?.(scope.tenantId, wf.type, 'completed', wf.durationMs)
          // The dependents queued are announced by the transaction's NOTIFY, to this worker too: waking
          // our loops here as well would only cost an empty fetch when the NOTIFY follows.
          return
        } catch (error) {
          if (error instanceof SpawnLeaseLostError) {
            discarded(log, duration)
            this.#o.hooks?.taskFinished?.(task, scope.tenantId, 'lease_lost', duration)
            return
          }
          if (!isPermanent(error)) throw error
          failure = { error: serializeError(error), permanent: true }
        }
      }
      log.warn({ error: failure.error, permanent: failure.permanent }, 'task attempt failed')
      const attemptFailure = {
        taskId: task.taskId,
        workflowId: task.workflowId,
        attempt: task.attempt,
        failures: task.failures,
        maxAttempts: task.maxAttempts,
        backoffMs: task.backoffMs,
        backoffMaxMs: task.backoffMaxMs,
        timeoutMs: task.timeoutMs,
        queue: task.job.queue,
        agentId: task.agentId,
        error: failure.error,
        permanent: failure.permanent,
        ...(task.job.jobId ? { job: { jobId: task.job.jobId, retryCount: task.job.retryCount } } : {}),
        ...(usage ? { usage } : {}),
      }
      const outcome = await this.#writeEnd(scope, [task], log, 'failure', () =>
        failAttempt(this.#o, scope, attemptFailure),
      )
      this.#o.hooks?.taskFinished?.(task, scope.tenantId, outcome.kind, duration)
      if (usage && outcome.kind !== 'lease_lost') this.#o.hooks?.usageRecorded?.(task, scope.tenantId, usage)
      if (outcome.kind === 'failed' && outcome.workflow) {
        const { type, durationMs } = outcome.workflow
        this.#o.hooks?.workflowFinished?.(scope.tenantId, type, 'failed', durationMs)
      }
    } catch (error) {
      // The outcome could not be written. The database unavailable (for longer than the completer
      // retries) is an outage already reported; either way the sweeper recovers the task.
      const transient = isTransient(error)
      log[transient ? 'warn' : 'error']({ err: error, transient }, 'could not record the task outcome')
    }
  }

  /** The agent snoozed: queue the task again for later, without counting a failure. */
  async #snooze(entry: Running, snooze: Snooze, log: Logger, durationMs: number): Promise<void> {
    const { task, scope } = entry
    try {
      await this.#writeEnd(scope, [task], log, 'snooze', () =>
        withTenantTx(this.#o.pool, scope, (db) =>
          requeueTasks(
            this.#o.boss,
            db,
            scope,
            [
              {
                taskId: task.taskId,
                attempt: task.attempt,
                status: 'running',
                reason: snooze.message,
                ...(task.job.jobId ? { oldJob: { queue: task.job.queue, jobId: task.job.jobId } } : {}),
                delayMs: snooze.delayMs,
                until: snooze.until,
              },
            ],
            'task_snoozed',
          ),
        ),
      )
      log.debug({ delayMs: snooze.delayMs, until: snooze.until }, 'task snoozed')
      this.#o.hooks?.taskFinished?.(task, scope.tenantId, 'snoozed', durationMs)
    } catch (error) {
      log[isTransient(error) ? 'warn' : 'error'](
        { err: error },
        'could not snooze the task; the sweeper will recover it',
      )
    }
  }

  /**
   * Writes the end of attempts other than a completion (a failure, a snooze, a release) with the
   * completer's retries of transient errors, the tasks' heartbeats stamped between tries: given up
   * at the first error, the task would stay running unstamped and the sweeper count it as lost.
   */
  #writeEnd<T>(
    scope: TenantScope,
    tasks: readonly ClaimedTask[],
    log: Logger,
    what: string,
    write: () => Promise<T>,
  ): Promise<T> {
    return retryTransient(write, async (error, attempt) => {
      log.warn({ err: error, attempt }, `${what} write failed; retrying`)
      await keepAlive(this.#o.pool, scope, tasks)
    })
  }

  async #listen(): Promise<void> {
    if (this.#stopping) return
    const client = new pg.Client({
      connectionString: this.#o.connectionString,
      application_name: 'equilateral-listen',
    })
    client.on('notification', (n) => {
      if (n.channel === READY_CHANNEL && n.payload) this.wake(n.payload)
      else if (n.channel === CANCEL_CHANNEL && n.payload) {
        for (const id of n.payload.split(',')) {
          this.#running.get(id)?.controller.abort(new AbortReason('cancelled', 'the workflow was cancelled'))
        }
      }
    })
    client.on('error', (error) => {
      this.#o.log.warn({ err: error }, 'LISTEN connection lost; polling until it is back')
      this.#listener = null
      client.end().catch(() => {})
      this.#scheduleListen()
    })
    try {
      await client.connect()
      await client.query(`LISTEN ${READY_CHANNEL}; LISTEN ${CANCEL_CHANNEL}`)
      this.#listener = client
      if (this.#listenFailures > 0)
        this.#o.log.info({ attempts: this.#listenFailures }, 'LISTEN connection restored')
      this.#listenFailures = 0
      this.wake() // notifications may have been missed while disconnected
    } catch (error) {
      this.#listenFailures++
      if (this.#listenFailures === 1)
        this.#o.log.warn({ err: error }, 'LISTEN connection failed; polling until it is back')
      else this.#o.log.debug({ err: error, attempts: this.#listenFailures }, 'LISTEN connection failed again')
      client.end().catch(() => {})
      this.#scheduleListen()
    }
  }

  /** Reconnects after 1 s, doubling up to 10 s while the database stays away. */
  #scheduleListen(): void {
    if (this.#stopping || this.#listenerRetry) return
    const delay = Math.min(10_000, 1000 * 2 ** Math.max(0, this.#listenFailures - 1))
    this.#listenerRetry = setTimeout(() => {
      this.#listenerRetry = null
      void this.#listen()
    }, delay)
  }

  async #beat(): Promise<void> {
    const byTenant = Map.groupBy(
      [...this.#running.values()].filter((r) => r.phase === 'agent'),
      (r) => r.scope.tenantId,
    )
    for (const list of byTenant.values()) {
      try {
        const held = await heartbeat(
          this.#o.pool,
          (list[0] as Running).scope,
          list.map((r) => r.task),
        )
        for (const r of list) {
          if (!held.has(r.task.taskId) && r.phase === 'agent') {
            r.controller.abort(new AbortReason('cancelled', 'the task is no longer held by this attempt'))
          }
        }
        // A locally claimed task has no job to touch: its heartbeat is its only lease.
        const withJobs = list.filter((r) => r.task.job.jobId !== null)
        for (const [queue, jobs] of Map.groupBy(withJobs, (r) => r.task.job.queue)) {
          await this.#o.boss.touch(
            queue,
            jobs.map((r) => r.task.job.jobId as string),
          )
        }
      } catch (error) {
        this.#o.log.warn({ err: error }, 'heartbeat failed')
      }
    }
  }

  /**
   * Stops fetching, lets running agents finish within the grace period, then releases the tasks
   * that did not finish (a new attempt is queued at once, without counting a failure) and aborts
   * their agents.
   */
  async stop(): Promise<void> {
    if (this.#stopping) return
    this.#stopping = true
    this.wake()
    this.#slots.waker.wake()
    await Promise.allSettled(this.#loops)
    const all = () => Promise.allSettled([...this.#running.values()].map((r) => r.done))
    let timer: NodeJS.Timeout | undefined
    await Promise.race([all(), new Promise((r) => (timer = setTimeout(r, this.#o.shutdownGraceMs)))])
    clearTimeout(timer)
    const unfinished = [...this.#running.values()].filter((r) => r.phase === 'agent')
    for (const r of unfinished) r.controller.abort(new AbortReason('shutdown', 'worker shutting down'))
    // Tenants at once: each release may retry through an outage, and shutdown waits for them all.
    const releases = [...Map.groupBy(unfinished, (r) => r.scope.tenantId).values()].map(async (list) => {
      const scope = (list[0] as Running).scope
      const tasks = list.map((r) => r.task)
      try {
        await this.#writeEnd(scope, tasks, this.#o.log, 'release', () =>
          withTenantTx(this.#o.pool, scope, (db) =>
            requeueTasks(
              this.#o.boss,
              db,
              scope,
              tasks.map((t) => ({
                taskId: t.taskId,
                attempt: t.attempt,
                status: 'running' as const,
                reason: 'worker shut down',
                ...(t.job.jobId ? { oldJob: { queue: t.job.queue, jobId: t.job.jobId } } : {}),
              })),
              'task_released',
            ),
          ),
        )
        this.#o.log.info({ tasks: list.length, tenant: scope.tenantId }, 'released unfinished tasks')
      } catch (error) {
        this.#o.log.error({ err: error }, 'could not release unfinished tasks; the sweeper will recover them')
      }
    })
    await Promise.all(releases)
    await all()
    await this.#completer.idle()
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer)
    if (this.#listenerRetry) clearTimeout(this.#listenerRetry)
    await this.#listener?.end().catch(() => {})
    this.#listener = null
    await this.#o.liveness?.unregister(this.id)
    this.#o.log.info({ worker: this.id }, 'worker stopped')
  }
}

/**
 * The agent returned, but its task was no longer running on this attempt (the sweeper recovered it,
 * or its workflow ended): nothing was written, and what the agent returned or spawned is dropped.
 * Counted as `lease_lost` in equilateral_tasks_finished_total.
 */
function discarded(log: Logger, durationMs: number): void {
  log.warn({ reason: 'lease_lost', ms: Math.round(durationMs) }, 'task completion discarded: lease lost')
}

/** Whether an agent threw a snooze; never throws itself (agents throw Proxies whose traps throw). */
function isSnooze(thrown: unknown): thrown is Snooze {
  try {
    return thrown instanceof Snooze
  } catch {
    return false
  }
}

/** A snooze's delay (0 to 365 days), or its time: the database computes when that is. */
function snoozeDelay(delay: number | { until: Date | string }): { delayMs: number; until?: string } {
  if (typeof delay === 'number' && Number.isFinite(delay)) {
    return { delayMs: Math.min(Math.max(0, Math.round(delay)), 365 * 24 * 3600_000) }
  }
  const given = delay !== null && typeof delay === 'object' && 'until' in delay ? delay.until : undefined
  if (typeof given === 'string' && Number.isFinite(Date.parse(given)) && !isZonedTime(given)) {
    throw new InvalidInputError(`snooze until ${JSON.stringify(given)} ${NO_ZONE}`, '$.snooze')
  }
  const until = given === undefined ? null : new Date(given)
  if (!until || !Number.isFinite(until.getTime())) {
    throw new InvalidInputError('snooze takes a delay in ms or { until: a time }', '$.snooze')
  }
  return { delayMs: 0, until: until.toISOString() }
}

/** Resolves or rejects with the promise, or rejects with the signal's reason as soon as it aborts. */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason)
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}
