// Tenant data tables. They are declared without a schema on purpose: the same DDL creates them in
// the shared `equilateral` schema (row-level-security mode) or in a tenant's own schema
// (schema-per-tenant mode), and the engine's SQL names them unqualified, resolved by the
// transaction's search_path. Every table leads its primary key and indexes with tenant_id so the
// tables can be distributed by tenant (Citus) without a redesign.
// Size (over 400 lines): one declaration per tenant table, kept in one file because drizzle-kit
// generates the tenant migrations from it and the schema-drift test compares it with them.
import { sql } from 'drizzle-orm'
import {
  bigint,
  boolean,
  check,
  index,
  integer,
  jsonb,
  pgPolicy,
  pgTable,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from 'drizzle-orm/pg-core'
import { COMPLIANCE_TYPES } from './values.ts'

import { TASK_STATUSES, WORKFLOW_STATUSES } from '../../core/task-state.ts'

const tz = (name: string) => timestamp(name, { withTimezone: true })

/**
 * Row-level security, the same on every tenant table: a row is visible and writable only inside a
 * transaction that equilateral.enter_tenant() scoped to its tenant with the tenant's credential
 * (withTenantTx does; drizzle/tenant/0016). current_tenant() checks the transaction's seal and
 * returns NULL without one, so setting `app.tenant_id` alone grants nothing: fail closed. Evaluated
 * once per statement (an initPlan). RLS is also FORCED (drizzle/tenant/0002_isolation.sql), so the
 * tables' owner is bound by the policy too. The observer role has a read-only policy of its own
 * (migration 0016), by `app.tenant_id`.
 */
const tenantIsolation = () =>
  pgPolicy('tenant_isolation', {
    as: 'permissive',
    for: 'all',
    to: 'public',
    using: sql`tenant_id = (SELECT equilateral.current_tenant())`,
    withCheck: sql`tenant_id = (SELECT equilateral.current_tenant())`,
  })

export const workflows = pgTable(
  'workflows',
  {
    tenantId: text('tenant_id').notNull(),
    id: uuid('id').notNull(),
    type: text('type').notNull(),
    version: integer('version').notNull(),
    status: text('status', { enum: WORKFLOW_STATUSES }).notNull(),
    input: jsonb('input'),
    error: jsonb('error'),
    idempotencyKey: text('idempotency_key'),
    correlationId: text('correlation_id').notNull(),
    /** The data subject the workflow is about (e.g. a user id), for GDPR erasure; never encrypted. */
    subjectKey: text('subject_key'),
    /** Tasks not yet in a terminal state; the completion that takes it to zero completes the workflow. */
    tasksRemaining: integer('tasks_remaining').notNull(),
    createdAt: tz('created_at').notNull().defaultNow(),
    updatedAt: tz('updated_at').notNull().defaultNow(),
    completedAt: tz('completed_at'),
    /** A replay (src/flow/replay.ts): the workflow this one replays; null for a workflow started anew. */
    replayOf: uuid('replay_of'),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    uniqueIndex('workflows_idempotency_key_idx')
      .on(t.tenantId, t.idempotencyKey)
      .where(sql`${t.idempotencyKey} IS NOT NULL`),
    index('workflows_recent_idx').on(t.tenantId, t.createdAt.desc(), t.id.desc()),
    index('workflows_type_status_idx').on(t.tenantId, t.type, t.status, t.createdAt),
    index('workflows_subject_idx')
      .on(t.tenantId, t.subjectKey)
      .where(sql`${t.subjectKey} IS NOT NULL`),
    index('workflows_replay_of_idx')
      .on(t.tenantId, t.replayOf)
      .where(sql`${t.replayOf} IS NOT NULL`),
    // The console's lookup by correlation id (drizzle/tenant/0021).
    index('workflows_correlation_idx').on(t.tenantId, t.correlationId),
  ],
)

/** One row per task of a workflow: the coordination state (the design document's agent_coordination). */
export const tasks = pgTable(
  'agent_coordination',
  {
    tenantId: text('tenant_id').notNull(),
    id: uuid('id').notNull(),
    workflowId: uuid('workflow_id').notNull(),
    taskKey: text('task_key').notNull(),
    agentId: text('agent_id').notNull(),
    taskType: text('task_type').notNull(),
    queue: text('queue').notNull(),
    data: jsonb('data'),
    status: text('status', { enum: TASK_STATUSES }).notNull(),
    /** Keys of the tasks this one depends on (what the agent sees its parents' results under). */
    dependencies: text('dependencies')
      .array()
      .notNull()
      .default(sql`'{}'::text[]`),
    dependsOn: uuid('depends_on')
      .array()
      .notNull()
      .default(sql`'{}'::uuid[]`),
    /** Children, so readiness is found in O(out-degree) at completion. */
    dependents: uuid('dependents')
      .array()
      .notNull()
      .default(sql`'{}'::uuid[]`),
    depsRemaining: integer('deps_remaining').notNull(),
    /** Dispatch generation: every new job for this task gets attempt + 1. Completions are fenced on it. */
    attempt: integer('attempt').notNull().default(0),
    /** Failed attempts so far (agent errors, timeouts, lost workers); compared with maxAttempts. */
    failures: integer('failures').notNull().default(0),
    maxAttempts: integer('max_attempts').notNull(),
    backoffMs: integer('backoff_ms').notNull(),
    backoffMaxMs: integer('backoff_max_ms').notNull(),
    timeoutMs: integer('timeout_ms').notNull(),
    /**
     * Agent version the run needs (from its workflow definition); null: any version of the agent.
     * A worker without it leaves the task for one that has it (src/flow/versions.ts).
     */
    agentVersion: integer('agent_version'),
    /** When a worker first left this attempt for lack of its agent version (the bound runs from here). */
    unservedSince: tz('unserved_since'),
    /**
     * Wait tasks (approval, event): what the task waits for, with its timeout and timeout outcome
     * (src/flow/waits.ts). Null for agent tasks.
     */
    wait: jsonb('wait'),
    /** Set when a wait task starts waiting with a timeout: the database time it times out. */
    waitDeadline: tz('wait_deadline'),
    /** Durable timer: the task starts no earlier than this (database clock) ... */
    startAt: tz('start_at'),
    /** ... and no earlier than this long after it became ready. */
    startDelayMs: integer('start_delay_ms'),
    jobId: uuid('job_id'),
    result: jsonb('result'),
    error: jsonb('error'),
    workerId: text('worker_id'),
    createdAt: tz('created_at').notNull().defaultNow(),
    queuedAt: tz('queued_at'),
    startedAt: tz('started_at'),
    heartbeatAt: tz('heartbeat_at'),
    completedAt: tz('completed_at'),
    updatedAt: tz('updated_at').notNull().defaultNow(),
    /**
     * Why a queued task is held without a job ('budget_exhausted': its tenant's hard budget is spent,
     * src/usage/holds.ts); null for every other task. Cleared when the hold is released.
     */
    holdReason: text('hold_reason'),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    // Held tasks, released all at once when a budget is raised or its period rolls: nearly always empty.
    index('agent_coordination_held_idx')
      .on(t.tenantId, t.id)
      .where(sql`${t.holdReason} IS NOT NULL`),
    uniqueIndex('agent_coordination_task_key_idx').on(t.tenantId, t.workflowId, t.taskKey),
    // The sweeper pages through in-flight tasks only; the partial index stays as small as the backlog.
    index('agent_coordination_inflight_idx')
      .on(t.tenantId, t.id)
      .where(sql`${t.status} IN ('queued', 'running')`),
    // Ready tasks without a job: only after a bug or a manual edit, so this index is nearly always empty.
    index('agent_coordination_orphan_idx')
      .on(t.tenantId, t.id)
      .where(sql`${t.status} = 'pending' AND ${t.depsRemaining} = 0`),
    // Agent analytics (src/analytics.ts): the tasks that completed or failed in a window, read by an
    // index-only range scan (every column the query reads is a key column: drizzle has no INCLUDE).
    // It replaces (tenant_id, agent_id, completed_at), which no query used and which made a window
    // read every finished task of the tenant and then its heap rows.
    // Waiting tasks with a deadline, for the sweeper's backstop of wait timeouts (and the test kit).
    index('agent_coordination_waiting_idx')
      .on(t.tenantId, t.waitDeadline)
      .where(sql`${t.status} = 'waiting'`),
    // Dead letters (src/flow/dead-letters.ts): the tasks that failed for good, newest first. Failed
    // tasks are few, so the partial index is small.
    index('agent_coordination_failed_idx')
      .on(t.tenantId, t.completedAt.desc(), t.id.desc())
      .where(sql`${t.status} = 'failed'`),
    index('agent_coordination_finished_idx')
      .on(t.tenantId, t.completedAt, t.agentId, t.status, t.attempt, t.queuedAt, t.startedAt)
      .where(sql`${t.status} IN ('completed', 'failed')`),
  ],
)

/**
 * Operator requests on workflows (retry, replay, redrive: src/flow/retry.ts and the files beside it)
 * by their request key: the first request's answer is kept, so a repeated request (a client that
 * retries after a lost response) answers the same and changes nothing. Written in the transaction
 * that does the operation, so the key exists if and only if the operation committed.
 */
export const workflowRequests = pgTable(
  'workflow_requests',
  {
    tenantId: text('tenant_id').notNull(),
    requestKey: text('request_key').notNull(),
    /** retry, replay or redrive. */
    operation: text('operation').notNull(),
    /** What it was asked of: the workflow id, or the redrive's selection. */
    target: text('target').notNull(),
    /** The answer the first request got. */
    result: jsonb('result').notNull(),
    actor: text('actor'),
    createdAt: tz('created_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.requestKey] }), tenantIsolation()],
)

/**
 * The inbox of external events and approval decisions delivered to workflows (src/flow/waits.ts).
 * A delivery is idempotent on its event id within the workflow. An event that arrives before any
 * task waits for it stays unconsumed until one does; consuming it records the task.
 */
export const workflowEvents = pgTable(
  'workflow_events',
  {
    tenantId: text('tenant_id').notNull(),
    id: bigint('id', { mode: 'bigint' }).generatedAlwaysAsIdentity().notNull(),
    workflowId: uuid('workflow_id').notNull(),
    /** The sender's id for this event: a second delivery with the same id changes nothing. */
    eventId: text('event_id').notNull(),
    kind: text('kind', { enum: ['event', 'approval'] }).notNull(),
    /** The event name, or the approval's name. */
    name: text('name').notNull(),
    /** The event's match key (a wait declared with `match` takes only events with that key). */
    matchKey: text('match_key'),
    /** The event payload or the decision ({ approved, comment }), encrypted like task data. */
    payload: jsonb('payload'),
    /** Who delivered it (the approver, for a decision). */
    actor: text('actor'),
    /** The task it was delivered for; once consumed (consumed_at set), the task that took it. */
    taskId: uuid('task_id'),
    consumedAt: tz('consumed_at'),
    createdAt: tz('created_at').notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    uniqueIndex('workflow_events_event_id_idx').on(t.tenantId, t.workflowId, t.eventId),
    index('workflow_events_unconsumed_idx')
      .on(t.tenantId, t.workflowId, t.name)
      .where(sql`${t.consumedAt} IS NULL`),
  ],
)

/**
 * Cron schedules that start a workflow type for the tenant with a fixed input (src/schedule).
 * Each slot starts one workflow whatever the number of schedulers: its idempotency key names the
 * schedule and the slot.
 */
export const workflowSchedules = pgTable(
  'workflow_schedules',
  {
    tenantId: text('tenant_id').notNull(),
    /** The schedule's name, unique in the tenant. */
    id: text('id').notNull(),
    workflowType: text('workflow_type').notNull(),
    /** A cron expression (5 fields, or 6 with seconds) read in `timezone`. */
    cron: text('cron').notNull(),
    timezone: text('timezone').notNull(),
    input: jsonb('input'),
    /** Slots missed while no scheduler ran: 'skip' them, or start one workflow for the latest ('catch-up-once'). */
    missed: text('missed', { enum: ['skip', 'catch-up-once'] }).notNull(),
    enabled: boolean('enabled').notNull().default(true),
    /** The latest slot handled (started, or skipped by the missed-slot policy). */
    lastSlot: tz('last_slot'),
    /** The next slot to handle: schedulers look for schedules with next_slot <= now(). */
    nextSlot: tz('next_slot').notNull(),
    createdAt: tz('created_at').notNull().defaultNow(),
    updatedAt: tz('updated_at').notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    index('workflow_schedules_due_idx').on(t.tenantId, t.nextSlot),
  ],
)

export const auditLog = pgTable(
  'agent_audit_log',
  {
    tenantId: text('tenant_id').notNull(),
    id: bigint('id', { mode: 'bigint' }).generatedAlwaysAsIdentity().notNull(),
    workflowId: uuid('workflow_id').notNull(),
    taskId: uuid('task_id'),
    agentId: text('agent_id'),
    actionType: text('action_type').notNull(),
    actionData: jsonb('action_data')
      .notNull()
      .default(sql`'{}'::jsonb`),
    actor: text('actor'),
    correlationId: text('correlation_id'),
    timestamp: tz('timestamp').notNull().defaultNow(),
    /**
     * The writing transaction's 64-bit id. The sealer seals, in (txid, id) order, only rows whose
     * transaction is older than every transaction still running (pg_snapshot_xmin), so no row can
     * appear later below the sealed horizon: the chain is gap-free without a lock on the hot path.
     */
    txid: bigint('txid', { mode: 'bigint' })
      .notNull()
      .default(sql`(pg_current_xact_id()::text)::bigint`),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    index('agent_audit_log_workflow_idx').on(t.tenantId, t.workflowId, t.id),
    index('agent_audit_log_temporal_idx').on(t.tenantId, t.timestamp),
    index('agent_audit_log_seal_idx').on(t.tenantId, t.txid, t.id),
  ],
)

/**
 * The audit hash chain: each block seals the next audit rows of one tenant (in (txid, id) order),
 * numbering them contiguously (first_seq ...) and chaining hash = sha256(prev_hash, row hashes).
 * Row hashes cover the row's fields and the hash of its action_data, kept here too, so a GDPR
 * redaction of action_data leaves the chain verifiable. Append-only for the application.
 */
export const auditSeals = pgTable(
  'agent_audit_seals',
  {
    tenantId: text('tenant_id').notNull(),
    blockNo: bigint('block_no', { mode: 'bigint' }).notNull(),
    firstSeq: bigint('first_seq', { mode: 'bigint' }).notNull(),
    rowCount: integer('row_count').notNull(),
    /** The (txid, id) of the block's last row: the next block starts after it. */
    lastTxid: bigint('last_txid', { mode: 'bigint' }).notNull(),
    lastId: bigint('last_id', { mode: 'bigint' }).notNull(),
    rowIds: bigint('row_ids', { mode: 'bigint' }).array().notNull(),
    rowHashes: text('row_hashes').array().notNull(),
    dataHashes: text('data_hashes').array().notNull(),
    prevHash: text('prev_hash').notNull(),
    hash: text('hash').notNull(),
    sealedAt: tz('sealed_at').notNull().defaultNow(),
    /** Set when retention purged the block's rows; the block (its hashes) stays as the chain's anchor. */
    purgedAt: tz('purged_at'),
    /**
     * The newest `timestamp` of the block's rows, written by the sealer and never changed: verify
     * checks a purged block against the tenant's audit retention with it (null: sealed before 0011).
     */
    newestAt: tz('newest_at'),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.blockNo] }),
    tenantIsolation(),
    // Retention purges a prefix of the chain: it starts at the first block not purged yet, found
    // here without walking past every block purged before.
    index('agent_audit_seals_unpurged_idx')
      .on(t.tenantId, t.blockNo)
      .where(sql`${t.purgedAt} IS NULL`),
  ],
)

