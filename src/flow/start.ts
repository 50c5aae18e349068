// Step 1 of the data flow: a backend service starts a workflow. One transaction writes the
// workflow row, every task row, their audit rows, and the jobs of the tasks that have no
// dependencies; it can be the caller's own transaction, so their row and the workflow commit together.
// The input and task data are checked, then encrypted (with keys configured), before it begins.
import { randomUUID } from 'node:crypto'
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import type { WorkflowDefinition } from '../core/definition.ts'
import { assertStorableJson, type JsonLimits } from '../core/json.ts'
import { planTasks, taskData } from '../core/plan.ts'
import type { WorkflowStatus } from '../core/task-state.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import { tenantContextSecret } from '../tenancy/tenant-context.ts'
import { type Db, executeNamed, type TenantScope, withinCallerTx, withTenantTx } from '../db/tx.ts'
import { EquilateralError, InvalidInputError } from '../errors.ts'
import { insertJobs, queueName } from '../queue/boss.ts'
import { insertJobsCte, usesDirectJobs } from '../queue/direct.ts'
import { READY_CHANNEL } from './channels.ts'
import { insertPlannedTasks } from './task-rows.ts'

export interface StartOptions {
  /** Starting twice with the same key returns the first workflow instead of a second one. */
  idempotencyKey?: string
  /** Follows the workflow through logs and audit rows (e.g. the HTTP request id). */
  correlationId?: string
  /**
   * The data subject the workflow is about (e.g. a user id), stored in plain text beside the
   * (possibly encrypted) payloads, so a GDPR erasure request can find the subject's workflows.
   */
  subjectKey?: string
  /** The caller's open transaction (see `clientDb`, or pg-boss's `fromDrizzle(tx, sql)`). */
  db?: Db
  /** Who started it, for the audit trail (e.g. `schedule:nightly`). */
  actor?: string
}

export interface StartResult {
  id: string
  /** False when an earlier start with the same idempotency key is returned. */
  created: boolean
  status: WorkflowStatus
}

export class IdempotencyConflictError extends EquilateralError {
  constructor(key: string, existingType: string) {
    super(
      'idempotency_conflict',
      `idempotency key "${key}" was already used to start a "${existingType}" workflow`,
    )
  }
}

/** Exported for the benchmark's EXPLAIN of the hot path (bench/growth.ts). */
export const START = `
WITH wf AS (
  INSERT INTO workflows (tenant_id, id, type, version, status, input, idempotency_key, correlation_id, tasks_remaining, subject_key)
  VALUES ($1, $2, $3, $4, 'running', $5::jsonb, $6, $7, $8, $10)
  ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
  RETURNING id, correlation_id
),
${insertPlannedTasks('$9', 'wf.id', 'x, wf')},
audit AS (
  INSERT INTO agent_audit_log (tenant_id, workflow_id, task_id, agent_id, action_type, action_data, actor, correlation_id)
  SELECT $1, wf.id, NULL, NULL, 'workflow_started',
    jsonb_build_object('type', $3::text, 'version', $4::int, 'tasks', $8::int), $11, wf.correlation_id
  FROM wf
  UNION ALL
  SELECT $1, wf.id, t.id, t.agent_id, CASE WHEN t.status = 'queued' THEN 'task_queued' ELSE 'task_created' END,
    jsonb_strip_nulls(jsonb_build_object('key', t.task_key, 'attempt', t.attempt, 'startAfter', t.start_after)),
    NULL, wf.correlation_id
  FROM t, wf
),
${insertJobsCte(
  'jobs',
  `(SELECT t.job_id, t.queue, wf.id AS workflow_id, t.id AS task_id, t.attempt, t.timeout_ms, t.start_after
    FROM t, wf WHERE t.status = 'queued' AND $12::boolean)`,
  '$1',
  '$13',
)},
notified AS (
  SELECT pg_notify('${READY_CHANNEL}', q.queue) FROM (SELECT DISTINCT queue FROM t WHERE status = 'queued') q
)
SELECT (SELECT id FROM wf) AS id, (SELECT count(*) FROM notified) AS notified,
  (SELECT jsonb_object_agg(t.id, t.start_after) FROM t WHERE t.start_after IS NOT NULL) AS timers`

