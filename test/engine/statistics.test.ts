// The statistics pass (src/flow/statistics.ts, drizzle/tenant/0013): on a fresh database the hot
// tables have no planner statistics until autovacuum's first analyze (a minute or more), and CLAIM
// scans the tenant's whole index range instead of probing (tenant_id, id). The pass gives them
// statistics as soon as they hold enough rows, through a SECURITY DEFINER function only the
// application role may run (it owns nothing and cannot ANALYZE itself), and does nothing when
// nothing is due. Autovacuum is turned off on the first group's tables, so only the pass analyzes
// them; the worker tests tell the pass's analyze (last_analyze) from autovacuum's (last_autoanalyze).
import { Writable } from 'node:stream'
import pg from 'pg'
import { pino } from 'pino'
import { beforeAll, describe, expect, it } from 'vitest'
import type { IsolationMode } from '../../src/config.ts'
import { withDatabase } from '../../src/db/provision.ts'
import { clientDb, runtimeConnectionString, type TenantScope, withTenantTx } from '../../src/db/tx.ts'
import { CLAIM } from '../../src/flow/claim.ts'
import {
  HOT_TABLES,
  STATISTICS_MIN_CHANGES,
  StatisticsPasses,
  statisticsPass,
} from '../../src/flow/statistics.ts'
import { defineAgent, defineWorkflow, type Engine } from '../../src/index.ts'
import { pgContext, queryOnce } from '../helpers/db.ts'
import { eventually, testEngine } from '../helpers/engine.ts'

const noop = defineAgent({ id: 'stats-noop', handler: async () => null })
const diamond = defineWorkflow({
  name: 'stats-diamond',
  tasks: [
    { key: 'a', agent: noop },
    { key: 'b', agent: noop, dependsOn: ['a'] },
    { key: 'c', agent: noop, dependsOn: ['a'] },
    { key: 'd', agent: noop, dependsOn: ['b', 'c'] },
  ],
})

const LOCK_CLASS = 0x6571616e // 'eqan': analyze_hot_tables()'s try-lock, high half of the key

interface TableStats {
  relname: string
  n_live_tup: number
  n_mod_since_analyze: number
  last_analyze: Date | null
  last_autoanalyze: Date | null
}

/** The hot tables' counters in `schema`, read by the owner. */
async function tableStats(url: string, schema: string): Promise<Record<string, TableStats>> {
  const rows = await queryOnce<TableStats>(
    url,
    `SELECT relname::text, n_live_tup::int, n_mod_since_analyze::int, last_analyze, last_autoanalyze
     FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY ($2)`,
    [schema, HOT_TABLES],
  )
  return Object.fromEntries(rows.map((r) => [r.relname, r]))
}

/**
 * Starts `n` diamonds (4 tasks each) in one transaction of a session of our own, then has that
 * session report its table counters at once (they are otherwise sent up to 10 s later), and waits
 * until pg_stat_user_tables shows them.
 */
async function startDiamonds(
  engine: Engine,
  db: { appUrl: string; url: string },
  tenantId: string,
  schema: string,
  n: number,
) {
  const tenant = await engine.tenant(tenantId)
  const client = new pg.Client({ connectionString: runtimeConnectionString(db.appUrl, 'equilateral_app') })
  await client.connect()
  const before = (await tableStats(db.url, schema)).agent_coordination?.n_live_tup ?? 0
  try {
    await client.query('BEGIN')
    for (let i = 0; i < n; i++) await tenant.startWorkflow(diamond.name, { i }, { db: clientDb(client) })
    await client.query('COMMIT')
    await client.query('SELECT pg_stat_force_next_flush()')
  } finally {
    await client.end()
  }
  await eventually(
    async () =>
      ((await tableStats(db.url, schema)).agent_coordination?.n_live_tup ?? 0) >= before + 4 * n || undefined,
    20_000,
    25,
    'table counters to be reported',
  )
}

