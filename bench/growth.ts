// Growth: pre-loads a tenant with a long history of completed diamond workflows, as the engine
// would have left them (workflow and task rows, audit rows sealed into the hash chain, compliance
// events if the tenant has a profile, and the completed pg-boss jobs still inside pg-boss's
// retention), so the diamond workload can be run again on top of it (bench/run.ts) and the hot
// path's statements can be EXPLAINed against an empty and a full history (explainHotPath).
//
// The rows are written set-based: one INSERT ... SELECT over generate_series per batch (one
// transaction each), every index, trigger and constraint in place. Timestamps spread the history
// over the last `days` days, each workflow's tasks a few milliseconds apart like a no-op run.
// Afterwards the audit rows are sealed into the tenant's hash chain as the sweeper's sealer would
// have sealed them (the sealer's computation, done in SQL; checked against src/audit/seal.ts), and
// the tables are VACUUMed and ANALYZEd and a CHECKPOINT flushes the writes, so neither autovacuum
// nor a checkpoint lands in the middle of the next measurement.
//
// Usage: node bench/growth.ts [admin database url] [tasks=1000000]
//   creates a scratch database, migrates it, creates tenant `bench` through the engine, explains the
//   hot path, preloads, explains again, prints JSON, drops the database.
//   GROWTH_CHECK=1   then also runs diamonds through the engine, seals, and verifies the audit chain
//   GROWTH_KEEP=1    keeps the database (its URL is printed)
//   GROWTH_DAYS=30   GROWTH_JOBS=retained|all|none   GROWTH_SEAL=0   GROWTH_BATCH=100000
//   GROWTH_COMPLIANCE_PROFILE='{"GDPR":{"retentionDays":30}}'   the tenant's compliance profile
import { randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import pg from 'pg'
import { pino } from 'pino'
import { blockHash, dataHash, GENESIS, rowHash } from '../src/audit/seal.ts'
import { DEFAULT_JSON_LIMITS } from '../src/core/json.ts'
import { planTasks } from '../src/core/plan.ts'
import { APP_ROLE, APP_SCHEMA, BOSS_SCHEMA } from '../src/db/names.ts'
import { CLAIM } from '../src/flow/claim.ts'
import { COMPLETE } from '../src/flow/complete.ts'
import { START } from '../src/flow/start.ts'
import { createEngine, defineAgent, defineWorkflow, migrate } from '../src/index.ts'
import { queueName } from '../src/queue/boss.ts'
import { scratchDatabase } from './lib/stats.ts'

/** The benchmark's diamond (same agent id, type and task keys as bench/defs.ts): A -> B, A -> C, {B, C} -> D. */
export function diamondDefinition(agentId = 'noop', type = 'diamond') {
  const agent = defineAgent({ id: agentId, handler: async () => null })
  const workflow = defineWorkflow({
    name: type,
    tasks: [
      { key: 'a', agent },
      { key: 'b', agent, dependsOn: ['a'] },
      { key: 'c', agent, dependsOn: ['a'] },
      { key: 'd', agent, dependsOn: ['b', 'c'] },
    ],
  })
  return { agent, workflow }
}

export interface PreloadOptions {
  /** Superuser (or table owner) URL of a migrated database in which the tenant exists. */
  url: string
  tenantId: string
  /** Completed tasks to add; rounded down to whole diamonds (4 tasks each). */
  tasks: number
  log?: (line: string) => void
  /** The history's span, ending now. Default 30. */
  days?: number
  /** Tasks per INSERT statement and transaction. Default 100,000. */
  batchTasks?: number
  /**
   * Completed pg-boss jobs: 'retained' (default) only those pg-boss would still hold (completed
   * within the queue's deleteAfterSeconds, 24 h for the engine's queues), 'all' one per task (as if
   * pg-boss's retention never ran), 'none'.
   */
  jobs?: 'retained' | 'all' | 'none'
  /** Seal the history into the tenant's audit hash chain, as the sweeper's sealer would have. Default true. */
  seal?: boolean
  /**
   * VACUUM (ANALYZE) the tables and CHECKPOINT afterwards. Default true; false leaves the planner's
   * statistics as they were (to see what stale statistics do to the hot path's plans).
   */
  vacuum?: boolean
  /** Agent id and workflow type of the diamonds. Default 'noop' and 'diamond'. */
  agentId?: string
  workflowType?: string
}

export interface PreloadReport {
  tasks: number
  workflows: number
  auditRows: number
  jobs: number
  complianceEvents: number
  /** Audit rows sealed into blocks; `unsealed`: rows a long transaction elsewhere kept from being sealed. */
  sealed: { blocks: number; rows: number; unsealed: number }
  /** Wall time of the whole preload (inserts, sealing, vacuum, checkpoint). */
  seconds: number
  phases: { insertSeconds: number; sealSeconds: number; vacuumSeconds: number; checkpointSeconds: number }
  /** pg_size_pretty of each table (total, heap with TOAST, indexes) and of each index, after the preload. */
  sizes: Record<string, string>
  sizeBytes: Record<string, number>
}

interface TenantInfo {
  tier: string
  schema: string
}

async function tenantInfo(client: pg.ClientBase, tenantId: string): Promise<TenantInfo> {
  const { rows } = await client.query<{ tier: string; schema_name: string | null }>(
    `SELECT tier, schema_name FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
    [tenantId],
  )
  const row = rows[0]
  if (!row) throw new Error(`tenant "${tenantId}" does not exist`)
  return { tier: row.tier, schema: row.schema_name ?? APP_SCHEMA }
}

/**
 * The tenant's verified scope (drizzle/tenant/0016), computed in SQL by the owner, who may read the
 * secret (this script runs as the owner; withTenantTx sends the credential from the engine's copy).
 */
const enterTenantSql = (tenant: string) =>
  `equilateral.enter_tenant(${tenant}, encode(equilateral.tenant_context_mac(` +
  `(SELECT secret FROM equilateral.tenant_context_key), 'tenant:' || ${tenant}), 'hex'))`

/** BEGIN and the tenant's scope, as withTenantTx sets it (src/db/tx.ts). */
const beginScoped = (tenantId: string, schema: string) =>
  `BEGIN; SELECT ${enterTenantSql(pg.escapeLiteral(tenantId))}, ` +
  `set_config('search_path', ${pg.escapeLiteral(pg.escapeIdentifier(schema))}, true)`

// One batch of history: workflows $2 .. $2 + $3 - 1 of $4, in one statement. Timestamps: workflow i
// starts at now - 1 s - days * (1 - (i + 0.5) / W), so the history ends about a second ago and its
// ids, like the engine's, grow with time. The durations are those of a no-op diamond: queue waits
// of 5-50 ms, runs of 2-20 ms. Every row is what the engine writes for that step (src/flow/start.ts,
// claim.ts, complete.ts, task-rows.ts, src/queue/boss.ts insertJobsTx), at the time it would write it.
//   $1 tenant  $2 first index  $3 count  $4 total workflows  $5 days  $6 reference now
//   $7 per-key task template (planTasks output)  $8 workflow type  $9 version  $10 tier
//   $11 jobs mode  $12 worker id  $13 tasks per workflow
const PRELOAD = `
WITH r AS MATERIALIZED (
  SELECT i, gen_random_uuid() AS wid,
    gen_random_uuid() AS ta, gen_random_uuid() AS tb, gen_random_uuid() AS tc, gen_random_uuid() AS td,
    gen_random_uuid() AS ja, gen_random_uuid() AS jb, gen_random_uuid() AS jc, gen_random_uuid() AS jd,
    $6::timestamptz - interval '1 second'
      - make_interval(secs => $5::float8 * 86400 * (1 - (i + 0.5) / $4::float8)) AS t0,
    (10 + random() * 40) * interval '1 ms' AS wa, (2 + random() * 18) * interval '1 ms' AS ra,
    (5 + random() * 20) * interval '1 ms' AS wb, (2 + random() * 18) * interval '1 ms' AS rb,
    (5 + random() * 20) * interval '1 ms' AS wc, (2 + random() * 18) * interval '1 ms' AS rc,
    (5 + random() * 20) * interval '1 ms' AS wd, (2 + random() * 18) * interval '1 ms' AS rd
  FROM generate_series($2::int, $2::int + $3::int - 1) AS s(i)
),
g AS MATERIALIZED (
  SELECT r.*, t0 + wa AS sa, t0 + wa + ra AS ca,
    t0 + wa + ra + wb AS sb, t0 + wa + ra + wb + rb AS cb,
    t0 + wa + ra + wc AS sc, t0 + wa + ra + wc + rc AS cc,
    t0 + wa + ra + greatest(wb + rb, wc + rc) AS qd,
    t0 + wa + ra + greatest(wb + rb, wc + rc) + wd AS sd,
    t0 + wa + ra + greatest(wb + rb, wc + rc) + wd + rd AS cd
  FROM r
),
t AS MATERIALIZED (
  SELECT g.i, g.wid, g.t0, v.ord, v.key, v.id, v.job_id, v.depends_on, v.dependents, v.queued_at, v.started_at,
    v.completed_at, p.agent_id, p.task_type, p.queue, p.dependencies, p.max_attempts, p.backoff_ms,
    p.backoff_max_ms, p.timeout_ms
  FROM g
  CROSS JOIN LATERAL (VALUES
    (1, 'a', g.ta, g.ja, '{}'::uuid[], ARRAY[g.tb, g.tc], g.t0, g.sa, g.ca),
    (2, 'b', g.tb, g.jb, ARRAY[g.ta], ARRAY[g.td], g.ca, g.sb, g.cb),
    (3, 'c', g.tc, g.jc, ARRAY[g.ta], ARRAY[g.td], g.ca, g.sc, g.cc),
    (4, 'd', g.td, g.jd, ARRAY[g.tb, g.tc], '{}'::uuid[], g.qd, g.sd, g.cd)
  ) AS v(ord, key, id, job_id, depends_on, dependents, queued_at, started_at, completed_at)
  JOIN jsonb_to_recordset($7::jsonb) AS p(task_key text, agent_id text, task_type text, queue text,
    dependencies text[], max_attempts int, backoff_ms int, backoff_max_ms int, timeout_ms int)
    ON p.task_key = v.key
),
wf AS (
  INSERT INTO workflows (tenant_id, id, type, version, status, input, error, idempotency_key, correlation_id,
    subject_key, tasks_remaining, created_at, updated_at, completed_at)
  SELECT $1, g.wid, $8, $9, 'completed', jsonb_build_object('i', g.i), NULL, NULL, g.wid::text, NULL, 0, g.t0,
    g.cd, g.cd
  FROM g ORDER BY g.i
  RETURNING 1
),
tk AS (
  INSERT INTO agent_coordination (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue, data, status,
    dependencies, depends_on, dependents, deps_remaining, attempt, failures, max_attempts, backoff_ms,
    backoff_max_ms, timeout_ms, job_id, result, error, worker_id, created_at, queued_at, started_at, heartbeat_at,
    completed_at, updated_at)
  SELECT $1, t.id, t.wid, t.key, t.agent_id, t.task_type, t.queue, NULL, 'completed',
    t.dependencies, t.depends_on, t.dependents, 0, 1, 0, t.max_attempts, t.backoff_ms,
    t.backoff_max_ms, t.timeout_ms, t.job_id, NULL, NULL, $12, t.t0, t.queued_at, t.started_at, t.started_at,
    t.completed_at, t.completed_at
  FROM t ORDER BY t.i, t.ord
  RETURNING 1
),
au AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor,
    correlation_id, "timestamp")
  SELECT $1, e.wid, e.task_id, e.agent_id, e.action, e.data, NULL, e.wid::text, e.ts
  FROM (
    SELECT g.i, g.wid, NULL::uuid AS task_id, NULL::text AS agent_id, 'workflow_started' AS action,
      jsonb_build_object('type', $8::text, 'version', $9::int, 'tasks', $13::int) AS data, g.t0 AS ts,
      0 AS phase, 0 AS ord
    FROM g
    UNION ALL
    SELECT t.i, t.wid, t.id, t.agent_id,
      CASE WHEN cardinality(t.depends_on) = 0 THEN 'task_queued' ELSE 'task_created' END,
      jsonb_build_object('key', t.key, 'attempt', CASE WHEN cardinality(t.depends_on) = 0 THEN 1 ELSE 0 END),
      t.t0, 1, t.ord
    FROM t
    UNION ALL
    SELECT t.i, t.wid, t.id, t.agent_id, 'task_started', jsonb_build_object('attempt', 1, 'worker', $12::text),
      t.started_at, 2, t.ord
    FROM t
    UNION ALL
    SELECT t.i, t.wid, t.id, t.agent_id, 'task_completed', jsonb_build_object('attempt', 1), t.completed_at, 3, t.ord
    FROM t
    UNION ALL
    SELECT t.i, t.wid, t.id, t.agent_id, 'task_queued', jsonb_build_object('key', t.key, 'attempt', 1),
      t.queued_at, 4, t.ord
    FROM t WHERE cardinality(t.depends_on) > 0
    UNION ALL
    SELECT g.i, g.wid, NULL, NULL, 'workflow_completed', '{}'::jsonb, g.cd, 5, 0 FROM g
  ) e
  ORDER BY e.i, e.ts, e.phase, e.ord
  RETURNING 1
),
ce AS (
  -- What the compliance trigger (drizzle/tenant/0006) writes for each of these changes, at its time;
  -- nothing for a tenant without a compliance profile.
  INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data, retention_until,
    created_at)
  SELECT $1, e.agent_id, reg.regime, e.event_type, e.data, reg.retention_until + (e.ts - now()), e.ts
  FROM (
    SELECT t.i, t.ord, t.agent_id, 'task_created' AS event_type,
      jsonb_build_object('task', t.id, 'workflow', t.wid, 'agent', t.agent_id,
        'to', CASE WHEN cardinality(t.depends_on) = 0 THEN 'queued' ELSE 'pending' END) AS data,
      t.t0 AS ts, 1 AS phase
    FROM t
    UNION ALL
    SELECT t.i, t.ord, t.agent_id, 'task_running',
      jsonb_build_object('task', t.id, 'workflow', t.wid, 'agent', t.agent_id, 'from', 'queued', 'to', 'running'),
      t.started_at, 2
    FROM t
    UNION ALL
    SELECT t.i, t.ord, t.agent_id, 'task_completed',
      jsonb_build_object('task', t.id, 'workflow', t.wid, 'agent', t.agent_id, 'from', 'running', 'to', 'completed'),
      t.completed_at, 3
    FROM t
    UNION ALL
    SELECT t.i, t.ord, t.agent_id, 'task_queued',
      jsonb_build_object('task', t.id, 'workflow', t.wid, 'agent', t.agent_id, 'from', 'pending', 'to', 'queued'),
      t.queued_at, 4
    FROM t WHERE cardinality(t.depends_on) > 0
  ) e
  CROSS JOIN ${APP_SCHEMA}.compliance_regimes($1) reg
  ORDER BY e.i, e.ts, e.phase, e.ord, reg.regime
  RETURNING 1
),
jb AS (
  -- The job pg-boss stored for each task (insertJobsTx: ids only, the tenant's group, expiry backstop),
  -- fetched just before the claim and completed with the task.
  INSERT INTO ${BOSS_SCHEMA}.job (id, name, priority, data, state, retry_limit, retry_count, retry_delay,
    retry_backoff, retry_delay_max, expire_seconds, deletion_seconds, singleton_key, singleton_on, group_id,
    group_tier, start_after, created_on, started_on, completed_on, keep_until, output, dead_letter, policy,
    heartbeat_on, heartbeat_seconds, blocked, blocking, pending_dependencies)
  SELECT t.job_id, q.name, 0, jsonb_build_object('t', $1::text, 'w', t.wid, 'k', t.id, 'a', 1), 'completed',
    q.retry_limit, 0, q.retry_delay, q.retry_backoff, q.retry_delay_max, ceil(t.timeout_ms / 1000.0)::int + 60,
    q.deletion_seconds, NULL, NULL, $1, $10, t.queued_at, t.queued_at, t.started_at - interval '2 ms',
    t.completed_at, t.queued_at + q.retention_seconds * interval '1 second', NULL, q.dead_letter, q.policy,
    t.started_at - interval '2 ms', q.heartbeat_seconds, false, false, 0
  FROM t JOIN ${BOSS_SCHEMA}.queue q ON q.name = t.queue
  WHERE $11 = 'all' OR ($11 = 'retained'
    AND (q.deletion_seconds = 0 OR t.completed_at + q.deletion_seconds * interval '1 second' > $6::timestamptz))
  ORDER BY t.completed_at
  RETURNING 1
)
SELECT (SELECT count(*) FROM wf)::int AS workflows, (SELECT count(*) FROM tk)::int AS tasks,
  (SELECT count(*) FROM au)::int AS audit, (SELECT count(*) FROM ce)::int AS events,
  (SELECT count(*) FROM jb)::int AS jobs`

/** Tenant tables (in the tenant's schema) and pg-boss's job table, whose sizes are reported. */
const TENANT_TABLES = [
  'workflows',
  'agent_coordination',
  'agent_audit_log',
  'agent_audit_seals',
  'compliance_events',
] as const

export async function preloadHistory(opts: PreloadOptions): Promise<PreloadReport> {
  const log = opts.log ?? (() => {})
  const days = opts.days ?? 30
  const batchTasks = Math.max(4, opts.batchTasks ?? 100_000)
  const jobsMode = opts.jobs ?? 'retained'
  const { workflow } = diamondDefinition(opts.agentId, opts.workflowType)
  const perWorkflow = workflow.tasks.length
  const total = Math.floor(opts.tasks / perWorkflow)
  const perBatch = Math.max(1, Math.floor(batchTasks / perWorkflow))
  // The per-key columns exactly as the engine plans them (defaults for attempts, backoff, timeout).
  const template = planTasks(
    workflow.tasks,
    workflow.tasks.map(() => null),
    { newId: randomUUID, queueName, limits: DEFAULT_JSON_LIMITS },
  )
  const workerId = `${hostname()}:${process.pid}:preload`

  const client = new pg.Client({ connectionString: opts.url, application_name: 'equilateral-bench-growth' })
  await client.connect()
  const t0 = performance.now()
  const report: PreloadReport = {
    tasks: 0,
    workflows: 0,
    auditRows: 0,
    jobs: 0,
    complianceEvents: 0,
    sealed: { blocks: 0, rows: 0, unsealed: 0 },
    seconds: 0,
    phases: { insertSeconds: 0, sealSeconds: 0, vacuumSeconds: 0, checkpointSeconds: 0 },
    sizes: {},
    sizeBytes: {},
  }
  try {
    const tenant = await tenantInfo(client, opts.tenantId)
    const missing = await client.query(
      `SELECT DISTINCT q FROM unnest($1::text[]) q WHERE NOT EXISTS (SELECT 1 FROM ${BOSS_SCHEMA}.queue WHERE name = q)`,
      [template.map((t) => t.queue)],
    )
    if (jobsMode !== 'none' && missing.rows.length > 0) {
      log(`growth: no pg-boss queue ${missing.rows.map((r) => r.q).join(', ')} yet: no jobs preloaded for it`)
    }
    const regimes = await client.query(`SELECT regime FROM ${APP_SCHEMA}.compliance_regimes($1)`, [
      opts.tenantId,
    ])
    // The reference "now" for every batch, so the batches tile one history.
    const now = (await client.query<{ now: Date }>('SELECT now() AS now')).rows[0]?.now as Date
    log(
      `growth: preloading ${total * perWorkflow} tasks (${total} ${workflow.name} workflows) over ${days} days ` +
        `for tenant ${opts.tenantId}, ${perBatch * perWorkflow} tasks per transaction`,
    )

    for (let first = 0; first < total; first += perBatch) {
      const n = Math.min(perBatch, total - first)
      const b0 = performance.now()
      await client.query(beginScoped(opts.tenantId, tenant.schema))
      try {
        // With a compliance profile, the statement writes the events the engine's transitions would
        // have written, at their times; the trigger would instead write one `task_created` per row,
        // already completed, dated now. Only this transaction's triggers are off (SET LOCAL), the
        // engine's never.
        if (regimes.rows.length > 0) await client.query(`SET LOCAL session_replication_role = replica`)
        const { rows } = await client.query(PRELOAD, [
          opts.tenantId,
          first,
          n,
          total,
          days,
          now,
          JSON.stringify(template),
          workflow.name,
          workflow.version,
          tenant.tier,
          jobsMode,
          workerId,
          perWorkflow,
        ])
        await client.query('COMMIT')
        const r = rows[0]
        report.workflows += r.workflows
        report.tasks += r.tasks
        report.auditRows += r.audit
        report.complianceEvents += r.events
        report.jobs += r.jobs
      } catch (error) {
        await client.query('ROLLBACK').catch(() => {})
        throw error
      }
      log(
        `growth: ${report.tasks} / ${total * perWorkflow} tasks (${((performance.now() - b0) / 1000).toFixed(1)} s for ${n * perWorkflow})`,
      )
    }
    report.phases.insertSeconds = secondsSince(t0)

    if (opts.seal ?? true) {
      const s0 = performance.now()
      const sealed = await sealAll(client, opts.tenantId, tenant.schema, log)
      report.sealed = { blocks: sealed.blocks, rows: sealed.rows, unsealed: sealed.unsealed }
      if (sealed.firstBlock !== null && sealed.lastBlock !== null) {
        const { firstBlock: a, lastBlock: z } = sealed
        await spotCheckSeals(client, opts.tenantId, tenant.schema, [a, Math.floor((a + z) / 2), z])
      }
      report.phases.sealSeconds = secondsSince(s0)
    }

    // autovacuum may be off (it is on the benchmark machine) or simply not have run yet: either way
    // the next measurement should not pay for setting hint bits and visibility on the new rows.
    if (opts.vacuum ?? true) {
      const v0 = performance.now()
      const tables = [
        ...TENANT_TABLES.map((t) => `${pg.escapeIdentifier(tenant.schema)}.${t}`),
        `${BOSS_SCHEMA}.job`,
      ]
      await client.query(`VACUUM (ANALYZE) ${tables.join(', ')}`)
      report.phases.vacuumSeconds = secondsSince(v0)
      const c0 = performance.now()
      try {
        await client.query('CHECKPOINT')
      } catch (error) {
        log(`growth: CHECKPOINT refused (${(error as Error).message}); the next checkpoint may land in a run`)
      }
      report.phases.checkpointSeconds = secondsSince(c0)
    }

    const sizes = await relationSizes(client, tenant.schema)
    report.sizes = sizes.pretty
    report.sizeBytes = sizes.bytes
    report.seconds = secondsSince(t0)
    log(
      `growth: ${report.tasks} tasks, ${report.auditRows} audit rows, ${report.jobs} jobs in ${report.seconds.toFixed(1)} s ` +
        `(insert ${report.phases.insertSeconds.toFixed(1)} s, seal ${report.phases.sealSeconds.toFixed(1)} s, ` +
        `vacuum ${report.phases.vacuumSeconds.toFixed(1)} s, checkpoint ${report.phases.checkpointSeconds.toFixed(1)} s)`,
    )
    return report
  } finally {
    await client.end()
  }
}

const secondsSince = (t: number) => Math.round((performance.now() - t) / 100) / 10

// The engine's sealer (src/audit/seal.ts sealTenantTx) hashes in Node, 1,000 rows a block, about 35 ms
// a block here: some 2.5 minutes for the audit rows of 1M tasks, twice this. This is the same
// computation in the server, a chunk of rows per transaction: the same advisory lock, the same horizon, rows in
// (txid, id) order after the last sealed one, and the same hashes:
//   data_hash = sha256(action_data::text), row_hash = sha256(JSON.stringify([tenant, id, txid,
//   workflow, task, agent, action, actor, correlation, timestamp in us, data_hash])),
//   hash = sha256([prev_hash, block_no, first_seq, ...row_hashes].join('\n'))
// (to_json(text)::text escapes a string as JSON.stringify does for anything PostgreSQL text can hold;
// ids, uuids and hex need no escaping).
// Blocks are cut as the sweeper's minute-by-minute sealing would have cut this history: a new block
// whenever the minute of the rows' timestamps changes, and at most 1,000 rows (the sealer's default).
// The chain is checked against the engine's own hash functions afterwards (spotCheckSeals), and
// bench/growth.ts with GROWTH_CHECK=1 runs the engine's full verify.
const SEAL_CHUNK = (tenantId: string, schema: string, maxRows: number) => `
DO $seal$
DECLARE
  tenant constant text := ${pg.escapeLiteral(tenantId)};
  tenant_json constant text := to_json(tenant)::text;
  prev record;
  first_prev text;
  h text;
  hashes text[] := '{}';
  b record;
  next_block bigint;
  next_seq bigint;
  sealed_blocks bigint;
  sealed_rows bigint;
BEGIN
  PERFORM ${enterTenantSql('tenant')},
    set_config('search_path', ${pg.escapeLiteral(pg.escapeIdentifier(schema))}, true),
    set_config('work_mem', '64MB', true);
  PERFORM pg_advisory_xact_lock(hashtextextended('equilateral.seal:' || tenant, 0));
  SELECT s.block_no, s.first_seq, s.row_count, s.last_txid, s.last_id, s.hash INTO prev
  FROM agent_audit_seals s WHERE s.tenant_id = tenant ORDER BY s.block_no DESC LIMIT 1;
  first_prev := coalesce(prev.hash, repeat('0', 64));
  next_block := coalesce(prev.block_no, 0) + 1;
  next_seq := coalesce(prev.first_seq + prev.row_count, 1);
  -- The rows in (txid, id) order, hashed; blk numbers the blocks from 1: a new one where the minute
  -- changes (chg) or 1,000 rows into a minute. Every window runs in the index's order: no sort.
  CREATE TEMP TABLE growth_seal_blocks ON COMMIT DROP AS
  WITH r AS (
    SELECT a.id, a.txid, a."timestamp" AS ts, row_number() OVER w AS rn,
      CASE WHEN date_trunc('minute', a."timestamp") IS DISTINCT FROM lag(date_trunc('minute', a."timestamp")) OVER w
        THEN 1 ELSE 0 END AS chg,
      d.data_hash,
      encode(sha256(convert_to('[' || tenant_json || ',"' || a.id || '","' || a.txid || '","' || a.workflow_id
        || '",' || coalesce('"' || a.task_id || '"', 'null') || ',' || coalesce(to_json(a.agent_id)::text, 'null')
        || ',' || to_json(a.action_type)::text || ',' || coalesce(to_json(a.actor)::text, 'null') || ','
        || coalesce(to_json(a.correlation_id)::text, 'null') || ',"'
        || (extract(epoch FROM a."timestamp") * 1000000)::bigint || '","' || d.data_hash || '"]', 'UTF8')), 'hex') AS row_hash
    FROM agent_audit_log a
    CROSS JOIN LATERAL (SELECT encode(sha256(convert_to(a.action_data::text, 'UTF8')), 'hex') AS data_hash) d
    WHERE a.tenant_id = tenant
      AND (a.txid, a.id) > (coalesce(prev.last_txid, 0), coalesce(prev.last_id, 0))
      AND a.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    WINDOW w AS (ORDER BY a.txid, a.id)
    ORDER BY a.txid, a.id LIMIT ${maxRows}
  ),
  islands AS (SELECT r.*, max(CASE WHEN chg = 1 THEN rn END) OVER (ORDER BY txid, id) AS minute_rn FROM r),
  blocks AS (
    SELECT i.*, sum(CASE WHEN chg = 1 OR (rn - minute_rn) % 1000 = 0 THEN 1 ELSE 0 END) OVER (ORDER BY txid, id) AS blk
    FROM islands i
  )
  SELECT blk, count(*)::int AS row_count, min(rn) AS first_rn,
    (array_agg(txid ORDER BY rn DESC))[1] AS last_txid, (array_agg(id ORDER BY rn DESC))[1] AS last_id,
    max(ts) AS last_ts, array_agg(id ORDER BY rn) AS row_ids, array_agg(row_hash ORDER BY rn) AS row_hashes,
    array_agg(data_hash ORDER BY rn) AS data_hashes
  FROM blocks GROUP BY blk;
  -- The chain, block after block.
  h := first_prev;
  FOR b IN SELECT blk, first_rn, row_hashes FROM growth_seal_blocks ORDER BY blk LOOP
    h := encode(sha256(convert_to(h || E'\\n' || (next_block + b.blk - 1) || E'\\n' || (next_seq + b.first_rn - 1)
      || E'\\n' || array_to_string(b.row_hashes, E'\\n'), 'UTF8')), 'hex');
    hashes := array_append(hashes, h);
  END LOOP;
  INSERT INTO agent_audit_seals (tenant_id, block_no, first_seq, row_count, last_txid, last_id, row_ids,
    row_hashes, data_hashes, prev_hash, hash, sealed_at)
  SELECT tenant, next_block + k.blk - 1, next_seq + k.first_rn - 1, k.row_count, k.last_txid, k.last_id, k.row_ids,
    k.row_hashes, k.data_hashes, CASE WHEN k.blk = 1 THEN first_prev ELSE hashes[k.blk - 1] END, hashes[k.blk],
    -- when the sweeper's minute-by-minute sealer would have sealed it
    least(now(), k.last_ts + interval '30 seconds')
  FROM growth_seal_blocks k ORDER BY k.blk;
  GET DIAGNOSTICS sealed_blocks = ROW_COUNT;
  SELECT coalesce(sum(row_count), 0) INTO sealed_rows FROM growth_seal_blocks;
  DROP TABLE growth_seal_blocks;
  RAISE NOTICE 'sealed % %', sealed_blocks, sealed_rows;
END
$seal$`

/**
 * Seals every unsealed audit row of the tenant, a chunk of rows per transaction (see SEAL_CHUNK).
 * Like the engine's sealer it cannot seal rows newer than the oldest transaction still open anywhere
 * on the server (pg_snapshot_xmin): when some remain for that reason, it waits for them (up to
 * `waitMs`) and reports what it had to leave unsealed.
 */
async function sealAll(
  client: pg.Client,
  tenantId: string,
  schema: string,
  log: (line: string) => void,
  waitMs = 60_000,
): Promise<{
  blocks: number
  rows: number
  unsealed: number
  firstBlock: number | null
  lastBlock: number | null
}> {
  const s = pg.escapeIdentifier(schema)
  const total = {
    blocks: 0,
    rows: 0,
    unsealed: 0,
    firstBlock: null as number | null,
    lastBlock: null as number | null,
  }
  const chunk = 500_000
  let last = { blocks: 0, rows: 0 }
  const onNotice = (n: { message?: string }) => {
    const m = /^sealed (\d+) (\d+)$/.exec(n.message ?? '')
    if (m) last = { blocks: Number(m[1]), rows: Number(m[2]) }
  }
  const unsealed = async () =>
    Number(
      (
        await client.query(
          `SELECT count(*)::int AS n FROM ${s}.agent_audit_log a
           WHERE a.tenant_id = $1 AND (a.txid, a.id) > coalesce((SELECT (x.last_txid, x.last_id) FROM ${s}.agent_audit_seals x
             WHERE x.tenant_id = $1 ORDER BY x.block_no DESC LIMIT 1), (0::bigint, 0::bigint))`,
          [tenantId],
        )
      ).rows[0].n,
    )
  client.on('notice', onNotice)
  try {
    const before = await client.query(
      `SELECT coalesce(max(block_no), 0)::int AS n FROM ${s}.agent_audit_seals WHERE tenant_id = $1`,
      [tenantId],
    )
    const deadline = Date.now() + waitMs
    for (;;) {
      last = { blocks: 0, rows: 0 }
      await client.query(SEAL_CHUNK(tenantId, schema, chunk))
      total.blocks += last.blocks
      total.rows += last.rows
      if (last.rows === chunk) {
        log(`growth: sealed ${total.rows} audit rows in ${total.blocks} blocks`)
        continue
      }
      total.unsealed = await unsealed()
      if (total.unsealed === 0) break
      if (Date.now() > deadline) {
        log(
          `growth: ${total.unsealed} audit rows left unsealed: a transaction older than them is still open ` +
            `on the server (the engine's sealer will seal them once it ends)`,
        )
        break
      }
      await new Promise((r) => setTimeout(r, 1000))
    }
    if (total.blocks > 0) {
      total.firstBlock = before.rows[0].n + 1
      total.lastBlock = before.rows[0].n + total.blocks
    }
    return total
  } finally {
    client.off('notice', onNotice)
  }
}

