// Step 5: agents returned. ONE transaction per batch of completions (per tenant) stores each result,
// marks the task completed (fenced on status and attempt, so a duplicate delivery or a late worker
// changes nothing), writes the audit rows, decrements the dependents' remaining-dependency counts
// and queues the ones that reach zero (with their jobs and a NOTIFY), completes the workflow whose
// last task this was, and completes the pg-boss jobs. A batch is a fixed number of statements
// whatever its size: the worker groups completions that finish while a flush is under way.
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { Json } from '../core/json.ts'
import { type Db, executeNamed, type TenantScope, type TenantTx, withTenantTx } from '../db/tx.ts'
import { LeaseLostError } from '../errors.ts'
import { failpoint } from '../failpoints.ts'
import { completeJobsTx, insertJobsTx, jobRow, type ReadyJob } from '../queue/boss.ts'
import { completeJobsCte, insertJobsCte, usesDirectJobs } from '../queue/direct.ts'
import { ENDED_CHANNEL, READY_CHANNEL } from './channels.ts'
import { progressCte } from './progress.ts'
import { claimLocallyTx } from './claim.ts'
import type { ClaimedTask, FetchedJob, LocalCandidate } from './claimed.ts'
import { spawnTasksTx, type SpawnRequest } from './spawn.ts'
import { readyAt, timerOf } from './task-rows.ts'
import type { Usage } from '../usage/meter.ts'
import { USAGE_COLUMN, usageCte } from '../usage/sql.ts'

export interface Completion {
  /** The attempt's job, completed in the same transaction; absent for a wait task (it has none running). */
  job?: FetchedJob
  taskId: string
  workflowId: string
  attempt: number
  result: Json
  /** Tasks the agent added to its workflow (validated and inserted in this transaction). */
  spawn?: SpawnRequest
  /** A wait task's completion (by an event, a decision or a timeout): fenced on 'waiting', not 'running'. */
  waiting?: boolean
  /** What the agent reported spending (ctx.usage), recorded with the completion if it is written. */
  usage?: Usage
}

export interface CompletionOutcome {
  /** Task ids whose completion was written. The others had lost their lease (result discarded). */
  completed: Set<string>
  /** Workflows this batch finished, with their type and duration. */
  workflowsCompleted: { id: string; type: string; durationMs: number }[]
  /** Tasks this batch made ready and queued (their jobs inserted). */
  dispatched: ReadyJob[]
  /** Tasks this batch made ready and claimed for its worker (local continuation), payloads sealed. */
  claimedLocally: ClaimedTask[]
}

/**
 * Local continuation, offered by the worker whose completions these are: of the tasks a batch makes
 * ready, `take` picks those the worker will run itself, holding an agent slot for each at once (so
 * the choice and the slots cannot diverge); `giveBack` returns the slots of picks that were not
 * claimed or whose transaction did not commit.
 */
export interface LocalContinuation {
  workerId: string
  take(ready: readonly ReadyJob[], batch: readonly Completion[]): LocalCandidate[]
  giveBack(picks: readonly LocalCandidate[]): void
}

/** Exported for the benchmark's EXPLAIN of the hot path (bench/growth.ts). */
export const COMPLETE = completeSql(false)
/** COMPLETE for a batch that reports usage: one CTE more (src/usage/sql.ts). */
const COMPLETE_WITH_USAGE = completeSql(true)

