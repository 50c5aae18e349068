// Re-encryption of stored payloads under the active key: after a key is added and made active (so
// that the old one can be retired), or after keys are configured for the first time (plain rows).
// Tenant by tenant, each page of rows in a transaction of its own scoped to the tenant, pages by
// keyset (id > last id), only rows whose value is plain or under another key. Idempotent and
// resumable: a run that stops leaves whole pages done, and the next run finds only what is left.
// Rows are not locked: a page's update is fenced on the values it read, so a row a worker rewrote
// in between (a completion) is left as that worker wrote it and counted as skipped.
import type pg from 'pg'
import type { Json } from '../core/json.ts'
import { type TenantScope, withTenantTx } from '../db/tx.ts'
import { EncryptionError, TenantError } from '../errors.ts'
import type { TenantDirectory } from '../tenancy/tenants.ts'
import type { KeyRing, PayloadPurpose } from './keyring.ts'

export interface ReencryptOptions {
  /** Only this tenant (suspended tenants are included either way). */
  tenant?: string
  /** Rows per transaction (default 500). */
  batchSize?: number
  /** Called after each tenant. */
  onTenant?: (report: TenantReencryptReport) => void
  /**
   * Go on past a value that cannot be decrypted (altered, another key, malformed): it is left as it
   * is and listed in `unreadable`. Without it the run stops at the first such value.
   */
  skipUnreadable?: boolean
}

/** A value re-encryption could not read, left as it was. */
export interface UnreadableValue {
  tenant: string
  /** workflows, agent_coordination, workflow_events or workflow_schedules, and the row's id. */
  table: string
  id: string
  purpose: PayloadPurpose
  /** The EncryptionError code: decryption_failed, unknown_key, invalid_envelope. */
  code: string
}

export interface TenantReencryptReport {
  tenant: string
  /** Workflow inputs rewritten under the active key. */
  workflows: number
  /** Task rows whose data, result or both were rewritten. */
  tasks: number
  /** Events delivered to workflows whose payload was rewritten. */
  events: number
  /** Schedules whose input was rewritten. */
  schedules: number
  /** Rows changed by someone else between the read and the write: left as they were written. */
  skipped: number
  /** With skipUnreadable: values that could not be decrypted, left as they were. */
  unreadable: UnreadableValue[]
}

export interface ReencryptReport {
  activeKey: string
  tenants: number
  workflows: number
  tasks: number
  events: number
  schedules: number
  skipped: number
  /** With skipUnreadable: every value that could not be decrypted, left as it was. */
  unreadable: UnreadableValue[]
}

const MIN_UUID = '00000000-0000-0000-0000-000000000000'

/** SQL: whether column `col` holds a value that is neither null nor an envelope under key $3. */
const stale = (col: string) =>
  `(${col} IS NOT NULL AND jsonb_typeof(${col}) <> 'null' AND NOT (jsonb_typeof(${col}) = 'object' AND ${col} ? '$eq' AND ${col} ->> 'k' IS NOT DISTINCT FROM $3))`

// Updates are fenced on an md5 of the text read: comparing the values themselves would go through
// JavaScript numbers, which cannot hold every jsonb number exactly.
const WORKFLOWS_PAGE = `
SELECT id, input, md5(input::text) AS fp FROM workflows
WHERE tenant_id = $1 AND id > $2::uuid AND ${stale('input')}
ORDER BY id LIMIT $4`

const WORKFLOWS_UPDATE = `
UPDATE workflows w SET input = x.input
FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, fp text, input jsonb)
WHERE w.tenant_id = $1 AND w.id = x.id AND md5(w.input::text) = x.fp
RETURNING w.id`

const TASKS_PAGE = `
SELECT id, data, result, md5(data::text) AS data_fp, md5(result::text) AS result_fp FROM agent_coordination
WHERE tenant_id = $1 AND id > $2::uuid AND (${stale('data')} OR ${stale('result')})
ORDER BY id LIMIT $4`

const TASKS_UPDATE = `
UPDATE agent_coordination t SET data = x.data, result = x.result
FROM jsonb_to_recordset($2::jsonb) AS x(id uuid, data_fp text, result_fp text, data jsonb, result jsonb)
WHERE t.tenant_id = $1 AND t.id = x.id
  AND md5(t.data::text) IS NOT DISTINCT FROM x.data_fp AND md5(t.result::text) IS NOT DISTINCT FROM x.result_fp
RETURNING t.id`

// The event inbox is keyed by a bigint: its pages start after 0.
const EVENTS_PAGE = `
SELECT id::text AS id, payload, md5(payload::text) AS fp FROM workflow_events
WHERE tenant_id = $1 AND id > $2::bigint AND ${stale('payload')}
ORDER BY id LIMIT $4`

const EVENTS_UPDATE = `
UPDATE workflow_events e SET payload = x.payload
FROM jsonb_to_recordset($2::jsonb) AS x(id bigint, fp text, payload jsonb)
WHERE e.tenant_id = $1 AND e.id = x.id AND md5(e.payload::text) = x.fp
RETURNING e.id`

// Schedules are keyed by their name: pages start after ''.
const SCHEDULES_PAGE = `
SELECT id, input, md5(input::text) AS fp FROM workflow_schedules
WHERE tenant_id = $1 AND id > $2 AND ${stale('input')}
ORDER BY id LIMIT $4`

const SCHEDULES_UPDATE = `
UPDATE workflow_schedules s SET input = x.input
FROM jsonb_to_recordset($2::jsonb) AS x(id text, fp text, input jsonb)
WHERE s.tenant_id = $1 AND s.id = x.id AND md5(s.input::text) = x.fp
RETURNING s.id`

