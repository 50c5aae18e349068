// A developer's project: `dev` (everything in one process, on an embedded PostgreSQL when there is
// no DATABASE_URL) and `init` (scaffold a project).
import path from 'node:path'
import type { Command } from 'commander'
import { port } from '../arguments.ts'
import { loadRegistry, runUntilSignal } from '../shared.ts'

export function register(program: Command): void {
  program
    .command('dev')
    .description(
      'development: migrations, the HTTP API on 127.0.0.1:PORT, a worker, the sweeper and retention in one process, on DATABASE_URL or an embedded PostgreSQL; prints a demo tenant key and curl lines',
    )
    .option(
      '--registry <module>',
      'a module exporting agents and workflows, instead of equilateral.config.ts (default: that file, else the examples in workers/)',
    )
    .option('--port <n>', 'port of the HTTP API (default PORT or 3000)', (v) => port(v))
    .action(async (opts: { registry?: string; port?: number }) => {
      const [
        { loadConfig },
        { createLogger },
        { dataRoot, describeUrl, provisionDatabase },
        { migrate },
        { createEngine },
        { EnterpriseOrchestrator },
        { startWeb },
        {
          DEV_STATE_FILE,
          demoApiKey,
          devBanner,
          generateAdminToken,
          displayPath,
          readDevState,
          shellQuote,
          writeDevState,
          projectBanner,
        },
      ] = await Promise.all([
        import('../../config.ts'),
        import('../../log.ts'),
        import('../../db/provision.ts'),
        import('../../db/migrate.ts'),
        import('../../engine.ts'),
        import('../../enterprise.ts'),
        import('../../web/server.ts'),
        import('../dev.ts'),
      ])
      const config = loadConfig()
      // Readable lines on a terminal (dev only); JSON when piped, as in production.
      const log = createLogger(config.logLevel, { pretty: process.stdout.isTTY })
      // Everything started so far, stopped in reverse order at shutdown or when a later step fails.
      const started: { name: string; stop: () => Promise<void> }[] = []
      const stopAll = async () => {
        for (const { name, stop } of started.reverse()) {
          await stop().catch((error: unknown) => log.error({ err: error }, `dev: stopping ${name} failed`))
        }
        started.length = 0
      }
      try {
        const db = await provisionDatabase({ log: (line) => log.info(line) })
        started.push({ name: 'the database', stop: db.stop })
        await migrate(config.migrationDatabaseUrl ?? db.url, { onStep: (m) => log.info(`migrate: ${m}`) })
        const { schedules, ...registry } = await loadRegistry(opts.registry)
        const engine = await createEngine({ connectionString: db.url, ...registry, log })
        started.push({ name: 'the engine', stop: () => engine.close() })

        // The demo tenant's key and the dev admin token outlive the process, beside the database.
        const stateFile = path.join(dataRoot(), DEV_STATE_FILE)
        const state = await readDevState(stateFile)
        const database = describeUrl(db.url)
        const demo = await demoApiKey(engine, state.apiKeys[database])
        // ADMIN_TOKEN wins; without it dev uses the token it generated on an earlier run, or a new one.
        const adminToken = config.adminToken ?? state.adminToken ?? generateAdminToken()
        const devToken = config.adminToken ? state.adminToken : adminToken
        const next = {
          ...(devToken ? { adminToken: devToken } : {}),
          apiKeys: { ...state.apiKeys, [database]: demo.apiKey },
        }
        if (JSON.stringify(next) !== JSON.stringify(state)) await writeDevState(stateFile, next)
        // After the demo tenant exists: the project's schedules may name it.
        await (await import('../config.ts')).applySchedules(engine, schedules, log)

        await engine.startWorker()
        await engine.startSweeper()
        await engine.startScheduler()
        await engine.startRetention()
        const enterprise = new EnterpriseOrchestrator(engine)
        await enterprise.work()
        started.push({ name: 'enterprise runs', stop: () => enterprise.stop() })
        // Loopback unless HOST says otherwise: the dev admin token must not be reachable from the network.
        const server = await startWeb(engine, {
          ...(process.env.HOST ? {} : { host: '127.0.0.1' }),
          ...(opts.port === undefined ? {} : { port: opts.port }),
          adminToken,
        }).catch((error: unknown) => {
          if ((error as { code?: string }).code !== 'EADDRINUSE') throw error
          throw Object.assign(new Error(`${(error as Error).message}: set PORT (or --port) to a free port`), {
            code: 'EADDRINUSE',
          })
        })
        started.push({ name: 'the web server', stop: () => server.close() })

        const dataDirSet = Boolean(process.env.EQUILATERAL_DATA_DIR?.trim())
        const lines = devBanner({
          url: server.url,
          database:
            db.source === 'env'
              ? `DATABASE_URL (${database})`
              : `embedded PostgreSQL at ${database} (data in ${displayPath(path.join(dataRoot(), 'postgres'))})`,
          apiKey: demo.apiKey,
          keyOrigin: demo.origin,
          suspended: demo.suspended,
          stateFile: displayPath(stateFile),
          adminToken: { value: adminToken, generated: !config.adminToken },
          envPrefix:
            dataDirSet && db.source === 'embedded' ? `EQUILATERAL_DATA_DIR=${shellQuote(dataRoot())} ` : '',
          databaseFromEnv: db.source === 'env',
          project: projectBanner(engine.workflowTypes),
        })
        // stderr, as every human-facing line of this command: stdout carries the JSON logs.
        process.stderr.write(lines.join('\n'))
      } catch (error) {
        await stopAll()
        throw error
      }
      await runUntilSignal(log, stopAll, 'equilateral dev: stopped.')
    })

  program
    .command('init')
    .argument('[dir]', 'the project folder (default: the working directory)', '.')
    .description(
      'scaffold a project: equilateral.config.ts, an agent, a workflow, a test with the test kit, package.json scripts and a Procfile; refuses to overwrite files without --force',
    )
    .option(
      '--package <spec>',
      'where npm installs equilateral-agents from: a tarball or a directory (default: the dependency package.json has, else this checkout)',
    )
    .option('--force', 'overwrite existing files and package.json scripts')
    .action(async (dir: string, opts: { package?: string; force?: boolean }) => {
      const { init, describeInit } = await import('../init.ts')
      const result = await init({ dir, package: opts.package, force: !!opts.force })
      process.stdout.write(describeInit(result))
    })
}