// src/audit/seal.ts ROW_COLUMNS (not exported), copied: the row fields the hashes cover.
const ROW_COLUMNS = `a.id::text, a.txid::text, a.workflow_id, a.task_id, a.agent_id, a.action_type, a.actor,
  a.correlation_id, (extract(epoch FROM a."timestamp") * 1000000)::bigint::text AS ts_us, a.action_data::text AS data`

/**
 * Recomputes the given blocks with the engine's hash functions (src/audit/seal.ts) and throws at
 * the first difference: what the full verify would find there, in milliseconds.
 */
export async function spotCheckSeals(
  client: pg.ClientBase,
  tenantId: string,
  schema: string,
  blockNos: number[],
): Promise<void> {
  const s = pg.escapeIdentifier(schema)
  for (const blockNo of [...new Set(blockNos)]) {
    const { rows: seals } = await client.query(
      `SELECT block_no::text, first_seq::text, last_txid::text, last_id::text, row_ids::text[], row_hashes,
         data_hashes, prev_hash, hash FROM ${s}.agent_audit_seals x
       WHERE x.tenant_id = $1 AND x.block_no IN ($2 - 1, $2) ORDER BY x.block_no`,
      [tenantId, blockNo],
    )
    const block = seals.at(-1)
    const prev = seals.length === 2 ? seals[0] : null
    if (!block || block.block_no !== String(blockNo)) throw new Error(`seal check: no block ${blockNo}`)
    const { rows } = await client.query(
      `SELECT ${ROW_COLUMNS} FROM ${s}.agent_audit_log a
       WHERE a.tenant_id = $1 AND (a.txid, a.id) > ($2::bigint, $3::bigint) AND (a.txid, a.id) <= ($4::bigint, $5::bigint)
       ORDER BY a.txid, a.id`,
      [tenantId, prev?.last_txid ?? '0', prev?.last_id ?? '0', block.last_txid, block.last_id],
    )
    const dataHashes = rows.map((r) => dataHash(r.data))
    const rowHashes = rows.map((r, i) => rowHash(tenantId, r, dataHashes[i] as string))
    const problems = [
      JSON.stringify(rows.map((r) => r.id)) !== JSON.stringify(block.row_ids) && 'row ids',
      JSON.stringify(dataHashes) !== JSON.stringify(block.data_hashes) && 'data hashes',
      JSON.stringify(rowHashes) !== JSON.stringify(block.row_hashes) && 'row hashes',
      (prev?.hash ?? GENESIS) !== block.prev_hash && 'prev hash',
      blockHash(block.prev_hash, block.block_no, block.first_seq, rowHashes) !== block.hash && 'block hash',
    ].filter(Boolean)
    if (problems.length > 0) throw new Error(`seal check: block ${blockNo}: ${problems.join(', ')} differ`)
  }
}

