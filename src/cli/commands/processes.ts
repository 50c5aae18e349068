// The long-running processes and their preparation: `migrate` (the release phase), `worker` and
// `web` (the Procfile's processes). Each imports what it uses when it runs, so a worker never loads
// the HTTP server or migrations (test/cli/lean.test.ts).
import cluster from 'node:cluster'
import type { Command } from 'commander'
import type { Logger } from 'pino'
import { port, positiveInt, tenantId } from '../arguments.ts'
import { loadRegistry, runUntilSignal, startEngine } from '../shared.ts'

export function register(program: Command): void {
  program
    .command('migrate')
    .description(
      "apply the database migrations (idempotent; safe from several processes at once), then every tenant database's (database-per-tenant); exit code 1 when a tenant database has a problem: unreachable, missing, on an unknown server, ahead of this build, another tenant's, or its migration failed",
    )
    .option('--check', 'change nothing: report pending migrations and drift; exit code 1 when there is any')
    .option('--batch-size <n>', 'tenant databases read from the directory per page (default 50)', (v) =>
      positiveInt(v),
    )
    .option('--concurrency <n>', 'tenant databases migrated at once (default 4)', (v) => positiveInt(v))
    .option('--from <tenant>', 'start after this tenant id (resumes an interrupted run)', (v) => tenantId(v))
    .action(async (opts: { check?: boolean; batchSize?: number; concurrency?: number; from?: string }) => {
      const [
        { loadConfig },
        { provisionDatabase },
        { Servers },
        { migrate },
        { databaseMigrationState, describePending, isPending },
        { describeTenantDatabases, migrateTenantDatabases },
      ] = await Promise.all([
        import('../../config.ts'),
        import('../../db/provision.ts'),
        import('../../db/placement.ts'),
        import('../../db/migrate.ts'),
        import('../../db/migration-state.ts'),
        import('../../db/migrate-tenant-databases.ts'),
      ])
      const config = loadConfig()
      const db = await provisionDatabase()
      try {
        // As the owner: MIGRATION_DATABASE_URL when the run-time DATABASE_URL is a lesser role.
        const owner = config.migrationDatabaseUrl ?? db.url
        const onStep = (m: string) => process.stderr.write(`migrate: ${m}\n`)
        let drift = false
        if (opts.check) {
          const state = await databaseMigrationState(owner)
          drift = isPending(state.pending) || state.ahead.length > 0
          const line =
            state.ahead.length > 0 ? `ahead: ${state.ahead.join('; ')}` : describePending(state.pending)
          process.stdout.write(`control database: ${line}\n`)
        } else await migrate(owner, { onStep })
        // Any isolation mode: a deployment that switched modes still has its tenant databases.
        const servers = new Servers({
          configured: config.tenantServers,
          controlOwnerUrl: owner,
          controlRuntimeUrl: db.url,
          role: config.databaseRole,
        })
        const report = await migrateTenantDatabases(owner, servers, {
          onStep,
          ...(opts.check ? { check: true } : {}),
          ...(opts.batchSize ? { batchSize: opts.batchSize } : {}),
          ...(opts.concurrency ? { concurrency: opts.concurrency } : {}),
          ...(opts.from ? { from: opts.from } : {}),
        })
        if (report.examined + report.provisioning.length > 0) {
          for (const line of describeTenantDatabases(report, opts.check)) process.stdout.write(`${line}\n`)
        }
        if (report.problems.length > 0 || (opts.check && (drift || report.pending.length > 0))) {
          process.exitCode = 1
        }
      } finally {
        await db.stop()
      }
    })

  program
    .command('worker')
    .description(
      'run a worker process: fetch jobs, run agents, complete tasks, sweep stale tasks, consolidate enterprise runs',
    )
    .option(
      '--registry <module>',
      'a module exporting agents and workflows, instead of equilateral.config.ts (default: that file, else the examples in workers/)',
    )
    .option('--concurrency <n>', 'agents run at once (default WORKER_CONCURRENCY or 16)', (v) =>
      positiveInt(v),
    )
    .action(async (opts: { registry?: string; concurrency?: number }) => {
      const [
        { loadConfig },
        { createLogger },
        { provisionDatabase },
        { Engine },
        { startWatchdog },
        { EnterpriseOrchestrator },
        { startMetricsServer },
      ] = await Promise.all([
        import('../../config.ts'),
        import('../../log.ts'),
        import('../../db/provision.ts'),
        import('../../engine.ts'),
        import('../../watchdog.ts'),
        import('../../enterprise.ts'),
        import('../../metrics-server.ts'),
      ])
      const config = loadConfig()
      const log = createLogger(config.logLevel)
      const db = await provisionDatabase({ log: (line) => log.info(line) })
      const { schedules, ...registry } = await loadRegistry(opts.registry)
      const engine = await startEngine(new Engine({ connectionString: db.url, ...registry, log }), log)
      await (await import('../config.ts')).applySchedules(engine, schedules, log)
      // An agent that blocks the event loop would freeze this process for good; exit instead.
      const watchdog = config.watchdogMs > 0 ? startWatchdog(config.watchdogMs) : undefined
      await engine.startWorker(opts.concurrency ? { concurrency: opts.concurrency } : {})
      await engine.startSweeper()
      await engine.startScheduler()
      await engine.startRetention()
      const enterprise = new EnterpriseOrchestrator(engine)
      await enterprise.work()
      const metrics =
        config.metricsPort > 0
          ? await startMetricsServer(engine.metrics, { port: config.metricsPort, log })
          : undefined
      if (metrics) log.info({ port: metrics.port }, 'worker: metrics on /metrics')
      await runUntilSignal(log, async () => {
        await metrics?.close()
        await enterprise.stop()
        await engine.close()
        await watchdog?.stop()
        await db.stop()
      })
    })

  program
    .command('web')
    .description(
      'serve the HTTP API on PORT (WEB_CONCURRENCY processes share it); run `migrate` first (the release phase)',
    )
    .option(
      '--registry <module>',
      'a module exporting agents and workflows, instead of equilateral.config.ts (default: that file, else the examples in workers/)',
    )
    .option('--port <n>', 'port (default PORT or 3000)', (v) => port(v))
    .action(async (opts: { registry?: string; port?: number }) => {
      const [{ loadConfig }, { createLogger }] = await Promise.all([
        import('../../config.ts'),
        import('../../log.ts'),
      ])
      const config = loadConfig()
      const log = createLogger(config.logLevel)
      if (config.webConcurrency > 1 && cluster.isPrimary) {
        await superviseWebProcesses(config.webConcurrency, log)
        return
      }
      const [{ provisionDatabase }, { Engine }, { startWeb }] = await Promise.all([
        import('../../db/provision.ts'),
        import('../../engine.ts'),
        import('../../web/server.ts'),
      ])
      const db = await provisionDatabase({ log: (line) => log.info(line) })
      const { agents, workflows } = await loadRegistry(opts.registry)
      // supervise: false: pg-boss maintenance and cron belong to workers, not to the web tier.
      const engine = await startEngine(
        new Engine({ connectionString: db.url, agents, workflows, log, supervise: false }),
        log,
      )
      const server = await startWeb(engine, opts.port === undefined ? {} : { port: opts.port })
      log.info({ url: server.url, admin: config.adminToken ? 'enabled' : 'disabled' }, 'web: listening')
      await runUntilSignal(log, async () => {
        await server.close()
        await engine.close()
        await db.stop()
      })
    })
}

/**
 * WEB_CONCURRENCY > 1: this process forks that many web processes sharing the port (node:cluster),
 * restarts one that dies (at most once a second), and passes SIGTERM/SIGINT on at shutdown.
 */
async function superviseWebProcesses(count: number, log: Logger): Promise<void> {
  let stopping = false
  const fork = () => cluster.fork()
  for (let i = 0; i < count; i++) fork()
  cluster.on('exit', (child, code, signal) => {
    if (stopping) return
    log.error({ pid: child.process.pid, code, signal }, 'web process died; starting another')
    setTimeout(fork, 1000)
  })
  log.info({ processes: count }, 'web: supervising')
  await runUntilSignal(log, async () => {
    stopping = true
    const children = Object.values(cluster.workers ?? {}).filter((w) => w !== undefined)
    await Promise.all(
      children.map(
        (w) =>
          new Promise<void>((resolve) => {
            w.once('exit', () => resolve())
            w.process.kill('SIGTERM')
          }),
      ),
    )
  })
}
