// Moving a tenant to another server (database-per-tenant), the documented procedure end to end
// (docs/moving-tenants.md): workflows run in the tenant's database on server a, more are queued with
// no worker, the tenant is suspended and drained, its database is copied to server b with
// pg_dump | pg_restore, and `moveTenant` checks the copy (finding nothing left behind, and naming
// what a bad copy lacks) before switching the directory entry; resumed, the queued workflows finish
// in the new database and the old one is left as it was. Also refused: an active tenant, a tenant
// with a task running.
//
// Server b is an embedded PostgreSQL 18 of this file's own. pg_dump must be at least the source
// server's version: with the installed pg_dump too old for the test server (an embedded 18 test
// server and a pg_dump 15, say), the copy is made on the test server itself instead (CREATE DATABASE
// ... TEMPLATE, server a to server a under another name), which exercises the same checks and switch.
import { execFile, spawn } from 'node:child_process'
import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import type { TenantDatabase } from '../../src/tenancy/placement.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { compareDatabases, drainStatus, MoveRefusedError, moveTenant } from '../../src/tenancy/move.ts'
import { childEnv, cliProcesses } from '../cli/run.ts'
import { pgContext, queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'
import { ownServer } from '../helpers/server.ts'

const execFileP = promisify(execFile)

interface DumpTools {
  dump: string
  restore: string
  major: number
}

/** pg_dump and pg_restore of the newest PostgreSQL installed (PG_BIN, /usr/lib/postgresql/*, PATH). */
async function findDumpTools(): Promise<DumpTools | null> {
  const versions = await readdir('/usr/lib/postgresql').catch(() => [] as string[])
  const dirs = [
    ...(process.env.PG_BIN ? [process.env.PG_BIN] : []),
    ...versions.sort((x, y) => Number(y) - Number(x)).map((v) => `/usr/lib/postgresql/${v}/bin`),
    '',
  ]
  for (const dir of dirs) {
    const dump = dir ? path.join(dir, 'pg_dump') : 'pg_dump'
    try {
      const { stdout } = await execFileP(dump, ['--version'])
      const major = Number(/\(PostgreSQL\) (\d+)/.exec(stdout)?.[1])
      if (major) return { dump, restore: dir ? path.join(dir, 'pg_restore') : 'pg_restore', major }
    } catch {
      // not there: the next candidate
    }
  }
  return null
}

async function serverMajor(url: string): Promise<number> {
  const [row] = await queryOnce<{ v: string }>(url, `SELECT current_setting('server_version_num') AS v`)
  return Math.floor(Number(row?.v) / 10_000)
}

/** The next transaction id the server will assign (64-bit). */
async function nextXid(url: string): Promise<bigint> {
  const [row] = await queryOnce<{ v: string }>(
    url,
    `SELECT pg_snapshot_xmax(pg_current_snapshot())::text AS v`,
  )
  return BigInt(row?.v ?? 0)
}

/** Uses up `n` transaction ids (a few hundred thousand a second). */
async function burnXids(url: string, n: number): Promise<void> {
  await queryOnce(
    url,
    `DO $$ BEGIN FOR i IN 1..${n} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$`,
  )
}

// Server b is new: its transaction ids are behind the test server's, and a move onto it is refused
// until they are advanced past the copied audit rows' (see the third test). Beyond a few million
// that takes too long for a test: the copy stays on the test server then.
const XID_BURN_LIMIT = 5_000_000n
const ctx = pgContext()
const found = await findDumpTools()
const dumpable = found && found.major >= (await serverMajor(ctx.adminUrl)) ? found : null
const candidateB = dumpable ? await ownServer() : null
const serverB =
  candidateB && (await nextXid(ctx.adminUrl)) - (await nextXid(candidateB.url)) < XID_BURN_LIMIT
    ? candidateB
    : null
const tools = serverB ? dumpable : null

const echo = defineAgent({ id: 'echo', handler: async (c) => ({ echoed: c.input }) })
let openGate: () => void = () => {}
const gate = new Promise<void>((resolve) => (openGate = resolve))
const gated = defineAgent({
  id: 'gated',
  handler: async () => {
    await gate
    return { ok: true }
  },
})
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'first', agent: echo },
    { key: 'second', agent: echo, dependsOn: ['first'] },
  ],
})
const held = defineWorkflow({ name: 'held', tasks: [{ key: 'only', agent: gated }] })