/** Sizes of the tenant tables and pg-boss's job table (all its partitions): total, heap, indexes, each index. */
export async function relationSizes(
  client: pg.ClientBase,
  schema = APP_SCHEMA,
): Promise<{ pretty: Record<string, string>; bytes: Record<string, number> }> {
  const { rows } = await client.query<{ name: string; bytes: string }>(
    `WITH tables AS (
       SELECT t AS name, c.oid FROM unnest($2::text[]) t
       JOIN pg_class c ON c.relname = t AND c.relnamespace = $1::regnamespace
       UNION ALL
       SELECT 'pgboss.job', p.relid FROM pg_partition_tree('${BOSS_SCHEMA}.job') p WHERE p.isleaf
     )
     SELECT name, sum(pg_total_relation_size(oid))::text AS bytes FROM tables GROUP BY name
     UNION ALL
     SELECT name || ' heap', sum(pg_table_size(oid))::text FROM tables GROUP BY name
     UNION ALL
     SELECT name || ' indexes', sum(pg_indexes_size(oid))::text FROM tables GROUP BY name
     UNION ALL
     SELECT 'index ' || i.indexrelid::regclass::text, pg_relation_size(i.indexrelid)::text
     FROM tables JOIN pg_index i ON i.indrelid = tables.oid`,
    [schema, TENANT_TABLES],
  )
  const bytes: Record<string, number> = {}
  for (const r of rows) bytes[r.name] = Number(r.bytes)
  const pretty: Record<string, string> = {}
  const { rows: p } = await client.query<{ name: string; size: string }>(
    `SELECT k AS name, pg_size_pretty(v::bigint) AS size FROM jsonb_each_text($1::jsonb) AS e(k, v)`,
    [JSON.stringify(bytes)],
  )
  for (const r of p) pretty[r.name] = r.size
  return { pretty, bytes }
}

