// Steps 3-5 of the data flow in one process: fetch jobs -> claim tasks -> run agents -> record
// their outcomes. The facade users construct (through Engine.startWorker); each job is a part of
// its own:
//   fetch.ts    the fetch loops, dispatch to claims, wait-task jobs
//   slots.ts    agent slots: the process's, each queue's, local continuation's
//   attempt.ts  running one attempt's agent (context, timeout, abort; no database access)
//   record.ts   writing how the attempt ended (completion via completer.ts, failure, snooze, release)
//   effects.ts  what those writes changed -> metrics, hooks, wake-ups (the one path)
//   listener.ts LISTEN for ready queues and cancellations
//   versions.ts which agent version runs a task
// The worker itself holds the running attempts: their heartbeats, their aborts, and shutdown.
import { hostname } from 'node:os'
import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { GroupConcurrencyConfig, PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { AgentDefinition } from '../core/definition.ts'
import type { JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TenantScope } from '../db/tx.ts'
import type { Metrics } from '../metrics.ts'
import { LeaseLostError } from '../errors.ts'
import { queueName } from '../queue/boss.ts'
import { AbortReason, runAttempt } from './attempt.ts'
import { type ClaimedTask, openClaimed } from './claim.ts'
import { applyEffects, applyStarted, type Effects, type EffectSinks, type WorkerHooks } from './effects.ts'
import { Fetcher } from './fetch.ts'
import { heartbeat } from './heartbeat.ts'
import { Listener } from './listener.ts'
import { Recorder } from './record.ts'
import { Capacity, type Running, Slots } from './slots.ts'
import { AgentVersions } from './versions.ts'

export { Slots } from './slots.ts'
export type { WorkerHooks } from './effects.ts'

export interface WorkerOptions {
  pool: pg.Pool
  boss: PgBoss
  /**
   * For the dedicated LISTEN connection (a session of its own: DIRECT_DATABASE_URL behind a pooler);
   * null: none, the worker polls every pollIntervalMs.
   */
  connectionString: string | null
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
  /** The caller's observation points (startWorker's `hooks`). */
  hooks?: WorkerHooks
  /** Where the attempts' effects are counted (src/flow/effects.ts), with the database label. */
  metrics?: Metrics | undefined
  database?: string | undefined
  /**
   * The process's liveness registration (src/flow/liveness.ts): the worker is listed before it
   * claims a task, and removed when it has stopped.
   */
  liveness?:
    { register(workerId: string): Promise<void>; unregister(workerId: string): Promise<void> } | undefined
}

export class Worker {
  readonly id: string
  readonly #o: WorkerOptions
  readonly #versions: AgentVersions
  readonly #running = new Map<string, Running>()
  readonly #capacity: Capacity
  readonly #recorder: Recorder
  readonly #fetcher: Fetcher
  readonly #listener: Listener
  readonly #sinks: EffectSinks
  #stopping = false
  #heartbeatTimer: NodeJS.Timeout | null = null

  constructor(options: WorkerOptions) {
    this.#o = options
    this.id = options.workerId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`
    this.#versions = new AgentVersions(options.agents, options)
    // One loop slot count per agent id, whatever the versions; the highest version's concurrency applies.
    const limits = new Map<string, number>()
    for (const id of this.#versions.ids()) {
      const agent = this.#versions.latest(id)
      limits.set(queueName(id), Math.min(agent.concurrency ?? options.concurrency, options.concurrency))
    }
    this.#capacity = new Capacity(options.slots ?? new Slots(options.concurrency), limits)
    this.#sinks = {
      metrics: options.metrics,
      database: options.database,
      hooks: options.hooks,
      wake: (queue) => this.wake(queue),
    }
    const local = (options.localContinuation ?? true) && !options.tenantConcurrency
    this.#recorder = new Recorder(
      options,
      local
        ? {
            workerId: this.id,
            take: (ready, batch) =>
              this.#stopping
                ? []
                : this.#capacity.takeLocal(
                    ready,
                    batch,
                    this.#running,
                    (q) => this.#versions.policy(q)?.versions,
                  ),
            giveBack: (picks) => this.#capacity.giveBackLocal(picks),
            run: (scope, tasks) => this.#runLocal(scope, tasks),
          }
        : undefined,
    )
    this.#fetcher = new Fetcher({
      ...options,
      workerId: this.id,
      capacity: this.#capacity,
      versions: this.#versions,
      run: (task, scope) => this.#run(task, scope),
      effects: (e) => this.#apply(e),
      stopping: () => this.#stopping,
    })
    this.#listener = new Listener({
      connectionString: options.connectionString,
      log: options.log,
      onReady: (queue) => this.wake(queue),
      onCancel: (ids) => {
        for (const id of ids)
          this.#running.get(id)?.controller.abort(new AbortReason('cancelled', 'the workflow was cancelled'))
      },
    })
  }

  /** Whether the worker's LISTEN session is open (the connection budget's metric). */
  get listening(): boolean {
    return this.#listener.listening
  }

  get runningCount(): number {
    return this.#running.size
  }

  async start(): Promise<void> {
    await this.#o.liveness?.register(this.id)
    await this.#listener.start()
    this.#fetcher.start()
    this.#heartbeatTimer = setInterval(() => void this.#beat(), this.#o.heartbeatIntervalMs)
    this.#o.log.info(
      { worker: this.id, agents: this.#versions.describe(), concurrency: this.#o.concurrency },
      'worker started',
    )
  }

  /** Wakes the loop of a queue (as a NOTIFY would). */
  wake(queue?: string): void {
    this.#fetcher.wake(queue)
  }

  #apply(effects: Effects): void {
    applyEffects(effects, this.#sinks)
  }

  /** The completion committed: the locally claimed tasks run on the slots held for them. */
  #runLocal(scope: TenantScope, tasks: ClaimedTask[]): void {
    openClaimed(this.#o.keyRing, scope, tasks)
    for (const task of tasks) {
      this.#capacity.claimedLocal(task.taskId)
      this.#run(task, scope)
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
        if (!entry.donated) this.#capacity.release(task.job.queue, 1)
        // With tenant limits an empty fetch may only mean that every tenant with jobs waiting was at
        // its limit. This task's job has normally been completed by now, freeing a slot of its tenant:
        // fetch again at once, or a tenant at its limit would start at most its limit per poll interval.
        if (this.#o.tenantConcurrency) this.#fetcher.wake(task.job.queue, false)
      })
  }

  /** Runs the attempt's agent (attempt.ts), then records its outcome (record.ts) and applies it. */
  async #execute(entry: Running): Promise<void> {
    const { task, scope, controller } = entry
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
    applyStarted(task, scope.tenantId, task.queueWaitMs + (started - task.claimedAt), this.#sinks)
    const end = await runAttempt({
      agent: this.#versions.of(task.agentId, task.agentVersion),
      task,
      scope,
      controller,
      log,
      limits: this.#o.limits,
      keyRing: this.#o.keyRing,
      heartbeat: async () => (await heartbeat(this.#o.pool, scope, [task])).has(task.taskId),
    })
    const durationMs = performance.now() - started
    if (end.kind === 'aborted') {
      if (end.counted) {
        const ended = {
          tenantId: scope.tenantId,
          agentId: task.agentId,
          outcome: end.outcome,
          durationMs,
          task,
        }
        this.#apply({ tasks: [ended] })
      }
      return
    }
    entry.phase = 'writing'
    this.#apply(await this.#recorder.record(task, scope, end, log, durationMs))
  }

  /** Stamps the heartbeats of the running agents, per tenant; aborts those whose task was lost. */
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
            r.controller.abort(new LeaseLostError(r.task.taskId, r.task.attempt))
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
    this.#listener.stopRetrying()
    this.wake()
    this.#capacity.slots.waker.wake()
    await this.#fetcher.stopped()
    const all = () => Promise.allSettled([...this.#running.values()].map((r) => r.done))
    let timer: NodeJS.Timeout | undefined
    await Promise.race([all(), new Promise((r) => (timer = setTimeout(r, this.#o.shutdownGraceMs)))])
    clearTimeout(timer)
    const unfinished = [...this.#running.values()].filter((r) => r.phase === 'agent')
    for (const r of unfinished) r.controller.abort(new AbortReason('shutdown', 'worker shutting down'))
    // Tenants at once: each release may retry through an outage, and shutdown waits for them all.
    await Promise.all(
      [...Map.groupBy(unfinished, (r) => r.scope.tenantId).values()].map((list) =>
        this.#recorder.release(
          (list[0] as Running).scope,
          list.map((r) => r.task),
        ),
      ),
    )
    await all()
    await this.#recorder.idle()
    if (this.#heartbeatTimer) clearInterval(this.#heartbeatTimer)
    await this.#listener.stop()
    await this.#o.liveness?.unregister(this.id)
    this.#o.log.info({ worker: this.id }, 'worker stopped')
  }
}
