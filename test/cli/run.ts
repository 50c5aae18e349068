// Runs the `equilateral` command the way a user does (`node bin/equilateral.js ...` from the repository
// root), as child processes that are killed at the end of the test file whatever happened.
import { type ChildProcess, spawn } from 'node:child_process'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll } from 'vitest'
import { eventually } from '../helpers/engine.ts'

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BIN = fileURLToPath(new URL('../../bin/equilateral.js', import.meta.url))

export interface Result {
  code: number | null
  stdout: string
  stderr: string
}

/** What a command printed to stderr for people: its log lines (JSON) left out. */
export function messages(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('{'))
}

/** A child's environment: the test's, without what would point it at another database or server. */
export function childEnv(extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const name of [
    'DATABASE_URL',
    'MIGRATION_DATABASE_URL',
    'MAINTENANCE_DATABASE_URL',
    'EQUILATERAL_DATA_DIR',
    'ADMIN_TOKEN',
    'HOST',
    'PORT',
    'WEB_CONCURRENCY',
    'LOG_LEVEL',
  ]) {
    delete env[name]
  }
  for (const [name, value] of Object.entries(extra)) if (value !== undefined) env[name] = value
  return {
    ...env,
    // No colours, no metrics listener (parallel test files would fight over its port).
    NO_COLOR: '1',
    METRICS_PORT: '0',
    // V8's code cache (and the stripped TypeScript) makes every later start of a command cheaper.
    NODE_COMPILE_CACHE: path.join(tmpdir(), 'equilateral-test-compile-cache'),
  }
}

/** `cleanup` runs at the end of the file once every child has exited (drop the database there). */
export function cliProcesses(env: NodeJS.ProcessEnv, cleanup: () => Promise<void> = async () => {}) {
  const children = new Set<ChildProcess>()
  afterAll(async () => {
    try {
      await Promise.all([...children].map((child) => stop(child, 'SIGTERM', 10_000)))
    } finally {
      await cleanup()
    }
  })

  /** Starts a long-running command (worker, watch, dev); its output accumulates in `out`. */
  function start(args: string[], extraEnv: NodeJS.ProcessEnv = {}) {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: { ...env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    children.add(child)
    const out = { stdout: '', stderr: '' }
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out.stdout += chunk))
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (out.stderr += chunk))
    const exited = new Promise<Result>((resolve) => {
      child.on('close', (code) => {
        children.delete(child)
        resolve({ code, ...out })
      })
    })
    return { child, out, exited }
  }

  /** Runs a command to its end. */
  function run(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Result> {
    return start(args, extraEnv).exited
  }

  return { start, run }
}

/** Sends the signal; SIGKILL after `graceMs`. Resolves with the exit code (null when killed). */
export function stop(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode)
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    child.once('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
    child.kill(signal)
  })
}

/** Polls until `check` returns a value (not undefined); a timeout names what was awaited. */
export function until<T>(
  what: string,
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  return eventually(check, timeoutMs, 50, what)
}