function completeSql(usage: boolean): string {
  return `
WITH x AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb)
    AS x(id uuid, attempt int, result jsonb, waiting boolean, job_id uuid, queue text, retry_count int${usage ? `, ${USAGE_COLUMN}` : ''})
),
${completeJobsCte('jobs_done', '(SELECT job_id, queue, retry_count FROM x WHERE job_id IS NOT NULL)')},
done AS (
  UPDATE agent_coordination t
  SET status = 'completed', result = x.result, error = NULL, completed_at = now(), updated_at = now()
  FROM x
  WHERE t.tenant_id = $1 AND t.id = ANY($3::uuid[]) AND t.id = x.id AND t.attempt = x.attempt
    AND t.status = CASE WHEN x.waiting THEN 'waiting' ELSE 'running' END
  RETURNING t.id, t.workflow_id, t.agent_id, t.attempt, t.dependents
),${usage ? `\n${usageCte('done', 'x')},` : ''}
wf_before AS (
  SELECT w.id, w.status, w.correlation_id FROM workflows w
  WHERE w.tenant_id = $1 AND w.id IN (SELECT workflow_id FROM done)
),
dec AS (
  SELECT d.child AS id, count(*)::int AS n FROM done, unnest(done.dependents) AS d(child) GROUP BY d.child
),
children AS (
  UPDATE agent_coordination c
  SET deps_remaining = c.deps_remaining - dec.n,
    status = CASE WHEN c.deps_remaining = dec.n THEN 'queued' ELSE c.status END,
    attempt = CASE WHEN c.deps_remaining = dec.n THEN c.attempt + 1 ELSE c.attempt END,
    job_id = CASE WHEN c.deps_remaining = dec.n THEN gen_random_uuid() ELSE c.job_id END,
    queued_at = CASE WHEN c.deps_remaining = dec.n THEN ${readyAt('c')} ELSE c.queued_at END,
    updated_at = now()
  FROM dec
  WHERE c.tenant_id = $1 AND c.id = dec.id AND c.status = 'pending'
    AND EXISTS (SELECT 1 FROM wf_before w WHERE w.id = c.workflow_id AND w.status = 'running')
  RETURNING c.id, c.workflow_id, c.agent_id, c.task_key, c.status, c.attempt, c.job_id, c.queue, c.timeout_ms,
    ${timerOf('c')} AS start_after
),
wf AS (
  UPDATE workflows w
  SET tasks_remaining = w.tasks_remaining - k.n,
    status = CASE WHEN w.tasks_remaining = k.n THEN 'completed' ELSE w.status END,
    completed_at = CASE WHEN w.tasks_remaining = k.n THEN now() ELSE w.completed_at END,
    updated_at = now()
  FROM (SELECT workflow_id, count(*)::int AS n FROM done GROUP BY workflow_id) k
  WHERE w.tenant_id = $1 AND w.id = k.workflow_id AND w.status = 'running'
  RETURNING w.id, w.status, w.type, w.correlation_id, w.created_at, w.completed_at
),
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, correlation_id)
  SELECT $1, d.workflow_id, d.id, d.agent_id, 'task_completed', jsonb_build_object('attempt', d.attempt), w.correlation_id
  FROM done d JOIN wf_before w ON w.id = d.workflow_id
  UNION ALL
  SELECT $1, c.workflow_id, c.id, c.agent_id, 'task_queued',
    jsonb_strip_nulls(jsonb_build_object('key', c.task_key, 'attempt', c.attempt, 'startAfter', c.start_after)),
    w.correlation_id
  FROM children c JOIN wf_before w ON w.id = c.workflow_id WHERE c.status = 'queued'
  UNION ALL
  SELECT $1, w.id, NULL, NULL, 'workflow_completed', '{}'::jsonb, w.correlation_id FROM wf w WHERE w.status = 'completed'
),
${insertJobsCte(
  'jobs_queued',
  `(SELECT c.job_id, c.queue, c.workflow_id, c.id AS task_id, c.attempt, c.timeout_ms, c.start_after
    FROM children c WHERE c.status = 'queued' AND $5::boolean)`,
  '$1',
  '$6',
)},
notified AS (
  SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM children WHERE status = 'queued') q
  WHERE $4::boolean
),
ended AS (
  SELECT pg_notify('${ENDED_CHANNEL}', string_agg(e.id::text, ',')) FROM (
    SELECT id, (row_number() OVER ()) / 200 AS chunk FROM wf WHERE status = 'completed'
  ) e GROUP BY e.chunk
),
${progressCte('progress', '(SELECT workflow_id FROM done)')}
SELECT 'done' AS kind, d.id, d.workflow_id, NULL AS queue, NULL::int AS attempt, NULL::uuid AS job_id,
  NULL::float8 AS n, NULL AS type, NULL AS start_after
FROM done d
UNION ALL
SELECT 'ready', c.id, c.workflow_id, c.queue, c.attempt, c.job_id, c.timeout_ms, NULL, c.start_after
FROM children c WHERE c.status = 'queued'
UNION ALL
SELECT 'workflow', w.id, w.id, NULL, NULL, NULL, extract(epoch FROM w.completed_at - w.created_at) * 1000, w.type,
  NULL
FROM wf w WHERE w.status = 'completed'
UNION ALL
SELECT 'notified', NULL, NULL, NULL, (SELECT count(*) FROM notified)::int, NULL, (SELECT count(*) FROM ended)::float8,
  (SELECT count(*) FROM progress)::text, NULL`
}

