// Databases for tests: each call clones the migrated template the global setup built, so every test
// file (or test) gets a fresh, fully migrated database of its own in a few tens of milliseconds.
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { inject } from 'vitest'
import { withDatabase } from '../../src/db/provision.ts'
import type { PgContext } from '../setup/global.ts'

export interface TestDatabase {
  /** As the server's superuser: migrations, tenant administration, and checks behind the engine's back. */
  url: string
  /** As the application's login role (member of equilateral_app): what engines run with. */
  appUrl: string
  /** As the maintenance login (member of equilateral_maintenance): retention purge and erasure. */
  maintenanceUrl: string
  name: string
  /** Drops the database, disconnecting anyone still connected. Safe to call twice. */
  drop: () => Promise<void>
}

export interface CreateTestDatabaseOptions {
  /** false: an empty database (from template0) instead of a clone of the migrated template. */
  migrated?: boolean
}

const OBJECT_IN_USE = '55006' // "source database ... is being accessed by other users"
const CLONE_RETRY_MS = 10_000

export function pgContext(): PgContext {
  return inject('pg')
}

export async function createTestDatabase(options: CreateTestDatabaseOptions = {}): Promise<TestDatabase> {
  const { adminUrl, template, prefix, appUser, maintenanceUser } = pgContext()
  const name = `${prefix}${randomBytes(6).toString('hex')}`
  const source = options.migrated === false ? 'template0' : template
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    const deadline = Date.now() + CLONE_RETRY_MS
    for (;;) {
      try {
        await admin.query(
          `CREATE DATABASE ${pg.escapeIdentifier(name)} TEMPLATE ${pg.escapeIdentifier(source)}`,
        )
        break
      } catch (error) {
        // A connection to the template that is just closing (the migrator's) makes the clone fail.
        if ((error as { code?: string }).code !== OBJECT_IN_USE || Date.now() > deadline) throw error
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
  } finally {
    await admin.end()
  }

  let dropped: Promise<void> | undefined
  return {
    url: withDatabase(adminUrl, name),
    appUrl: withLogin(withDatabase(adminUrl, name), appUser.user, appUser.password),
    maintenanceUrl: withLogin(withDatabase(adminUrl, name), maintenanceUser.user, maintenanceUser.password),
    name,
    drop: () => (dropped ??= dropDatabase(adminUrl, name)),
  }
}

async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`)
  } finally {
    await admin.end()
  }
}

function withLogin(url: string, user: string, password: string): string {
  const u = new URL(url)
  u.username = user
  u.password = password
  return u.toString()
}

/**
 * One statement on a connection of its own (opened and closed around it): for checks behind the
 * engine's back, including while the server may be restarting (a dropped connection is an error
 * of the call, never an uncaught exception).
 */
export async function queryOnce<T extends pg.QueryResultRow = Record<string, any>>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const c = new pg.Client({ connectionString: url })
  c.on('error', () => {})
  await c.connect()
  try {
    return (await c.query<T>(sql, params)).rows
  } finally {
    await c.end().catch(() => {})
  }
}

/** Workflows still running (row-level mode, every tenant), as the superuser sees them. */
export async function runningWorkflows(url: string): Promise<number> {
  const [row] = await queryOnce<{ n: number }>(
    url,
    `SELECT count(*)::int AS n FROM equilateral.workflows WHERE status = 'running'`,
  )
  return row?.n ?? -1
}