/** The scan of `agent_coordination t` in CLAIM's plan, for these queued tasks, as the app role plans it. */
async function claimScan(pool: pg.Pool, scope: TenantScope, taskIds: string[]) {
  // A few hundred tasks fit in a few pages, where reading them all beats 16 index probes once the
  // planner knows the table's size; the question here is which index condition CLAIM gets.
  const { rows } = await withTenantTx(pool, scope, async (db) => {
    await db.executeSql('SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off', [])
    return db.executeSql(`EXPLAIN (FORMAT JSON) ${CLAIM}`, [
      scope.tenantId,
      JSON.stringify(taskIds.map((id) => ({ id, attempt: 1 }))),
      'worker-x',
      taskIds,
      null,
    ])
  })
  const nodes: Record<string, any>[] = []
  const walk = (node: Record<string, any>) => {
    nodes.push(node)
    for (const child of node.Plans ?? []) walk(child)
  }
  walk(rows[0]['QUERY PLAN'][0].Plan)
  const scan = nodes.find(
    (n) => n['Relation Name'] === 'agent_coordination' && n.Alias === 't' && n['Node Type'] !== 'ModifyTable',
  )
  if (!scan) throw new Error(`no scan of agent_coordination t in ${JSON.stringify(rows[0])}`)
  return {
    node: scan['Node Type'] as string,
    index: scan['Index Name'] as string | undefined,
    cond: String(scan['Index Cond'] ?? ''),
    filter: String(scan.Filter ?? ''),
  }
}

