// Agent usage and budgets: `usage`, `budgets set|list|remove|pass` (docs/usage-and-budgets.md).
import { type Command, InvalidArgumentError } from 'commander'
import { requireUuid } from '../../core/ids.ts'
import type { BudgetPeriod } from '../../usage/budgets.ts'
import { isoTime, tenantId } from '../arguments.ts'
import { print, withEngine } from '../shared.ts'

export function register(program: Command): void {
  program
    .command('usage')
    .description(
      "a tenant's usage over a window, by dimension, agent and workflow type (what agents report through ctx.usage)",
    )
    .requiredOption('--tenant <id>', 'the tenant', tenantId)
    .option(
      '--from <time>',
      'window start, ISO 8601, inclusive (default: the start of the month, UTC)',
      (v) => isoTime(v, '--from'),
    )
    .option('--to <time>', 'window end, ISO 8601, exclusive (default: no end)', (v) => isoTime(v, '--to'))
    .option('--workflow <id>', 'one workflow only', (v) => uuidArg(v, '--workflow'))
    .action(async (opts: { tenant: string; from?: Date; to?: Date; workflow?: string }) => {
      await withEngine(undefined, async (engine) => {
        const tenant = await engine.tenant(opts.tenant)
        print(
          await tenant.usage({
            ...(opts.from ? { from: opts.from } : {}),
            ...(opts.to ? { to: opts.to } : {}),
            ...(opts.workflow ? { workflowId: opts.workflow } : {}),
          }),
        )
      })
    })

  const budgets = program.command('budgets').description("a tenant's usage budgets per dimension and period")
  budgets
    .command('set')
    .description('set (create or change) a budget; audited. Raising a hard budget releases held tasks')
    .requiredOption('--tenant <id>', 'the tenant', tenantId)
    .requiredOption('--dimension <name>', 'the usage dimension (e.g. tokens, costMicros)')
    .requiredOption('--period <period>', 'day or month (UTC)', periodArg)
    .requiredOption('--limit <n>', 'what the period may use (a non-negative integer)', nonNegativeInt)
    .option('--hard', "hard: the tenant's tasks wait once it is reached (default: soft, an alert)")
    .option('--actor <who>', 'who makes the change, for the audit trail (default: cli)')
    .action(
      async (opts: {
        tenant: string
        dimension: string
        period: BudgetPeriod
        limit: number
        hard?: boolean
        actor?: string
      }) => {
        await withEngine(undefined, async (engine) =>
          print(
            await engine.setBudget(
              opts.tenant,
              { dimension: opts.dimension, period: opts.period, limit: opts.limit, hard: opts.hard ?? false },
              { actor: opts.actor ?? 'cli' },
            ),
          ),
        )
      },
    )
  budgets
    .command('list')
    .description("a tenant's budgets, with what each period has used, and their audit trail")
    .requiredOption('--tenant <id>', 'the tenant', tenantId)
    .action(async (opts: { tenant: string }) => {
      await withEngine(undefined, async (engine) => {
        const tenant = await engine.tenant(opts.tenant)
        print({ budgets: await tenant.budgets(), audit: await tenant.budgetAudit() })
      })
    })
  budgets
    .command('remove')
    .description('remove a budget; audited. Held tasks are released if no hard budget is exhausted')
    .requiredOption('--tenant <id>', 'the tenant', tenantId)
    .requiredOption('--dimension <name>', 'the usage dimension')
    .requiredOption('--period <period>', 'day or month', periodArg)
    .option('--actor <who>', 'who makes the change, for the audit trail (default: cli)')
    .action(async (opts: { tenant: string; dimension: string; period: BudgetPeriod; actor?: string }) => {
      await withEngine(undefined, async (engine) =>
        print(
          await engine.deleteBudget(opts.tenant, opts.dimension, opts.period, { actor: opts.actor ?? 'cli' }),
        ),
      )
    })
  budgets
    .command('pass')
    .description(
      'run the budget pass once (it runs with the sweeper): roll ended periods, release held tasks',
    )
    .option('--clock <time>', 'judge periods by this time, ISO 8601 (default: the database clock)', (v) =>
      isoTime(v, '--clock'),
    )
    .action(async (opts: { clock?: Date }) => {
      await withEngine(undefined, async (engine) =>
        print(await engine.budgetPass(opts.clock ? { clock: opts.clock } : {})),
      )
    })
}

function uuidArg(value: string, option: string): string {
  try {
    requireUuid(value, option)
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message)
  }
  return value
}

function periodArg(value: string): BudgetPeriod {
  if (value !== 'day' && value !== 'month') throw new InvalidArgumentError('must be day or month')
  return value
}

function nonNegativeInt(value: string): number {
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError('must be a non-negative integer')
  return n
}
