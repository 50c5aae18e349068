// database-per-tenant: moving a tenant to another database (another server, usually). The procedure
// (docs/moving-tenants.md) is: suspend the tenant and wait until it is drained, copy its database
// (pg_dump | pg_restore, or logical replication), then let moveTenant check that the copy holds
// everything the source holds and switch the directory entry, and resume the tenant. Worker
// processes pick the new entry up at their next directory refresh: they stop serving the old
// database and serve the new one.
//
// This module never writes to a tenant database, the source or the target: it reads both (as the
// owner, in read-only repeatable-read transactions) and changes one directory row in the control
// database, in one statement fenced on the entry it checked.
//
// Size (over 400 lines): the drain check, the snapshot of both databases and their comparison are
// the move's safety argument and are read together with moveTenant; most of the length is the
// per-table comparison's statements and messages.
import pg from 'pg'
import { APP_SCHEMA, BOSS_SCHEMA } from '../db/names.ts'
import { DATABASE_NAME, databaseKey, type Servers, type TenantDatabase } from './placement.ts'
import { readTenantContextSecret, tenantCredential } from './tenant-context.ts'
import { InvalidInputError, TenantError } from '../errors.ts'
import { assertTenantId, withTenantDatabase } from './tenants.ts'

/** A move refused: `problems` names each reason (not suspended, not drained, each difference). */
export class MoveRefusedError extends TenantError {
  readonly problems: readonly string[]
  constructor(tenantId: string, problems: readonly string[]) {
    super('move_refused', `tenant "${tenantId}" not moved: ${problems.join('; ')}`)
    this.problems = problems
  }
}

/** What the source database says about a tenant being drained. */
export interface DrainStatus {
  tenantId: string
  /** The directory's status: 'suspended' is required to move. */
  status: 'active' | 'suspended' | 'provisioning'
  /** The tenant's database, per the directory (null: its tables are in the control database). */
  database: TenantDatabase | null
  /** Tasks `running` in the source: an agent may still write there. Must be 0 (or `force`). */
  running: number
  /**
   * pg-boss jobs of the tenant in state `active`. A job can be active with its task not running: a
   * worker fetched it, saw the tenant suspended and left it; the copy keeps it, and the sweeper in the
   * new database hands it out again once the tenant is resumed. Reported, not required to be 0.
   */
  activeJobs: number
  /** pg-boss jobs of the tenant waiting (created or retry): they move with the copy. */
  waitingJobs: number
  /** Suspended, in a database of its own, and no task running. */
  drained: boolean
  /** Why it is not drained (empty when drained). */
  problems: string[]
}

/** One table's summary in one database (the tenant's rows only). */
export interface TableSummary {
  table: string
  rows: number
  /** The greatest id (sequence-numbered tables), or null. */
  maxId: string | null
  /** The latest timestamp the table keeps (updated_at, timestamp, sealed_at, created_at), or null. */
  maxAt: string | null
  /** Order-independent digest of the rows' contents (see TABLES). */
  fingerprint: string
}

/** What compareDatabases reads from one database. */
export interface DatabaseSnapshot {
  database: TenantDatabase
  /** The ids in its equilateral.tenants (a tenant database holds exactly its tenant's). */
  tenants: string[]
  migrations: { control: string[]; tenant: string[]; boss: number | null }
  tables: TableSummary[]
  /** The last seal of the audit hash chain. */
  auditHead: { blockNo: string; hash: string } | null
  /**
   * Audit rows are stamped with the 64-bit id of the transaction that wrote them, and sealed in
   * (txid, id) order (src/audit/seal.ts), so the target's transaction ids must be ahead of every
   * txid copied: `maxAuditTxid` is the greatest in this database's audit rows and seals,
   * `nextTxid` the next id this server will assign.
   */
  maxAuditTxid: string | null
  nextTxid: string
  /** Identity sequences: the next id must be past every id copied. */
  sequences: Record<string, string | null>
  /** pg-boss jobs of the tenant that are not finished, by queue and state. */
  jobs: { queue: string; state: string; count: number; fingerprint: string }[]
  /** pg-boss queues (their settings) and schedules. */
  queues: Record<string, string>
  schedules: Record<string, string>
}

export interface Comparison {
  source: DatabaseSnapshot
  /** null: the target could not be read as an equilateral database (see differences). */
  target: DatabaseSnapshot | null
  /** Empty: the target holds everything the source holds (nothing left behind). */
  differences: string[]
}