/**
 * One row per redacted audit row, written by the append-only trigger itself in the redacting
 * transaction (drizzle/tenant/0011): which row, the redaction's id (the `$redacted` value), the
 * sha256 of the data it replaced, which database role did it, and when. `verify` accepts a row's
 * data differing from its seal only as `{"$redacted": <id>}` with a record here of that id and of
 * the sealed data's hash. Append-only, for the owner too.
 */
export const auditRedactions = pgTable(
  'agent_audit_redactions',
  {
    tenantId: text('tenant_id').notNull(),
    rowId: bigint('row_id', { mode: 'bigint' }).notNull(),
    redaction: text('redaction').notNull(),
    /** sha256 (hex) of the action_data text replaced; null for redactions made before 0011. */
    dataHash: text('data_hash'),
    byRole: text('by_role').notNull(),
    redactedAt: tz('redacted_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.rowId] }), tenantIsolation()],
)

export { COMPLIANCE_TYPES }

export const complianceEvents = pgTable(
  'compliance_events',
  {
    tenantId: text('tenant_id').notNull(),
    id: bigint('id', { mode: 'bigint' }).generatedAlwaysAsIdentity().notNull(),
    agentId: text('agent_id').notNull(),
    complianceType: text('compliance_type', { enum: COMPLIANCE_TYPES }).notNull(),
    eventType: text('event_type').notNull(),
    eventData: jsonb('event_data').notNull(),
    retentionUntil: tz('retention_until'),
    createdAt: tz('created_at').notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    index('compliance_events_retention_idx').on(t.tenantId, t.retentionUntil),
  ],
)

/**
 * Per-tenant data keys (envelope encryption, src/crypto/data-keys.ts; drizzle/tenant/0018): one row
 * per data key of a tenant (subject_hash '') or of a data subject (SHA-256 of its subject key), the
 * key only wrapped by a key-encryption key (kek). At most one active per tenant and subject; a
 * destroyed key (crypto-erasure) keeps its row without the wrapped key.
 */
export const tenantDataKeys = pgTable(
  'tenant_data_keys',
  {
    tenantId: text('tenant_id').notNull(),
    id: text('id').notNull(),
    subjectHash: text('subject_hash').notNull().default(''),
    state: text('state', { enum: ['active', 'retired', 'destroyed'] }).notNull(),
    kek: text('kek'),
    wrapped: text('wrapped'),
    erasure: uuid('erasure'),
    createdAt: tz('created_at').notNull().defaultNow(),
    rotatedAt: tz('rotated_at'),
    destroyedAt: tz('destroyed_at'),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.id] }),
    tenantIsolation(),
    uniqueIndex('tenant_data_keys_active_idx')
      .on(t.tenantId, t.subjectHash)
      .where(sql`${t.state} = 'active'`),
    check('tenant_data_keys_state_check', sql`${t.state} IN ('active', 'retired', 'destroyed')`),
    check('tenant_data_keys_wrapped_check', sql`(${t.state} = 'destroyed') = (${t.wrapped} IS NULL)`),
  ],
)

