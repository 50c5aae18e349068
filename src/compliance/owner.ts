// The maintenance side of compliance work (retention purge, GDPR erasure), on the maintenance
// connection (MAINTENANCE_DATABASE_URL, a login in equilateral_maintenance; by default the owner's):
// tenant lookup whatever the tenant's status, transactions scoped to one tenant, and the compliance
// events the engine records itself. What the purge and the erasure change, they change through the
// SECURITY DEFINER functions of drizzle/tenant/0015_maintenance_role.sql, which set the audit
// switches the append-only triggers honour for themselves.
import type pg from 'pg'
import { APP_SCHEMA } from '../db/names.ts'
import { type Db, type TenantScope, type TxTimeouts, withTimeouts } from '../db/tx.ts'
import { TenantError } from '../errors.ts'
import { assertTenantId, scopeOfRow } from '../tenancy/tenants.ts'

/** agent_id of the events the engine records itself ('/' cannot appear in an agent id). */
export const RETENTION_ACTOR = 'eq/retention'
export const ERASURE_ACTOR = 'eq/erasure'

export interface OwnerTenant {
  scope: TenantScope
  /** The stored profile, unvalidated (see parseComplianceProfile). */
  profile: unknown
}

export interface TenantRow {
  id: string
  tier: string
  schema_name: string | null
  database_server: string | null
  database_name: string | null
  compliance_profile: unknown
}

export const TENANT_COLUMNS = 'id, tier, schema_name, database_server, database_name, compliance_profile'

/** One tenant, active or suspended (retention and erasure apply to both). */
export async function ownerTenant(maintenance: pg.Pool, id: string): Promise<OwnerTenant> {
  assertTenantId(id)
  const { rows } = await maintenance.query<TenantRow>(
    `SELECT ${TENANT_COLUMNS} FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
    [id],
  )
  const row = rows[0]
  if (!row) throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
  return { scope: scopeOfRow(row), profile: row.compliance_profile }
}

/**
 * A maintenance transaction scoped to the tenant (app.tenant_id and search_path, as every engine
 * transaction: row-level security binds the maintenance role and the functions it calls). Retried
 * on serialization failures and deadlocks: bodies are idempotent. `timeouts`: a maintenance pass's
 * lock and statement timeouts (retention).
 */
export function maintenanceTx<T>(
  maintenance: pg.Pool,
  scope: TenantScope,
  fn: (db: Db) => Promise<T>,
  timeouts?: TxTimeouts,
): Promise<T> {
  return withTimeouts(timeouts)(maintenance, scope, fn)
}

/**
 * Records an event the engine writes itself (purge, deletion), in the caller's transaction: one per
 * regime that applies to the tenant, with that regime's retention; under GDPR, kept, when none
 * applies (erasure and storage limitation are GDPR notions, and the record of them must exist
 * whatever the profile says).
 */
export async function recordComplianceEventTx(
  db: Db,
  tenantId: string,
  actor: string,
  eventType: string,
  data: Record<string, unknown>,
): Promise<number> {
  // No RETURNING: the maintenance role may insert events, not read them.
  const result = (await db.executeSql(
    `INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data, retention_until)
     SELECT $1, $2, r.regime, $3, $4::jsonb, r.retention_until FROM ${APP_SCHEMA}.compliance_regimes($1) r
     UNION ALL
     SELECT $1, $2, 'GDPR', $3, $4::jsonb, NULL WHERE NOT EXISTS (SELECT FROM ${APP_SCHEMA}.compliance_regimes($1))`,
    [tenantId, actor, eventType, JSON.stringify(data)],
  )) as { rowCount?: number | null }
  return result.rowCount ?? 0
}
