// Operating a deployment: `openapi`, `stats`, `sweep`, `reencrypt`.
import type { Command } from 'commander'
import { isoTime, positiveInt } from '../arguments.ts'
import { withoutInternalAgents } from '../output.ts'
import { print, printDocument, withEngine } from '../shared.ts'

export function register(program: Command): void {
  program
    .command('openapi')
    .description('print the OpenAPI document of the HTTP API (openapi.json is this output)')
    .action(async () => {
      // The document comes from the route schemas; no database is contacted.
      const [{ Engine }, { buildApp }, { pino }] = await Promise.all([
        import('../../engine.ts'),
        import('../../web/app.ts'),
        import('pino'),
      ])
      const engine = new Engine({
        connectionString: 'postgres://localhost/unused',
        log: pino({ level: 'silent' }),
      })
      try {
        const app = await buildApp(engine)
        await app.ready()
        printDocument(app.swagger())
        await app.close()
      } finally {
        await engine.close()
      }
    })

  program
    .command('stats')
    .description(
      "workflow performance per type and agent performance per agent over a window: one tenant's, or every tenant's with totals",
    )
    .option('--tenant <id>', 'one tenant, with percentiles (default: every tenant, and all-tenant totals)')
    .option('--since <time>', 'window start, ISO 8601, inclusive (default: 24 hours before --until)', (v) =>
      isoTime(v, '--since'),
    )
    .option('--until <time>', 'window end, ISO 8601, exclusive (default: now)', (v) => isoTime(v, '--until'))
    .option('--all', "include the engine's own agents (@approval, @event: the waits)")
    .action(async (opts: { tenant?: string; since?: Date; until?: Date; all?: boolean }) => {
      const window = { since: opts.since, until: opts.until }
      await withEngine(undefined, async (engine) => {
        const report = opts.tenant
          ? await (await engine.tenant(opts.tenant)).stats(window)
          : await engine.stats(window)
        print(opts.all ? report : withoutInternalAgents(report))
      })
    })

  program
    .command('sweep')
    .description('run the stale-task sweeper once and print what it did')
    .action(async () => {
      await withEngine(undefined, async (engine) => print(await engine.sweep()))
    })

  program
    .command('reencrypt')
    .description(
      'rewrite stored inputs, task data and results that are plain or under another key under ENCRYPTION_ACTIVE_KEY (resumable)',
    )
    .option('--tenant <id>', 'one tenant (default: every tenant, suspended ones too)')
    .option('--batch <n>', 'rows per transaction (default 500)', (v) => positiveInt(v))
    .option(
      '--skip-unreadable',
      'go on past values that cannot be decrypted, leave them as they are and list them (`unreadable`, exit 1)',
    )
    .action(async (opts: { tenant?: string; batch?: number; skipUnreadable?: boolean }) => {
      await withEngine(undefined, async (engine) => {
        const report = await engine.reencrypt({
          ...(opts.tenant ? { tenant: opts.tenant } : {}),
          ...(opts.batch ? { batchSize: opts.batch } : {}),
          ...(opts.skipUnreadable ? { skipUnreadable: true } : {}),
          onTenant: (r) => process.stderr.write(`reencrypt: ${JSON.stringify(r)}\n`),
        })
        print(report)
        for (const u of report.unreadable) {
          process.stderr.write(
            `reencrypt: unreadable ${u.table} ${u.id} of tenant ${u.tenant} (${u.purpose}): ${u.code}\n`,
          )
        }
        if (report.unreadable.length > 0) process.exitCode = 1
      })
    })
}
