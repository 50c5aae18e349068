// The `equilateral` command. Every command resolves its database the same way: DATABASE_URL, or
// the project's embedded PostgreSQL (started if it is not running, reused if `npm start` runs it).
// Each command imports what it uses when it runs (`await import(...)` in its action): `--help` and
// `--version` load nothing but commander, and a worker never loads the HTTP server or migrations.
import cluster from 'node:cluster'
import module from 'node:module'
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { Command, InvalidArgumentError } from 'commander'
import type { Logger } from 'pino'
import type { ComplianceProfile } from '../compliance/profile.ts'
import type { Json } from '../core/json.ts'
import { assertTenantId, requireUuid } from '../core/ids.ts'
import type { Engine, WorkflowFilter } from '../engine.ts'
import { InvalidInputError } from '../errors.ts'
import { packagePath } from '../paths.ts'
import { EXIT_USAGE, reportError } from './errors.ts'
import { registerOpsCommands } from './ops.ts'
import { outputMode, render, withoutInternalAgents } from './output.ts'

/**
 * The project's agents, workflows and schedules: `--registry` when given, else the modules the
 * configuration file names (equilateral.config.ts), else the examples (see ./config.ts).
 */
async function loadRegistry(specifier: string | undefined) {
  const { loadProjectRegistry } = await import('./config.ts')
  const { agents, workflows, schedules } = await loadProjectRegistry({ registry: specifier })
  return { agents, workflows, schedules }
}

/**
 * Waits for SIGINT/SIGTERM, then runs `stop` (a second signal: exit at once). `quiet` (dev on a
 * terminal's Ctrl-C): only warnings and errors are logged while stopping, and `quiet` is the one
 * line printed once everything stopped.
 */
async function runUntilSignal(log: Logger, stop: () => Promise<void>, quiet?: string): Promise<void> {
  await new Promise<void>((resolve) => {
    let stopping = false
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal }, 'second signal: exiting now')
        process.exit(1)
      }
      stopping = true
      if (quiet === undefined) log.info({ signal }, 'shutting down')
      else if (log.levelVal < 40) log.level = 'warn'
      stop().then(resolve, (error: unknown) => {
        log.error({ err: error }, 'shutdown failed')
        resolve()
      })
    }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    // The compile cache (bin/equilateral.js) is written at exit, which a SIGKILLed or crashed process
    // never reaches: written now that the command has loaded everything, the next start is warm.
    // After the handlers: writing it takes a while the first time, and a Ctrl-C then must not kill.
    module.flushCompileCache?.()
  })
  if (quiet !== undefined) process.stderr.write(`${quiet}\n`)
}

/**
 * Starts the engine of a long-running process (worker, web). While the database cannot be reached
 * (refused, starting up, shutting down) it logs a warning and tries again, waiting 1 s, then twice as
 * long each time, up to 30 s, instead of exiting: a platform restarting a crashed process backs off
 * too, often for longer, so the process would come back later than the database. Other failures
 * (a wrong password, no such database) end the command at once with their one-line error.
 */
async function startEngine(engine: Engine, log: Logger): Promise<Engine> {
  const { isTransient } = await import('../flow/completer.ts')
  for (let attempt = 1; ; attempt++) {
    try {
      return await engine.start()
    } catch (error) {
      if (!isTransient(error)) throw error
      const code = (error as { code?: string }).code
      const retryInMs = Math.min(30_000, 500 * 2 ** attempt)
      log.warn(
        { err: { message: (error as Error).message || code, code }, attempt, retryInMs },
        'database unavailable at start; waiting for it',
      )
      await new Promise((r) => setTimeout(r, retryInMs))
    }
  }
}

/**
 * Runs a one-shot command on an engine, and closes the engine and the database whatever happens:
 * a failure anywhere (loading the registry, connecting, the command itself) reaches the caller as it
 * was thrown, for `reportError` to print.
 */
async function withEngine<T>(
  registryPath: string | undefined,
  fn: (engine: Engine) => Promise<T>,
): Promise<T> {
  const [{ loadConfig }, { provisionDatabase }, { Engine }, { pino }] = await Promise.all([
    import('../config.ts'),
    import('../db/provision.ts'),
    import('../engine.ts'),
    import('pino'),
  ])
  const config = loadConfig()
  const db = await provisionDatabase({ log: () => {} })
  let engine: Engine | undefined
  try {
    const { agents, workflows } = await loadRegistry(registryPath)
    engine = new Engine({
      connectionString: db.url,
      agents,
      workflows,
      // To stderr: stdout carries the command's output.
      log: pino({ level: config.logLevel === 'info' ? 'warn' : config.logLevel }, pino.destination(2)),
      supervise: false,
      // Plain payloads, a role that bypasses RLS: said by web and worker, not by every command.
      setupWarnings: false,
    })
    await engine.start()
    return await fn(engine)
  } finally {
    await engine?.close()
    await db.stop()
  }
}

