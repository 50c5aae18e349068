// Step 3 of the data flow: fetching jobs and dispatching them. One loop fetches min(free slots,
// batch size) jobs across the agents' queues (each within its agent's own limit) and fetches again
// at once while it gets full batches; when a fetch comes back short it sleeps until a NOTIFY names
// one of its queues (sent by the transaction that made a task ready) or the poll interval passes.
// With tenant limits (or a pg-boss schema our statements were not written for, see
// queue/direct.ts) each queue has such a loop of its own, through pg-boss's fetch(), which applies
// the limits. pg-boss's work() is not used for task queues: with batch size 1 it sleeps a full
// polling interval after every job unless notified, and batches hold every slot until the slowest
// job of the batch finishes. The fetched jobs are claimed per tenant (src/flow/claim.ts) and handed
// to the worker to run; wait-task jobs are armed or timed out here (src/flow/waits.ts).
import type pg from 'pg'
import type { GroupConcurrencyConfig, PgBoss } from 'pg-boss'
import type { Logger } from 'pino'
import type { JsonLimits } from '../core/json.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { TenantScope } from '../db/tx.ts'
import { queueName, type TaskJobData, WAIT_QUEUE } from '../queue/boss.ts'
import { FETCH_ACROSS, usesDirectJobs } from '../queue/direct.ts'
import { claimTasks } from './claim.ts'
import type { ClaimedTask, FetchedJob } from './claimed.ts'
import { type Effects, type TaskEnded, waitEffects, type WorkflowEnded } from './effects.ts'
import type { Capacity } from './slots.ts'
import { Waker } from './slots.ts'
import type { UnservedOutcome } from './unserved.ts'
import type { AgentVersions } from './versions.ts'
import { armWaits, expireWaits } from './waits.ts'

/** A job as a fetch returns it: its id, queue, what it carries and the attempt it was fetched at. */
export interface FetchedRow {
  id: string
  name: string
  data: TaskJobData
  retryCount: number
}

export interface FetcherOptions {
  pool: pg.Pool
  boss: PgBoss
  keyRing: KeyRing
  limits: JsonLimits
  log: Logger
  scopeOf: (tenantIds: string[]) => Promise<Map<string, TenantScope>>
  batchSize: number
  pollIntervalMs: number
  tenantConcurrency?: GroupConcurrencyConfig | undefined
  workerId: string
  capacity: Capacity
  versions: AgentVersions
  /** A claimed task: run its agent (its slot is taken). */
  run(task: ClaimedTask, scope: TenantScope): void
  /** What a claim or a wait write changed, for the worker to apply. */
  effects(e: Effects): void
  stopping(): boolean
}

export class Fetcher {
  readonly #o: FetcherOptions
  readonly #wakers = new Map<string, Waker>()
  #loops: Promise<void>[] = []

  constructor(options: FetcherOptions) {
    this.#o = options
  }

  /**
   * Starts the loops. Where our statements read pg-boss's jobs (queue/direct.ts) and no tenant
   * limits apply, one loop fetches for every agent queue of this worker in one statement; else one
   * loop per queue through pg-boss's fetch(), which also applies the tenant limits. Wait tasks:
   * arming and timeouts are short transactions, handled in their loop, no agent slot.
   */
  start(): void {
    const queues = this.#o.versions.ids().map(queueName)
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
  }