// ---------------------------------------------------------------------------------------------------
// EXPLAIN of the hot path.
//
// The three statements every task goes through: START, CLAIM and COMPLETE, from src/flow.

export interface PlanNodeSummary {
  node: string
  relation?: string
  index?: string
  rows: number
  loops: number
  /** Shared buffers hit + read by this node and the nodes below it. */
  buffers: number
}

export interface StatementExplain {
  /** Median execution time over the repetitions. */
  ms: number
  planningMs: number
  /** Shared buffers of the whole statement (last repetition): its plan tree plus its triggers' writes. */
  buffers: { hit: number; read: number; dirtied: number; written: number }
  /** Every scan and modify node, with its rows and buffers (last repetition). */
  scans: PlanNodeSummary[]
  /** Relations read by a sequential scan: a hot statement should have none. */
  seqScans: string[]
}

export interface HotPathExplain {
  tenantId: string
  /** What the statements ran against: the tenant's rows at the time. */
  rows: { workflows: number; tasks: number; auditRows: number; jobs: number }
  /** Role the statements ran as (the engine's run-time role when it exists). */
  role: string
  repetitions: number
  start: StatementExplain
  claim: StatementExplain
  complete: StatementExplain
  /** Copied statements that no longer match src (the figures then describe an old statement). */
  /** With `plans: true`: the text EXPLAIN (ANALYZE, BUFFERS) of one more repetition. */
  plans?: { start: string; claim: string; complete: string }
}

