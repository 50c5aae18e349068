// `equilateral workflow retry|replay` and `equilateral dead-letters list|redrive`: operating
// workflows after the fact (src/flow/retry.ts, replay.ts, dead-letters.ts), through the same tenant
// handle calls as the HTTP routes. The retry and replay commands join the `workflow` group
// (./workflows.ts, registered before this one).
import { type Command, InvalidArgumentError } from 'commander'
import { requireUuid } from '../../core/ids.ts'
import { InvalidInputError } from '../../errors.ts'
import { tenantId } from '../arguments.ts'
import { print, withEngine } from '../shared.ts'

interface OperatorOptions {
  tenant: string
  actor: string
  requestKey?: string
}

const operator = (opts: OperatorOptions) => ({
  actor: opts.actor,
  ...(opts.requestKey !== undefined ? { requestKey: opts.requestKey } : {}),
})

export function register(program: Command): void {
  const workflow =
    program.commands.find((c) => c.name() === 'workflow') ??
    program.command('workflow').description('start and follow workflows')
  workflow
    .command('retry')
    .argument('<id>', 'workflow id (UUID)')
    .description(
      'run a failed or cancelled workflow again from where it stopped: its tasks that did not complete get new attempts, completed ones keep their results (POST /v1/workflows/{id}/retry)',
    )
    .requiredOption('--tenant <id>', 'tenant id', tenantId)
    .option('--actor <name>', 'who asks (recorded in the audit trail)', 'cli')
    .option('--request-key <key>', 'the same key again answers the first result and retries nothing')
    .action(async (raw: string, opts: OperatorOptions) => {
      const id = requireUuid(raw, 'workflow id')
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(opts.tenant)).retryWorkflow(id, operator(opts))),
      )
    })
  workflow
    .command('replay')
    .argument('<id>', 'workflow id (UUID)')
    .description(
      "start a new workflow of the same type and version that runs task --from and everything downstream of it again, reusing the other tasks' results (POST /v1/workflows/{id}/replay)",
    )
    .requiredOption('--tenant <id>', 'tenant id', tenantId)
    .requiredOption('--from <task>', 'the key of the task to run again')
    .option('--actor <name>', 'who asks (recorded in the audit trail)', 'cli')
    .option('--request-key <key>', 'the same key again answers the same new workflow')
    .action(async (raw: string, opts: OperatorOptions & { from: string }) => {
      const id = requireUuid(raw, 'workflow id')
      await withEngine(undefined, async (engine) =>
        print(
          await (await engine.tenant(opts.tenant)).replayWorkflow(id, { from: opts.from, ...operator(opts) }),
        ),
      )
    })

  const deadLetters = program
    .command('dead-letters')
    .description("a tenant's dead letters: tasks that failed for good")
  deadLetters
    .command('list')
    .description("list a tenant's dead letters, newest first, a page at a time (GET /v1/dead-letters)")
    .requiredOption('--tenant <id>', 'tenant id', tenantId)
    .option('--agent <id>', "only this agent's")
    .option('--limit <n>', 'dead letters per page, 1 to 200 (default 50)', limitArg)
    .option('--cursor <cursor>', 'the next page: the nextCursor the previous one printed')
    .action(async (opts: { tenant: string; agent?: string; limit?: number; cursor?: string }) => {
      const { tenant, ...filter } = opts
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(tenant)).deadLetters(filter)),
      )
    })
  deadLetters
    .command('redrive')
    .description(
      "run one dead letter (--task) or all of an agent's (--agent, up to 200 a call) again, once each: their workflows are retried (POST /v1/dead-letters/redrive)",
    )
    .requiredOption('--tenant <id>', 'tenant id', tenantId)
    .option('--task <id>', 'the dead letter (task id)')
    .option('--agent <id>', 'the agent whose dead letters to redrive')
    .option('--actor <name>', 'who asks (recorded in the audit trail)', 'cli')
    .option('--request-key <key>', 'the same key again answers the first result and redrives nothing')
    .action(async (opts: OperatorOptions & { task?: string; agent?: string }) => {
      if ((opts.task === undefined) === (opts.agent === undefined))
        throw new InvalidInputError('give exactly one of --task <id> and --agent <id>')
      const selection =
        opts.task !== undefined
          ? { taskId: requireUuid(opts.task, 'task id') }
          : { agent: opts.agent as string }
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(opts.tenant)).redrive(selection, operator(opts))),
      )
    })
}

function limitArg(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 200)
    throw new InvalidArgumentError('must be an integer from 1 to 200')
  return n
}
