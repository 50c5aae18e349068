// A tenant's cron schedules: declared (created or replaced), listed and deleted in the tenant's
// transaction. Everything that can be refused is refused before anything is written.
import { randomUUID } from 'node:crypto'
import type { WorkflowDefinition } from '../core/definition.ts'
import { assertStorableJson, type Json, type JsonLimits } from '../core/json.ts'
import { planTasks, taskData } from '../core/plan.ts'
import type { KeyRing } from '../crypto/keyring.ts'
import type { Db } from '../db/tx.ts'
import { InvalidInputError, NotFoundError } from '../errors.ts'
import { queueName } from '../queue/boss.ts'
import { nextSlot, validateCron } from './cron.ts'

export const MISSED_POLICIES = ['skip', 'catch-up-once'] as const
/**
 * What a scheduler does with slots it sees too late (older than the grace, e.g. after downtime):
 * `skip` starts none of them; `catch-up-once` starts one workflow, for the latest of them, unless
 * an on-time slot of the same schedule starts one in the same tick.
 */
export type MissedPolicy = (typeof MISSED_POLICIES)[number]

export interface ScheduleSpec {
  /** The schedule's name in the tenant: 1-100 of A-Z a-z 0-9 _ . - (a letter or digit first). */
  id: string
  workflowType: string
  /** 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first. */
  cron: string
  /** IANA time zone the cron expression is read in (default UTC). */
  timezone?: string
  /** The input every started workflow gets (default null). */
  input?: Json
  /** Default `skip`. */
  missed?: MissedPolicy
  /** Default true. A disabled schedule starts nothing; enabling it again starts from the next slot. */
  enabled?: boolean
}

export interface ScheduleView {
  id: string
  workflowType: string
  cron: string
  timezone: string
  input: Json
  missed: MissedPolicy
  enabled: boolean
  /** The latest slot handled: started, or passed over by the missed-slot policy. */
  lastSlot: Date | null
  /** The next slot a scheduler will handle. */
  nextSlot: Date
  createdAt: Date
  updatedAt: Date
}

const SCHEDULE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/

export function requireScheduleId(id: unknown): string {
  if (typeof id !== 'string' || !SCHEDULE_ID.test(id)) {
    throw new InvalidInputError(
      'schedule id must be 1-100 of A-Z a-z 0-9 _ . - starting with a letter or digit',
      '$.id',
    )
  }
  return id
}

export interface PutDeps {
  keyRing: KeyRing
  limits: JsonLimits
  /** The workflow type's definition; throws UnknownWorkflowTypeError for a type nobody registered. */
  workflow: (type: string) => WorkflowDefinition<any>
}

/** A checked schedule, ready to be written (its input encrypted). */
interface Checked {
  id: string
  workflowType: string
  cron: string
  timezone: string
  storedInput: Json
  missed: MissedPolicy
  enabled: boolean
}

async function check(deps: PutDeps, tenantId: string, spec: ScheduleSpec): Promise<Checked> {
  if (spec === null || typeof spec !== 'object') throw new InvalidInputError('a schedule must be an object')
  const id = requireScheduleId(spec.id)
  if (typeof spec.workflowType !== 'string') {
    throw new InvalidInputError('workflowType must name a workflow type', '$.workflowType')
  }
  const def = deps.workflow(spec.workflowType)
  const { cron, timezone } = validateCron(spec.cron, spec.timezone ?? 'UTC')
  const missed = spec.missed ?? 'skip'
  if (!MISSED_POLICIES.includes(missed)) {
    throw new InvalidInputError(`missed must be one of ${MISSED_POLICIES.join(', ')}`, '$.missed')
  }
  const enabled = spec.enabled ?? true
  if (typeof enabled !== 'boolean') throw new InvalidInputError('enabled must be true or false', '$.enabled')
  const input = spec.input ?? null
  // The input as given is what is stored: every start validates it again (a schema that transforms
  // would refuse its own output).
  const validated = def.input ? await def.input.validate(input) : input
  assertStorableJson(validated, '$.input', deps.limits)
  // The workflow's tasks are computed from the input (their data, a wait's match, a startAfter):
  // an input it cannot start with is refused now, as startWorkflow would, not at 3 a.m. by the
  // scheduler.
  planTasks(def.tasks, taskData(def, validated, deps.limits), {
    newId: randomUUID,
    queueName,
    limits: deps.limits,
    input: { value: validated },
  })
  const storedInput = deps.keyRing.encrypt(tenantId, 'workflow.input', input, '$.input')
  return { id, workflowType: def.name, cron, timezone, storedInput, missed, enabled }
}

const COLUMNS = `id, workflow_type, cron, timezone, input, missed, enabled, last_slot, next_slot, created_at, updated_at`

/**
 * Creates or replaces a schedule, in the caller's transaction. A replacement that keeps the cron
 * expression and time zone of an enabled schedule keeps its next slot, so declaring the same
 * schedules at every deploy loses no slot that is due but not yet handled; otherwise the next slot
 * is the first after now (database clock).
 */
export async function putScheduleTx(
  db: Db,
  deps: PutDeps,
  tenantId: string,
  spec: ScheduleSpec,
): Promise<ScheduleView> {
  const s = await check(deps, tenantId, spec)
  const { rows: clock } = await db.executeSql('SELECT now() AS now', [])
  const next = nextSlot(s, clock[0]?.now as Date)
  const { rows } = await db.executeSql(
    `INSERT INTO workflow_schedules AS s
       (tenant_id, id, workflow_type, cron, timezone, input, missed, enabled, next_slot)
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
     ON CONFLICT (tenant_id, id) DO UPDATE SET
       workflow_type = EXCLUDED.workflow_type, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
       input = EXCLUDED.input, missed = EXCLUDED.missed, enabled = EXCLUDED.enabled,
       next_slot = CASE WHEN s.enabled AND s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone
         THEN s.next_slot ELSE EXCLUDED.next_slot END,
       updated_at = now()
     RETURNING ${COLUMNS}`,
    [
      tenantId,
      s.id,
      s.workflowType,
      s.cron,
      s.timezone,
      JSON.stringify(s.storedInput),
      s.missed,
      s.enabled,
      next,
    ],
  )
  return view(deps.keyRing, tenantId, rows[0])
}

/** The tenant's schedules, by id. */
export async function listSchedules(db: Db, keyRing: KeyRing, tenantId: string): Promise<ScheduleView[]> {
  const { rows } = await db.executeSql(
    `SELECT ${COLUMNS} FROM workflow_schedules WHERE tenant_id = $1 ORDER BY id`,
    [tenantId],
  )
  return rows.map((r) => view(keyRing, tenantId, r))
}

/**
 * Deletes a schedule, in the caller's transaction; NotFoundError when the tenant has none of that
 * id.
 */
export async function deleteScheduleTx(db: Db, tenantId: string, id: string): Promise<void> {
  requireScheduleId(id)
  const { rows } = await db.executeSql(
    'DELETE FROM workflow_schedules WHERE tenant_id = $1 AND id = $2 RETURNING id',
    [tenantId, id],
  )
  if (rows.length === 0) throw new NotFoundError(`schedule ${id}`)
}

function view(keyRing: KeyRing, tenantId: string, r: any): ScheduleView {
  return {
    id: r.id,
    workflowType: r.workflow_type,
    cron: r.cron,
    timezone: r.timezone,
    input: keyRing.decrypt(tenantId, 'workflow.input', r.input),
    missed: r.missed,
    enabled: r.enabled,
    lastSlot: r.last_slot,
    nextSlot: r.next_slot,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  }
}