export interface StartDeps {
  pool: pg.Pool
  boss: PgBoss
  limits: JsonLimits
  /** Encrypts the input and the task data (limits apply to the plain values). */
  keyRing: KeyRing
}

export async function startWorkflow<TInput, TStart>(
  deps: StartDeps,
  scope: TenantScope,
  def: WorkflowDefinition<TInput, TStart>,
  given: TStart,
  options: StartOptions = {},
): Promise<StartResult> {
  // Everything that can be refused is refused before anything is written: the input schema first
  // (defineWorkflow({ input })), whose validated value is what is stored and what the tasks get.
  const input = def.input ? await def.input.validate(given) : (given as unknown as TInput)
  assertStorableJson(input ?? null, '$.input', deps.limits)
  if (options.idempotencyKey !== undefined) checkKey(options.idempotencyKey, 'idempotencyKey')
  if (options.correlationId !== undefined) checkKey(options.correlationId, 'correlationId')
  if (options.subjectKey !== undefined) checkKey(options.subjectKey, 'subjectKey')
  if (options.actor !== undefined) checkKey(options.actor, 'actor')
  const tenant = scope.tenantId
  const storedInput = deps.keyRing.encrypt(tenant, 'workflow.input', input ?? null, '$.input')
  const data = taskData(def, input, deps.limits).map((d, i) =>
    deps.keyRing.encrypt(tenant, 'task.data', d, `$.tasks.${def.tasks[i]?.key}.data`),
  )
  const tasks = planTasks(def.tasks, data, {
    newId: randomUUID,
    queueName,
    limits: deps.limits,
    input: { value: input },
  })
  const workflowId = randomUUID()
  const correlationId = options.correlationId ?? workflowId

  // Where our statements write pg-boss's jobs (queue/direct.ts), START inserts the ready tasks' jobs.
  const direct = usesDirectJobs(deps.boss)
  const run = async (db: Db): Promise<StartResult> => {
    const { rows } = await executeNamed(db, 'eq_start', START, [
      scope.tenantId,
      workflowId,
      def.name,
      def.version,
      JSON.stringify(storedInput),
      options.idempotencyKey ?? null,
      correlationId,
      tasks.length,
      JSON.stringify(tasks),
      options.subjectKey ?? null,
      options.actor ?? null,
      direct,
      scope.tier,
    ])
    if (rows[0]?.id) {
      if (direct) return { id: workflowId, created: true, status: 'running' }
      const timers: Record<string, string> = rows[0].timers ?? {}
      const ready = tasks.filter((t) => t.status === 'queued')
      await insertJobs(
        deps.boss,
        db,
        scope,
        ready.map((t) => ({
          queue: t.queue,
          jobId: t.job_id as string,
          workflowId,
          taskId: t.id,
          attempt: t.attempt,
          timeoutMs: t.timeout_ms,
          startAfter: timers[t.id] ?? null,
        })),
      )
      return { id: workflowId, created: true, status: 'running' }
    }
    const existing = await db.executeSql(
      'SELECT id, type, status FROM workflows WHERE tenant_id = $1 AND idempotency_key = $2',
      [scope.tenantId, options.idempotencyKey],
    )
    const row = existing.rows[0]
    if (!row) throw new Error('workflow insert conflicted but no workflow has the idempotency key')
    if (row.type !== def.name) throw new IdempotencyConflictError(options.idempotencyKey as string, row.type)
    return { id: row.id, created: false, status: row.status }
  }

  return options.db
    ? withinCallerTx(options.db, scope, await tenantContextSecret(deps.pool), run)
    : withTenantTx(deps.pool, scope, run)
}

function checkKey(value: unknown, name: string): void {
  if (typeof value !== 'string' || value.length === 0 || value.length > 200) {
    throw new InvalidInputError(`${name} must be a string of 1-200 characters`, `$.${name}`)
  }
  assertStorableJson(value, `$.${name}`)
}
