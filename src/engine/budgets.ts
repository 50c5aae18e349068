// The engine's budget operations (src/usage/, docs/usage-and-budgets.md): the budget pass over
// tenants, and setting or removing one tenant's budget, each audited and followed by the alert
// gauge's refresh. The Engine delegates here; TenantHandle reads budgets through src/usage/service.ts.
import type { TenantScope } from '../db/tx.ts'
import type { BudgetPeriod, BudgetSpec, BudgetView } from '../usage/budgets.ts'
import { budgetPasses, deleteTenantBudget, setTenantBudget, type UsageDeps } from '../usage/service.ts'
import type { EngineContext } from './context.ts'

type Scopes = AsyncIterable<TenantScope> | Iterable<TenantScope>

export class Budgets {
  readonly #ctx: EngineContext
  readonly #deps: UsageDeps

  constructor(ctx: EngineContext) {
    this.#ctx = ctx
    this.#deps = { storeOf: (scope) => ctx.stores.of(scope), metrics: ctx.metrics }
  }

  /** The budget pass over `scopes` (default: every active tenant), by `clock` (default: the database's). */
  pass(options: { clock?: Date; scopes?: Scopes } = {}): ReturnType<typeof budgetPasses> {
    return budgetPasses(this.#deps, options.scopes ?? this.#ctx.tenants.active(), options.clock)
  }

  async set(
    tenantId: string,
    spec: BudgetSpec,
    options: { actor?: string; clock?: Date },
  ): Promise<BudgetView & { released: number }> {
    return setTenantBudget(this.#deps, await this.#ctx.tenants.require(tenantId), spec, options)
  }

  async delete(
    tenantId: string,
    dimension: string,
    period: BudgetPeriod,
    options: { actor?: string },
  ): Promise<{ deleted: boolean; released: number }> {
    const scope = await this.#ctx.tenants.require(tenantId)
    return deleteTenantBudget(this.#deps, scope, dimension, period, options)
  }
}