/** A row COMPLETE returns: one per kind of thing it did. */
type CompleteRow =
  | { kind: 'done'; id: string; workflow_id: string }
  | {
      kind: 'ready'
      id: string
      workflow_id: string
      queue: string
      attempt: number
      job_id: string
      /** The task's timeout_ms. */
      n: number
      start_after: string | null
    }
  | { kind: 'workflow'; id: string; type: string; /** Its duration in ms. */ n: number }
  | { kind: 'notified'; attempt: number; n: number }

export async function completeTasks(
  deps: { pool: pg.Pool; boss: PgBoss },
  scope: TenantScope,
  items: readonly Completion[],
  local?: LocalContinuation,
): Promise<CompletionOutcome> {
  // The slots held for the picks of the attempt under way: given back if it does not commit (the
  // transaction retries its body after a serialization failure, so each attempt picks anew).
  let held: LocalCandidate[] = []
  const giveBack = () => {
    if (held.length > 0) local?.giveBack(held)
    held = []
  }
  try {
    return await withTenantTx(deps.pool, scope, async (db) => {
      giveBack()
      return completeTx({ db, boss: deps.boss, scope }, items, local, (picks) => (held = picks))
    })
  } catch (error) {
    giveBack()
    throw error
  }
}

/** completeTasks' body, in its transaction: the spawned tasks, then the completions. */
async function completeTx(
  tx: TenantTx,
  items: readonly Completion[],
  local: LocalContinuation | undefined,
  holding: (picks: LocalCandidate[]) => void,
): Promise<CompletionOutcome> {
  const spawned: ReadyJob[] = []
  for (const item of items) {
    if (item.spawn) spawned.push(...(await spawnTasksTx(tx, item.workflowId, item.taskId, item.spawn)))
  }
  const outcome = await writeCompletionsTx(tx, items, local, holding)
  const lostSpawner = items.find((i) => i.spawn && !outcome.completed.has(i.taskId))
  if (lostSpawner) {
    // Roll back the spawned tasks with the rest: their parent's completion did not happen.
    throw new LeaseLostError(lostSpawner.taskId, lostSpawner.attempt)
  }
  await insertJobsTx(tx, spawned)
  outcome.dispatched.push(...spawned)
  failpoint('complete.before-commit')
  return outcome
}

/**
 * Writes completions in the caller's transaction (a wait task's, with its delivery). With `local`,
 * the worker's picks among the tasks made ready are claimed here too (see LOCAL_CLAIM); `holding`
 * learns the picks whose slots are held, for the caller to give back if the transaction fails.
 */