describe('statistics pass, row-level', () => {
  let ctx: Awaited<ReturnType<typeof testEngine>>
  let scope: TenantScope
  let app: pg.Pool
  const queued: string[] = []

  beforeAll(async () => {
    // STATISTICS_INTERVAL_MS=0: the engine runs no pass of its own, the tests call it.
    ctx = await testEngine({ agents: [noop], workflows: [diamond], config: { statisticsIntervalMs: 0 } })
    await ctx.engine.createTenant({ id: 'acme' })
    scope = (await ctx.engine.tenant('acme')).scope
    app = ctx.engine.pool
    for (const table of HOT_TABLES)
      await queryOnce(ctx.db.url, `ALTER TABLE equilateral.${table} SET (autovacuum_enabled = false)`)
  })

  it('the application role may run the function, not ANALYZE the tables itself; nobody else may run it', async () => {
    const client = new pg.Client({
      connectionString: runtimeConnectionString(ctx.db.appUrl, 'equilateral_app'),
    })
    const notices: string[] = []
    client.on('notice', (n) => notices.push(n.message ?? ''))
    await client.connect()
    try {
      expect((await client.query('SELECT current_user AS u')).rows[0].u).toBe('equilateral_app')
      expect((await client.query('SELECT * FROM equilateral.analyze_hot_tables()')).rows).toEqual([])
      await client.query('ANALYZE equilateral.agent_coordination')
      // PostgreSQL skips the table with a warning (the wording varies between versions).
      expect(notices).toEqual([expect.stringMatching(/skipping/)])
    } finally {
      await client.end()
    }
    expect((await tableStats(ctx.db.url, 'equilateral')).agent_coordination?.last_analyze).toBeNull()
    const [grants] = await queryOnce(
      ctx.db.url,
      `SELECT p.prosecdef AS definer, p.proconfig AS config,
         has_function_privilege('equilateral_app', p.oid, 'EXECUTE') AS app,
         has_function_privilege('equilateral_observer', p.oid, 'EXECUTE') AS observer,
         has_function_privilege($1, p.oid, 'EXECUTE') AS public_login
       FROM pg_proc p WHERE p.oid = 'equilateral.analyze_hot_tables()'::regprocedure`,
      [pgContext().appUser.user],
    )
    expect(grants).toEqual({
      definer: true,
      config: ['search_path=equilateral, pg_temp'],
      app: true,
      observer: false,
      public_login: true, // the test's login is a member of equilateral_app
    })
    const [publicGrant] = await queryOnce(
      ctx.db.url,
      `SELECT count(*)::int AS n FROM pg_proc p, aclexplode(p.proacl) a
       WHERE p.oid = 'equilateral.analyze_hot_tables()'::regprocedure AND a.grantee = 0`,
    )
    expect(publicGrant?.n).toBe(0)
  })

  it('does nothing while nothing is due: empty tables, or fewer rows than matter', async () => {
    expect(await statisticsPass(app)).toEqual([])
    expect(await statisticsPass(app, { fresh: true })).toEqual([])
    await startDiamonds(ctx.engine, ctx.db, 'acme', 'equilateral', 10) // 40 tasks, 10 workflows
    expect(await statisticsPass(app)).toEqual([])
    expect(await statisticsPass(app, { fresh: true })).toEqual([])
    const stats = await tableStats(ctx.db.url, 'equilateral')
    expect(stats.agent_coordination).toMatchObject({ n_live_tup: 40, last_analyze: null })
  })

  it('once enough tasks exist, without statistics CLAIM scans the tenant range (PostgreSQL < 17)', async () => {
    await startDiamonds(ctx.engine, ctx.db, 'acme', 'equilateral', 140) // 600 tasks, 150 workflows
    const rows = await queryOnce<{ id: string }>(
      ctx.db.url,
      `SELECT id FROM equilateral.agent_coordination WHERE status = 'queued' ORDER BY id LIMIT 16`,
    )
    queued.push(...rows.map((r) => r.id))
    const scan = await claimScan(app, scope, queued)
    // The problem the pass solves: tenant_id = $1 is taken for ~1 row, so the task ids are a filter
    // over the tenant's whole range. PostgreSQL 17 costs such array conditions anew and probes
    // (tenant_id, id) even without statistics at this size.
    const [version] = await queryOnce<{ v: number }>(
      ctx.db.url,
      `SELECT current_setting('server_version_num')::int AS v`,
    )
    if (version!.v < 170000) {
      expect(scan.cond).not.toMatch(/id = ANY/)
      expect(scan.filter).toMatch(/id = ANY/)
    }
  })

  it('holds off while another caller is in its pass, and passes over a table someone holds', async () => {
    const owner = new pg.Client({ connectionString: ctx.db.url })
    await owner.connect()
    try {
      await owner.query('BEGIN')
      await owner.query(
        `SELECT pg_advisory_xact_lock(($1::bigint << 32) | 'equilateral'::regnamespace::oid::bigint)`,
        [LOCK_CLASS],
      )
      expect(await statisticsPass(app)).toEqual([])
      await owner.query('ROLLBACK')
      // A VACUUM, an autovacuum or a migration on agent_coordination: not waited for.
      await owner.query('BEGIN')
      await owner.query('LOCK TABLE equilateral.agent_coordination IN SHARE UPDATE EXCLUSIVE MODE')
      expect(await statisticsPass(app)).toEqual([
        {
          schema: 'equilateral',
          table: 'workflows',
          reason: 'never analyzed',
          liveRows: 150,
          changedRows: 150,
        },
      ])
      await owner.query('ROLLBACK')
    } finally {
      await owner.end()
    }
    expect((await tableStats(ctx.db.url, 'equilateral')).agent_coordination?.last_analyze).toBeNull()
  })

  it('gives agent_coordination statistics, and CLAIM then probes (tenant_id, id)', async () => {
    expect(await statisticsPass(app)).toEqual([
      {
        schema: 'equilateral',
        table: 'agent_coordination',
        reason: 'never analyzed',
        liveRows: 600,
        changedRows: 600,
      },
    ])
    const stats = await tableStats(ctx.db.url, 'equilateral')
    expect(stats.agent_coordination?.last_analyze).toBeInstanceOf(Date)
    const pgStats = await queryOnce(
      ctx.db.url,
      `SELECT n_distinct FROM pg_stats WHERE schemaname = 'equilateral' AND tablename = 'agent_coordination'
         AND attname = 'tenant_id'`,
    )
    expect(pgStats).toEqual([{ n_distinct: 1 }])
    const scan = await claimScan(app, scope, queued)
    expect(scan).toMatchObject({
      node: expect.stringMatching(/^Index/),
      index: expect.stringMatching(/^agent_coordination_/),
    })
    expect(scan.cond).toMatch(/tenant_id = 'acme'/)
    expect(scan.cond).toMatch(/\bid = ANY/)
    expect(scan.filter).not.toMatch(/\bid = ANY/)
  })

  it('is a no-op when nothing is due: one read, no analyze', async () => {
    const before = await tableStats(ctx.db.url, 'equilateral')
    expect(await statisticsPass(app)).toEqual([])
    const after = await tableStats(ctx.db.url, 'equilateral')
    for (const table of HOT_TABLES) expect(after[table]?.last_analyze).toEqual(before[table]?.last_analyze)
  })

  it('passes over a database not migrated to the function yet (code deployed before `migrate`)', async () => {
    await startDiamonds(ctx.engine, ctx.db, 'acme', 'equilateral', STATISTICS_MIN_CHANGES)
    await queryOnce(ctx.db.url, 'DROP FUNCTION equilateral.analyze_hot_tables()')
    expect(await statisticsPass(app)).toEqual([])
  })
})