/**
 * What agents reported spending (ctx.usage): one row per attempt and dimension, written in the
 * transaction that ends the attempt (its completion, or its failure), fenced like it, so an attempt's
 * usage is counted exactly once and a late (fenced) completion's never. Summed by indexed range
 * scans; nothing updates a per-tenant counter row (src/usage/).
 */
export const agentUsage = pgTable(
  'agent_usage',
  {
    tenantId: text('tenant_id').notNull(),
    taskId: uuid('task_id').notNull(),
    attempt: integer('attempt').notNull(),
    dimension: text('dimension').notNull(),
    workflowId: uuid('workflow_id').notNull(),
    agentId: text('agent_id').notNull(),
    amount: bigint('amount', { mode: 'number' }).notNull(),
    /** How the attempt ended: completed, or failed (its usage was spent all the same). */
    outcome: text('outcome').notNull(),
    recordedAt: tz('recorded_at').notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ columns: [t.tenantId, t.taskId, t.attempt, t.dimension] }),
    tenantIsolation(),
    // A budget's period sum, and usage over a window: a range scan by dimension and time.
    index('agent_usage_period_idx').on(t.tenantId, t.dimension, t.recordedAt, t.amount),
    index('agent_usage_workflow_idx').on(t.tenantId, t.workflowId),
  ],
)

