// Usage and budgets over HTTP (docs/usage-and-budgets.md). The admin token sets and removes a
// tenant's budgets and reads them; a tenant key reads its own usage, budgets and budget audit trail,
// never another tenant's (its transactions are scoped to it: row-level security, or its own schema
// or database, see test/usage/budgets.test.ts).
import type { FastifyInstance, FastifyRequest, RawServerDefault } from 'fastify'
import type { Logger } from 'pino'
import type { Engine, TenantHandle } from '../engine.ts'
import { BUDGET_PERIODS, type BudgetPeriod } from '../usage/budgets.ts'

const dateTime = { type: 'string', format: 'date-time' } as const
const dimension = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' } as const
const period = { type: 'string', enum: [...BUDGET_PERIODS] } as const
const problems = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((s) => [s, { $ref: 'Problem#', description: 'problem details' }]))
const bearer = [{ tenantKey: [] }]
const admin = [{ adminToken: [] }]

const budget = {
  type: 'object',
  required: [
    'dimension',
    'period',
    'limit',
    'hard',
    'periodStart',
    'periodEnd',
    'used',
    'remaining',
    'exceededAt',
    'exhausted',
  ],
  properties: {
    dimension: { type: 'string' },
    period,
    limit: { type: 'integer' },
    hard: {
      type: 'boolean',
      description: "hard: the tenant's tasks wait once it is reached; soft: an alert",
    },
    periodStart: dateTime,
    periodEnd: dateTime,
    used: { type: 'integer', description: 'usage recorded in the current period' },
    remaining: { type: 'integer' },
    exceededAt: {
      type: ['string', 'null'],
      format: 'date-time',
      description: 'when it was reached in this period',
    },
    exhausted: { type: 'boolean', description: "hard and reached: the tenant's tasks are held" },
    released: { type: 'integer', description: 'held tasks queued again by this change' },
  },
} as const

const total = (extra: Record<string, unknown> = {}) =>
  ({
    type: 'array',
    items: {
      type: 'object',
      required: ['dimension', 'amount', ...Object.keys(extra)],
      properties: { dimension: { type: 'string' }, amount: { type: 'integer' }, ...extra },
    },
  }) as const

const budgetParams = {
  type: 'object',
  required: ['id', 'dimension'],
  properties: { id: { type: 'string', maxLength: 63 }, dimension },
} as const

export const usageRoutes = {
  usage: {
    tags: ['usage'],
    summary: "The tenant's usage over a window, by dimension, agent and workflow type",
    description:
      'What its agents reported (ctx.usage) with the attempts that completed or failed. The window defaults to the current calendar month (UTC, by the database clock); from is inclusive, to exclusive. With workflowId: that workflow only.',
    security: bearer,
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: { from: dateTime, to: dateTime, workflowId: { type: 'string', format: 'uuid' } },
    },
    response: {
      200: {
        type: 'object',
        required: ['from', 'to', 'totals', 'byAgent', 'byWorkflowType', 'heldTasks'],
        properties: {
          from: { type: 'string' },
          to: { type: 'string', description: "an instant, or 'infinity'" },
          totals: total(),
          byAgent: total({ agent: { type: 'string' } }),
          byWorkflowType: total({ workflowType: { type: 'string' } }),
          heldTasks: { type: 'integer', description: 'tasks waiting because a hard budget is exhausted' },
        },
      },
      ...problems(400, 401),
    },
  },
  tenantBudgets: {
    tags: ['usage'],
    summary: "The tenant's budgets, with what each period has used, and their audit trail",
    security: bearer,
    response: {
      200: {
        type: 'object',
        required: ['budgets', 'audit'],
        properties: {
          budgets: { type: 'array', items: budget },
          audit: {
            type: 'array',
            description:
              'newest first: set, raised, lowered, removed, reached (exhausted or exceeded), period rolled',
            items: {
              type: 'object',
              required: ['id', 'dimension', 'period', 'action', 'at'],
              properties: {
                id: { type: 'string' },
                dimension: { type: 'string' },
                period: { type: 'string' },
                action: { type: 'string' },
                data: { type: 'object', additionalProperties: true },
                actor: { type: ['string', 'null'] },
                workflowId: { type: ['string', 'null'] },
                at: dateTime,
              },
            },
          },
        },
      },
      ...problems(401),
    },
  },
  adminBudgets: {
    tags: ['admin'],
    summary: "A tenant's budgets",
    security: admin,
    params: { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 63 } } },
    response: {
      200: {
        type: 'object',
        required: ['budgets'],
        properties: { budgets: { type: 'array', items: budget } },
      },
      ...problems(401, 404, 503),
    },
  },
  putBudget: {
    tags: ['admin'],
    summary: "Set a tenant's budget for a dimension and period (audited)",
    description:
      "hard: once the period's usage reaches the limit the tenant's tasks wait (holdReason budget_exhausted) until the limit is raised, the budget removed, or the period rolls; soft: an audit row and the equilateral_budgets_exceeded gauge. Raising a hard budget above the usage releases the held tasks at once.",
    security: admin,
    params: budgetParams,
    body: {
      type: 'object',
      additionalProperties: false,
      required: ['period', 'limit'],
      properties: {
        period,
        limit: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER },
        hard: { type: 'boolean', default: false },
        actor: { type: 'string', maxLength: 200, description: 'who made the change, for the audit trail' },
      },
    },
    response: { 200: budget, ...problems(400, 401, 404, 422, 503) },
  },
  deleteBudget: {
    tags: ['admin'],
    summary: "Remove a tenant's budget (audited)",
    security: admin,
    params: budgetParams,
    querystring: {
      type: 'object',
      additionalProperties: false,
      required: ['period'],
      properties: { period, actor: { type: 'string', maxLength: 200 } },
    },
    response: {
      200: {
        type: 'object',
        required: ['deleted', 'released'],
        properties: { deleted: { type: 'boolean' }, released: { type: 'integer' } },
      },
      ...problems(400, 401, 404, 503),
    },
  },
} as const

