// The read side of a tenant handle: the statements that list workflows, read one (with its tasks)
// or its audit trail, and the admin's statistics over every tenant. Each function runs in the
// tenant transaction it is given (db); the handle (src/engine/tenant-handle.ts) opens it.
import {
  type AdminStatsReport,
  mergeTallies,
  reportOf,
  resolveWindow,
  type StatsTallies,
  statsTallies,
  type StatsWindowInput,
  type TenantStatsSection,
} from '../analytics.ts'
import { dagOrder } from '../core/dag-order.ts'
import { isUuid, requireUuid } from '../core/ids.ts'
import { assertStorableJson, type Json } from '../core/json.ts'
import { WORKFLOW_STATUSES, type WorkflowStatus } from '../core/task-state.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import { InvalidInputError, NotFoundError } from '../errors.ts'
import type { Stores } from '../tenancy/stores.ts'
import type { TenantDirectory } from '../tenancy/tenants.ts'
import type { AuditEntry, WorkflowFilter, WorkflowPage, WorkflowView } from './types.ts'

/** A workflow that has ended: its status, error and (completed) outputs; null while it runs. */
export async function readEnded(
  db: Db,
  tenant: string,
  id: string,
): Promise<{ status: WorkflowStatus; error: Json; outputs: Json } | null> {
  const { rows } = await db.executeSql(
    `SELECT w.status, w.error,
         CASE WHEN w.status = 'completed' THEN (
           SELECT coalesce(jsonb_agg(jsonb_build_array(t.task_key, t.result)), '[]'::jsonb) FROM agent_coordination t
           WHERE t.tenant_id = $1 AND t.workflow_id = w.id AND t.status = 'completed' AND cardinality(t.dependents) = 0
         ) END AS outputs
       FROM workflows w WHERE w.tenant_id = $1 AND w.id = $2`,
    [tenant, id],
  )
  const w = rows[0]
  if (!w) throw new NotFoundError(`workflow ${id}`)
  return w.status === 'running' ? null : (w as { status: WorkflowStatus; error: Json; outputs: Json })
}

/** Whether a workflow has ended (true) or still runs (null); NotFoundError for an unknown one. */
export async function readHasEnded(db: Db, tenantId: string, id: string): Promise<true | null> {
  const { rows } = await db.executeSql('SELECT status FROM workflows WHERE tenant_id = $1 AND id = $2', [
    tenantId,
    id,
  ])
  if (!rows[0]) throw new NotFoundError(`workflow ${id}`)
  return rows[0].status === 'running' ? null : true
}

/** A page filter checked before any transaction: the page size, and where the page starts. */
export function checkWorkflowFilter(filter: WorkflowFilter): {
  limit: number
  after: { at: string; id: string } | null
  since: string | null
  until: string | null
} {
  const limit = filter.limit ?? 50
  if (!Number.isInteger(limit) || limit < 1 || limit > 200) {
    throw new InvalidInputError(`limit must be an integer from 1 to 200 (got ${limit})`)
  }
  if (filter.status !== undefined && !WORKFLOW_STATUSES.includes(filter.status)) {
    throw new InvalidInputError(`status must be one of ${WORKFLOW_STATUSES.join(', ')}`)
  }
  // A NUL cannot even be a query parameter of PostgreSQL's.
  if (filter.type !== undefined) assertStorableJson(filter.type, 'type')
  if (filter.id !== undefined) requireUuid(filter.id, 'id')
  for (const name of ['correlationId', 'idempotencyKey'] as const)
    if (filter[name] !== undefined) assertStorableJson(filter[name], name)
  const instant = (value: string | Date | undefined, name: string) => {
    if (value === undefined) return null
    const d = value instanceof Date ? value : new Date(value)
    if (Number.isNaN(d.getTime())) throw new InvalidInputError(`${name} must be a date and time`, `$.${name}`)
    return d.toISOString()
  }
  const after = filter.cursor === undefined ? null : decodeCursor(filter.cursor)
  return { limit, after, since: instant(filter.since, 'since'), until: instant(filter.until, 'until') }
}