/** A command's result on stdout: tables and key/value lines on a terminal, JSON otherwise (output.ts). */
function print(value: unknown): void {
  const tty = process.stdout.isTTY === true
  process.stdout.write(
    render(value, outputMode(program.opts(), tty), { columns: tty ? process.stdout.columns : undefined }),
  )
}

/** A document to keep or feed to another program (a checkpoint, the OpenAPI document): JSON always. */
function printDocument(value: unknown): void {
  process.stdout.write(render(value, 'json'))
}

/** JSON given inline or as @file; `what` names it in errors (`--input`). */
async function parseJsonArgument(raw: string, what: string): Promise<unknown> {
  let text = raw
  if (raw.startsWith('@')) {
    try {
      text = await readFile(raw.slice(1), 'utf8')
    } catch (error) {
      throw new InvalidInputError(`${what}: cannot read ${raw.slice(1)}: ${(error as Error).message}`)
    }
  }
  try {
    return JSON.parse(text)
  } catch (error) {
    throw new InvalidInputError(`${what} is not valid JSON: ${(error as Error).message}`)
  }
}

async function parseInput(raw: string | undefined): Promise<unknown> {
  return raw === undefined ? null : parseJsonArgument(raw, '--input')
}

/** A compliance profile given as JSON or @file.json (validated by the engine). */
async function parseProfile(raw: string): Promise<ComplianceProfile> {
  return (await parseJsonArgument(raw, 'compliance profile')) as ComplianceProfile
}

// Commander's own errors (unknown command or option, missing argument) go through outputError, as one
// `equilateral: ...` line and a hint; exitOverride turns its process.exit into a thrown CommanderError
// that the catch at the bottom maps to an exit code. Both are inherited by every command below.
let commanderPrinted = false
const program = new Command()
  .name('equilateral')
  .description('Durable, multi-tenant, database-orchestrated agent workflows on PostgreSQL')
  .configureOutput({
    outputError: (text, write) => {
      commanderPrinted = true
      write(text.replace(/^error: /, 'equilateral: '))
    },
  })
  .showHelpAfterError('(add --help for usage)')
  .exitOverride()
  .version(
    (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version,
    '-V, --version',
    'print the version',
  )
  .option('--json', 'print results as JSON (the default when stdout is not a terminal)')
  .option('--human', 'print results as tables and key/value lines (the default on a terminal)')

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
      {
        databaseMigrationState,
        describePending,
        describeTenantDatabases,
        isPending,
        migrate,
        migrateTenantDatabases,
      },
    ] = await Promise.all([
      import('../config.ts'),
      import('../db/provision.ts'),
      import('../db/placement.ts'),
      import('../db/migrate.ts'),
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
  .option('--concurrency <n>', 'agents run at once (default WORKER_CONCURRENCY or 16)', (v) => positiveInt(v))
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
      import('../config.ts'),
      import('../log.ts'),
      import('../db/provision.ts'),
      import('../engine.ts'),
      import('../watchdog.ts'),
      import('../enterprise.ts'),
      import('../metrics-server.ts'),
    ])
    const config = loadConfig()
    const log = createLogger(config.logLevel)
    const db = await provisionDatabase({ log: (line) => log.info(line) })
    const { schedules, ...registry } = await loadRegistry(opts.registry)
    const engine = await startEngine(new Engine({ connectionString: db.url, ...registry, log }), log)
    await (await import('./config.ts')).applySchedules(engine, schedules, log)
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
      import('../config.ts'),
      import('../log.ts'),
    ])
    const config = loadConfig()
    const log = createLogger(config.logLevel)
    if (config.webConcurrency > 1 && cluster.isPrimary) {
      await superviseWebProcesses(config.webConcurrency, log)
      return
    }
    const [{ provisionDatabase }, { Engine }, { startWeb }] = await Promise.all([
      import('../db/provision.ts'),
      import('../engine.ts'),
      import('../web/server.ts'),
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
      import('../config.ts'),
      import('../log.ts'),
      import('../db/provision.ts'),
      import('../db/migrate.ts'),
      import('../engine.ts'),
      import('../enterprise.ts'),
      import('../web/server.ts'),
      import('./dev.ts'),
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
      await (await import('./config.ts')).applySchedules(engine, schedules, log)

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
    const { init, describeInit } = await import('./init.ts')
    const result = await init({ dir, package: opts.package, force: !!opts.force })
    process.stdout.write(describeInit(result))
  })

const tenant = program
  .command('tenant')
  .description('manage tenants (uses MIGRATION_DATABASE_URL, the owner, when set)')
