// A real PgBouncer (Debian's `pgbouncer`, 1.18 on bookworm: no protocol-level prepared statements) in
// transaction mode in front of the test server, started by the test on a free loopback port. Clients
// authenticate to it by trust (loopback, the test's own process); it logs in to the server with the
// logins of the URLs it is given (auth_file, their passwords in plain text), so every role the
// engine uses (app, maintenance, the superuser for checks) can go through it. Each database/login
// pair gets a server pool of `poolSize` connections, whatever the number of clients.
// CI installs the package (.ci/run), so there a missing pgbouncer fails; elsewhere the tests skip.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { inCi } from './tools.ts'

export const PGBOUNCER = process.env.PGBOUNCER_PATH ?? '/usr/sbin/pgbouncer'
export const havePgBouncer = existsSync(PGBOUNCER)
if (!havePgBouncer && inCi) {
  throw new Error(
    `${PGBOUNCER} is missing: CI must install Debian's pgbouncer (apt-get install -y pgbouncer)`,
  )
}
/** The title of a describe that needs PgBouncer, saying why it is skipped when it is. */
export function withPgBouncer(title: string): string {
  return havePgBouncer ? title : `${title}: skipped, ${PGBOUNCER} is missing (apt-get install pgbouncer)`
}

export interface PoolRow {
  database: string
  user: string
  clients: number
  waiting: number
  servers: number
}

export interface PgBouncer {
  port: number
  /** `url` (a server URL of the test's) switched to go through the pooler: same login and database. */
  through(url: string): string
  /**
   * The pooler's pools now (SHOW POOLS on its admin console): per database/login, the clients
   * connected and the server connections it holds (active, idle, used, tested, login).
   */
  pools(): Promise<PoolRow[]>
  stop(): Promise<void>
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/**
 * Starts PgBouncer in transaction mode in front of the server of `urls` (all on one server), with
 * their logins. `poolSize`: server connections per database/login pair (default_pool_size, and
 * max_db_connections so that no reserve pool adds any).
 */
export async function startPgBouncer(options: {
  urls: readonly string[]
  poolSize: number
}): Promise<PgBouncer> {
  const first = new URL(options.urls[0] as string)
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'eq-pgbouncer-'))
  const logins = new Map<string, string>()
  for (const url of options.urls) {
    const u = new URL(url)
    logins.set(decodeURIComponent(u.username), decodeURIComponent(u.password))
  }
  const quote = (s: string) => `"${s.replace(/"/g, '""')}"`
  await writeFile(
    join(dir, 'users.txt'),
    [...logins].map(([user, password]) => `${quote(user)} ${quote(password)}`).join('\n') + '\n',
  )
  await writeFile(
    join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = host=${first.hostname} port=${first.port || 5432}`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${join(dir, 'users.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${options.poolSize}`,
      `max_db_connections = ${options.poolSize}`,
      'reserve_pool_size = 0',
      'min_pool_size = 0',
      'max_client_conn = 2000',
      'server_lifetime = 3600',
      'ignore_startup_parameters = extra_float_digits',
      'log_connections = 0',
      'log_disconnections = 0',
      'log_pooler_errors = 1',
      `admin_users = ${[...logins.keys()][0]}`,
    ].join('\n') + '\n',
  )
  // PgBouncer refuses to run as root: it then switches to `nobody`, who must read its files.
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    await chmod(dir, 0o755)
    await chmod(join(dir, 'users.txt'), 0o644)
    await chmod(join(dir, 'pgbouncer.ini'), 0o644)
  }
  const child: ChildProcess = spawn(
    PGBOUNCER,
    [...(asRoot ? ['-u', 'nobody'] : []), join(dir, 'pgbouncer.ini')],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  let stderr = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000)
  })
  // Never outlives the test process, whatever happens to its hooks.
  const onExit = () => child.kill('SIGKILL')
  process.once('exit', onExit)
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      process.off('exit', onExit)
      resolve()
    }),
  )
  let running = true
  void exited.then(() => (running = false))
  for (let i = 0; !(await accepts(port)); i++) {
    if (!running || i > 100) {
      child.kill('SIGKILL')
      await rm(dir, { recursive: true, force: true })
      throw new Error(`pgbouncer did not start: ${stderr}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  return {
    port,
    through(url: string): string {
      const u = new URL(url)
      u.hostname = '127.0.0.1'
      u.port = String(port)
      return u.toString()
    },
    async pools() {
      const admin = new pg.Client({
        host: '127.0.0.1',
        port,
        user: [...logins.keys()][0],
        database: 'pgbouncer',
      })
      await admin.connect()
      try {
        const { rows } = await admin.query('SHOW POOLS')
        return rows
          .filter((r) => r.database !== 'pgbouncer')
          .map((r) => ({
            database: r.database,
            user: r.user,
            clients: Number(r.cl_active) + Number(r.cl_waiting),
            waiting: Number(r.cl_waiting),
            servers:
              Number(r.sv_active) +
              Number(r.sv_idle) +
              Number(r.sv_used) +
              Number(r.sv_tested) +
              Number(r.sv_login),
          }))
      } finally {
        await admin.end().catch(() => {})
      }
    },
    async stop() {
      if (running) {
        child.kill('SIGINT')
        const killed = setTimeout(() => child.kill('SIGKILL'), 5000)
        await exited
        clearTimeout(killed)
      }
      await rm(dir, { recursive: true, force: true })
    },
  }
}