describe('statistics pass, counters not reported yet', () => {
  let ctx: Awaited<ReturnType<typeof testEngine>>

  beforeAll(async () => {
    ctx = await testEngine({ agents: [noop], workflows: [diamond], config: { statisticsIntervalMs: 0 } })
    await ctx.engine.createTenant({ id: 'acme' })
    for (const table of HOT_TABLES)
      await queryOnce(ctx.db.url, `ALTER TABLE equilateral.${table} SET (autovacuum_enabled = false)`)
  })

  it("a worker's first pass analyzes a filled table whose counters do not show it yet", async () => {
    await startDiamonds(ctx.engine, ctx.db, 'acme', 'equilateral', 40) // 160 tasks, 40 workflows
    // As after a burst of starts from sessions that then idle (they report up to 10 s later), a
    // crash, or a restore: the counters know nothing of the rows.
    await queryOnce(
      ctx.db.url,
      `SELECT pg_stat_reset_single_table_counters('equilateral.agent_coordination'::regclass)`,
    )
    expect((await tableStats(ctx.db.url, 'equilateral')).agent_coordination).toMatchObject({
      n_live_tup: 0,
      n_mod_since_analyze: 0,
    })
    // A regular round trusts the counters (the workers' own changes soon show)...
    expect(await statisticsPass(ctx.engine.pool)).toEqual([])
    // ... a worker's first pass judges a table never analyzed by its size: 160 tasks are more than
    // 4 pages; 40 workflows are not.
    expect(await statisticsPass(ctx.engine.pool, { fresh: true })).toEqual([
      {
        schema: 'equilateral',
        table: 'agent_coordination',
        reason: 'never analyzed',
        liveRows: 0,
        changedRows: 0,
      },
    ])
    expect((await tableStats(ctx.db.url, 'equilateral')).agent_coordination?.last_analyze).toBeInstanceOf(
      Date,
    )
    expect(await statisticsPass(ctx.engine.pool, { fresh: true })).toEqual([])
  })
})

describe.each<IsolationMode>(['row-level', 'schema-per-tenant', 'database-per-tenant'])(
  'the statistics pass of a worker process, %s',
  (mode) => {
    let ctx: Awaited<ReturnType<typeof testEngine>>

    beforeAll(async () => {
      ctx = await testEngine({
        agents: [noop],
        workflows: [diamond],
        config: { isolationMode: mode, statisticsIntervalMs: 100 },
      })
    })

    it('gives the hot tables of every tenant it serves statistics, without autovacuum', async () => {
      const { engine, db } = ctx
      const tenants = ['globex', 'initech']
      for (const id of tenants) {
        await engine.createTenant({ id })
        const tenant = await engine.tenant(id)
        for (let i = 0; i < 30; i++) await tenant.startWorkflow(diamond.name, { i }) // 120 tasks
      }
      const places = await queryOnce<{
        id: string
        schema_name: string | null
        database_name: string | null
      }>(
        db.url,
        'SELECT id, schema_name, database_name FROM equilateral.tenants WHERE id = ANY ($1) ORDER BY id',
        [tenants],
      )
      const worker = await engine.startWorker()
      try {
        for (const place of places) {
          const url = place.database_name ? withDatabase(pgContext().adminUrl, place.database_name) : db.url
          const schema = place.schema_name ?? 'equilateral'
          // last_analyze: a manual ANALYZE, the pass's (autovacuum's would be last_autoanalyze).
          const analyzedAt = await eventually(
            async () => (await tableStats(url, schema)).agent_coordination?.last_analyze ?? undefined,
            30_000,
            50,
            `statistics of ${place.id}'s tasks`,
          )
          expect(analyzedAt).toBeInstanceOf(Date)
          const rows = await queryOnce(
            url,
            `SELECT 1 FROM pg_stats WHERE schemaname = $1 AND tablename = 'agent_coordination' AND attname = 'tenant_id'`,
            [schema],
          )
          expect(rows).toHaveLength(1)
        }
      } finally {
        await worker.stop()
      }
    })
  },
)

describe('StatisticsPasses', () => {
  it('warns once about a database it cannot pass over, then retries quietly each interval', async () => {
    const lines: { level: number; msg: string }[] = []
    const sink = new Writable({
      write(chunk, _encoding, done) {
        for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line))
        done()
      },
    })
    // Nothing listens on port 1: every pass fails to connect.
    const pool = new pg.Pool({ connectionString: 'postgres://nobody@127.0.0.1:1/nowhere', max: 1 })
    const passes = new StatisticsPasses({ everyMs: 10, log: pino({ level: 'debug' }, sink) })
    const release = passes.hold('nowhere', pool)
    try {
      await eventually(
        () => (lines.filter((l) => l.msg === 'statistics pass failed again').length >= 3 ? true : undefined),
        20_000,
        10,
        'three failed passes',
      )
      expect(lines.filter((l) => l.level === 40).map((l) => l.msg)).toEqual([
        'statistics pass failed; retrying every interval',
      ])
    } finally {
      release()
      await passes.stop()
      await pool.end()
    }
  })
})