interface PlanNode {
  'Node Type': string
  'Relation Name'?: string
  'Index Name'?: string
  'Actual Rows'?: number
  'Actual Loops'?: number
  'Shared Hit Blocks'?: number
  'Shared Read Blocks'?: number
  'Shared Dirtied Blocks'?: number
  'Shared Written Blocks'?: number
  'CTE Name'?: string
  'Subplan Name'?: string
  Plans?: PlanNode[]
}

interface ExplainJson {
  Plan: PlanNode
  'Planning Time': number
  'Execution Time': number
}

type Buffers = StatementExplain['buffers']

const buffersOf = (n: PlanNode): Buffers => ({
  hit: n['Shared Hit Blocks'] ?? 0,
  read: n['Shared Read Blocks'] ?? 0,
  dirtied: n['Shared Dirtied Blocks'] ?? 0,
  written: n['Shared Written Blocks'] ?? 0,
})

function summarize(e: ExplainJson): Omit<StatementExplain, 'ms' | 'planningMs'> {
  const scans: PlanNodeSummary[] = []
  const nodes: PlanNode[] = []
  const walk = (n: PlanNode) => {
    nodes.push(n)
    if (n['Relation Name'] || n['Index Name']) {
      scans.push({
        node: n['Node Type'],
        ...(n['Relation Name'] ? { relation: n['Relation Name'] } : {}),
        ...(n['Index Name'] ? { index: n['Index Name'] } : {}),
        rows: n['Actual Rows'] ?? 0,
        loops: n['Actual Loops'] ?? 0,
        buffers: (n['Shared Hit Blocks'] ?? 0) + (n['Shared Read Blocks'] ?? 0),
      })
    }
    for (const c of n.Plans ?? []) walk(c)
  }
  walk(e.Plan)
  // The top node counts what it pulled, CTEs it read included. A data-modifying CTE nothing reads
  // (the audit inserts) runs after it, on its own: its buffers are added. (Trigger work, such as the
  // compliance trigger's, is in no node and not counted.)
  const read = new Set(nodes.filter((n) => n['CTE Name']).map((n) => n['CTE Name']))
  const unread = nodes.filter(
    (n) => n['Subplan Name']?.startsWith('CTE ') && !read.has(n['Subplan Name'].slice(4)),
  )
  const buffers = buffersOf(e.Plan)
  for (const n of unread) {
    const b = buffersOf(n)
    buffers.hit += b.hit
    buffers.read += b.read
    buffers.dirtied += b.dirtied
    buffers.written += b.written
  }
  const seqScans = scans.filter((s) => s.node === 'Seq Scan').map((s) => s.relation as string)
  return { buffers, scans, seqScans }
}