  /**
   * Wakes the loop of a queue, or every loop: for new jobs (`news`, the default), or for room that
   * came free (a tenant's task ended, so a tenant at its limit may have room again).
   */
  wake(queue?: string, news = true): void {
    if (queue) this.#wakers.get(queue)?.wake(news)
    else for (const w of new Set(this.#wakers.values())) w.wake(news)
  }

  /** Resolves when every loop has ended (after `stopping()` turned true and a wake). */
  async stopped(): Promise<void> {
    await Promise.allSettled(this.#loops)
  }

  /**
   * The loop fetching the jobs of agent queues: as many as there are free slots of the process and
   * of each queue's agent; the jobs of each queue are claimed (per tenant) and their agents run.
   * `across`: all of `queues` in one statement of ours (FETCH_ACROSS); else pg-boss's fetch() of the
   * one queue.
   */
  #agentLoop(name: string, waker: Waker, queues: readonly string[], across: boolean): Promise<void> {
    const capacity = this.#o.capacity
    let turn = 0
    return this.#loop(name, waker, {
      // Agents run after the loop moves on: they hold slots (theirs and the process's) until they end.
      free: () =>
        Math.min(
          queues.reduce((n, q) => n + Math.max(0, capacity.room(q)), 0),
          capacity.slots.free,
        ),
      untilFree: () => capacity.slots.waker.wait(this.#o.pollIntervalMs),
      fetch: async (n, woken) => {
        if (!across) {
          const queue = queues[0] as string
          const jobs = await fetchQueue(this.#o, queue, n, woken)
          return jobs.map((j) => ({ id: j.id, name: queue, data: j.data, retryCount: j.retryCount }))
        }
        // Each fetch starts with the next queue, so a busy queue cannot starve the others.
        turn = (turn + 1) % queues.length
        const order = [...queues.slice(turn), ...queues.slice(0, turn)].filter((q) => capacity.room(q) > 0)
        const { rows } = await this.#o.pool.query<FetchedRow>({
          name: 'eq_fetch_across',
          text: FETCH_ACROSS,
          values: [order, order.map((q) => Math.min(n, capacity.room(q))), n],
        })
        return rows
      },
      handle: async (jobs) => {
        const byQueue = Map.groupBy(jobs, (j) => j.name)
        for (const [queue, list] of byQueue) capacity.take(queue, list.length)
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
      /** `woken`: new jobs were announced (Waker.news) since the previous fetch started. */
      fetch: (n: number, woken: boolean) => Promise<FetchedRow[]>
      handle: (jobs: FetchedRow[]) => Promise<void>
    },
  ): Promise<void> {
    let failures = 0
    let news = waker.news
    while (!this.#o.stopping()) {
      const free = room.free()
      if (free <= 0) {
        await room.untilFree()
        continue
      }
      let jobs: FetchedRow[]
      // A wake (a NOTIFY sent at commit, or our own) that came before this fetch starts is answered
      // by it; remembered, it would cost an empty fetch after this one.
      waker.clear()
      const woken = waker.news !== news
      news = waker.news
      const wanted = Math.min(free, this.#o.batchSize)
      try {
        jobs = await room.fetch(wanted, woken)
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
        if (arm.length > 0) this.#o.effects(waitEffects(scope, await armWaits(this.#o, scope, arm)))
        if (expire.length > 0)
          this.#o.effects(waitEffects(scope, await expireWaits(this.#o, scope, expire, expire)))
      } catch (error) {
        this.#o.log.error(
          { err: error, tenant: tenantId, jobs: list.length },
          'wait tasks could not be handled',
        )
      }
    }
  }

  async #dispatch(queue: string, jobs: FetchedRow[]): Promise<void> {
    let unclaimed = jobs.length
    try {
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
          this.#o.workerId,
          this.#o.versions.policy(queue),
        )
        for (const task of claimed) {
          unclaimed--
          this.#o.run(task, scope)
        }
        if (unserved.length > 0) this.#o.effects(this.#unserved(scope, unserved))
      }
    } finally {
      this.#o.capacity.release(queue, unclaimed)
    }
  }

  /** Logs the tasks the claim left for a worker with their agent version, or failed for good. */
  #unserved(scope: TenantScope, outcomes: readonly UnservedOutcome[]): Effects {
    const effects = { tasks: [] as TaskEnded[], workflows: [] as WorkflowEnded[] }
    for (const u of outcomes) {
      const fields = {
        tenant: scope.tenantId,
        workflow: u.task.workflowId,
        task: u.task.taskId,
        agent: u.task.agentId,
        agentVersion: u.task.agentVersion,
        versions: this.#o.versions.policy(u.task.job.queue)?.versions,
      }
      if (u.kind === 'left') {
        this.#o.log[u.firstLeft ? 'info' : 'debug'](fields, 'task left for a worker with its agent version')
        continue
      }
      this.#o.log.warn({ ...fields, err: u.error }, 'no worker had the agent version; task failed')
      // Counted as any attempt that fails (for good), with no run time: the agent never ran.
      const tenantId = scope.tenantId
      effects.tasks.push({
        tenantId,
        agentId: u.task.agentId,
        outcome: u.outcome.kind,
        durationMs: 0,
        task: u.task,
      })
      if (u.outcome.kind === 'failed' && u.outcome.workflow)
        effects.workflows.push({ tenantId, status: 'failed', ...u.outcome.workflow })
    }
    return effects
  }
}

/**
 * Up to `n` jobs of one queue through pg-boss's fetch(), within the tenant limits when there are
 * some. pg-boss takes the `n` oldest jobs of the tenants below their limit, then cuts each tenant
 * down to its room: a tenant that floods the queue with room for one more fills that window, and
 * a job another tenant queued behind it is not seen until a fetch happens to find the flooder at
 * its limit exactly (measured: another tenant's task waited up to 650 ms behind a flood, and 73 of
 * the flooder's tasks started first in a test on a busy machine). So a fetch that follows a wake
 * (`woken`: jobs were announced, perhaps another tenant's) and came back short but not empty is
 * topped up from the tenants it did not reach, the ones it reached ignored, until the batch is
 * full or a fetch finds nothing. Only after news: a top-up that finds nothing walks past the
 * flooder's whole backlog, and after every task's end that cost the flooder a fifth of its rate.
 */
async function fetchQueue(
  o: Pick<FetcherOptions, 'boss' | 'tenantConcurrency' | 'log'>,
  queue: string,
  n: number,
  woken: boolean,
): Promise<{ id: string; data: TaskJobData; retryCount: number }[]> {
  const groupConcurrency = o.tenantConcurrency
  const jobs = await o.boss.fetch<TaskJobData>(queue, {
    batchSize: n,
    ...(groupConcurrency ? { groupConcurrency } : {}),
  })
  if (!groupConcurrency || !woken) return jobs
  const reached = new Set<string>()
  let last = jobs.length
  while (last > 0 && jobs.length < n) {
    for (const j of jobs) reached.add(j.data.t)
    let more: typeof jobs
    try {
      more = await o.boss.fetch<TaskJobData>(queue, {
        batchSize: n - jobs.length,
        groupConcurrency,
        ignoreGroups: [...reached],
      })
    } catch (error) {
      // The jobs fetched so far are active now: run them (the next fetch will report an outage).
      o.log.debug({ err: error, queue }, 'top-up fetch failed')
      break
    }
    jobs.push(...more)
    last = more.length
  }
  return jobs
}
