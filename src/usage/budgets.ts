// Budgets per tenant, dimension and period (day or month, UTC), and usage read back. A budget's
// current period is stored (period_start): the completion's trigger (drizzle/tenant/0019) sums
// usage since then, and only the budget pass (budgetPassTx) moves it, with the clock it is given
// (the database's by default; a fixed date in tests). So what a period holds never depends on the
// moment a statement runs, and a test never depends on the time of day.
//
// Hard budget reached: the tenant's tasks are held (src/usage/holds.ts) until the budget is raised
// or removed, or its period rolls. Soft budget reached: an audit row, and the alert gauge
// equilateral_budgets_exceeded the budget pass keeps. Setting, raising, lowering, removing,
// reaching and rolling a budget are audited in usage_budget_audit, in the transaction that does it.
import type { Db, TenantScope, TenantTx } from '../db/tx.ts'
import { InvalidInputError } from '../errors.ts'
import { releaseHoldsTx } from './holds.ts'

export const BUDGET_PERIODS = ['day', 'month'] as const
export type BudgetPeriod = (typeof BUDGET_PERIODS)[number]

export interface BudgetSpec {
  dimension: string
  period: BudgetPeriod
  /** The amount the period may use (a non-negative integer, in the dimension's unit). */
  limit: number
  /** Hard: the tenant's tasks wait once it is reached. Soft (default): an alert and an audit row. */
  hard?: boolean
}

export interface BudgetView {
  dimension: string
  period: BudgetPeriod
  limit: number
  hard: boolean
  periodStart: string
  periodEnd: string
  /** Usage recorded since periodStart. */
  used: number
  remaining: number
  /** When it was reached in this period; null if it has not been. */
  exceededAt: string | null
  /** Hard and reached: the tenant's tasks are held. */
  exhausted: boolean
}

export interface UsageTotal {
  dimension: string
  amount: number
}

export interface UsageReport {
  from: string
  to: string
  totals: UsageTotal[]
  byAgent: (UsageTotal & { agent: string })[]
  byWorkflowType: (UsageTotal & { workflowType: string })[]
  /** Tasks held because a hard budget is exhausted. */
  heldTasks: number
}

export interface BudgetAuditEntry {
  id: string
  dimension: string
  period: string
  action: string
  data: Record<string, unknown>
  actor: string | null
  workflowId: string | null
  at: string
}