/** Re-encrypts every tenant's payloads (or one tenant's) under the ring's active key. */
export async function reencryptPayloads(
  deps: { poolOf: (scope: TenantScope) => Promise<pg.Pool>; tenants: TenantDirectory; keyRing: KeyRing },
  options: ReencryptOptions = {},
): Promise<ReencryptReport> {
  const ring = deps.keyRing
  const activeKey = ring.activeKeyId
  if (activeKey === undefined) {
    throw new EncryptionError('no_keys', 'nothing to re-encrypt under: no encryption keys are configured')
  }
  const batchSize = options.batchSize ?? 500
  const report: ReencryptReport = {
    activeKey,
    tenants: 0,
    workflows: 0,
    tasks: 0,
    events: 0,
    schedules: 0,
    skipped: 0,
    unreadable: [],
  }
  const tenants = deps.tenants.all(options.tenant === undefined ? {} : { id: options.tenant })
  for await (const scope of tenants) {
    const r = await reencryptTenant(await deps.poolOf(scope), scope, ring, batchSize, options.skipUnreadable)
    report.tenants++
    report.workflows += r.workflows
    report.tasks += r.tasks
    report.events += r.events
    report.schedules += r.schedules
    report.skipped += r.skipped
    report.unreadable.push(...r.unreadable)
    options.onTenant?.(r)
  }
  if (options.tenant !== undefined && report.tenants === 0) {
    throw new TenantError('unknown_tenant', `unknown tenant "${options.tenant}"`)
  }
  return report
}

/** Re-encrypts one tenant's payloads, a page per transaction. */
export async function reencryptTenant(
  pool: pg.Pool,
  scope: TenantScope,
  ring: KeyRing,
  batchSize: number,
  skipUnreadable = false,
): Promise<TenantReencryptReport> {
  const tenant = scope.tenantId
  const report: TenantReencryptReport = {
    tenant,
    workflows: 0,
    tasks: 0,
    events: 0,
    schedules: 0,
    skipped: 0,
    unreadable: [],
  }
  // Unreadable values of the page being run; a retried transaction starts the page's list over.
  let pageUnreadable: UnreadableValue[] = []
  const redo = (purpose: PayloadPurpose, value: Json, id: string, table: string): Json => {
    if (!ring.needsReencryption(value)) return value
    try {
      return ring.encrypt(tenant, purpose, ring.decrypt(tenant, purpose, value))
    } catch (error) {
      if (!(error instanceof EncryptionError)) throw error
      if (skipUnreadable) {
        pageUnreadable.push({ tenant, table, id, purpose, code: error.code })
        return value
      }
      throw new EncryptionError(error.code, `${error.message} (row ${id}; rows before it are done)`, {
        cause: error,
      })
    }
  }
  /** Runs pages of `page` until one comes back short; returns rows rewritten and skipped. */
  const pages = async (
    pageSql: string,
    updateSql: string,
    change: (row: any) => Record<string, unknown>,
    first = MIN_UUID,
  ): Promise<{ written: number; skipped: number }> => {
    const total = { written: 0, skipped: 0 }
    for (let after = first; ;) {
      // Everything the page decides is returned, not assigned, so a retried transaction starts over.
      const page = await withTenantTx(pool, scope, async (db) => {
        pageUnreadable = []
        const { rows } = await db.executeSql(pageSql, [tenant, after, ring.activeKeyId, batchSize])
        if (rows.length === 0) return { read: 0, written: 0, last: after, full: false }
        // Rows whose every stale value was unreadable (left as it was) have nothing to write.
        const changes = rows
          .map((row) => [row, change(row)] as const)
          .filter(([row, c]) => Object.keys(c).some((k) => c[k] !== row[k]))
          .map(([, c]) => c)
        const last = rows.at(-1).id as string
        const full = rows.length === batchSize
        if (changes.length === 0) return { read: 0, written: 0, last, full }
        const written = await db.executeSql(updateSql, [tenant, JSON.stringify(changes)])
        return { read: changes.length, written: written.rows.length, last, full }
      })
      report.unreadable.push(...pageUnreadable)
      total.written += page.written
      total.skipped += page.read - page.written
      after = page.last
      if (!page.full) return total
    }
  }

  const wf = await pages(WORKFLOWS_PAGE, WORKFLOWS_UPDATE, (r) => ({
    id: r.id,
    fp: r.fp,
    input: redo('workflow.input', r.input, r.id, 'workflows'),
  }))
  const tasks = await pages(TASKS_PAGE, TASKS_UPDATE, (r) => ({
    id: r.id,
    data_fp: r.data_fp,
    result_fp: r.result_fp,
    data: redo('task.data', r.data, r.id, 'agent_coordination'),
    result: redo('task.result', r.result, r.id, 'agent_coordination'),
  }))
  const events = await pages(
    EVENTS_PAGE,
    EVENTS_UPDATE,
    (r) => ({ id: r.id, fp: r.fp, payload: redo('event.payload', r.payload, r.id, 'workflow_events') }),
    '0',
  )
  // A schedule's input is the input of the workflows it starts: encrypted as one.
  const schedules = await pages(
    SCHEDULES_PAGE,
    SCHEDULES_UPDATE,
    (r) => ({ id: r.id, fp: r.fp, input: redo('workflow.input', r.input, r.id, 'workflow_schedules') }),
    '',
  )
  report.workflows = wf.written
  report.tasks = tasks.written
  report.events = events.written
  report.schedules = schedules.written
  report.skipped = wf.skipped + tasks.skipped + events.skipped + schedules.skipped
  return report
}