/**
 * The tenant tables compared, with the columns that give their latest id and time. The fingerprint
 * is the sum, as 2 x 64-bit numbers, of md5 of each row's text: independent of row order, one
 * sequential read of the tenant's rows, no sort and constant memory, so it works on a table of any
 * size (it reads it all: minutes for tens of millions of rows; run it while the tenant is drained).
 */
const TABLES: readonly { table: string; maxId: string | null; maxAt: string | null }[] = [
  { table: 'tenants', maxId: null, maxAt: 'updated_at' },
  { table: 'workflows', maxId: null, maxAt: 'updated_at' },
  { table: 'agent_coordination', maxId: null, maxAt: 'updated_at' },
  { table: 'agent_audit_log', maxId: 'id', maxAt: '"timestamp"' },
  { table: 'agent_audit_seals', maxId: 'block_no', maxAt: 'sealed_at' },
  { table: 'agent_audit_redactions', maxId: 'row_id', maxAt: 'redacted_at' },
  { table: 'compliance_events', maxId: 'id', maxAt: 'created_at' },
  { table: 'workflow_events', maxId: 'id', maxAt: 'created_at' },
  { table: 'workflow_schedules', maxId: null, maxAt: 'updated_at' },
]

const SEQUENCED = ['agent_audit_log', 'compliance_events', 'workflow_events'] as const

/** pg-boss queue columns that are settings (the others are statistics pg-boss keeps up to date). */
const QUEUE_SETTINGS = [
  'policy',
  'retry_limit',
  'retry_delay',
  'retry_backoff',
  'retry_delay_max',
  'expire_seconds',
  'retention_seconds',
  'deletion_seconds',
  'dead_letter',
  'partition',
  'table_name',
  'heartbeat_seconds',
]

const LIVE_JOB_STATES = ['created', 'retry', 'active']

interface DirectoryEntry {
  status: DrainStatus['status']
  database: TenantDatabase | null
}

async function directoryEntry(controlOwner: pg.Pool, tenantId: string): Promise<DirectoryEntry> {
  assertTenantId(tenantId)
  const { rows } = await controlOwner.query(
    `SELECT status, database_server, database_name FROM ${APP_SCHEMA}.tenants WHERE id = $1`,
    [tenantId],
  )
  const r = rows[0]
  if (!r) throw new TenantError('unknown_tenant', `unknown tenant "${tenantId}"`)
  return {
    status: r.status,
    database: r.database_server ? { server: r.database_server, name: r.database_name } : null,
  }
}

/**
 * Reads in one read-only, repeatable-read transaction scoped to the tenant (row-level security binds
 * the tables' owner too), with the output formats fixed so that row texts are the same on any server.
 */