export async function writeCompletionsTx(
  tx: TenantTx,
  items: readonly Completion[],
  local?: LocalContinuation,
  holding?: (picks: LocalCandidate[]) => void,
): Promise<CompletionOutcome> {
  const { db, boss, scope } = tx
  // Where our statements write pg-boss's jobs (direct.ts), this statement also completes the batch's
  // jobs and, without local continuation, inserts the jobs of the tasks it makes ready.
  const direct = usesDirectJobs(boss)
  const usage = items.some((i) => i.usage)
  const { rows } = await executeNamed<CompleteRow>(
    db,
    usage ? 'eq_complete_usage' : 'eq_complete',
    usage ? COMPLETE_WITH_USAGE : COMPLETE,
    [
      scope.tenantId,
      JSON.stringify(
        items.map((i) => ({
          id: i.taskId,
          attempt: i.attempt,
          result: i.result ?? null,
          waiting: i.waiting ?? false,
          ...(i.usage ? { usage: i.usage } : {}),
          ...(direct && i.job?.jobId
            ? { job_id: i.job.jobId, queue: i.job.queue, retry_count: i.job.retryCount }
            : {}),
        })),
      ),
      items.map((i) => i.taskId),
      // With local continuation, the ready tasks' queues are notified after the worker's picks.
      local === undefined,
      direct && local === undefined,
      scope.tier,
    ],
  )
  const completed = new Set<string>()
  const dispatched: ReadyJob[] = []
  const workflowsCompleted: CompletionOutcome['workflowsCompleted'] = []
  for (const r of rows) {
    if (r.kind === 'done') completed.add(r.id)
    else if (r.kind === 'ready') {
      dispatched.push({
        queue: r.queue,
        jobId: r.job_id,
        workflowId: r.workflow_id,
        taskId: r.id,
        attempt: r.attempt,
        timeoutMs: r.n,
        startAfter: r.start_after,
      })
    } else if (r.kind === 'workflow') workflowsCompleted.push({ id: r.id, type: r.type, durationMs: r.n })
  }
  let claimedLocally: ClaimedTask[] = []
  let queued = dispatched
  // The jobs this function still has to insert: with `direct`, COMPLETE (no local continuation) or
  // LOCAL_CLAIM (the tasks not picked) inserted the others.
  let toInsert = direct ? [] : dispatched
  if (local && dispatched.length > 0) {
    const picks = local.take(dispatched, items)
    holding?.(picks)
    const picked = new Set(picks.map((p) => p.taskId))
    const rest = dispatched.filter((d) => !picked.has(d.taskId))
    const notify = [...new Set(rest.map((d) => d.queue))]
    claimedLocally =
      picks.length > 0 || notify.length > 0
        ? await claimLocallyTx(tx, local.workerId, picks, notify, direct ? rest.map(jobRow) : [])
        : []
    const claimed = new Set(claimedLocally.map((t) => t.taskId))
    // A pick the claim did not take (it needs an agent version this worker lacks) is queued after all.
    const unclaimedPicks = picks.filter((p) => !claimed.has(p.taskId))
    const unclaimed = new Set(unclaimedPicks.map((p) => p.taskId))
    if (unclaimed.size > 0) {
      local.giveBack(unclaimedPicks)
      holding?.(picks.filter((p) => claimed.has(p.taskId)))
      await notifyReady(db, [...new Set(unclaimedPicks.map((p) => p.queue))])
    }
    queued = dispatched.filter((d) => !claimed.has(d.taskId))
    toInsert = direct ? queued.filter((d) => unclaimed.has(d.taskId)) : queued
  }
  await insertJobsTx(tx, toInsert)
  failpoint('complete.after-dependents')
  // Complete every job of the batch, fenced on the fetched attempt; a lease-lost task's job is done
  // too. A locally claimed task has no job. With `direct`, COMPLETE did it.
  if (!direct) {
    await completeJobsTx(
      tx,
      items.flatMap((i) =>
        i.job?.jobId ? [{ queue: i.job.queue, jobId: i.job.jobId, retryCount: i.job.retryCount }] : [],
      ),
    )
  }
  return { completed, workflowsCompleted, dispatched: queued, claimedLocally }
}

async function notifyReady(db: Db, queues: readonly string[]): Promise<void> {
  await db.executeSql(`SELECT pg_notify('${READY_CHANNEL}', q) FROM unnest($1::text[]) AS q`, [queues])
}