export interface BudgetPassReport {
  /** Budgets whose period rolled. */
  rolled: number
  /** Budgets found reached that no completion had marked (two crossing at once, or a lowered budget). */
  reached: number
  /** Held tasks queued again. */
  released: number
  /** The budgets reached in their current period, after the pass (for the alert gauge). */
  exceeded: { dimension: string; period: BudgetPeriod; hard: boolean }[]
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const END = `CASE b.period WHEN 'day' THEN interval '1 day' ELSE interval '1 month' END`
const USED = (b: string) => `(SELECT coalesce(sum(u.amount), 0) FROM agent_usage u
  WHERE u.tenant_id = ${b}.tenant_id AND u.dimension = ${b}.dimension AND u.recorded_at >= ${b}.period_start)`

export function checkBudgetSpec(spec: BudgetSpec): Required<BudgetSpec> {
  if (typeof spec?.dimension !== 'string' || !NAME.test(spec.dimension)) {
    throw new InvalidInputError(
      `budget dimension ${JSON.stringify(spec?.dimension)} must be 1-63 letters, digits, '_', '.', '-'`,
      '$.dimension',
    )
  }
  if (!BUDGET_PERIODS.includes(spec.period)) {
    throw new InvalidInputError(`budget period must be one of ${BUDGET_PERIODS.join(', ')}`, '$.period')
  }
  if (!Number.isSafeInteger(spec.limit) || spec.limit < 0) {
    throw new InvalidInputError('budget limit must be a non-negative integer', '$.limit')
  }
  if (spec.hard !== undefined && typeof spec.hard !== 'boolean') {
    throw new InvalidInputError('budget hard must be a boolean', '$.hard')
  }
  return { dimension: spec.dimension, period: spec.period, limit: spec.limit, hard: spec.hard ?? false }
}

const SELECT_BUDGETS = `
SELECT b.dimension, b.period, b.budget, b.hard, b.period_start, b.period_start + ${END} AS period_end,
  b.exceeded_at, ${USED('b')} AS used
FROM usage_budgets b WHERE b.tenant_id = $1 ORDER BY b.dimension, b.period`

function budgetOf(r: Record<string, any>): BudgetView {
  const used = Number(r.used)
  const limit = Number(r.budget)
  return {
    dimension: r.dimension,
    period: r.period,
    limit,
    hard: r.hard,
    periodStart: new Date(r.period_start).toISOString(),
    periodEnd: new Date(r.period_end).toISOString(),
    used,
    remaining: Math.max(0, limit - used),
    exceededAt: r.exceeded_at ? new Date(r.exceeded_at).toISOString() : null,
    exhausted: r.hard && r.exceeded_at !== null,
  }
}

export async function listBudgets(db: Db, scope: TenantScope): Promise<BudgetView[]> {
  const { rows } = await db.executeSql(SELECT_BUDGETS, [scope.tenantId])
  return rows.map(budgetOf)
}

// The period a new budget starts in is the clock's ($7); an existing budget keeps its period. Its
// state follows the new limit at once: reached (exceeded_at kept, or now) or not (cleared).
const SET_BUDGET = `
WITH old AS (
  SELECT * FROM usage_budgets WHERE tenant_id = $1 AND dimension = $2::text AND period = $3::text FOR UPDATE
),
start AS (
  SELECT coalesce((SELECT period_start FROM old),
    date_trunc($3::text, coalesce($7::timestamptz, now()) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS at
),
used AS (
  SELECT coalesce(sum(u.amount), 0) AS n FROM agent_usage u, start
  WHERE u.tenant_id = $1 AND u.dimension = $2::text AND u.recorded_at >= start.at
),
up AS (
  INSERT INTO usage_budgets AS b (tenant_id, dimension, period, budget, hard, period_start, exceeded_at)
  SELECT $1, $2::text, $3::text, $4::bigint, $5::boolean, start.at,
    CASE WHEN used.n >= $4::bigint THEN coalesce((SELECT exceeded_at FROM old), now()) END
  FROM start, used
  ON CONFLICT (tenant_id, dimension, period) DO UPDATE
  SET budget = EXCLUDED.budget, hard = EXCLUDED.hard, exceeded_at = EXCLUDED.exceeded_at, updated_at = now()
  RETURNING b.exceeded_at
),
audit AS (
  INSERT INTO usage_budget_audit (tenant_id, dimension, period, action, data, actor)
  SELECT $1, $2::text, $3::text,
    CASE WHEN o.budget IS NULL THEN 'budget_set' WHEN $4::bigint > o.budget THEN 'budget_raised'
      WHEN $4::bigint < o.budget THEN 'budget_lowered' ELSE 'budget_set' END,
    jsonb_strip_nulls(jsonb_build_object('budget', $4::bigint, 'hard', $5::boolean, 'previous', o.budget,
      'previousHard', o.hard, 'used', used.n, 'periodStart', start.at)),
    $6::text
  FROM used, start LEFT JOIN old o ON true
  UNION ALL
  SELECT $1, $2::text, $3::text, CASE WHEN $5::boolean THEN 'budget_exhausted' ELSE 'budget_exceeded' END,
    jsonb_build_object('budget', $4::bigint, 'hard', $5::boolean, 'used', used.n, 'periodStart', start.at), $6::text
  FROM used, start, up
  WHERE up.exceeded_at IS NOT NULL AND NOT EXISTS (SELECT FROM old WHERE old.exceeded_at IS NOT NULL)
)
SELECT 1`

/**
 * Sets (creates or changes) a budget, audited with its actor, in the caller's transaction; releases
 * the tenant's held tasks if no hard budget is exhausted afterwards. Returns the budget as it is now.
 */
export async function setBudgetTx(
  tx: TenantTx,
  spec: BudgetSpec,
  options: { actor?: string; clock?: Date } = {},
): Promise<BudgetView & { released: number }> {
  const { db, scope } = tx
  const s = checkBudgetSpec(spec)
  await db.executeSql(SET_BUDGET, [
    scope.tenantId,
    s.dimension,
    s.period,
    s.limit,
    s.hard,
    options.actor ?? null,
    options.clock?.toISOString() ?? null,
  ])
  const released = await releaseHoldsTx(tx, 'budget available')
  const view = (await listBudgets(db, scope)).find(
    (b) => b.dimension === s.dimension && b.period === s.period,
  )
  return { ...(view as BudgetView), released }
}

const DELETE_BUDGET = `
WITH d AS (
  DELETE FROM usage_budgets WHERE tenant_id = $1 AND dimension = $2 AND period = $3
  RETURNING dimension, period, budget, hard
)
INSERT INTO usage_budget_audit (tenant_id, dimension, period, action, data, actor)
SELECT $1, d.dimension, d.period, 'budget_removed', jsonb_build_object('budget', d.budget, 'hard', d.hard), $4 FROM d`

/**
 * Removes a budget (audited), in the caller's transaction; false if there was none. Releases held
 * tasks as setBudgetTx does.
 */
export async function deleteBudgetTx(
  tx: TenantTx,
  dimension: string,
  period: BudgetPeriod,
  options: { actor?: string } = {},
): Promise<{ deleted: boolean; released: number }> {
  const { db, scope } = tx
  const r = (await db.executeSql(DELETE_BUDGET, [
    scope.tenantId,
    dimension,
    period,
    options.actor ?? null,
  ])) as {
    rowCount?: number | null
  }
  const released = await releaseHoldsTx(tx, 'budget available')
  return { deleted: (r.rowCount ?? 0) > 0, released }
}

const ROLL = `
WITH c AS (SELECT coalesce($2::timestamptz, now()) AS now),
due AS (
  SELECT b.dimension, b.period, b.period_start, b.exceeded_at FROM usage_budgets b, c
  WHERE b.tenant_id = $1 AND c.now >= b.period_start + ${END}
  FOR UPDATE OF b
),
rolled AS (
  UPDATE usage_budgets b
  SET period_start = date_trunc(b.period, c.now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', exceeded_at = NULL,
    updated_at = now()
  FROM due, c
  WHERE b.tenant_id = $1 AND b.dimension = due.dimension AND b.period = due.period
  RETURNING b.dimension, b.period, b.period_start, due.period_start AS previous_start, due.exceeded_at AS previous_exceeded
)
INSERT INTO usage_budget_audit (tenant_id, dimension, period, action, data)
SELECT $1, r.dimension, r.period, 'budget_period_rolled',
  jsonb_strip_nulls(jsonb_build_object('periodStart', r.period_start, 'previousStart', r.previous_start,
    'previousExceededAt', r.previous_exceeded))
FROM rolled r`

// Budgets reached that no completion marked: two transactions crossing together, each below the
// budget in its own snapshot; or usage recorded in a period that has just begun.
const REACHED = `
WITH reached AS (
  UPDATE usage_budgets b SET exceeded_at = now(), updated_at = now()
  WHERE b.tenant_id = $1 AND b.exceeded_at IS NULL AND ${USED('b')} >= b.budget
  RETURNING b.dimension, b.period, b.budget, b.hard, b.period_start, ${USED('b')} AS used
)
INSERT INTO usage_budget_audit (tenant_id, dimension, period, action, data)
SELECT $1, r.dimension, r.period, CASE WHEN r.hard THEN 'budget_exhausted' ELSE 'budget_exceeded' END,
  jsonb_build_object('budget', r.budget, 'hard', r.hard, 'used', r.used, 'periodStart', r.period_start,
    'by', 'budget pass')
FROM reached r`

/**
 * The budget pass over one tenant, in the caller's transaction (run with the sweeper, or by hand
 * with a clock): rolls the budgets whose period ended by `clock` (default: the database's now())
 * into the period `clock` is in, marks budgets reached that nothing had marked, and releases held
 * tasks when no hard budget is exhausted any more.
 */
export async function budgetPassTx(tx: TenantTx, clock?: Date): Promise<BudgetPassReport> {
  const { db, scope } = tx
  const rolled = (await db.executeSql(ROLL, [scope.tenantId, clock?.toISOString() ?? null])) as {
    rowCount?: number | null
  }
  const reached = (await db.executeSql(REACHED, [scope.tenantId])) as { rowCount?: number | null }
  const released = await releaseHoldsTx(tx, 'budget period rolled')
  const { rows } = await db.executeSql(
    `SELECT dimension, period, hard FROM usage_budgets WHERE tenant_id = $1 AND exceeded_at IS NOT NULL`,
    [scope.tenantId],
  )
  return {
    rolled: rolled.rowCount ?? 0,
    reached: reached.rowCount ?? 0,
    released,
    exceeded: rows.map((r) => ({ dimension: r.dimension, period: r.period, hard: r.hard })),
  }
}

const USAGE_BY = `
SELECT u.agent_id, w.type AS workflow_type, u.dimension, sum(u.amount)::bigint AS amount
FROM agent_usage u JOIN workflows w ON w.tenant_id = $1 AND w.id = u.workflow_id
WHERE u.tenant_id = $1 AND u.recorded_at >= $2::timestamptz AND u.recorded_at < $3::timestamptz
  AND ($4::uuid IS NULL OR u.workflow_id = $4::uuid)
GROUP BY u.agent_id, w.type, u.dimension`

/**
 * The tenant's usage over [from, to) (default: the current calendar month, UTC, by the database
 * clock), by dimension, agent and workflow type; or one workflow's.
 */
export async function usageReport(
  db: Db,
  scope: TenantScope,
  query: { from?: Date; to?: Date; workflowId?: string } = {},
): Promise<UsageReport> {
  const { rows: w } = await db.executeSql(
    `SELECT coalesce($1::timestamptz, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS from,
       coalesce($2::timestamptz, 'infinity'::timestamptz) AS to`,
    [query.from?.toISOString() ?? null, query.to?.toISOString() ?? null],
  )
  const from = w[0]?.from as Date
  // pg answers 'infinity' as that string, not a Date.
  const to = w[0]?.to as Date | string
  const { rows } = await db.executeSql(USAGE_BY, [scope.tenantId, from, to, query.workflowId ?? null])
  const sum = (key: (r: Record<string, any>) => string) => {
    const m = new Map<string, { r: Record<string, any>; amount: number }>()
    for (const r of rows) {
      const k = `${key(r)}\u0000${r.dimension}`
      const e = m.get(k) ?? { r, amount: 0 }
      e.amount += Number(r.amount)
      m.set(k, e)
    }
    return [...m.values()]
  }
  const { rows: held } = await db.executeSql(
    `SELECT count(*)::int AS n FROM agent_coordination WHERE tenant_id = $1 AND hold_reason IS NOT NULL AND status = 'queued'`,
    [scope.tenantId],
  )
  return {
    from: from.toISOString(),
    to: to instanceof Date ? to.toISOString() : 'infinity',
    totals: sum(() => '').map((e) => ({ dimension: e.r.dimension, amount: e.amount })),
    byAgent: sum((r) => r.agent_id).map((e) => ({
      agent: e.r.agent_id,
      dimension: e.r.dimension,
      amount: e.amount,
    })),
    byWorkflowType: sum((r) => r.workflow_type).map((e) => ({
      workflowType: e.r.workflow_type,
      dimension: e.r.dimension,
      amount: e.amount,
    })),
    heldTasks: held[0]?.n ?? 0,
  }
}

/** The budgets' audit trail, newest first. */
export async function budgetAudit(db: Db, scope: TenantScope, limit = 100): Promise<BudgetAuditEntry[]> {
  const { rows } = await db.executeSql(
    `SELECT id::text, dimension, period, action, data, actor, workflow_id, at FROM usage_budget_audit
     WHERE tenant_id = $1 ORDER BY id DESC LIMIT $2`,
    [scope.tenantId, Math.min(Math.max(1, Math.trunc(limit)), 1000)],
  )
  return rows.map((r) => ({
    id: r.id,
    dimension: r.dimension,
    period: r.period,
    action: r.action,
    data: r.data,
    actor: r.actor,
    workflowId: r.workflow_id,
    at: new Date(r.at).toISOString(),
  }))
}