tenant
  .command('create')
  .argument('<id>', 'tenant id (letters, digits, _ and -)')
  .description(
    'create a tenant and print its API key (shown once); TENANT_ISOLATION_MODE decides where its tables go',
  )
  .option('--name <name>', 'display name')
  .option('--tier <tier>', 'fairness tier (see TENANT_CONCURRENCY_TIERS)', 'standard')
  .option(
    '--compliance <json>',
    'compliance profile as JSON or @file, e.g. \'{"GDPR":{"retentionDays":30},"dataRetentionDays":90}\'',
  )
  .option(
    '--server <name>',
    'database-per-tenant: the TENANT_SERVERS server for its database (default: the one with the fewest tenants); run again to finish an interrupted creation',
  )
  .action(async (id: string, opts: { name?: string; tier: string; compliance?: string; server?: string }) => {
    const complianceProfile = opts.compliance ? await parseProfile(opts.compliance) : undefined
    await withEngine(undefined, async (engine) => {
      print(
        await engine.createTenant({
          id,
          tier: opts.tier,
          ...(opts.server ? { server: opts.server } : {}),
          ...(opts.name ? { name: opts.name } : {}),
          ...(complianceProfile ? { complianceProfile } : {}),
        }),
      )
    })
  })
tenant
  .command('list')
  .description('list tenants with their status, tier, schema or database')
  .action(async () => {
    await withEngine(undefined, async (engine) => print(await engine.listTenants()))
  })
tenant
  .command('suspend')
  .argument('<id>', 'tenant id')
  .description("refuse the tenant's key and handles; its queued work waits until it is resumed")
  .action(async (id: string) => {
    await withEngine(undefined, async (engine) => {
      await engine.suspendTenant(id)
      print({ id, status: 'suspended' })
    })
  })
tenant
  .command('resume')
  .argument('<id>', 'tenant id')
  .description('re-activate a suspended tenant')
  .action(async (id: string) => {
    await withEngine(undefined, async (engine) => {
      await engine.resumeTenant(id)
      print({ id, status: 'active' })
    })
  })
tenant
  .command('rotate-key')
  .argument('<id>', 'tenant id')
  .description('issue a new API key (printed once); the old one stops working at once')
  .action(async (id: string) => {
    await withEngine(undefined, async (engine) => print({ id, apiKey: await engine.rotateApiKey(id) }))
  })
tenant
  .command('compliance')
  .argument('<id>', 'tenant id')
  .argument('<profile>', 'the compliance profile as JSON, or @file.json')
  .description(
    "replace the tenant's compliance profile (JSON or @file): regimes GDPR, SOX, HIPAA with retentionDays, dataRetentionDays, auditRetentionDays",
  )
  .action(async (id: string, raw: string) => {
    const profile = await parseProfile(raw)
    await withEngine(undefined, async (engine) =>
      print({ id, complianceProfile: await engine.setComplianceProfile(id, profile) }),
    )
  })
tenant
  .command('move')
  .argument('<id>', 'tenant id')
  .description(
    "database-per-tenant: check that a copy of a suspended, drained tenant's database holds everything, then switch the tenant to it (docs/moving-tenants.md); exit code 2 when refused",
  )
  .requiredOption(
    '--to <server[/database]>',
    'the copy: a TENANT_SERVERS name, and the database on it (default: the name the database has now)',
  )
  .option(
    '--check',
    'switch nothing: print the drain status and every difference; exit code 2 when not ready',
  )
  .option('--force', 'move although tasks are still marked running (only when their worker is gone for good)')
  .action(async (id: string, opts: { to: string; check?: boolean; force?: boolean }) => {
    const { parseMoveTarget } = await import('../placement/move.ts')
    const to = parseMoveTarget(opts.to)
    await withEngine(undefined, async (engine) => {
      const report = await engine.moveTenant(id, to, { force: !!opts.force, check: !!opts.check })
      print(report)
      for (const line of report.problems) process.stderr.write(`not ready: ${line}\n`)
      for (const line of report.next) process.stderr.write(`next: ${line}\n`)
      if (report.problems.length > 0) process.exitCode = EXIT_USAGE
    })
  })

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
    const { watchWorkflow } = await import('./watch.ts')
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
    await withEngine(undefined, async (engine) => print(await (await engine.tenant(opts.tenant)).history(id)))
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

registerOpsCommands(program, { withEngine, print })

const audit = program.command('audit').description('the tamper-evident audit trail')
audit
  .command('seal')
  .description("seal every active tenant's new audit rows into its hash chain (the sweeper does this too)")
  .action(async () => {
    await withEngine(undefined, async (engine) => print(await engine.sealAudit()))
  })
audit
  .command('checkpoint')
  .description(
    "print every active tenant's audit chain head, signed, as JSON: keep it outside the database for `audit verify --against`",
  )
  .action(async () => {
    await withEngine(undefined, async (engine) => printDocument(await engine.auditCheckpoint()))
  })