/**
 * A page of the tenant's workflows, newest first (keyset pagination on the workflows_recent index:
 * a page costs the same however deep it is).
 */
export async function readWorkflowPage(
  db: Db,
  tenantId: string,
  filter: WorkflowFilter,
  { limit, after, since, until }: ReturnType<typeof checkWorkflowFilter>,
): Promise<WorkflowPage> {
  const { rows } = await db.executeSql(
    `SELECT id, type, version, status, correlation_id, created_at, completed_at, tasks_remaining,
         created_at::text AS cursor_at
       FROM workflows
       WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR type = $3)
         AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
         AND ($7::uuid IS NULL OR id = $7) AND ($8::text IS NULL OR correlation_id = $8)
         AND ($9::text IS NULL OR idempotency_key = $9)
         AND ($10::timestamptz IS NULL OR created_at >= $10) AND ($11::timestamptz IS NULL OR created_at < $11)
       ORDER BY created_at DESC, id DESC
       LIMIT $6`,
    [
      tenantId,
      filter.status ?? null,
      filter.type ?? null,
      after?.at ?? null,
      after?.id ?? null,
      limit + 1,
      filter.id ?? null,
      filter.correlationId ?? null,
      filter.idempotencyKey ?? null,
      since,
      until,
    ],
  )
  const page = rows.slice(0, limit)
  const last = page[page.length - 1]
  return {
    workflows: page.map((r) => ({
      id: r.id,
      type: r.type,
      version: r.version,
      status: r.status,
      correlationId: r.correlation_id,
      tasksRemaining: r.tasks_remaining,
      createdAt: r.created_at,
      completedAt: r.completed_at,
    })),
    nextCursor: rows.length > limit && last ? encodeCursor(last.cursor_at, last.id) : null,
  }
}

/** A workflow with its tasks (in DAG order), its input and results decrypted. */
export async function readWorkflow(
  db: Db,
  ring: KeyRing,
  tenantId: string,
  id: string,
  /** Per-tenant data keys: the scope their keys are read in (this transaction's). */
  scope: TenantScope = { tenantId } as TenantScope,
): Promise<WorkflowView> {
  const tenant = tenantId
  const wf = await db.executeSql('SELECT * FROM workflows WHERE tenant_id = $1 AND id = $2', [tenantId, id])
  const w = wf.rows[0]
  if (!w) throw new NotFoundError(`workflow ${id}`)
  const { rows } = await db.executeSql(
    `SELECT id, task_key, agent_id, agent_version, task_type, status, dependencies, dependents, attempt, failures, result, error,
         queued_at, started_at, completed_at, wait->>'type' AS wait_type, wait->>'name' AS wait_name, wait_deadline,
           hold_reason
       FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY created_at, task_key`,
    [tenantId, id],
  )
  await ring.prepareFor(db, scope, [w.input, ...rows.map((r) => r.result)])
  for (const value of [w.input, ...rows.map((r) => r.result)]) ring.checkSubject(tenant, value, w.subject_key)
  for (const r of rows) r.result = ring.decrypt(tenant, 'task.result', r.result)
  const output: Record<string, Json> = {}
  for (const r of rows)
    if (r.status === 'completed' && r.dependents.length === 0) output[r.task_key] = r.result
  return {
    id: w.id,
    type: w.type,
    version: w.version,
    status: w.status,
    input: ring.decrypt(tenant, 'workflow.input', w.input),
    error: w.error,
    correlationId: w.correlation_id,
    createdAt: w.created_at,
    completedAt: w.completed_at,
    replayOf: w.replay_of ?? null,
    output,
    tasks: dagOrder(
      rows.map((r) => ({
        id: r.id,
        key: r.task_key,
        agent: r.agent_id,
        agentVersion: r.agent_version,
        type: r.task_type,
        status: r.status,
        dependsOn: r.dependencies,
        attempt: r.attempt,
        failures: r.failures,
        result: r.result,
        error: r.error,
        queuedAt: r.queued_at,
        startedAt: r.started_at,
        completedAt: r.completed_at,
        ...(r.wait_type
          ? { wait: { type: r.wait_type, name: r.wait_name, deadline: r.wait_deadline ?? null } }
          : {}),
        ...(r.hold_reason && r.status === 'queued' ? { holdReason: r.hold_reason } : {}),
      })),
    ),
  }
}

