// Vitest global setup: picks one PostgreSQL server for the whole run, builds a migrated template
// database on it once, and tells the test files where it is. Each test file then clones the template
// (test/helpers/db.ts), so files run in parallel against databases of their own.
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import type { TestProject } from 'vitest/node'
import { migrate } from '../../src/db/migrate.ts'
import { APP_ROLE, MAINTENANCE_ROLE } from '../../src/db/names.ts'
import { describeUrl, findFreePort, startEmbeddedPostgres, withDatabase } from '../../src/db/provision.ts'
import { packDir } from '../helpers/package.ts'
import { selectServer, type ServerSource } from './select-server.ts'

export interface PgContext {
  /** A superuser (or CREATEDB) URL on the server, for CREATE/DROP DATABASE. */
  adminUrl: string
  /** Login of the run-time role the engines in tests use: a member of equilateral_app, nothing more. */
  appUser: { user: string; password: string }
  /** Login of the maintenance role (purge, erasure): a member of equilateral_maintenance, nothing more. */
  maintenanceUser: { user: string; password: string }
  /** The migrated template database to clone. */
  template: string
  /** Every database the helpers create starts with this; teardown drops them all. */
  prefix: string
  source: ServerSource
  /** server_version, e.g. "18.4". */
  version: string
}

declare module 'vitest' {
  export interface ProvidedContext {
    pg: PgContext
  }
}

/**
 * The tenant context secret of the template (so of every test database cloned from it): worker
 * processes that log in as the application role alone get it as TENANT_CONTEXT_SECRET, as a
 * deployment without the owner's login in web and worker does (test/helpers/processes.ts).
 */
export const TEST_TENANT_CONTEXT_SECRET = 'equilateral-test-tenant-context-secret-0123456789'

// Roles are cluster-wide; parallel runs on one server share this one (same password, idempotent).
export const APP_LOGIN = { user: 'equilateral_test_app', password: 'equilateral_test_app' }
export const MAINTENANCE_LOGIN = { user: 'equilateral_test_maint', password: 'equilateral_test_maint' }

const CONTAINER_IMAGE = 'postgres:17-alpine'
const DOCKER_PROBE_MS = 3_000
// Throwaway servers: durability buys nothing, and the engine tests open many connections.
export const TEST_SETTINGS = {
  fsync: 'off',
  synchronous_commit: 'off',
  full_page_writes: 'off',
  max_connections: 300,
}

interface Server {
  adminUrl: string
  description: string
  stop(): Promise<void>
}

/** The run's server and template, shared by the projects that list this file (main and heavy). */
interface Shared {
  ready: Promise<{ context: PgContext; teardown: () => Promise<void> }>
  users: number
}
// Each project loads this file in a module runner of its own, so the one server of the run is kept
// on the process's globalThis: the first project to set up starts it, the last teardown ends it.
// The unit project (test/unit, pure rules) does not list this file: it runs without a database.
const SHARED = Symbol.for('equilateral.test.pg')

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const store = globalThis as { [SHARED]?: Shared }
  const shared = (store[SHARED] ??= { ready: prepare(), users: 0 })
  const { context, teardown } = await shared.ready
  shared.users++
  project.provide('pg', context)
  return async () => {
    if (--shared.users > 0) return
    delete store[SHARED]
    await teardown()
  }
}

async function prepare(): Promise<{ context: PgContext; teardown: () => Promise<void> }> {
  const started = performance.now()
  const choice = await selectServer(process.env, { dockerAvailable: dockerAnswers })
  const server =
    choice.source === 'env'
      ? {
          adminUrl: choice.url,
          description: `TEST_DATABASE_URL (${describeUrl(choice.url)})`,
          stop: async () => {},
        }
      : choice.source === 'container'
        ? await startContainer()
        : await startEmbedded()

  const runId = randomBytes(4).toString('hex')
  const template = `eq_template_${runId}`
  const prefix = `eq_test_${runId}_`
  const teardown = async () => {
    try {
      await rm(packDir(prefix), { recursive: true, force: true }) // the tarball test/helpers/package.ts made
      await dropDatabases(server.adminUrl, template, prefix)
    } finally {
      await server.stop()
    }
  }

  try {
    const version = await createTemplate(server.adminUrl, template)
    const context: PgContext = {
      adminUrl: server.adminUrl,
      appUser: APP_LOGIN,
      maintenanceUser: MAINTENANCE_LOGIN,
      template,
      prefix,
      source: choice.source,
      version,
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1)
    console.log(
      `test database: ${server.description}, PostgreSQL ${version}; template ${template} ready in ${seconds} s`,
    )
    return { context, teardown }
  } catch (error) {
    await teardown().catch(() => {})
    throw error
  }
}