const tenantServers = { a: ctx.adminUrl, ...(serverB ? { b: serverB.url } : {}) }
const TARGET = serverB ? 'b' : 'a'
const { engine, db } = await testEngine({
  agents: [echo, gated],
  workflows: [pair, held],
  config: {
    isolationMode: 'database-per-tenant',
    tenantServers,
    tenantDatabasePrefix: `${ctx.prefix}t_`,
    tenantRefreshMs: 200,
    shutdownGraceMs: 10_000,
  },
})
const controlOwner = new pg.Pool({ connectionString: db.url, max: 2 })
afterAll(() => controlOwner.end())
const servers = engine.servers
const { run } = cliProcesses(
  childEnv({
    DATABASE_URL: db.url,
    MIGRATION_DATABASE_URL: db.url,
    TENANT_ISOLATION_MODE: 'database-per-tenant',
    TENANT_SERVERS: Object.entries(tenantServers)
      .map(([name, url]) => `${name}=${url}`)
      .join(' '),
    LOG_LEVEL: 'warn',
  }),
)

const ID = 'mover'
const DONE = 20
const QUEUED = 5
let source: TenantDatabase
/** The good copy's name on the target server. */
let copyName = ''
const queuedIds: string[] = []
const allIds: string[] = []

const ownerUrl = (d: TenantDatabase) => servers.ownerUrl(d.server, d.name)
const ms = (since: number) => Math.round(performance.now() - since)

async function createDatabase(server: string, name: string, template?: string): Promise<void> {
  const admin = servers.ownerUrl(server)
  if (template) {
    // CREATE DATABASE ... TEMPLATE needs the template to have no connections (the engine's pool may
    // still hold idle ones to a suspended tenant's database; they reconnect when used).
    await queryOnce(
      admin,
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [template],
    )
  }
  await queryOnce(
    admin,
    `CREATE DATABASE ${pg.escapeIdentifier(name)}${template ? ` TEMPLATE ${pg.escapeIdentifier(template)}` : ''}`,
  )
}

/** pg_dump -Fc | pg_restore, as an operator would. */
async function dumpRestore(from: TenantDatabase, to: TenantDatabase): Promise<void> {
  const t = tools as DumpTools
  const dump = spawn(t.dump, ['-Fc', '-d', ownerUrl(from)], { stdio: ['ignore', 'pipe', 'pipe'] })
  const restore = spawn(t.restore, ['--exit-on-error', '-d', ownerUrl(to)], {
    stdio: ['pipe', 'ignore', 'pipe'],
  })
  dump.stdout.pipe(restore.stdin)
  const done = (child: ReturnType<typeof spawn>, what: string) =>
    new Promise<void>((resolve, reject) => {
      let stderr = ''
      child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
      child.on('error', reject)
      child.on('close', (code) =>
        code === 0 ? resolve() : reject(new Error(`${what} exited with ${code}: ${stderr}`)),
      )
    })
  await Promise.all([done(dump, 'pg_dump'), done(restore, 'pg_restore')])
}

/** Copies the tenant's database to `to` (created here): pg_dump | pg_restore, or a same-server clone. */
async function copyDatabase(from: TenantDatabase, to: TenantDatabase): Promise<void> {
  if (tools) {
    await createDatabase(to.server, to.name)
    await dumpRestore(from, to)
  } else {
    await createDatabase(to.server, to.name, from.name)
  }
}

async function count(d: TenantDatabase, sql: string): Promise<number> {
  const [row] = await queryOnce<{ n: number }>(ownerUrl(d), `SELECT (${sql})::int AS n`)
  return row?.n ?? -1
}