/** A workflow's audit trail, in the order it was written; NotFoundError for an unknown workflow. */
export async function readHistory(db: Db, tenantId: string, workflowId: string): Promise<AuditEntry[]> {
  const { rows } = await db.executeSql(
    `SELECT id, task_id, agent_id, action_type, action_data, actor, correlation_id, timestamp
       FROM agent_audit_log WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY id`,
    [tenantId, workflowId],
  )
  if (rows.length === 0) {
    // Every workflow has a workflow_started row until retention purges it with the workflow.
    const wf = await db.executeSql('SELECT 1 FROM workflows WHERE tenant_id = $1 AND id = $2', [
      tenantId,
      workflowId,
    ])
    if (wf.rows.length === 0) throw new NotFoundError(`workflow ${workflowId}`)
  }
  return rows.map((r) => ({
    id: String(r.id),
    taskId: r.task_id,
    agentId: r.agent_id,
    action: r.action_type,
    data: r.action_data,
    actor: r.actor,
    correlationId: r.correlation_id,
    at: r.timestamp,
  }))
}

/**
 * Workflow and agent performance over a window for the admin: a section per tenant (suspended ones
 * too) with anything in the window, and all-tenant totals of the additive figures. One transaction
 * per tenant.
 */
export async function adminStats(
  directory: TenantDirectory,
  stores: Stores,
  window: StatsWindowInput,
): Promise<AdminStatsReport> {
  const w = resolveWindow(window)
  const tenants: TenantStatsSection[] = []
  const tallies: StatsTallies[] = []
  for await (const scope of directory.all()) {
    const { pool } = await stores.of(scope)
    const t = await withTenantTx(pool, scope, (db) => statsTallies(db, scope.tenantId, w))
    if (t.workflows.length === 0 && t.agents.length === 0) continue
    tallies.push(t)
    tenants.push({ tenantId: scope.tenantId, ...reportOf(t) })
  }
  return { window: w, tenants, totals: mergeTallies(tallies) }
}

/** An opaque page cursor: the last row's exact created_at (as PostgreSQL prints it) and id. */
function encodeCursor(at: string, id: string): string {
  return Buffer.from(JSON.stringify([at, id])).toString('base64url')
}

function decodeCursor(cursor: string): { at: string; id: string } {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'))
    if (Array.isArray(value) && value.length === 2 && isCursorTime(value[0]) && isUuid(value[1])) {
      return { at: value[0], id: value[1] }
    }
  } catch {
    // reported below
  }
  throw new InvalidInputError('cursor is not one this API returned')
}

/**
 * Whether a cursor's time is one PostgreSQL prints and reads back: the shape alone is not enough, a
 * forged cursor's 2024-13-45 or +99 offset would be a database error (a 500) instead of a refusal.
 */
function isCursorTime(value: unknown): value is string {
  const m =
    typeof value === 'string'
      ? /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.\d{1,6})?[+-](\d\d)(?::(\d\d))?$/.exec(value)
      : null
  if (!m) return false
  const [year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0, offsetHours = 0, offsetMinutes = 0] =
    m.slice(1).map((digits) => Number(digits ?? 0))
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0)
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1] ?? 0
  return (
    year >= 1 &&
    day >= 1 &&
    day <= days &&
    hour < 24 &&
    minute < 60 &&
    second < 60 &&
    offsetHours <= 15 &&
    offsetMinutes < 60
  )
}
