// The engine behind a real PgBouncer in transaction mode (test/helpers/pgbouncer.ts), with fewer
// server connections than the engine's pools hold clients. What transaction pooling breaks, checked
// where a user would notice it:
// - named prepared statements: with DATABASE_POOLER=transaction workflows run (without it, two
//   clients preparing the same name on the one server connection collide: shown too);
// - session advisory locks: the sweeper's and the liveness pass's turns leave no lock on a server
//   connection once they end, and the next taker, on any client, gets the turn;
// - LISTEN: without DIRECT_DATABASE_URL there is no LISTEN session, and workers and result waiters
//   poll (result() still answers); with it, the LISTEN and liveness sessions go to the server
//   directly while the pools go through the pooler;
// - the connection budget metric names what goes through the pooler and what does not.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Config } from '../../src/config.ts'
import { poolerPoolOptions, withTurn } from '../../src/db/pooler.ts'
import { createEngine, type Engine } from '../../src/engine.ts'
import { LIVENESS_LOCK_CLASS, livenessPass } from '../../src/flow/liveness.ts'
import { TEST_ENGINE_CONFIG } from '../../src/testing.ts'
import { diamond, double, sum } from '../fixtures/workflows.ts'
import { createTestDatabase, pgContext, queryOnce, type TestDatabase } from '../helpers/db.ts'
import { havePgBouncer, type PgBouncer, startPgBouncer, withPgBouncer } from '../helpers/pgbouncer.ts'

const POOL_SIZE = 2