/**
 * EXPLAIN (ANALYZE, BUFFERS) of the hot path on the database as it is: per repetition, in one
 * transaction rolled back afterwards, START of a diamond for the tenant, CLAIM of its first task and
 * COMPLETE of it (which makes two tasks ready). Run as the engine's run-time role when it exists, in
 * the tenant's scope, so row-level security shapes the plans as it does in production. Call it on
 * an empty and on a preloaded database and compare the buffers: a statement whose buffers grow with
 * the history is scanning it.
 */
export async function explainHotPath(
  url: string,
  tenantId: string,
  opts: { repetitions?: number; agentId?: string; workflowType?: string; plans?: boolean } = {},
): Promise<HotPathExplain> {
  const reps = Math.max(1, opts.repetitions ?? 5)
  const { workflow } = diamondDefinition(opts.agentId, opts.workflowType)
  const client = new pg.Client({ connectionString: url, application_name: 'equilateral-bench-explain' })
  await client.connect()
  try {
    const tenant = await tenantInfo(client, tenantId)
    const counts = await client.query(
      `SELECT (SELECT count(*) FROM ${pg.escapeIdentifier(tenant.schema)}.workflows WHERE tenant_id = $1)::int AS workflows,
         (SELECT count(*) FROM ${pg.escapeIdentifier(tenant.schema)}.agent_coordination WHERE tenant_id = $1)::int AS tasks,
         (SELECT count(*) FROM ${pg.escapeIdentifier(tenant.schema)}.agent_audit_log WHERE tenant_id = $1)::int AS audit,
         (SELECT count(*) FROM ${BOSS_SCHEMA}.job)::int AS jobs`,
      [tenantId],
    )
    const canSetRole = (
      await client.query(
        `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) AND pg_has_role($1, 'MEMBER') AS ok`,
        [APP_ROLE],
      )
    ).rows[0]?.ok as boolean
    const role = canSetRole ? APP_ROLE : (await client.query('SELECT current_user AS u')).rows[0]?.u
    type Statement = 'start' | 'claim' | 'complete'
    // One START, CLAIM and COMPLETE of a new diamond, in a transaction rolled back afterwards.
    const once = async (i: number, format: 'JSON' | 'TEXT'): Promise<Record<Statement, any[]>> => {
      await client.query(beginScoped(tenantId, tenant.schema))
      try {
        if (canSetRole) await client.query(`SET LOCAL ROLE ${APP_ROLE}`)
        const tasks = planTasks(
          workflow.tasks,
          workflow.tasks.map(() => null),
          { newId: randomUUID, queueName, limits: DEFAULT_JSON_LIMITS },
        )
        const first = tasks.find((t) => t.status === 'queued')
        if (!first) throw new Error('the diamond has no task ready at start')
        const workflowId = randomUUID()
        const explain = async (sql: string, params: unknown[]) =>
          (await client.query(`EXPLAIN (ANALYZE, BUFFERS, FORMAT ${format}) ${sql}`, params)).rows.map(
            (r) => r['QUERY PLAN'],
          )
        const startParams = [
          tenantId,
          workflowId,
          workflow.name,
          workflow.version,
          JSON.stringify({ i }),
          null,
          workflowId,
          tasks.length,
          JSON.stringify(tasks),
          null,
          null,
          true, // the jobs of the ready tasks written by START itself (src/queue/direct.ts)
          tenant.tier,
        ]
        return {
          start: await explain(START, startParams),
          claim: await explain(CLAIM, [
            tenantId,
            JSON.stringify([{ id: first.id, attempt: 1 }]),
            'explain',
            [first.id],
            null,
          ]),
          complete: await explain(COMPLETE, [
            tenantId,
            JSON.stringify([{ id: first.id, attempt: 1, result: null }]),
            [first.id],
            true, // notify, and insert the ready tasks' jobs (no local continuation)
            true,
            tenant.tier,
          ]),
        }
      } finally {
        await client.query('ROLLBACK')
      }
    }
    const runs: Record<Statement, ExplainJson[]> = { start: [], claim: [], complete: [] }
    for (let i = 0; i < reps; i++) {
      const r = await once(i, 'JSON')
      for (const k of ['start', 'claim', 'complete'] as const) runs[k].push(r[k][0][0] as ExplainJson)
    }
    const plans = opts.plans ? await once(reps, 'TEXT') : undefined
    const median = (v: number[]) => {
      const s = [...v].sort((a, b) => a - b)
      return Math.round((s[Math.floor(s.length / 2)] as number) * 1000) / 1000
    }
    const statement = (list: ExplainJson[]): StatementExplain => ({
      ms: median(list.map((e) => e['Execution Time'])),
      planningMs: median(list.map((e) => e['Planning Time'])),
      ...summarize(list[list.length - 1] as ExplainJson),
    })
    const c = counts.rows[0]
    return {
      tenantId,
      rows: { workflows: c.workflows, tasks: c.tasks, auditRows: c.audit, jobs: c.jobs },
      role,
      repetitions: reps,
      start: statement(runs.start),
      claim: statement(runs.claim),
      complete: statement(runs.complete),
      ...(plans
        ? {
            plans: {
              start: plans.start.join('\n'),
              claim: plans.claim.join('\n'),
              complete: plans.complete.join('\n'),
            },
          }
        : {}),
    }
  } finally {
    await client.end()
  }
}