async function readTenant<T>(client: pg.ClientBase, tenantId: string, fn: () => Promise<T>): Promise<T> {
  await client.query(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
    SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres';
    SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'`)
  try {
    // The owner's connection reads the database's secret itself (drizzle/tenant/0016).
    const secret = await readTenantContextSecret(client)
    await client.query(`SELECT equilateral.enter_tenant($1, $2)`, [
      tenantId,
      tenantCredential(secret, tenantId),
    ])
    return await fn()
  } finally {
    await client.query('ROLLBACK').catch(() => {})
  }
}

/**
 * Whether a tenant in a database of its own is drained: suspended in the directory (its keys and
 * handles refused, workers no longer serving its database) and no task running in its database.
 */
export async function drainStatus(
  controlOwner: pg.Pool,
  servers: Servers,
  tenantId: string,
): Promise<DrainStatus> {
  const entry = await directoryEntry(controlOwner, tenantId)
  const status: DrainStatus = {
    tenantId,
    status: entry.status,
    database: entry.database,
    running: 0,
    activeJobs: 0,
    waitingJobs: 0,
    drained: false,
    problems: [],
  }
  if (!entry.database) {
    status.problems.push('its tables are in the control database, not in a database of its own')
    return status
  }
  if (entry.status !== 'suspended') {
    status.problems.push(`it is ${entry.status}: suspend it first (equilateral tenant suspend ${tenantId})`)
  }
  await withTenantDatabase(servers, entry.database, (client) =>
    readTenant(client, tenantId, async () => {
      const { rows } = await client.query(
        `SELECT
           (SELECT count(*)::int FROM ${APP_SCHEMA}.agent_coordination
             WHERE tenant_id = $1 AND status = 'running') AS running,
           (SELECT count(*)::int FROM ${BOSS_SCHEMA}.job
             WHERE data->>'t' = $1 AND state = 'active') AS active,
           (SELECT count(*)::int FROM ${BOSS_SCHEMA}.job
             WHERE data->>'t' = $1 AND state IN ('created', 'retry')) AS waiting`,
        [tenantId],
      )
      status.running = rows[0].running
      status.activeJobs = rows[0].active
      status.waitingJobs = rows[0].waiting
    }),
  )
  if (status.running > 0) status.problems.push(runningProblem(status.running, entry.database))
  status.drained = status.problems.length === 0
  return status
}

function runningProblem(running: number, database: TenantDatabase): string {
  return `${running} task(s) running in ${databaseKey(database)}: wait until they finish or are released (SHUTDOWN_GRACE_MS after the tenant was suspended)`
}

/** Reads what compareDatabases compares from one database (a client connected as the owner). */
async function snapshot(
  client: pg.ClientBase,
  tenantId: string,
  database: TenantDatabase,
): Promise<DatabaseSnapshot | string> {
  const { rows: present } = await client.query(
    `SELECT to_regclass('${APP_SCHEMA}.tenants') IS NOT NULL AS tenants,
            to_regclass('drizzle.__equilateral_control_migrations') IS NOT NULL AS control,
            to_regclass('${APP_SCHEMA}.__tenant_migrations') IS NOT NULL AS tenant,
            to_regclass('${APP_SCHEMA}.agent_audit_seals') IS NOT NULL AS seals,
            to_regclass('${BOSS_SCHEMA}.job') IS NOT NULL AS boss`,
  )
  const missing = Object.entries(present[0] as Record<string, boolean>)
    .filter(([, ok]) => !ok)
    .map(([what]) => what)
  if (missing.length > 0) {
    return `${databaseKey(database)} is not an equilateral database (missing: ${missing.join(', ')})`
  }
  return readTenant(client, tenantId, async () => {
    const q = async (sql: string, params: unknown[] = []) => (await client.query(sql, params)).rows
    const tenants = (await q(`SELECT id FROM ${APP_SCHEMA}.tenants ORDER BY id`)).map((r) => r.id as string)
    const control = await q(
      `SELECT created_at::text || ':' || hash AS m FROM drizzle.__equilateral_control_migrations ORDER BY created_at, id`,
    )
    const tenant = await q(
      `SELECT created_at::text || ':' || hash AS m FROM ${APP_SCHEMA}.__tenant_migrations ORDER BY created_at, id`,
    )
    const boss = await q(`SELECT max(version) AS v FROM ${BOSS_SCHEMA}.version`)
    const tables: TableSummary[] = []
    for (const t of TABLES) {
      const key = t.table === 'tenants' ? 'id' : 'tenant_id'
      const [r] = await q(
        `SELECT count(*)::bigint::text AS rows,
           ${t.maxId ? `max(${t.maxId})::text` : 'NULL'} AS max_id,
           ${t.maxAt ? `max(${t.maxAt})::text` : 'NULL'} AS max_at,
           md5(coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0)::text || '/' ||
               coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0)::text) AS fingerprint
         FROM (SELECT r.*, md5(r::text) AS h FROM ${APP_SCHEMA}.${t.table} r WHERE r.${key} = $1) s`,
        [tenantId],
      )
      tables.push({
        table: t.table,
        rows: Number(r.rows),
        maxId: r.max_id,
        maxAt: r.max_at,
        fingerprint: r.fingerprint,
      })
    }
    const [head] = await q(
      `SELECT block_no::text, hash FROM ${APP_SCHEMA}.agent_audit_seals WHERE tenant_id = $1
       ORDER BY block_no DESC LIMIT 1`,
      [tenantId],
    )
    const [txids] = await q(
      `SELECT greatest(
         (SELECT max(txid) FROM ${APP_SCHEMA}.agent_audit_log WHERE tenant_id = $1),
         (SELECT max(last_txid) FROM ${APP_SCHEMA}.agent_audit_seals WHERE tenant_id = $1))::text AS max,
         pg_snapshot_xmax(pg_current_snapshot())::text AS next`,
      [tenantId],
    )
    const sequences: Record<string, string | null> = {}
    for (const table of SEQUENCED) {
      const [s] = await q(
        `SELECT pg_sequence_last_value(pg_get_serial_sequence($1, 'id')::regclass)::text AS v`,
        [`${APP_SCHEMA}.${table}`],
      )
      sequences[table] = s?.v ?? null
    }
    const jobs = await q(
      `SELECT name AS queue, state::text AS state, count(*)::int AS count,
         md5(string_agg(id::text || ':' || retry_count || ':' || coalesce(data::text, ''), ',' ORDER BY id)) AS fingerprint
       FROM ${BOSS_SCHEMA}.job WHERE data->>'t' = $1 AND state::text = ANY($2::text[])
       GROUP BY 1, 2 ORDER BY 1, 2`,
      [tenantId, LIVE_JOB_STATES],
    )
    const queues: Record<string, string> = {}
    for (const r of await q(`SELECT name, to_jsonb(q) AS q FROM ${BOSS_SCHEMA}.queue q ORDER BY name`)) {
      queues[r.name] = JSON.stringify(QUEUE_SETTINGS.filter((k) => k in r.q).map((k) => [k, r.q[k]]))
    }
    const schedules: Record<string, string> = {}
    for (const r of await q(
      `SELECT name || '/' || key AS id, to_jsonb(s) - 'created_on' - 'updated_on' - 'last_job_id' AS s
       FROM ${BOSS_SCHEMA}.schedule s ORDER BY 1`,
    )) {
      schedules[r.id] = JSON.stringify(r.s)
    }
    return {
      database,
      tenants,
      migrations: {
        control: control.map((r) => r.m as string),
        tenant: tenant.map((r) => r.m as string),
        boss: boss[0]?.v ?? null,
      },
      tables,
      auditHead: head ? { blockNo: head.block_no, hash: head.hash } : null,
      maxAuditTxid: txids?.max ?? null,
      nextTxid: txids?.next ?? '0',
      sequences,
      jobs,
      queues,
      schedules,
    }
  })
}

const UNDEFINED_DATABASE = '3D000'

/**
 * Reads the tenant's data in the source and the target database (as the owner) and lists every
 * difference: the target must be an equilateral database holding exactly this tenant's row, with the
 * same migrations, and, table by table, the same rows (count, latest id and time, content digest),
 * the same audit chain head, transaction ids and sequences past every copied audit txid and id (so
 * that rows written after the move seal after the copied ones), the same unfinished pg-boss jobs of the
 * tenant by queue and state, and the same queues and schedules. An empty list: nothing left behind.
 * Meaningful only while the tenant is drained (nothing writes to the source).
 */
export async function compareDatabases(
  servers: Servers,
  tenantId: string,
  source: TenantDatabase,
  target: TenantDatabase,
): Promise<Comparison> {
  const src = await withTenantDatabase(servers, source, (c) => snapshot(c, tenantId, source))
  if (typeof src === 'string') throw new MoveRefusedError(tenantId, [`the source ${src}`])
  let tgt: DatabaseSnapshot | string
  try {
    tgt = await withTenantDatabase(servers, target, (c) => snapshot(c, tenantId, target))
  } catch (error) {
    if ((error as { code?: string }).code !== UNDEFINED_DATABASE) throw error
    tgt = `the target database ${databaseKey(target)} does not exist: create it and restore the copy into it`
  }
  if (typeof tgt === 'string') return { source: src, target: null, differences: [tgt] }
  return { source: src, target: tgt, differences: differences(tenantId, src, tgt) }
}

function differences(tenantId: string, s: DatabaseSnapshot, t: DatabaseSnapshot): string[] {
  const out: string[] = []
  if (t.tenants.length !== 1 || t.tenants[0] !== tenantId) {
    const held = t.tenants.length === 0 ? 'no tenant' : t.tenants.map((id) => `"${id}"`).join(', ')
    out.push(`the target's equilateral.tenants must hold exactly "${tenantId}" (it holds ${held})`)
  }
  const lists = (what: string, a: string[], b: string[]) => {
    if (a.join() !== b.join())
      out.push(`${what} migrations differ: ${a.length} in the source, ${b.length} in the target`)
  }
  lists('control', s.migrations.control, t.migrations.control)
  lists('tenant-table', s.migrations.tenant, t.migrations.tenant)
  if (s.migrations.boss !== t.migrations.boss) {
    out.push(`pg-boss schema version ${s.migrations.boss} in the source, ${t.migrations.boss} in the target`)
  }
  for (const a of s.tables) {
    const b = t.tables.find((x) => x.table === a.table)
    if (!b) continue
    if (a.rows !== b.rows) out.push(`${a.table}: ${a.rows} rows in the source, ${b.rows} in the target`)
    else if (a.maxId !== b.maxId)
      out.push(`${a.table}: greatest id ${a.maxId} in the source, ${b.maxId} in the target`)
    else if (a.maxAt !== b.maxAt)
      out.push(`${a.table}: latest time ${a.maxAt} in the source, ${b.maxAt} in the target`)
    else if (a.fingerprint !== b.fingerprint)
      out.push(`${a.table}: same ${a.rows} rows counted, different contents`)
  }
  const head = (h: DatabaseSnapshot['auditHead']) => (h ? `block ${h.blockNo} ${h.hash}` : 'no seal')
  if (head(s.auditHead) !== head(t.auditHead)) {
    out.push(`audit chain head: ${head(s.auditHead)} in the source, ${head(t.auditHead)} in the target`)
  }
  if (s.maxAuditTxid !== null && BigInt(t.nextTxid) <= BigInt(s.maxAuditTxid)) {
    out.push(
      `the target server's transaction ids (next ${t.nextTxid}) are behind the audit rows' (up to ${s.maxAuditTxid}): rows written after the move would sort before the sealed ones; choose a server that is ahead, or advance this one's (docs/moving-tenants.md)`,
    )
  }
  for (const table of SEQUENCED) {
    const maxId = s.tables.find((x) => x.table === table)?.maxId
    const next = t.sequences[table]
    if (maxId != null && (next == null || BigInt(next) < BigInt(maxId))) {
      out.push(
        `${table}: the target's id sequence is at ${next ?? 'its start'}, behind id ${maxId}: new rows would collide (setval it)`,
      )
    }
  }
  const jobKey = (j: DatabaseSnapshot['jobs'][number]) => `${j.queue} ${j.state}`
  const targetJobs = new Map(t.jobs.map((j) => [jobKey(j), j]))
  for (const j of s.jobs) {
    const other = targetJobs.get(jobKey(j))
    targetJobs.delete(jobKey(j))
    if (!other || other.count !== j.count) {
      out.push(`pg-boss jobs ${jobKey(j)}: ${j.count} in the source, ${other?.count ?? 0} in the target`)
    } else if (other.fingerprint !== j.fingerprint) {
      out.push(`pg-boss jobs ${jobKey(j)}: ${j.count} in both, not the same jobs`)
    }
  }
  for (const j of targetJobs.values()) {
    out.push(`pg-boss jobs ${jobKey(j)}: 0 in the source, ${j.count} in the target`)
  }
  const named = (what: string, a: Record<string, string>, b: Record<string, string>) => {
    for (const name of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (!(name in b)) out.push(`pg-boss ${what} ${name} is missing in the target`)
      else if (!(name in a)) out.push(`pg-boss ${what} ${name} is only in the target`)
      else if (a[name] !== b[name]) out.push(`pg-boss ${what} ${name} has other settings in the target`)
    }
  }
  named('queue', s.queues, t.queues)
  named('schedule', s.schedules, t.schedules)
  return out
}

export interface MoveOptions {
  /** The owner's pool on the control database (the directory). */
  controlOwner: pg.Pool
  servers: Servers
  tenantId: string
  /** The target: a server of TENANT_SERVERS and a database (default: the source database's name). */
  to: { server: string; name?: string | undefined }
  /**
   * Move although tasks are still `running` in the source (their worker is gone for good: the
   * sweeper in the new database recovers them once the tenant is resumed). Never skips the
   * suspension or the comparison.
   */
  force?: boolean
  /** Check only: report what a move would find, and never switch. */
  check?: boolean
}

export interface MoveReport {
  tenantId: string
  /** The old directory entry: the database to drop once the tenant is resumed and looks right. */
  from: TenantDatabase
  to: TenantDatabase
  /** true: the directory entry now names `to`. */
  switched: boolean
  drain: DrainStatus
  /** Why the move is (or would be) refused; empty when it is (or could be) done. */
  problems: string[]
  /** The tables compared, with their row counts (the same in both databases when switched). */
  tables: { table: string; rows: number }[]
  /** Unfinished pg-boss jobs of the tenant, compared by queue and state. */
  jobs: number
  auditHead: DatabaseSnapshot['auditHead']
  /** What to do next. */
  next: string[]
}

/**
 * Moves a suspended, drained tenant to a copy of its database: refuses (MoveRefusedError, code
 * move_refused) unless the tenant is in a database of its own, suspended, drained (or `force`), and
 * the target exists, is no other tenant's, and compares equal to the source; then switches the
 * directory entry in one statement fenced on the entry it checked (still suspended, still in the
 * source). Never drops or changes the source: drop it once the tenant runs well in the target.
 * With `check`, returns the same report without switching and without throwing for a refusal.
 */
export async function moveTenant(o: MoveOptions): Promise<MoveReport> {
  const drain = await drainStatus(o.controlOwner, o.servers, o.tenantId)
  const from = drain.database
  if (!from) throw new MoveRefusedError(o.tenantId, drain.problems)
  const to: TenantDatabase = { server: o.to.server, name: o.to.name ?? from.name }
  if (!o.servers.has(to.server)) {
    throw new TenantError(
      'unknown_server',
      `server "${to.server}" is not in TENANT_SERVERS (${o.servers.names.join(', ')})`,
    )
  }
  if (!DATABASE_NAME.test(to.name)) {
    throw new MoveRefusedError(o.tenantId, [
      `database name "${to.name}" must be a lower-case identifier of at most 63 characters`,
    ])
  }
  // force: tasks left `running` by a worker that is gone are no reason to stay.
  const problems = drain.problems.filter((p) => !(o.force && p === runningProblem(drain.running, from)))
  const report: MoveReport = {
    tenantId: o.tenantId,
    from,
    to,
    switched: false,
    drain,
    problems,
    tables: [],
    jobs: 0,
    auditHead: null,
    next: [],
  }
  if (databaseKey(to) === databaseKey(from)) {
    problems.push(`the target ${databaseKey(to)} is the tenant's database already`)
  } else {
    const { rows } = await o.controlOwner.query(
      `SELECT id FROM ${APP_SCHEMA}.tenants WHERE database_server = $1 AND database_name = $2 AND id <> $3`,
      [to.server, to.name, o.tenantId],
    )
    if (rows.length > 0) problems.push(`the target ${databaseKey(to)} is tenant "${rows[0].id}"'s database`)
    else {
      const comparison = await compareDatabases(o.servers, o.tenantId, from, to)
      problems.push(...comparison.differences)
      report.tables = comparison.source.tables.map((t) => ({ table: t.table, rows: t.rows }))
      report.jobs = comparison.source.jobs.reduce((n, j) => n + j.count, 0)
      report.auditHead = comparison.source.auditHead
    }
  }
  if (o.check) {
    report.next =
      problems.length === 0
        ? [`equilateral tenant move ${o.tenantId} --to ${databaseKey(to)}`]
        : ['fix the problems listed (wait for the drain, copy the database again), then check again']
    return report
  }
  if (problems.length > 0) throw new MoveRefusedError(o.tenantId, problems)
  const { rowCount } = await o.controlOwner.query(
    `UPDATE ${APP_SCHEMA}.tenants SET database_server = $2, database_name = $3, updated_at = now()
     WHERE id = $1 AND database_server = $4 AND database_name = $5 AND status = 'suspended'`,
    [o.tenantId, to.server, to.name, from.server, from.name],
  )
  if (rowCount !== 1) {
    throw new MoveRefusedError(o.tenantId, [
      `its directory entry changed while it was being checked (resumed, or moved by someone else): check again`,
    ])
  }
  report.switched = true
  report.next = [
    `equilateral tenant resume ${o.tenantId}: workers serve ${databaseKey(to)} from their next directory refresh (TENANT_REFRESH_MS)`,
    `keep ${databaseKey(from)} until the tenant runs well in ${databaseKey(to)}, then drop it (DROP DATABASE ${pg.escapeIdentifier(from.name)} on server ${from.server})`,
  ]
  return report
}

/** `server` or `server/database` (the `--to` of `equilateral tenant move`). */
export function parseMoveTarget(value: string): { server: string; name?: string } {
  const [server, name, extra] = value.split('/')
  if (!server || extra !== undefined || (name !== undefined && !DATABASE_NAME.test(name))) {
    throw new InvalidInputError(
      `--to ${JSON.stringify(value).slice(0, 80)} must be <server> or <server>/<database>, the database a lower-case identifier`,
    )
  }
  return name === undefined ? { server } : { server, name }
}