describe.skipIf(!havePgBouncer)(withPgBouncer('the engine behind PgBouncer in transaction mode'), () => {
  let bouncer: PgBouncer
  let db: TestDatabase
  const engines: Engine[] = []

  beforeAll(async () => {
    const { adminUrl, appUser } = pgContext()
    const app = new URL(adminUrl)
    app.username = appUser.user
    app.password = appUser.password
    bouncer = await startPgBouncer({ urls: [adminUrl, app.toString()], poolSize: POOL_SIZE })
    db = await createTestDatabase()
  })
  afterAll(async () => {
    await Promise.allSettled(engines.map((e) => e.close()))
    await db?.drop()
    await bouncer?.stop()
  })

  async function engineBehind(config: Partial<Config>): Promise<Engine> {
    const engine = await createEngine({
      connectionString: bouncer.through(db.appUrl),
      adminConnectionString: db.url,
      agents: [double, sum],
      workflows: [diamond],
      log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
      supervise: false,
      config: { ...TEST_ENGINE_CONFIG, databasePooler: 'transaction', ...config },
    })
    engines.push(engine)
    return engine
  }

  /** The sessions of the test database, by application_name, as the server sees them. */
  async function sessions(): Promise<Record<string, number>> {
    const rows = await queryOnce<{ app: string; n: number }>(
      db.url,
      `SELECT application_name AS app, count(*)::int AS n FROM pg_stat_activity
       WHERE datname = current_database() AND pid <> pg_backend_pid() GROUP BY 1`,
    )
    return Object.fromEntries(rows.map((r) => [r.app, r.n]))
  }

  it('runs workflows without LISTEN: workers and result waiters poll, on fewer server connections than clients', async () => {
    const engine = await engineBehind({ dbPoolMax: 8 })
    await engine.createTenant({ id: 'polling' })
    await engine.startWorker()
    const handle = await engine.tenant('polling')
    const started = await Promise.all(
      Array.from({ length: 12 }, (_, i) => handle.startWorkflow('diamond', { n: i })),
    )
    const outputs = await Promise.all(started.map((w) => w.result({ timeoutMs: 30_000 })))
    expect(outputs.map((o) => (o.d as { total: number }).total)).toEqual(started.map(() => 2))
    const seen = await sessions()
    // No session of its own anywhere: no LISTEN, no liveness lock.
    expect(seen['equilateral-listen'] ?? 0).toBe(0)
    expect(seen['equilateral-results'] ?? 0).toBe(0)
    expect(seen['equilateral-liveness'] ?? 0).toBe(0)
    const pools = await bouncer.pools()
    const app = pools.find((p) => p.database === db.name && p.user === pgContext().appUser.user)
    expect(app?.servers).toBeLessThanOrEqual(POOL_SIZE)
    // The metric says the engine's and pg-boss's connections go through the pooler.
    const metric = await engine.metrics.registry.getSingleMetric('equilateral_db_connections')?.get()
    const pooled = metric?.values.filter((v) => v.labels.kind === 'pooled' && v.value > 0) ?? []
    expect(pooled.map((v) => v.labels.pool).sort()).toEqual(['app', 'boss'])
    await engine.close()
  })

  it('opens LISTEN and liveness sessions on DIRECT_DATABASE_URL while its pools go through the pooler', async () => {
    const engine = await engineBehind({ directDatabaseUrl: db.appUrl, dbPoolMax: 4 })
    await engine.createTenant({ id: 'direct' })
    await engine.startWorker()
    const handle = await engine.tenant('direct')
    const started = await handle.startWorkflow('diamond', { n: 3 })
    expect(await started.result({ timeoutMs: 30_000 })).toEqual({ d: { total: 2 } })
    const direct = await queryOnce<{ app: string; port: number }>(
      db.url,
      `SELECT application_name AS app, client_port AS port FROM pg_stat_activity
       WHERE datname = current_database() AND application_name IN ('equilateral-listen', 'equilateral-results', 'equilateral-liveness')`,
    )
    expect(direct.map((r) => r.app).sort()).toEqual([
      'equilateral-listen',
      'equilateral-liveness',
      'equilateral-results',
    ])
    const metric = await engine.metrics.registry.getSingleMetric('equilateral_db_connections')?.get()
    const of = (pool: string, kind: string) =>
      metric?.values.find((v) => v.labels.pool === pool && v.labels.kind === kind)?.value ?? 0
    expect([of('listen', 'direct'), of('results', 'direct'), of('liveness', 'direct')]).toEqual([1, 1, 1])
    await engine.close()
  })

  it('leaves no advisory lock on a server connection after the sweeper and liveness turns', async () => {
    const pool = new pg.Pool({
      connectionString: bouncer.through(db.appUrl),
      max: 4,
      ...poolerPoolOptions({ databasePooler: 'transaction' }),
    })
    try {
      const held = () =>
        queryOnce<{ n: number }>(
          db.url,
          `SELECT count(*)::int AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database
           WHERE l.locktype = 'advisory' AND d.datname = current_database()`,
        )
      // While a turn is held, a second taker (another client, maybe the same server connection's
      // next user) is refused; once it ended, nothing is left and the next taker gets it.
      let inner: boolean | undefined
      const ran = await withTurn(pool, 0x65717377, async () => {
        inner = await withTurn(pool, 0x65717377, async () => {})
      })
      expect([ran, inner]).toEqual([true, false])
      expect((await held())[0]?.n).toBe(0)
      expect(await withTurn(pool, 0x65717377, async () => {})).toBe(true)
      for (let i = 0; i < 3; i++) expect(await livenessPass(pool, async () => {})).toBeNull()
      expect((await held())[0]?.n).toBe(0)
      // The liveness pass's turn is the lock class's id 0: another pass meanwhile is 'busy'.
      let during: unknown
      await withTurn(pool, [LIVENESS_LOCK_CLASS, 0], async () => {
        during = await livenessPass(pool, async () => {})
      })
      expect(during).toBe('busy')
    } finally {
      await pool.end()
    }
  })

  it('needs DATABASE_POOLER=transaction: prepared statements collide on a shared server connection without it', async () => {
    // Two clients of a pool, one server connection (this pooler's pool for the superuser login is
    // POOL_SIZE; the first client's prepared statement meets the second's on the same server one).
    const prepared = new pg.Pool({ connectionString: bouncer.through(db.url), max: 2 * POOL_SIZE + 1 })
    const unprepared = new pg.Pool({
      connectionString: bouncer.through(db.url),
      max: 2 * POOL_SIZE + 1,
      ...poolerPoolOptions({ databasePooler: 'transaction' }),
    })
    const run = (pool: pg.Pool) =>
      Promise.allSettled(
        Array.from({ length: 2 * POOL_SIZE + 1 }, async () => {
          const client = await pool.connect()
          try {
            for (let i = 0; i < 5; i++)
              await client.query({ name: 'eq_probe', text: 'SELECT $1::int AS n', values: [i] })
          } finally {
            client.release()
          }
        }),
      )
    try {
      const failed = (await run(prepared)).filter((r) => r.status === 'rejected')
      expect(failed.length).toBeGreaterThan(0)
      expect(['42P05', '26000']).toContain((failed[0] as PromiseRejectedResult).reason.code)
      expect((await run(unprepared)).filter((r) => r.status === 'rejected')).toEqual([])
    } finally {
      await Promise.all([prepared.end(), unprepared.end()])
    }
  })
})