/** One line per statement: buffers and time, for logs and the benchmark's summary. */
export function explainLine(e: HotPathExplain): string {
  const s = (name: string, x: StatementExplain) =>
    `${name} ${x.buffers.hit + x.buffers.read} buffers ${x.ms} ms${x.seqScans.length ? ` SEQ SCAN ${x.seqScans.join(',')}` : ''}`
  return `${e.rows.tasks} tasks: ${s('start', e.start)}; ${s('claim', e.claim)}; ${s('complete', e.complete)}`
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const adminUrl = process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const tasks = Number(process.argv[3] ?? 1_000_000)
  const env = process.env
  const log = (line: string) => console.error(line)
  const db = await scratchDatabase(adminUrl, `eq_growth_${process.pid}`)
  const { agent, workflow } = diamondDefinition()
  let engine: Awaited<ReturnType<typeof createEngine>> | undefined
  try {
    await migrate(db.url)
    engine = await createEngine({
      connectionString: db.url,
      adminConnectionString: db.url,
      agents: [agent],
      workflows: [workflow],
      log: pino({ level: 'warn' }, pino.destination(2)),
      supervise: false,
    })
    const profile = env.GROWTH_COMPLIANCE_PROFILE
    await engine.createTenant({
      id: 'bench',
      ...(profile ? { complianceProfile: JSON.parse(profile) as object } : {}),
    })
    // Some diamonds through the engine first, as bench/run.ts has run before preloading: the preload
    // then seals their audit rows too, ahead of its own.
    const warmup = await runDiamonds(engine, 20)
    log(`growth: ${warmup.diamonds} diamonds through the engine in ${warmup.runSeconds} s`)
    const before = await explainHotPath(db.url, 'bench')
    log(`growth: explain before: ${explainLine(before)}`)
    const preload = await preloadHistory({
      url: db.url,
      tenantId: 'bench',
      tasks,
      log,
      ...(env.GROWTH_DAYS ? { days: Number(env.GROWTH_DAYS) } : {}),
      ...(env.GROWTH_BATCH ? { batchTasks: Number(env.GROWTH_BATCH) } : {}),
      ...(env.GROWTH_JOBS ? { jobs: env.GROWTH_JOBS as PreloadOptions['jobs'] } : {}),
      seal: env.GROWTH_SEAL !== '0',
    })
    const after = await explainHotPath(db.url, 'bench')
    log(`growth: explain after:  ${explainLine(after)}`)
    const result: Record<string, unknown> = { preload, explain: { before, after } }
    if (env.GROWTH_CHECK === '1') result.check = await check(engine, log)
    console.log(JSON.stringify(result, null, 2))
  } finally {
    await engine?.close()
    if (env.GROWTH_KEEP === '1') log(`growth: kept ${db.url}`)
    else await db.drop()
  }
}

