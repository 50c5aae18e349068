// Where a database stands against this build: the migrations it lacks (control, tenant-table, the
// pg-boss schema) and what it has that this build does not ship (a newer release migrated it). Read
// by `migrate --check` and by the walk over tenant databases (./migrate-tenant-databases.ts).
import pg from 'pg'
import { bossSchemaVersion, shippedMigrations } from './migrate.ts'
import { APP_SCHEMA, BOSS_SCHEMA } from './names.ts'

/** Migrations this build ships that a database lacks: control, tenant-table, pg-boss schema versions. */
export interface PendingMigrations {
  control: number
  tenant: number
  boss: number
}

/** Where a database stands against this build. */
export interface MigrationState {
  pending: PendingMigrations
  /** What the database has that this build does not ship (a newer release migrated it), in words. */
  ahead: string[]
}

/**
 * What a database's tracking tables say against what this build ships: the newest control and
 * tenant-table migrations (drizzle's created_at is the migration's folder timestamp) and pg-boss's
 * schema version. A tracking table that does not exist yet means everything of it is pending.
 */
export async function migrationState(client: pg.ClientBase): Promise<MigrationState> {
  const tables = {
    control: 'drizzle.__equilateral_control_migrations',
    tenant: `${APP_SCHEMA}.__tenant_migrations`,
    boss: `${BOSS_SCHEMA}.version`,
  }
  const { rows: found } = await client.query<Record<keyof typeof tables, boolean>>(
    `SELECT to_regclass($1) IS NOT NULL AS control, to_regclass($2) IS NOT NULL AS tenant,
       to_regclass($3) IS NOT NULL AS boss`,
    [tables.control, tables.tenant, tables.boss],
  )
  const exists = found[0]!
  const { rows } = await client.query<Record<keyof typeof tables, string | null>>(
    `SELECT ${exists.control ? `(SELECT max(created_at) FROM ${tables.control})::text` : 'NULL'} AS control,
       ${exists.tenant ? `(SELECT max(created_at) FROM ${tables.tenant})::text` : 'NULL'} AS tenant,
       ${exists.boss ? `(SELECT max(version) FROM ${tables.boss})::text` : 'NULL'} AS boss`,
  )
  const have = rows[0]!
  const shipped = shippedMigrations()
  const state: MigrationState = { pending: { control: 0, tenant: 0, boss: 0 }, ahead: [] }
  for (const kind of ['control', 'tenant'] as const) {
    const last = have[kind] === null ? -1 : Number(have[kind])
    const newest = shipped[kind].at(-1) ?? 0
    state.pending[kind] = shipped[kind].filter((at) => at > last).length
    if (last > newest) {
      state.ahead.push(
        `its newest ${KIND_NAMES[kind]} migration is from ${new Date(last).toISOString()}, this build's from ${new Date(newest).toISOString()}`,
      )
    }
  }
  const boss = bossSchemaVersion()
  const bossHave = have.boss === null ? null : Number(have.boss)
  if (boss === undefined) state.pending.boss = 1
  else if (bossHave === null) state.pending.boss = boss
  else if (bossHave > boss) {
    state.ahead.push(`its pg-boss schema is version ${bossHave}, this build's pg-boss migrates to ${boss}`)
  } else state.pending.boss = boss - bossHave
  return state
}

/** The state of one database, on a connection of its own (the CLI's `migrate --check`). */
export async function databaseMigrationState(connectionString: string): Promise<MigrationState> {
  const client = new pg.Client({ connectionString, application_name: 'equilateral-migrate' })
  await client.connect()
  try {
    return await migrationState(client)
  } finally {
    await client.end().catch(() => {})
  }
}

const KIND_NAMES = { control: 'control', tenant: 'tenant-table', boss: 'pg-boss' } as const

export function isPending(p: PendingMigrations): boolean {
  return p.control + p.tenant + p.boss > 0
}

/** `2 tenant-table migrations, 1 pg-boss schema version`, or `current`. */
export function describePending(p: PendingMigrations): string {
  const parts = (['control', 'tenant', 'boss'] as const)
    .filter((kind) => p[kind] > 0)
    .map((kind) =>
      kind === 'boss'
        ? `${p.boss} pg-boss schema version${p.boss === 1 ? '' : 's'}`
        : `${p[kind]} ${KIND_NAMES[kind]} migration${p[kind] === 1 ? '' : 's'}`,
    )
  return parts.length > 0 ? parts.join(', ') : 'current'
}