/**
 * Budgets per tenant, dimension and period (day or month, UTC). `periodStart` is the current
 * period, moved only by the budget pass (src/usage/budgets.ts budgetPassTx), so what a period holds
 * never depends on when a statement happens to run. `exceededAt`: the budget was reached in this
 * period (hard: the tenant's tasks are held; soft: alerted once).
 */
export const usageBudgets = pgTable(
  'usage_budgets',
  {
    tenantId: text('tenant_id').notNull(),
    dimension: text('dimension').notNull(),
    period: text('period', { enum: ['day', 'month'] }).notNull(),
    budget: bigint('budget', { mode: 'number' }).notNull(),
    hard: boolean('hard').notNull(),
    periodStart: tz('period_start').notNull(),
    exceededAt: tz('exceeded_at'),
    createdAt: tz('created_at').notNull().defaultNow(),
    updatedAt: tz('updated_at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.dimension, t.period] }), tenantIsolation()],
)

/**
 * The budgets' audit trail: set, raised, lowered, removed, reached (exhausted or exceeded), period
 * rolled, held tasks released. Append-only for the application role.
 */
export const budgetAudit = pgTable(
  'usage_budget_audit',
  {
    tenantId: text('tenant_id').notNull(),
    id: bigint('id', { mode: 'bigint' }).generatedAlwaysAsIdentity().notNull(),
    dimension: text('dimension').notNull(),
    period: text('period').notNull(),
    action: text('action').notNull(),
    data: jsonb('data')
      .notNull()
      .default(sql`'{}'::jsonb`),
    actor: text('actor'),
    /** The workflow whose task's usage reached the budget (crossings only). */
    workflowId: uuid('workflow_id'),
    at: tz('at').notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.tenantId, t.id] }), tenantIsolation()],
)

/**
 * Tenants a web console is watching now (src/web/live.ts): a row per tenant, its expiry pushed
 * forward while an event stream is open. The statements that change tasks notify the progress
 * channel only while the tenant's row has not expired (drizzle/tenant/0021).
 */
export const consoleWatchers = pgTable(
  'console_watchers',
  {
    tenantId: text('tenant_id').notNull().primaryKey(),
    expiresAt: tz('expires_at').notNull(),
  },
  () => [tenantIsolation()],
)