/** Starts `n` diamonds through the engine and waits for them (the worker is started once). */
async function runDiamonds(
  engine: Awaited<ReturnType<typeof createEngine>>,
  n: number,
): Promise<{ diamonds: number; runSeconds: number }> {
  const tenant = await engine.tenant('bench')
  const t0 = performance.now()
  const ids: string[] = []
  for (let i = 0; i < n; i++) ids.push((await tenant.startWorkflow('diamond', { i })).id)
  if (!workerStarted.has(engine)) {
    workerStarted.add(engine)
    await engine.startWorker()
  }
  const deadline = Date.now() + 60_000
  const pending = new Set(ids)
  while (pending.size > 0) {
    if (Date.now() > deadline) throw new Error(`${pending.size} of ${n} diamonds not completed in 60 s`)
    for (const id of [...pending]) {
      const w = await tenant.getWorkflow(id)
      if (w.status === 'completed') pending.delete(id)
      else if (w.status !== 'running') throw new Error(`diamond ${id} ended ${w.status}`)
    }
    if (pending.size > 0) await new Promise((r) => setTimeout(r, 50))
  }
  return { diamonds: n, runSeconds: secondsSince(t0) }
}
const workerStarted = new WeakSet<object>()

/** Diamonds still run through the engine on top of the history, and the audit chain still verifies. */
async function check(
  engine: Awaited<ReturnType<typeof createEngine>>,
  log: (line: string) => void,
): Promise<Record<string, unknown>> {
  const run = await runDiamonds(engine, 20)
  log(
    `growth: check: ${run.diamonds} diamonds completed in ${run.runSeconds} s; sealing and verifying the audit chain`,
  )
  const s0 = performance.now()
  const sealed = await engine.sealAudit()
  const [verify] = await engine.verifyAudit('bench')
  if (!verify?.ok) throw new Error(`check: audit verification failed: ${JSON.stringify(verify?.problem)}`)
  return { ...run, sealed, verify, verifySeconds: secondsSince(s0) }
}

if (import.meta.main) await main()