export function registerUsageRoutes(
  app: FastifyInstance<RawServerDefault, any, any, Logger>,
  engine: Engine,
  auth: {
    tenant: (request: FastifyRequest) => Promise<void>
    admin: (request: FastifyRequest) => Promise<void>
  },
): void {
  const tenantOf = (request: FastifyRequest): TenantHandle => (request as { tenant?: TenantHandle }).tenant!
  app.get<{ Querystring: { from?: string; to?: string; workflowId?: string } }>(
    '/v1/usage',
    { schema: usageRoutes.usage, preHandler: auth.tenant },
    async (request) =>
      tenantOf(request).usage({
        ...(request.query.from ? { from: new Date(request.query.from) } : {}),
        ...(request.query.to ? { to: new Date(request.query.to) } : {}),
        ...(request.query.workflowId ? { workflowId: request.query.workflowId } : {}),
      }),
  )
  app.get('/v1/budgets', { schema: usageRoutes.tenantBudgets, preHandler: auth.tenant }, async (request) => {
    const tenant = tenantOf(request)
    return { budgets: await tenant.budgets(), audit: await tenant.budgetAudit() }
  })
  app.get<{ Params: { id: string } }>(
    '/v1/admin/tenants/:id/budgets',
    { schema: usageRoutes.adminBudgets, preHandler: auth.admin },
    async (request) => ({ budgets: await (await engine.tenant(request.params.id)).budgets() }),
  )
  app.put<{
    Params: { id: string; dimension: string }
    Body: { period: BudgetPeriod; limit: number; hard?: boolean; actor?: string }
  }>(
    '/v1/admin/tenants/:id/budgets/:dimension',
    { schema: usageRoutes.putBudget, preHandler: auth.admin },
    async (request) => {
      const { period, limit, hard, actor } = request.body
      return engine.setBudget(
        request.params.id,
        { dimension: request.params.dimension, period, limit, hard: hard ?? false },
        { actor: actor ?? 'admin' },
      )
    },
  )
  app.delete<{
    Params: { id: string; dimension: string }
    Querystring: { period: BudgetPeriod; actor?: string }
  }>(
    '/v1/admin/tenants/:id/budgets/:dimension',
    { schema: usageRoutes.deleteBudget, preHandler: auth.admin },
    async (request) =>
      engine.deleteBudget(request.params.id, request.params.dimension, request.query.period, {
        actor: request.query.actor ?? 'admin',
      }),
  )
}