async function refusal(p: Promise<unknown>): Promise<MoveRefusedError> {
  const error = await p.then(
    () => null,
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(MoveRefusedError)
  expect((error as MoveRefusedError).code).toBe('move_refused')
  return error as MoveRefusedError
}

async function directoryEntry(id: string): Promise<TenantDatabase> {
  const { rows } = await controlOwner.query(
    'SELECT database_server, database_name FROM equilateral.tenants WHERE id = $1',
    [id],
  )
  return { server: rows[0].database_server, name: rows[0].database_name }
}

describe('moving a tenant to another server', () => {
  it('runs workflows in the tenant database on server a, then queues more with no worker', async () => {
    const created = await engine.createTenant({
      id: ID,
      server: 'a',
      complianceProfile: { GDPR: { retentionDays: 30 } },
    })
    source = created.database as TenantDatabase
    expect(source.server).toBe('a')
    const worker = await engine.startWorker()
    const tenant = await engine.tenant(ID)
    for (let i = 0; i < DONE; i++) allIds.push((await tenant.startWorkflow('pair', i)).id)
    for (const id of allIds) expect((await settled(engine, ID, id)).status).toBe('completed')
    await worker.stop()
    // Sealing stops at the oldest transaction running on the server, so another test file's open
    // transaction (files run side by side on one server) may hold the rows back for a moment.
    const sealed = await eventually(
      async () => {
        const report = await engine.sealAudit()
        return report.blocks > 0 ? report : undefined
      },
      60_000,
      200,
      'audit rows sealed',
    )
    expect(sealed.blocks).toBeGreaterThan(0)
    for (let i = 0; i < QUEUED; i++) {
      const { id } = await tenant.startWorkflow('pair', 100 + i)
      queuedIds.push(id)
      allIds.push(id)
    }
    expect(
      await count(source, `SELECT count(*) FROM equilateral.agent_coordination WHERE status = 'queued'`),
    ).toBe(QUEUED)
  })

  it('refuses to move an active tenant', async () => {
    const error = await refusal(
      moveTenant({ controlOwner, servers, tenantId: ID, to: { server: TARGET, name: 'whatever' } }),
    )
    expect(error.message).toMatch(/it is active: suspend it first/)
    expect(await directoryEntry(ID)).toEqual(source)
  })

  it('suspends and drains the tenant, copies its database; the check finds nothing left behind', async () => {
    await engine.suspendTenant(ID)
    await engine.refreshTenants()
    const drain = await drainStatus(controlOwner, servers, ID)
    expect(drain).toMatchObject({ status: 'suspended', running: 0, drained: true, problems: [] })
    expect(drain.waitingJobs).toBe(QUEUED)

    copyName = tools ? source.name : `${source.name.slice(0, 50)}_copy`
    const target = { server: TARGET, name: copyName }
    let at = performance.now()
    await copyDatabase(source, target)
    const copyMs = ms(at)
    at = performance.now()
    let comparison = await compareDatabases(servers, ID, source, target)
    const compareMs = ms(at)
    const behind = BigInt(comparison.source.maxAuditTxid ?? 0) - BigInt(comparison.target?.nextTxid ?? 0) + 1n
    if (behind > 0n) {
      // A new server: audit rows written there would get smaller txids than the copied ones.
      expect(comparison.differences).toEqual([
        expect.stringMatching(/^the target server's transaction ids \(next \d+\) are behind the audit rows'/),
      ])
      await burnXids(servers.ownerUrl(TARGET), Number(behind) + 10)
      comparison = await compareDatabases(servers, ID, source, target)
    }
    expect(comparison.differences).toEqual([])
    const rows = Object.fromEntries(comparison.source.tables.map((t) => [t.table, t.rows]))
    expect(rows).toMatchObject({
      tenants: 1,
      workflows: DONE + QUEUED,
      agent_coordination: 2 * (DONE + QUEUED),
    })
    expect(rows.agent_audit_log).toBeGreaterThan(0)
    expect(rows.compliance_events).toBeGreaterThan(0)
    expect(comparison.source.auditHead).not.toBeNull()
    expect(comparison.target?.auditHead).toEqual(comparison.source.auditHead)

    const check = await moveTenant({
      controlOwner,
      servers,
      tenantId: ID,
      to: { server: TARGET },
      check: true,
    })
    if (tools) expect(check.to).toEqual({ server: 'b', name: source.name })
    else {
      // Same server: the default name is the source's own database.
      expect(check.problems).toEqual([`the target a/${source.name} is the tenant's database already`])
    }
    const named = await moveTenant({
      controlOwner,
      servers,
      tenantId: ID,
      to: target,
      check: true,
    })
    expect(named).toMatchObject({ switched: false, problems: [], jobs: QUEUED })
    expect(await directoryEntry(ID)).toEqual(source)
    console.log(
      `tenant-move: ${DONE + QUEUED} workflows (${rows.agent_audit_log} audit rows, ${rows.compliance_events} compliance events): ` +
        `copy ${copyMs} ms (${tools ? `pg_dump ${tools.major} | pg_restore to PostgreSQL ${await serverMajor(servers.ownerUrl(TARGET))}` : 'CREATE DATABASE ... TEMPLATE'}), ` +
        `compare ${compareMs} ms${behind > 0n ? `; ${behind} transaction ids used up on the target` : ''}`,
    )
  })

  it('refuses a copy that lacks an audit row, or a job, naming what differs', async () => {
    const good = { server: TARGET, name: copyName }
    const noAudit = { server: TARGET, name: `${copyName.slice(0, 50)}_noaudit` }
    const noJob = { server: TARGET, name: `${copyName.slice(0, 50)}_nojob` }
    const redacted = { server: TARGET, name: `${copyName.slice(0, 50)}_redacted` }
    await createDatabase(TARGET, noAudit.name, good.name)
    await createDatabase(TARGET, noJob.name, good.name)
    await createDatabase(TARGET, redacted.name, good.name)
    // The audit trail is append-only even for the owner (a purge removes whole blocks only): a
    // superuser past the triggers lets a row go.
    await queryOnce(
      ownerUrl(noAudit),
      `DO $$ BEGIN
         PERFORM set_config('session_replication_role', 'replica', true);
         DELETE FROM equilateral.agent_audit_log WHERE id = (SELECT min(id) FROM equilateral.agent_audit_log);
       END $$`,
    )
    await queryOnce(
      ownerUrl(noJob),
      `DELETE FROM pgboss.job WHERE id = (SELECT id FROM pgboss.job WHERE data->>'t' = $1 AND state = 'created' ORDER BY id LIMIT 1)`,
      [ID],
    )
    const audit = await refusal(moveTenant({ controlOwner, servers, tenantId: ID, to: noAudit }))
    expect(audit.problems).toEqual([
      expect.stringMatching(/^agent_audit_log: \d+ rows in the source, \d+ in the target$/),
    ])
    // A copy in which a row was redacted since (with its record, as the trigger writes it).
    await queryOnce(
      ownerUrl(redacted),
      `DO $$ BEGIN
         PERFORM set_config('equilateral.audit_redaction', 'on', true);
         UPDATE equilateral.agent_audit_log SET action_data = '{"$redacted": "x"}'
         WHERE id = (SELECT min(id) FROM equilateral.agent_audit_log);
       END $$`,
    )
    const redaction = await refusal(moveTenant({ controlOwner, servers, tenantId: ID, to: redacted }))
    expect(redaction.problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^agent_audit_redactions: 0 rows in the source, 1 in the target$/),
      ]),
    )
    const job = await refusal(moveTenant({ controlOwner, servers, tenantId: ID, to: noJob }))
    expect(job.problems).toEqual([
      `pg-boss jobs eq.echo created: ${QUEUED} in the source, ${QUEUED - 1} in the target`,
    ])
    const missing = await refusal(
      moveTenant({ controlOwner, servers, tenantId: ID, to: { server: TARGET, name: 'no_such_database' } }),
    )
    expect(missing.problems).toEqual([expect.stringMatching(/does not exist/)])
    expect(await directoryEntry(ID)).toEqual(source)
  })

  it('the command line: --check says ready (exit 0); a refused move exits 2 naming the difference', async () => {
    const check = await run(['tenant', 'move', ID, '--to', `${TARGET}/${copyName}`, '--check'])
    expect(check.code, check.stderr).toBe(0)
    expect(JSON.parse(check.stdout)).toMatchObject({
      switched: false,
      problems: [],
      drain: { drained: true },
    })
    const refused = await run(['tenant', 'move', ID, '--to', `${TARGET}/${copyName.slice(0, 50)}_noaudit`])
    expect(refused.code).toBe(2)
    expect(refused.stderr).toMatch(/not moved: agent_audit_log: \d+ rows in the source/)
    const malformed = await run(['tenant', 'move', ID, '--to', 'b/Not-A-Name'])
    expect(malformed.code).toBe(2)
    expect(await directoryEntry(ID)).toEqual(source)
  })

  it('switches the directory entry; resumed, the queued workflows complete in the new database only', async () => {
    const target = { server: TARGET, name: copyName }
    const before = {
      audit: await count(source, 'SELECT count(*) FROM equilateral.agent_audit_log'),
      events: await count(source, 'SELECT count(*) FROM equilateral.compliance_events'),
    }
    const at = performance.now()
    const report = await moveTenant({ controlOwner, servers, tenantId: ID, to: target })
    const moveMs = ms(at)
    expect(report).toMatchObject({ switched: true, from: source, to: target, problems: [], jobs: QUEUED })
    expect(report.tables.find((t) => t.table === 'workflows')?.rows).toBe(DONE + QUEUED)
    expect(report.next.join('\n')).toMatch(/resume[\s\S]*drop it/)
    expect(await directoryEntry(ID)).toEqual(target)

    await engine.resumeTenant(ID)
    const worker = await engine.startWorker()
    await engine.refreshTenants()
    const resumedAt = performance.now()
    for (const id of queuedIds) expect((await settled(engine, ID, id)).status).toBe('completed')
    console.log(
      `tenant-move: check and switch ${moveMs} ms; ${QUEUED} queued workflows completed ${ms(resumedAt)} ms after the resume`,
    )
    await worker.stop()

    // The new database has everything; the old one is as it was at the switch.
    expect(await count(target, `SELECT count(*) FROM equilateral.workflows WHERE status = 'completed'`)).toBe(
      DONE + QUEUED,
    )
    expect(await count(source, `SELECT count(*) FROM equilateral.workflows WHERE status = 'completed'`)).toBe(
      DONE,
    )
    expect(await count(source, `SELECT count(*) FROM equilateral.workflows WHERE status = 'running'`)).toBe(
      QUEUED,
    )
    expect(await count(source, 'SELECT count(*) FROM equilateral.agent_audit_log')).toBe(before.audit)
    expect(await count(source, 'SELECT count(*) FROM equilateral.compliance_events')).toBe(before.events)
    expect(await count(target, 'SELECT count(*) FROM equilateral.agent_audit_log')).toBeGreaterThan(
      before.audit,
    )
    expect(await count(target, 'SELECT count(*) FROM equilateral.compliance_events')).toBeGreaterThan(
      before.events,
    )
    // The audit chain goes on in the new database, from the head that was copied.
    await engine.sealAudit()
    const [verified] = await engine.verifyAudit(ID)
    expect(verified).toMatchObject({ ok: true })

    // Moving it again is refused: it is active (and its database is the target now).
    const again = await refusal(moveTenant({ controlOwner, servers, tenantId: ID, to: source }))
    expect(again.message).toMatch(/it is active/)
  })

  it('refuses a suspended tenant with a task running (force does not skip the comparison)', async () => {
    const busy = await engine.createTenant({ id: 'busy', server: 'a' })
    const database = busy.database as TenantDatabase
    const worker = await engine.startWorker()
    const { id } = await (await engine.tenant('busy')).startWorkflow('held', {})
    const running = `SELECT count(*) FROM equilateral.agent_coordination WHERE status = 'running'`
    await eventually(async () => ((await count(database, running)) === 1 ? true : undefined))
    await engine.suspendTenant('busy')

    const drain = await drainStatus(controlOwner, servers, 'busy')
    expect(drain).toMatchObject({ status: 'suspended', running: 1, activeJobs: 1, drained: false })
    const error = await refusal(
      moveTenant({ controlOwner, servers, tenantId: 'busy', to: { server: TARGET, name: 'busy_copy' } }),
    )
    expect(error.problems).toEqual([
      expect.stringMatching(/^1 task\(s\) running in a\//),
      expect.stringMatching(/does not exist/),
    ])
    const forced = await refusal(
      moveTenant({
        controlOwner,
        servers,
        tenantId: 'busy',
        to: { server: TARGET, name: 'busy_copy' },
        force: true,
      }),
    )
    expect(forced.problems).toEqual([expect.stringMatching(/does not exist/)])

    // The running task finishes (or is released) and the tenant is drained.
    openGate()
    await eventually(async () => ((await count(database, running)) === 0 ? true : undefined))
    expect((await drainStatus(controlOwner, servers, 'busy')).drained).toBe(true)
    await worker.stop()
    expect(id).toBeTruthy()
  })
})
