// pg-boss setup: one queue per agent, the dead-letter queue and the sweeper's queue. Jobs carry only
// ids; the task itself lives in the coordination table. pg-boss does not retry our jobs
// (retryLimit 0): retries are decided, counted and audited by the engine, fenced on its own rows.
import { type Db as IDatabase, PgBoss, type JobInsert } from 'pg-boss'
import { BOSS_SCHEMA } from '../db/names.ts'
import { executeNamed, type TenantTx } from '../db/tx.ts'
import { COMPLETE_JOBS, enableDirectJobs, INSERT_JOBS, usesDirectJobs } from './direct.ts'

// Internal queues use '/', which agent ids cannot contain, so no agent's queue (`eq.<id>`) can
// ever share a name with them (an agent called "sweep" would otherwise).
// The dead-letter queue's name is also in drizzle/tenant/0015_maintenance_role.sql (erasure).
export const DEAD_LETTER_QUEUE = 'eq/dead-letter'
export const SWEEP_QUEUE = 'eq/sweep'
/** Wait tasks' jobs: arming a wait when it becomes ready, and its timeout when it is due. */
export const WAIT_QUEUE = 'eq/wait'

export function queueName(agentId: string): string {
  // Wait tasks' agent ids ('@approval', '@event') are not valid agent ids: no agent has their queue.
  return agentId.startsWith('@') ? WAIT_QUEUE : `eq.${agentId}`
}

/** What a task's job carries: ids only (tenant, workflow, task, attempt). */
export interface TaskJobData {
  t: string
  w: string
  k: string
  a: number
  /** Wait queue only: 'timeout' for the job that times a wait out (else the job arms the wait). */
  x?: 'timeout'
}

/** A job to insert for a task that just became ready (or is retried, recovered, released). */
export interface ReadyJob {
  queue: string
  jobId: string
  workflowId: string
  taskId: string
  attempt: number
  timeoutMs: number
  /**
   * When the job may start (a durable timer, a retry's backoff, a snooze, a wait's timeout): a time
   * the database computed, so timers are judged by the database clock. Absent: at once.
   */
  startAfter?: string | null
  /** Wait queue only: the job times the wait out. */
  timeout?: boolean
}

export interface BossOptions {
  connectionString: string
  /** Runs pg-boss's statements on this (a pool of ours) instead of a pool of its own. */
  db?: IDatabase
  max?: number
  /** Run pg-boss maintenance (expiry, retention) in this process. */
  supervise?: boolean
  /** Run pg-boss's cron scheduler in this process. */
  schedule?: boolean
}

export function createBoss(options: BossOptions): PgBoss {
  return new PgBoss({
    connectionString: options.connectionString,
    schema: BOSS_SCHEMA,
    max: options.max ?? 4,
    ...(options.db ? { db: options.db } : {}),
    application_name: 'equilateral-boss',
    supervise: options.supervise ?? true,
    schedule: options.schedule ?? true,
    migrate: false,
  })
}

export interface QueueSettings {
  heartbeatSeconds: number
  /** How long completed jobs are kept in pg-boss (the task rows keep the history). */
  deleteAfterSeconds: number
}

/** Creates (or updates) the queues for the given agents. Idempotent; safe from many processes. */
export async function ensureQueues(
  boss: PgBoss,
  agentIds: readonly string[],
  settings: QueueSettings,
): Promise<void> {
  const existing = new Set((await boss.getQueues()).map((q) => q.name))
  const options = {
    retryLimit: 0,
    heartbeatSeconds: settings.heartbeatSeconds,
    deleteAfterSeconds: settings.deleteAfterSeconds,
  }
  const names = [DEAD_LETTER_QUEUE, SWEEP_QUEUE, WAIT_QUEUE, ...agentIds.map(queueName)]
  for (const name of names) {
    if (existing.has(name)) continue
    try {
      await boss.createQueue(
        name,
        name === DEAD_LETTER_QUEUE ? { retryLimit: 0, deleteAfterSeconds: 0 } : options,
      )
    } catch (error) {
      // Another process created it between our read and our create.
      if (!(await boss.getQueue(name))) throw error
    }
  }
  await enableDirectJobs(boss, boss.getDb(), names)
}

/**
 * Inserts the jobs in the caller's transaction: one statement for all of them where our own
 * statements write pg-boss's jobs (see direct.ts), else one pg-boss insert per distinct queue.
 */
export async function insertJobsTx(tx: TenantTx, jobs: readonly ReadyJob[]): Promise<void> {
  if (jobs.length === 0) return
  const { db, boss, scope } = tx
  if (usesDirectJobs(boss)) {
    await executeNamed(db, 'eq_insert_jobs', INSERT_JOBS, [
      scope.tenantId,
      JSON.stringify(jobs.map(jobRow)),
      scope.tier,
    ])
    return
  }
  const byQueue = new Map<string, JobInsert<TaskJobData>[]>()
  for (const job of jobs) {
    let list = byQueue.get(job.queue)
    if (!list) byQueue.set(job.queue, (list = []))
    list.push({
      id: job.jobId,
      data: {
        t: scope.tenantId,
        w: job.workflowId,
        k: job.taskId,
        a: job.attempt,
        ...(job.timeout ? { x: 'timeout' as const } : {}),
      },
      group: { id: scope.tenantId, tier: scope.tier },
      // pg-boss's expiry is a backstop behind the engine's own timeout and heartbeat checks.
      expireInSeconds: Math.ceil(job.timeoutMs / 1000) + 60,
      ...(job.startAfter ? { startAfter: job.startAfter } : {}),
    })
  }
  for (const [queue, list] of byQueue) await boss.insert(queue, list, { db })
}

/** A ready job as the rows our job statements read (see direct.ts). */
export type JobRow = ReturnType<typeof jobRow>

export function jobRow(job: ReadyJob) {
  return {
    job_id: job.jobId,
    queue: job.queue,
    workflow_id: job.workflowId,
    task_id: job.taskId,
    attempt: job.attempt,
    timeout_ms: job.timeoutMs,
    start_after: job.startAfter ?? null,
    timeout: job.timeout ?? false,
  }
}

/** A fetched job to complete: its id, queue and the retry count it was fetched at (the fence). */
export interface FetchedJobRef {
  queue: string
  jobId: string
  retryCount: number
}

/**
 * Completes fetched jobs in the caller's transaction, fenced on the attempt they were fetched at:
 * one statement for all queues where our statements write pg-boss's jobs, else one per queue.
 */
export async function completeJobsTx(
  tx: Pick<TenantTx, 'db' | 'boss'>,
  jobs: readonly FetchedJobRef[],
): Promise<void> {
  if (jobs.length === 0) return
  const { db, boss } = tx
  if (usesDirectJobs(boss)) {
    await executeNamed(db, 'eq_complete_jobs', COMPLETE_JOBS, [
      JSON.stringify(jobs.map((j) => ({ job_id: j.jobId, queue: j.queue, retry_count: j.retryCount }))),
    ])
    return
  }
  for (const [queue, list] of Map.groupBy(jobs, (j) => j.queue)) {
    await boss.complete(
      queue,
      list.map((j) => ({ id: j.jobId, retryCount: j.retryCount })),
      null,
      { db },
    )
  }
}