async function dockerAnswers(): Promise<boolean> {
  try {
    const { getContainerRuntimeClient } = await import('testcontainers')
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), DOCKER_PROBE_MS)
      timer.unref()
    })
    const probe = getContainerRuntimeClient().then(
      () => true,
      () => false,
    )
    return await Promise.race([probe, timeout]).finally(() => clearTimeout(timer))
  } catch {
    return false
  }
}

async function startContainer(): Promise<Server> {
  const { PostgreSqlContainer } = await import('@testcontainers/postgresql')
  const settings = Object.entries(TEST_SETTINGS).flatMap(([name, value]) => ['-c', `${name}=${value}`])
  const container = await new PostgreSqlContainer(CONTAINER_IMAGE)
    .withCommand(['postgres', ...settings])
    .start()
  return {
    adminUrl: container.getConnectionUri(),
    description: `testcontainers ${CONTAINER_IMAGE} on port ${container.getPort()}`,
    stop: async () => {
      await container.stop()
    },
  }
}

async function startEmbedded(): Promise<Server> {
  const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-test-pg-'))
  // As root the server runs as the `postgres` user, which must be able to enter the directory.
  await chmod(dir, 0o755)
  try {
    const server = await startEmbeddedPostgres({
      dataDir: path.join(dir, 'data'),
      password: randomBytes(12).toString('hex'),
      port: await findFreePort(),
      settings: TEST_SETTINGS,
    })
    return {
      adminUrl: server.adminUrl,
      description: `embedded PostgreSQL on port ${server.port} (temporary data dir)`,
      stop: async () => {
        try {
          await server.stop()
        } finally {
          await rm(dir, { recursive: true, force: true })
        }
      },
    }
  } catch (error) {
    await rm(dir, { recursive: true, force: true })
    throw error
  }
}

/** Creates and migrates the template; returns the server version. */
async function createTemplate(adminUrl: string, template: string): Promise<string> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    const version = await admin.query<{ server_version: string }>('SHOW server_version')
    await admin.query(`CREATE DATABASE ${pg.escapeIdentifier(template)}`)
    // With the verified tenant context (not the default): the suite's attacks on it need it, and
    // every engine path must work under it; test/security/tenant-context.test.ts checks both modes.
    await migrate(withDatabase(adminUrl, template), {
      tenantContextSecret: TEST_TENANT_CONTEXT_SECRET,
      tenantContextVerified: true,
    })
    await ensureAppLogin(admin)
    // Nobody may connect to it any more: a connection to a template makes cloning it fail.
    await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(template)} WITH ALLOW_CONNECTIONS false`)
    return version.rows[0]?.server_version.split(' ')[0] ?? 'unknown'
  } finally {
    await admin.end()
  }
}

/**
 * Creates the tests' run-time logins (idempotent): one a member of the application role, one of the
 * maintenance role, nothing more.
 */
export async function ensureAppLogin(admin: pg.Client): Promise<void> {
  for (const [login, role] of [
    [APP_LOGIN, APP_ROLE],
    [MAINTENANCE_LOGIN, MAINTENANCE_ROLE],
  ] as const) {
    await admin.query(`
      DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '${login.user}') THEN
          CREATE ROLE ${login.user} LOGIN;
        END IF;
      EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
      END $$;
      ALTER ROLE ${login.user} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '${login.password}';
      GRANT ${role} TO ${login.user};`)
  }
}

async function dropDatabases(adminUrl: string, template: string, prefix: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    const { rows } = await admin.query<{ datname: string }>(
      'SELECT datname FROM pg_database WHERE datname = $1 OR starts_with(datname, $2)',
      [template, prefix],
    )
    for (const { datname } of rows) {
      await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(datname)} WITH (FORCE)`)
    }
  } finally {
    await admin.end()
  }
}
