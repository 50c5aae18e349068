// The engine's usage and budget operations, each in a transaction scoped to the tenant, in the
// tenant's database (thin methods on Engine and TenantHandle delegate here).
import type pg from 'pg'
import type { PgBoss } from 'pg-boss'
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import type { Metrics } from '../metrics.ts'
import {
  type BudgetAuditEntry,
  budgetAudit,
  budgetPassTx,
  type BudgetPassReport,
  type BudgetPeriod,
  type BudgetSpec,
  type BudgetView,
  deleteBudgetTx,
  listBudgets,
  setBudgetTx,
  type UsageReport,
  usageReport,
} from './budgets.ts'

export interface UsageDeps {
  storeOf(scope: TenantScope): Promise<{ pool: pg.Pool; boss: PgBoss; key: string }>
  metrics: Metrics
}

async function tx<T>(
  deps: UsageDeps,
  scope: TenantScope,
  fn: (db: Db, boss: PgBoss) => Promise<T>,
): Promise<T> {
  const { pool, boss } = await deps.storeOf(scope)
  return withTenantTx(pool, scope, (db) => fn(db, boss))
}

export function tenantUsage(
  deps: UsageDeps,
  scope: TenantScope,
  query: { from?: Date; to?: Date; workflowId?: string } = {},
): Promise<UsageReport> {
  return tx(deps, scope, (db) => usageReport(db, scope, query))
}

export function tenantBudgets(deps: UsageDeps, scope: TenantScope): Promise<BudgetView[]> {
  return tx(deps, scope, (db) => listBudgets(db, scope))
}

export function tenantBudgetAudit(
  deps: UsageDeps,
  scope: TenantScope,
  limit?: number,
): Promise<BudgetAuditEntry[]> {
  return tx(deps, scope, (db) => budgetAudit(db, scope, limit))
}

export async function setTenantBudget(
  deps: UsageDeps,
  scope: TenantScope,
  spec: BudgetSpec,
  options: { actor?: string; clock?: Date } = {},
): Promise<BudgetView & { released: number }> {
  const view = await tx(deps, scope, (db, boss) => setBudgetTx({ db, boss, scope }, spec, options))
  await observe(deps, scope)
  return view
}

export async function deleteTenantBudget(
  deps: UsageDeps,
  scope: TenantScope,
  dimension: string,
  period: BudgetPeriod,
  options: { actor?: string } = {},
): Promise<{ deleted: boolean; released: number }> {
  const r = await tx(deps, scope, (db, boss) =>
    deleteBudgetTx({ db, boss, scope }, dimension, period, options),
  )
  await observe(deps, scope)
  return r
}

/** The budgets reached, for the alert gauge (equilateral_budgets_exceeded). */
async function observe(deps: UsageDeps, scope: TenantScope): Promise<void> {
  const budgets = await tenantBudgets(deps, scope)
  deps.metrics.budgetsObserved(
    scope.tenantId,
    budgets
      .filter((b) => b.exceededAt !== null)
      .map((b) => ({ dimension: b.dimension, period: b.period, hard: b.hard })),
  )
}

/**
 * The budget pass over the given tenants (see budgetPassTx): rolls periods by `clock` (default: the
 * database's), marks budgets reached that nothing had marked, releases held tasks, and refreshes the
 * alert gauge. A tenant whose pass fails is reported and passed over.
 */
export async function budgetPasses(
  deps: UsageDeps,
  scopes: AsyncIterable<TenantScope> | Iterable<TenantScope>,
  clock?: Date,
): Promise<BudgetPassReport & { tenants: number; failed: { tenantId: string; message: string }[] }> {
  const total = {
    rolled: 0,
    reached: 0,
    released: 0,
    exceeded: [] as BudgetPassReport['exceeded'],
    tenants: 0,
    failed: [] as { tenantId: string; message: string }[],
  }
  for await (const scope of scopes) {
    total.tenants++
    try {
      const r = await tx(deps, scope, (db, boss) => budgetPassTx({ db, boss, scope }, clock))
      total.rolled += r.rolled
      total.reached += r.reached
      total.released += r.released
      total.exceeded.push(...r.exceeded)
      deps.metrics.budgetsObserved(scope.tenantId, r.exceeded)
    } catch (error) {
      total.failed.push({ tenantId: scope.tenantId, message: (error as Error).message })
    }
  }
  return total
}
