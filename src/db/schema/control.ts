// Control tables: one set per database, in the `equilateral` schema. They describe tenants, not
// tenant data; the tenant data tables are in ./tenant.ts.
import { sql } from 'drizzle-orm'
import {
  check,
  index,
  integer,
  jsonb,
  pgSchema,
  primaryKey,
  text,
  timestamp,
  unique,
  uuid,
} from 'drizzle-orm/pg-core'
import { ENTERPRISE_MEMBER_STATUSES, ENTERPRISE_RUN_STATUSES } from './values.ts'

export const controlSchema = pgSchema('equilateral')

export const tenants = controlSchema.table(
  'tenants',
  {
    id: text('id').primaryKey(),
    name: text('name').notNull(),
    /** provisioning: database-per-tenant, its database is being created and migrated (no API key yet). */
    status: text('status', { enum: ['active', 'suspended', 'provisioning'] })
      .notNull()
      .default('active'),
    /** Fairness tier: selects the per-tenant concurrency limit (see config `tenantConcurrency`). */
    tier: text('tier').notNull().default('standard'),
    /** Schema holding this tenant's tables in schema-per-tenant mode (`t_<hex>`, generated, never derived from the id). */
    schemaName: text('schema_name').unique(),
    /** SHA-256 of the tenant's API key; the key itself is never stored. */
    apiKeyHash: text('api_key_hash').unique(),
    /** Which compliance regimes apply and their retention periods. */
    complianceProfile: jsonb('compliance_profile')
      .notNull()
      .default(sql`'{}'::jsonb`),
    /**
     * database-per-tenant: the server (a TENANT_SERVERS name) and database holding the tenant's
     * tables and queues; both null for a tenant in this (the control) database.
     */
    databaseServer: text('database_server'),
    databaseName: text('database_name'),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [
    unique('tenants_database_unique').on(t.databaseServer, t.databaseName),
    check('tenants_database_whole', sql`(${t.databaseServer} IS NULL) = (${t.databaseName} IS NULL)`),
  ],
)

export { ENTERPRISE_MEMBER_STATUSES, ENTERPRISE_RUN_STATUSES }

/**
 * One workflow type started across a set of tenants (EnterpriseOrchestrator). The run and its
 * members are control rows: they name tenants and workflows, and hold the consolidated results once
 * every member has finished. Each member's own data is read only inside that tenant's scope.
 */
export const enterpriseRuns = controlSchema.table('enterprise_runs', {
  id: uuid('id').primaryKey(),
  workflowType: text('workflow_type').notNull(),
  status: text('status', { enum: ENTERPRISE_RUN_STATUSES }).notNull().default('running'),
  /** Per-tenant outcome once consolidated: { completed, failed, tenants: { id: { status, output | error } } }. */
  summary: jsonb('summary'),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  completedAt: timestamp('completed_at', { withTimezone: true }),
  /**
   * `<key id>.<HMAC>` over the run's id, workflow type and member tenants, under a key derived from
   * the encryption key ring, which the database never sees: consolidation refuses a run without a
   * valid one, so rows the application role writes by hand start and read nothing.
   */
  mac: text('mac'),
})

export const enterpriseRunTenants = controlSchema.table(
  'enterprise_run_tenants',
  {
    runId: uuid('run_id')
      .notNull()
      .references(() => enterpriseRuns.id, { onDelete: 'cascade' }),
    tenantId: text('tenant_id').notNull(),
    input: jsonb('input'),
    workflowId: uuid('workflow_id'),
    status: text('status', { enum: ENTERPRISE_MEMBER_STATUSES }).notNull().default('starting'),
    error: jsonb('error'),
    updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
    /** `<key id>.<HMAC>` over run id, tenant id and input: a member is started only with a valid one. */
    mac: text('mac'),
  },
  (t) => [
    primaryKey({ columns: [t.runId, t.tenantId] }),
    index('enterprise_run_tenants_tenant_idx').on(t.tenantId),
  ],
)

/**
 * Fleet-wide passes that every process offers to run on a timer (the cron scheduler), but that one
 * run per interval is enough for: the process whose UPDATE moves `last_at` on runs the pass, the
 * others skip their tick. One row per pass name; no tenant data.
 */
export const fleetPasses = controlSchema.table('fleet_passes', {
  pass: text('pass').primaryKey(),
  lastAt: timestamp('last_at', { withTimezone: true }).notNull(),
})

/**
 * Live worker registrations (src/flow/liveness.ts): each worker process holds the session-level
 * advisory lock (LIVENESS_LOCK_CLASS, lock_id) on a dedicated session of this database and lists its
 * workers here. A row whose lock no session holds is a dead worker: the liveness pass re-queues its
 * running tasks (by `agent_coordination.worker_id`) and removes the row. No tenant data.
 */
export const workerSessions = controlSchema.table('worker_sessions', {
  workerId: text('worker_id').primaryKey(),
  lockId: integer('lock_id').notNull(),
  host: text('host').notNull(),
  pid: integer('pid').notNull(),
  registeredAt: timestamp('registered_at', { withTimezone: true }).notNull().defaultNow(),
})
