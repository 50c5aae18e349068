// What the commands (./commands/*.ts) share: the project's registry, an engine for a one-shot
// command, the start and the signal handling of a long-running process, and printing results. Only
// types and the light modules of src/cli are imported here: the rest is imported when a command runs.
import module from 'node:module'
import type { Command } from 'commander'
import type { Logger } from 'pino'
import type { Engine } from '../engine.ts'
import { outputMode, render } from './output.ts'

/** The global options (--json, --human), read from the program when a result is printed. */
let rootOptions: () => { json?: boolean; human?: boolean } = () => ({})

/** Called once by main.ts with the program, whose global options `print` follows. */
export function useGlobalOptionsOf(program: Command): void {
  rootOptions = () => program.opts()
}

/**
 * The project's agents, workflows and schedules: `--registry` when given, else the modules the
 * configuration file names (equilateral.config.ts), else the examples (see ./config.ts).
 */
export async function loadRegistry(specifier: string | undefined) {
  const { loadProjectRegistry } = await import('./config.ts')
  const { agents, workflows, schedules } = await loadProjectRegistry({ registry: specifier })
  return { agents, workflows, schedules }
}

/**
 * Waits for SIGINT/SIGTERM, then runs `stop` (a second signal: exit at once). `quiet` (dev on a
 * terminal's Ctrl-C): only warnings and errors are logged while stopping, and `quiet` is the one
 * line printed once everything stopped.
 */
export async function runUntilSignal(log: Logger, stop: () => Promise<void>, quiet?: string): Promise<void> {
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
export async function startEngine(engine: Engine, log: Logger): Promise<Engine> {
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
export async function withEngine<T>(
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
export function print(value: unknown): void {
  const tty = process.stdout.isTTY === true
  process.stdout.write(
    render(value, outputMode(rootOptions(), tty), { columns: tty ? process.stdout.columns : undefined }),
  )
}

/** A document to keep or feed to another program (a checkpoint, the OpenAPI document): JSON always. */
export function printDocument(value: unknown): void {
  process.stdout.write(render(value, 'json'))
}
