// Workflows from a shell: `workflow ...` (start, follow, cancel, list), `schedule list`, and the
// events and approvals that waiting tasks take (`event`, `approve`, `reject`).
import { randomUUID } from 'node:crypto'
import type { Command } from 'commander'
import type { Json } from '../../core/json.ts'
import { requireUuid } from '../../core/ids.ts'
import type { WorkflowFilter } from '../../engine.ts'
import { InvalidInputError } from '../../errors.ts'
import { duration, parseInput, parseJsonArgument, positiveInt } from '../arguments.ts'
import { print, withEngine } from '../shared.ts'

export function register(program: Command): void {
  const workflow = program.command('workflow').description('start and follow workflows')
  workflow
    .command('start')
    .argument('<type>', 'workflow type, e.g. deploy-feature (one the registry defines)')
    .description(
      'start a workflow for a tenant and print its id (with --wait: the finished workflow; exit code 1 when it failed or was cancelled, 124 when --timeout passed first, 130 when interrupted)',
    )
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--input <json>', 'workflow input as JSON, or @file.json')
    .option('--idempotency-key <key>', 'starting twice with the same key returns the first workflow')
    .option('--subject <key>', 'the data subject the workflow is about, for erasure (`erase --subject`)')
    .option('--wait', 'wait until the workflow ends and print it')
    .option(
      '--timeout <duration>',
      'with --wait: stop waiting after this long, e.g. 30s, 5m, 500ms (a bare number is seconds)',
      (v) => duration(v, '--timeout'),
    )
    .option('--registry <module>', 'module exporting `agents` and `workflows`')
    .action(
      async (
        type: string,
        opts: {
          tenant: string
          input?: string
          idempotencyKey?: string
          subject?: string
          wait?: boolean
          timeout?: number
          registry?: string
        },
      ) => {
        const input = await parseInput(opts.input)
        if (opts.timeout !== undefined && !opts.wait) throw new InvalidInputError('--timeout needs --wait')
        await withEngine(opts.registry, async (engine) => {
          if (!engine.workflowTypes.includes(type)) {
            throw new InvalidInputError(
              `unknown workflow type "${type}" (known: ${engine.workflowTypes.join(', ') || 'none'})`,
            )
          }
          const handle = await engine.tenant(opts.tenant)
          const started = await handle.startWorkflow(type, input as never, {
            ...(opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {}),
            ...(opts.subject ? { subjectKey: opts.subject } : {}),
          })
          if (!opts.wait) return print(started)
          // Woken by the workflow's end (handle.result), not by polling. Ctrl-C stops the wait only.
          const stop = new AbortController()
          const interrupt = () => stop.abort()
          process.once('SIGINT', interrupt)
          process.once('SIGTERM', interrupt)
          try {
            await started.result({
              signal: stop.signal,
              ...(opts.timeout !== undefined ? { timeoutMs: opts.timeout } : {}),
            })
          } catch (error) {
            const code = (error as { code?: unknown }).code
            if (
              !['workflow_failed', 'workflow_cancelled', 'result_timeout', 'result_aborted'].includes(
                code as string,
              )
            )
              throw error
          } finally {
            process.off('SIGINT', interrupt)
            process.off('SIGTERM', interrupt)
          }
          const wf = await handle.getWorkflow(started.id)
          print(wf)
          // Still running: 124 after --timeout (as timeout(1) exits), 130 when interrupted (as a shell says).
          process.exitCode =
            wf.status === 'completed' ? 0 : wf.status !== 'running' ? 1 : stop.signal.aborted ? 130 : 124
        })
      },
    )
  workflow
    .command('status')
    .argument('<id>', 'workflow id (UUID)')
    .description("print a workflow's status and tasks")
    .requiredOption('--tenant <id>', 'tenant id')
    .action(async (raw: string, opts: { tenant: string }) => {
      const id = requireUuid(raw, 'workflow id') // before connecting: a typo fails at once
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(opts.tenant)).getWorkflow(id)),
      )
    })
  workflow
    .command('watch')
    .argument('<id>', 'workflow id (UUID)')
    .description(
      "follow a workflow's tasks until it ends (a live task list on a terminal, one line per change otherwise); exit code 0 when it completed, 1 when it failed or was cancelled",
    )
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--interval <ms>', 'how often to poll, in milliseconds (default 250)', (v) => positiveInt(v))
    .action(async (raw: string, opts: { tenant: string; interval?: number }) => {
      const id = requireUuid(raw, 'workflow id')
      const { watchWorkflow } = await import('../watch.ts')
      const stop = new AbortController()
      const interrupt = () => stop.abort()
      process.once('SIGINT', interrupt)
      process.once('SIGTERM', interrupt)
      try {
        const last = await withEngine(undefined, async (engine) => {
          const handle = await engine.tenant(opts.tenant)
          const tty = process.stdout.isTTY === true
          return watchWorkflow(() => handle.getWorkflow(id), {
            out: process.stdout,
            tty,
            color: tty && !process.env.NO_COLOR && process.env.TERM !== 'dumb',
            columns: () => process.stdout.columns,
            rows: () => process.stdout.rows,
            intervalMs: opts.interval ?? 250,
            signal: stop.signal,
          })
        })
        // Interrupted: 130, as a shell reports a process ended by Ctrl-C.
        process.exitCode = last.status === 'completed' ? 0 : last.status === 'running' ? 130 : 1
      } finally {
        process.off('SIGINT', interrupt)
        process.off('SIGTERM', interrupt)
      }
    })
  workflow
    .command('history')
    .argument('<id>', 'workflow id (UUID)')
    .description("print a workflow's audit trail in order")
    .requiredOption('--tenant <id>', 'tenant id')
    .action(async (raw: string, opts: { tenant: string }) => {
      const id = requireUuid(raw, 'workflow id')
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(opts.tenant)).history(id)),
      )
    })
  workflow
    .command('cancel')
    .argument('<id>', 'workflow id (UUID)')
    .description('cancel a running workflow: queued work is dropped, running agents are aborted')
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--reason <text>', 'why (recorded in the audit trail)', 'cancelled from the command line')
    .action(async (raw: string, opts: { tenant: string; reason: string }) => {
      const id = requireUuid(raw, 'workflow id')
      await withEngine(undefined, async (engine) =>
        print(
          await (await engine.tenant(opts.tenant)).cancelWorkflow(id, { reason: opts.reason, actor: 'cli' }),
        ),
      )
    })

  workflow
    .command('list')
    .description("list a tenant's workflows, newest first, a page at a time (GET /v1/workflows)")
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--status <status>', 'only these: running, completed, failed or cancelled')
    .option('--type <type>', 'only this workflow type')
    .option('--limit <n>', 'workflows per page, 1 to 200 (default 50)', (v) => positiveInt(v))
    .option('--cursor <cursor>', 'the next page: the nextCursor the previous one printed')
    .action(
      async (opts: { tenant: string; status?: string; type?: string; limit?: number; cursor?: string }) => {
        const { tenant: id, ...filter } = opts
        await withEngine(undefined, async (engine) =>
          print(await (await engine.tenant(id)).listWorkflows(filter as WorkflowFilter)),
        )
      },
    )

  program
    .command('schedule')
    .description(
      'cron schedules that start workflows (created with TenantHandle.putSchedule, see docs/waits-and-schedules.md)',
    )
    .command('list')
    .description("list a tenant's cron schedules with their last and next slots")
    .requiredOption('--tenant <id>', 'tenant id')
    .action(async (opts: { tenant: string }) => {
      await withEngine(undefined, async (engine) =>
        print(await (await engine.tenant(opts.tenant)).listSchedules()),
      )
    })

  // Events and approvals: what `POST /v1/workflows/:id/events` and `/approvals/:name` do, from a shell.
  program
    .command('event')
    .argument('<workflow-id>', 'workflow id (UUID)')
    .argument('<name>', 'the event name the workflow waits for, e.g. scan.completed')
    .description(
      'deliver an external event to a workflow and print the result (status consumed, kept until its task waits, or duplicate); without --id a new event id is generated and printed (in the result, and on stderr): pass it as --id to resend the same event idempotently',
    )
    .requiredOption('--tenant <id>', 'tenant id')
    .option('--id <eventId>', 'the event id: delivering it again changes nothing (default: a new UUID)')
    .option('--key <key>', 'the match key, for waits declared with `match`')
    .option('--payload <json>', "the event's payload (the waiting task's result) as JSON, or @file.json")
    .option('--actor <who>', 'who delivers it, for the audit trail', 'cli')
    .action(
      async (
        raw: string,
        name: string,
        opts: { tenant: string; id?: string; key?: string; payload?: string; actor: string },
      ) => {
        const id = requireUuid(raw, 'workflow id')
        const payload = opts.payload === undefined ? null : await parseJsonArgument(opts.payload, '--payload')
        const eventId = opts.id ?? randomUUID()
        if (opts.id === undefined) process.stderr.write(`event id: ${eventId} (generated)\n`)
        await withEngine(undefined, async (engine) =>
          print(
            await (
              await engine.tenant(opts.tenant)
            ).sendEvent(id, {
              eventId,
              name,
              payload: payload as Json,
              actor: opts.actor,
              ...(opts.key !== undefined ? { key: opts.key } : {}),
            }),
          ),
        )
      },
    )
  for (const approved of [true, false]) {
    program
      .command(approved ? 'approve' : 'reject')
      .argument('<workflow-id>', 'workflow id (UUID)')
      .argument('<name>', "the approval's name (by default its task's key), e.g. release")
      .description(
        approved
          ? "approve a workflow's approval: its task completes and the workflow goes on; prints the result (status consumed, kept until the approval waits, or duplicate)"
          : "reject a workflow's approval: the workflow fails with the comment as the reason; prints the result (status consumed, kept until the approval waits, or duplicate)",
      )
      .requiredOption('--tenant <id>', 'tenant id')
      .requiredOption(
        '--approver <who>',
        'who decides (recorded in the audit trail; must be a named approver when the approval names them)',
      )
      .option(
        '--comment <text>',
        approved ? 'a comment, kept in the task result' : 'the reason, recorded in the failure',
      )
      .option('--id <eventId>', 'idempotency id (default <name>:<approver>:approved|rejected)')
      .action(
        async (
          raw: string,
          name: string,
          opts: { tenant: string; approver: string; comment?: string; id?: string },
        ) => {
          const id = requireUuid(raw, 'workflow id')
          await withEngine(undefined, async (engine) =>
            print(
              await (
                await engine.tenant(opts.tenant)
              ).decide(id, {
                name,
                approved,
                approver: opts.approver,
                ...(opts.comment !== undefined ? { comment: opts.comment } : {}),
                ...(opts.id !== undefined ? { eventId: opts.id } : {}),
              }),
            ),
          )
        },
      )
  }
}
