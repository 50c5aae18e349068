// The maintenance services of one engine, built together because they share one runner (its
// timers and crons stop together at close): the sweeper (which also seals the audit trail and runs
// the budget pass), the cron scheduler and the retention purge. The Engine delegates to them.
import type { SealReport } from '../audit/seal.ts'
import type { Connections } from '../engine/connections.ts'
import type { EngineContext } from '../engine/context.ts'
import type { Registry } from '../engine/registry.ts'
import type { TenantScope } from '../db/tx.ts'
import type { budgetPasses } from '../usage/service.ts'
import { Retention } from './retention.ts'
import { Runner } from './runner.ts'
import { Scheduler } from './scheduler.ts'
import { Sweeper } from './sweeper.ts'

type Scopes = AsyncIterable<TenantScope> | Iterable<TenantScope>

export class Maintenance {
  readonly runner: Runner
  readonly sweeper: Sweeper
  readonly scheduler: Scheduler
  readonly retention: Retention

  constructor(
    ctx: EngineContext,
    parts: {
      registry: Registry
      connections: Connections
      seal: (options: { maxRowsPerBlock?: number }, scopes: Scopes) => Promise<SealReport>
      budgetPass: (scopes: Scopes) => ReturnType<typeof budgetPasses>
    },
  ) {
    this.runner = new Runner(ctx)
    this.sweeper = new Sweeper(ctx, this.runner, parts.seal, parts.budgetPass)
    this.scheduler = new Scheduler(ctx, this.runner, parts.registry)
    this.retention = new Retention(ctx, this.runner, parts.connections)
  }

  /** Stops every pass's timer and cron (see Runner.stop). */
  stop(): Promise<void> {
    return this.runner.stop()
  }
}
