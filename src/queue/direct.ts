// Our task jobs written by our own statements instead of pg-boss's API, on the hot path only.
//
// pg-boss's insert() and complete() are one statement per queue each, planned on every call; the
// completion transaction sent them after its own statement, the start transaction after its own.
// Here the same rows are written by CTEs inside the engine's prepared START, COMPLETE and
// LOCAL_CLAIM statements (no extra round trip, no planning), and by one statement for all queues
// elsewhere (insertJobsTx). Everything else (fetch, retries of failed jobs, maintenance) stays
// pg-boss's.
//
// The rows are exactly those pg-boss's insertJobs() and completeJobs() write for our jobs (see
// node_modules/pg-boss/dist/plans.js): a standard-policy queue in the common job table, no
// singleton, no dependencies, the queue's own retry, retention and deletion settings. This is
// coupling to pg-boss's schema, so it is guarded twice: it is used only on a database whose pg-boss
// schema version is the one these statements were written for (else the engine uses pg-boss's API,
// as before), and test/engine/direct-jobs.test.ts compares the rows both write, column by column, so
// an upgrade of pg-boss that changes them fails the suite.
import type { PgBoss } from 'pg-boss'
import { BOSS_SCHEMA } from '../db/names.ts'
import type { Db } from '../db/tx.ts'

/** The pg-boss schema version these statements were written for (pg-boss 12.38: 46). */
export const DIRECT_JOBS_SCHEMA_VERSION = 46
const COMMON_TABLE = `${BOSS_SCHEMA}.job_common`

const direct = new WeakSet<PgBoss>()

/** Whether this pg-boss's database takes our job statements (see enableDirectJobs). */
export function usesDirectJobs(boss: PgBoss): boolean {
  return direct.has(boss)
}

/** Leaves this pg-boss's jobs to its API (tests of that path). */
export function disableDirectJobs(boss: PgBoss): void {
  direct.delete(boss)
}

/**
 * Decides, once per database, whether our statements may write this pg-boss's jobs: its schema is
 * the version they were written for, and every queue of ours is a standard queue in the common
 * job table (pg-boss can give a queue its own partition; ours never ask for one).
 */
export async function enableDirectJobs(boss: PgBoss, db: Db, queues: readonly string[]): Promise<boolean> {
  const { rows } = await db.executeSql(
    `SELECT (SELECT version FROM ${BOSS_SCHEMA}.version) AS version,
      (SELECT count(*)::int FROM ${BOSS_SCHEMA}.queue
        WHERE name = ANY($1::text[]) AND table_name = 'job_common' AND policy = 'standard') AS standard`,
    [queues],
  )
  const ok = Number(rows[0]?.version) === DIRECT_JOBS_SCHEMA_VERSION && rows[0]?.standard === queues.length
  if (ok) direct.add(boss)
  else direct.delete(boss)
  return ok
}

/**
 * A CTE `name` inserting the jobs of `source`'s rows: a relation with columns job_id, queue,
 * workflow_id, task_id, attempt, timeout_ms and start_after (text: a database time, or null for at
 * once), and optionally `timeout` (boolean, wait queue only). `tenant` and `tier` are SQL
 * expressions (parameters). What the job carries matches TaskJobData and insertJobsTx in boss.ts.
 */
export function insertJobsCte(
  name: string,
  source: string,
  tenant: string,
  tier: string,
  timeout = 'false',
): string {
  return `${name} AS (
  INSERT INTO ${COMMON_TABLE} (id, name, data, priority, start_after, created_on, group_id, group_tier,
    expire_seconds, deletion_seconds, keep_until, retry_limit, retry_delay, retry_backoff, retry_delay_max,
    policy, dead_letter, heartbeat_seconds, blocked, blocking, pending_dependencies)
  SELECT r.job_id, r.queue,
    jsonb_build_object('t', ${tenant}::text, 'w', r.workflow_id, 'k', r.task_id, 'a', r.attempt)
      || CASE WHEN ${timeout} THEN '{"x":"timeout"}'::jsonb ELSE '{}'::jsonb END,
    0, r.job_start, ${BOSS_SCHEMA}.job_now(), ${tenant}::text, ${tier}::text,
    ceil(r.timeout_ms / 1000.0)::int + 60, q.deletion_seconds, r.job_start + q.retention_seconds * interval '1s',
    q.retry_limit, q.retry_delay, q.retry_backoff, q.retry_delay_max, q.policy, q.dead_letter,
    q.heartbeat_seconds, false, false, 0
  FROM (SELECT s.*, coalesce(s.start_after::timestamptz, ${BOSS_SCHEMA}.job_now()) AS job_start FROM ${source} s) r
  JOIN ${BOSS_SCHEMA}.queue q ON q.name = r.queue
  ON CONFLICT DO NOTHING
  RETURNING id
)`
}

/**
 * A CTE `name` completing the fetched jobs of `source`'s rows (columns job_id, queue, retry_count),
 * fenced as pg-boss's complete() is: only an active job at the fetched attempt.
 */
export function completeJobsCte(name: string, source: string): string {
  return `${name} AS (
  UPDATE ${COMMON_TABLE} j
  SET completed_on = ${BOSS_SCHEMA}.job_now(), state = 'completed', output = NULL
  FROM ${source} s
  WHERE j.name = s.queue AND j.id = s.job_id AND j.state = 'active' AND j.retry_count = s.retry_count
  RETURNING j.id
)`
}

/** One statement inserting jobs of any queues ($2: a jsonb array of ReadyJob-shaped rows). */
export const INSERT_JOBS = `
WITH src AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb) AS s(job_id uuid, queue text, workflow_id uuid, task_id uuid,
    attempt int, timeout_ms int, start_after text, timeout boolean)
),
${insertJobsCte('ins', 'src', '$1', '$3', 'r.timeout')}
SELECT count(*)::int AS n FROM ins`

/** One statement completing fetched jobs of any queues ($1: a jsonb array of {job_id, queue, retry_count}). */
export const COMPLETE_JOBS = `
WITH src AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS s(job_id uuid, queue text, retry_count int)),
${completeJobsCte('done', 'src')}
SELECT count(*)::int AS n FROM done`

/**
 * Fetches ready jobs of several queues in one statement ($1 queue names, $2 how many each may take
 * at most, $3 how many in all), as pg-boss's fetch() does for one queue without tenant limits:
 * oldest first within a queue (priority, then creation), locked with SKIP LOCKED, made active with
 * the attempt counted. Queues are taken in the order given: callers rotate it, so a busy queue cannot
 * starve the others.
 */
export const FETCH_ACROSS = `
WITH next AS (
  SELECT c.name, c.id
  FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS q(name, n, ord),
  LATERAL (
    SELECT j.name, j.id FROM ${COMMON_TABLE} j
    WHERE j.name = q.name AND j.state < 'active' AND NOT j.blocked AND j.start_after <= ${BOSS_SCHEMA}.job_now()
    ORDER BY j.priority DESC, j.created_on
    LIMIT q.n
    FOR UPDATE OF j SKIP LOCKED
  ) c
  LIMIT $3
)
UPDATE ${COMMON_TABLE} j SET state = 'active', started_on = ${BOSS_SCHEMA}.job_now(),
  heartbeat_on = ${BOSS_SCHEMA}.job_now(),
  retry_count = CASE WHEN j.started_on IS NOT NULL THEN j.retry_count + 1 ELSE j.retry_count END
FROM next WHERE j.name = next.name AND j.id = next.id
RETURNING j.id, j.name, j.data, j.retry_count AS "retryCount"`