audit
  .command('verify')
  .description(
    'recompute the audit hash chain and name every row or block altered, deleted, inserted out of band, redacted without a record or purged out of order or early',
  )
  .option('--tenant <id>', 'one tenant (default: every active tenant)')
  .option(
    '--against <file>',
    'a checkpoint `audit checkpoint` printed earlier: each tenant head in it must still have its hash',
  )
  .action(async (opts: { tenant?: string; against?: string }) => {
    await withEngine(undefined, async (engine) => {
      const { readCheckpoint } = await import('../audit/checkpoint.ts')
      const against =
        opts.against === undefined
          ? undefined
          : readCheckpoint(engine.keyRing, await readFile(opts.against, 'utf8'))
      const reports = await engine.verifyAudit(opts.tenant, against ? { against } : {})
      for (const r of reports) {
        const lines = r.ok
          ? [
              `ok        ${r.tenantId}: ${r.rows} rows in ${r.blocks} blocks (${r.redacted} redacted, ${r.purgedBlocks} blocks purged, ${r.unsealed} not sealed yet)`,
            ]
          : r.problems.map((p) => `TAMPERED  ${r.tenantId}: ${p.message} [${p.kind}, block ${p.blockNo}]`)
        process.stdout.write(lines.map((l) => `${l}\n`).join(''))
      }
      if (reports.some((r) => !r.ok)) process.exitCode = 1
    })
  })

const retention = program
  .command('retention')
  .description(
    'retention of coordination data, audit rows and compliance events (MAINTENANCE_DATABASE_URL, else the owner)',
  )
retention
  .command('purge')
  .description(
    "purge, for every tenant, what is past its compliance profile's retention, in bounded batches, recording a purge compliance event",
  )
  .option('--batch-size <n>', 'rows or sealed blocks per statement (default 500)', (v) => positiveInt(v))
  .option('--max-batches <n>', 'batches per tenant in this run (default 100)', (v) => positiveInt(v))
  .action(async (opts: { batchSize?: number; maxBatches?: number }) => {
    await withEngine(undefined, async (engine) =>
      print(
        await engine.purgeExpired({
          ...(opts.batchSize ? { batchSize: opts.batchSize } : {}),
          ...(opts.maxBatches ? { maxBatches: opts.maxBatches } : {}),
        }),
      ),
    )
  })

program
  .command('erase')
  .description(
    "GDPR erasure: cancel, then erase the personal data of a data subject's workflows (--subject) or of a whole tenant, keeping the audit chain verifiable; records a deletion compliance event (MAINTENANCE_DATABASE_URL, else the owner)",
  )
  .requiredOption('--tenant <id>', 'tenant id')
  .option('--subject <key>', 'the subject key the workflows were started with (default: the whole tenant)')
  .action(async (opts: { tenant: string; subject?: string }) => {
    await withEngine(undefined, async (engine) =>
      print(
        opts.subject !== undefined
          ? await engine.eraseSubject(opts.tenant, opts.subject)
          : await engine.eraseTenantData(opts.tenant),
      ),
    )
  })

program
  .command('openapi')
  .description('print the OpenAPI document of the HTTP API (openapi.json is this output)')
  .action(async () => {
    // The document comes from the route schemas; no database is contacted.
    const [{ Engine }, { buildApp }, { pino }] = await Promise.all([
      import('../engine.ts'),
      import('../web/app.ts'),
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

function port(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('must be a port number')
  return n
}

/** A duration: `30s`, `5m`, `500ms`, or seconds (`30`), as `?wait=` and timeout(1) read them. */
function duration(value: string, option: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(value.trim())
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match?.[2] ?? 's'] ?? 1000
  const ms = match ? Number(match[1]) * unit : NaN
  if (!(ms <= 2_147_483_647))
    throw new InvalidArgumentError(`${option} must be a duration like 30s, 5m or 500ms`)
  return ms
}

function isoTime(value: string, option: string): Date {
  const at = new Date(value)
  if (Number.isNaN(at.getTime())) throw new InvalidArgumentError(`${option} must be an ISO 8601 time`)
  return at
}

function tenantId(value: string): string {
  try {
    assertTenantId(value)
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message)
  }
  return value
}

function positiveInt(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer')
  return n
}

try {
  await program.parseAsync(process.argv)
} catch (error) {
  // Every command's failure ends here, also those thrown inside withEngine (after it closed the
  // engine and the database): one line and an exit code, see src/cli/errors.ts.
  const level = process.env.LOG_LEVEL
  process.exit(
    reportError(error, {
      write: (text) => process.stderr.write(text),
      alreadyPrinted: commanderPrinted,
      verbose: level === 'debug' || level === 'trace',
    }),
  )
}
