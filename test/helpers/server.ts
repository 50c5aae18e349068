// A PostgreSQL server of a test's own, for tests that stop and restart the database (outage, chaos):
// the shared test server cannot be stopped under the other test files. An embedded server on a free
// port with a temporary data directory, one migrated database and the tests' app login. stop() and
// start() keep the data directory and the port, so clients reconnect to the same URL.
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll } from 'vitest'
import { migrate } from '../../src/db/migrate.ts'
import { type EmbeddedServer, startEmbeddedPostgres, withDatabase } from '../../src/db/provision.ts'
import { APP_LOGIN, ensureAppLogin, TEST_SETTINGS, TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'

export interface OwnServer {
  /** The migrated database, as the superuser. */
  url: string
  /** The same database as the tests' app login (member of equilateral_app). */
  appUrl: string
  port: number
  /** Stops the server (fast shutdown: every client is disconnected). */
  stop(): Promise<void>
  /** Starts it again on the same data directory and port. */
  start(): Promise<void>
  readonly running: boolean
}

const DATABASE = 'equilateral'

/** Starts the server, migrates it, and stops and deletes it after the test file. */
export async function ownServer(settings: Record<string, string | number> = {}): Promise<OwnServer> {
  const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-own-pg-'))
  // As root the server runs as the `postgres` user, which must be able to enter the directory.
  await chmod(dir, 0o755)
  const password = randomBytes(12).toString('hex')
  const options = { dataDir: path.join(dir, 'data'), password, settings: { ...TEST_SETTINGS, ...settings } }
  let server: EmbeddedServer | null = await startEmbeddedPostgres(options)
  const port = server.port
  afterAll(async () => {
    await server?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  const admin = new pg.Client({ connectionString: server.adminUrl })
  const url = withDatabase(server.adminUrl, DATABASE)
  await admin.connect()
  try {
    await admin.query(`CREATE DATABASE ${DATABASE}`)
    // Creates the application role the login joins. With the template's secret and tenant context,
    // as every test database has: worker processes spawned by the tests are given that secret.
    await migrate(url, { tenantContextSecret: TEST_TENANT_CONTEXT_SECRET, tenantContextVerified: true })
    await ensureAppLogin(admin)
  } finally {
    await admin.end()
  }
  const app = new URL(url)
  app.username = APP_LOGIN.user
  app.password = APP_LOGIN.password

  return {
    url,
    appUrl: app.toString(),
    port,
    get running() {
      return server !== null
    },
    async stop() {
      const s = server
      server = null
      await s?.stop()
    },
    async start() {
      if (server) return
      const s = await startEmbeddedPostgres({ ...options, port })
      if (s.port !== port) {
        await s.stop()
        throw new Error(`port ${port} was taken while the server was down`)
      }
      server = s
    },
  }
}
