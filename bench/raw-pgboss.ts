// The diamond workload (A -> B, A -> C, {B, C} -> D, no-op handlers) on raw pg-boss 12, written
// the way a competent user would without this project, in one process with the same concurrency
// budget as ours (16 tasks in hand). It is the baseline the engine's numbers are read against.
//
// - 'flow': dependencies through pg-boss's own flow(). A child is unblocked by pg-boss's background
//   resolver (every flowIntervalSeconds, default 5 s), which sends no NOTIFY; its 'flow' event (in
//   the instance that ran the pass) wakes idle workers here. Bounded by maxSeconds: what finished
//   within the cap is reported as it is.
// - 'hand-rolled': each task runs in ONE transaction of ours: decrement its children's
//   remaining-dependency counters (a table of our own), insert the children that reach zero
//   (insert() with { db }), NOTIFY, complete the job (complete() with { db }), COMMIT.
//
// Workers: `concurrency` fetch loops around fetch() (batchSize 1), not work(). work() with
// batchSize 1 on a notify queue strands a backlog: a worker that is busy when NOTIFYs arrive
// fetches once afterwards however many jobs they announced, then sleeps out the 30 s backstop
// poll; a trial run here left 32 of 100 D jobs waiting that way (the pitfall in PGBOSS-NOTES.md).
// Our loops fetch again at once after every job, sleep only after an empty fetch, are woken by a
// NOTIFY on a channel of ours (payload: how many jobs became ready), and poll every idlePollMs as a
// backstop.
//
// Workers run before the first workflow is started; 16 starters then start the workflows as fast
// as they can (as bench/workloads.ts does for the engine), each start one transaction.
// Latencies: dispatch = parent's completion commit (for D the later of B and C) -> child handler
// start; start = send of A -> A's handler start; endToEnd = send of A -> D's completion commit.
// transactionsPerTask counts every commit in the scratch database during the run: starts, fetches
// (empty ones too), pg-boss's maintenance, and one per NOTIFY our LISTEN connection reads
// (PostgreSQL reads the notification queue inside a transaction of the listening backend).
// The 'flow' event only fires in the process whose resolver pass ran: fine for this one process;
// workers in other processes would find unblocked children on their idle poll.
// Usage: node bench/raw-pgboss.ts [admin database url] [flow|hand-rolled] [workflows=200]
// (BENCH_MAX_SECONDS, BENCH_CONCURRENCY, BENCH_FLOW_INTERVAL_SECONDS, BENCH_RATE) — prints the JSON result.
import pg from 'pg'
import { PgBoss, type Db, type Job } from 'pg-boss'
import { type Percentiles, percentiles, scratchDatabase, wallMs } from './lib/stats.ts'

export interface RawPgBossResult {
  variant: string
  workflows: number
  /** Diamonds whose D committed within the cap. */
  completedWorkflows: number
  /** Tasks whose completion committed within the cap. */
  tasks: number
  seconds: number
  tasksPerSecond: number
  dispatch: Percentiles
  start: Percentiles
  endToEnd: Percentiles
  /** Committed transactions of the scratch database during the run per task: starts, empty fetches and pg-boss maintenance included. */
  transactionsPerTask: number
  /** True when the run stopped at maxSeconds with workflows unfinished. */
  capped: boolean
  /** Children whose parents had all committed but that had not started when the run ended. */
  waitingChildren: number
  /** fetch() calls per task (1 is the minimum; the rest came back empty). */
  fetchesPerTask: number
  config: Record<string, unknown>
}

const QUEUE = 'diamond'
const CHANNEL = 'eq_bench_ready'
const KEYS = ['a', 'b', 'c', 'd'] as const
type Key = (typeof KEYS)[number]
const CHILDREN: Record<Key, Key[]> = { a: ['b', 'c'], b: ['d'], c: ['d'], d: [] }
const PARENTS: Record<Key, Key[]> = { a: [], b: ['a'], c: ['a'], d: ['b', 'c'] }
const STARTERS = 16

interface JobData {
  wf: number
  key: Key
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function runRawPgBoss(opts: {
  adminUrl: string
  variant: 'flow' | 'hand-rolled'
  workflows: number
  /** Fetch loops, each with one task in hand at a time. Default 16. */
  concurrency?: number
  /** Default 60 for flow, 600 for hand-rolled. */
  maxSeconds?: number
  /** pg-boss's flow resolver interval (pg-boss's default: 5 s, minimum 1). Flow only. */
  flowIntervalSeconds?: number
  /** An idle loop's backstop poll. Default 1000 ms. */
  idlePollMs?: number
  /** Workflows started per second (4 starters); default: as fast as 16 starters can. */
  rate?: number
  log?: (line: string) => void
}): Promise<RawPgBossResult> {
  const { variant, workflows: W } = opts
  const log = opts.log ?? (() => {})
  const concurrency = opts.concurrency ?? 16
  const maxSeconds = opts.maxSeconds ?? (variant === 'flow' ? 60 : 600)
  const idlePollMs = opts.idlePollMs ?? 1000
  const dbName = variant === 'flow' ? 'eq_bench_raw_flow' : 'eq_bench_raw_hand'
  const db = await scratchDatabase(opts.adminUrl, dbName)
  const admin = new pg.Client({ connectionString: opts.adminUrl })
  await admin.connect()
  // Ours: the tasks' transactions (hand-rolled) and the starts.
  const pool = new pg.Pool({ connectionString: db.url, max: concurrency + 4 })
  const listener = new pg.Client({ connectionString: db.url })
  // The drop at the end terminates whatever is still closing.
  pool.on('error', () => {})
  listener.on('error', () => {})
  const bossConfig = {
    // fetch() for every loop, and complete() too for flow.
    max: concurrency + 4,
    ...(opts.flowIntervalSeconds !== undefined ? { flowIntervalSeconds: opts.flowIntervalSeconds } : {}),
  }
  const boss = new PgBoss({ connectionString: db.url, ...bossConfig })
  let errors = 0
  const report = (err: Error) => {
    if (errors++ < 5) log(`raw pg-boss ${variant}: error: ${err.message}`)
  }
  boss.on('error', report)
  let running = true
  const loops: Promise<void>[] = []
  // Idle loops, woken one per job announced (or by their backstop poll).
  const idle: (() => void)[] = []
  let closed = false
  const close = async () => {
    if (closed) return
    closed = true
    running = false
    for (const done of [...idle]) done()
    await Promise.allSettled(loops)
    await boss.stop({ graceful: true, timeout: 5000 })
    await listener.end().catch(() => {})
    await pool.end()
  }
  try {
    // pg-boss's schema, the queue and our table are set up on connections closed before counting
    // starts: a backend reports its transactions when idle at most once a second, else within 10 s,
    // but always when it exits.
    const setup = new PgBoss(db.url)
    setup.on('error', report)
    await setup.start()
    await setup.createQueue(QUEUE)
    await setup.stop({ graceful: true, timeout: 5000 })
    if (variant === 'hand-rolled') {
      const c = new pg.Client({ connectionString: db.url })
      await c.connect()
      await c.query(
        'CREATE TABLE bench_dep (wf int NOT NULL, key text NOT NULL, remaining int NOT NULL, PRIMARY KEY (wf, key))',
      )
      await c.end()
    }
    await boss.start()

    // Per workflow: when A was sent; per task (wf * 4 + key index): handler start and commit.
    const sentAt = new Float64Array(W).fill(NaN)
    const startedAt = new Float64Array(W * 4).fill(NaN)
    const committedAt = new Float64Array(W * 4).fill(NaN)
    const slot = (d: JobData) => d.wf * 4 + KEYS.indexOf(d.key)
    let tasks = 0
    let completedWorkflows = 0
    let fetches = 0

    const wake = (n: number) => {
      for (let i = 0; i < n && idle.length > 0; i++) idle.shift()?.()
    }
    const nap = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer)
          const i = idle.indexOf(done)
          if (i >= 0) idle.splice(i, 1)
          resolve()
        }
        const timer = setTimeout(done, idlePollMs)
        idle.push(done)
      })
    await listener.connect()
    listener.on('notification', (m) => wake(Number(m.payload) || 1))
    await listener.query(`LISTEN ${CHANNEL}`)
    // flow: the resolver's pass unblocked children of `resolved` parents (up to two each here).
    boss.on('flow', ({ resolved }) => wake(resolved * 2))

    /** Runs fn in one transaction of ours; `tx` is for pg-boss calls with { db }. */
    const inTransaction = async (fn: (client: pg.PoolClient, tx: Db) => Promise<void>) => {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        await fn(client, { executeSql: (text, values) => client.query(text, values) })
        await client.query('COMMIT')
      } catch (err) {
        await client.query('ROLLBACK')
        throw err
      } finally {
        client.release()
      }
    }

    const handle =
      variant === 'flow'
        ? async (job: Job<JobData>) => {
            // No-op handler; the completion is its own statement (and transaction).
            await boss.complete(QUEUE, { id: job.id, retryCount: job.retryCount })
          }
        : async (job: Job<JobData>) => {
            await inTransaction(async (client, tx) => {
              const { wf, key } = job.data
              const children = CHILDREN[key]
              if (children.length > 0) {
                const { rows } = await client.query<{ key: Key; remaining: number }>(
                  'UPDATE bench_dep SET remaining = remaining - 1 WHERE wf = $1 AND key = ANY($2::text[]) RETURNING key, remaining',
                  [wf, children],
                )
                const ready = rows.filter((r) => r.remaining === 0).map((r) => ({ data: { wf, key: r.key } }))
                if (ready.length > 0) {
                  await boss.insert(QUEUE, ready, { db: tx })
                  await client.query('SELECT pg_notify($1, $2)', [CHANNEL, `${ready.length}`])
                }
              }
              await boss.complete(QUEUE, { id: job.id, retryCount: job.retryCount }, null, { db: tx })
            })
          }

    const loop = async () => {
      while (running) {
        let job: Job<JobData> | undefined
        try {
          fetches++
          job = (await boss.fetch<JobData>(QUEUE))[0]
        } catch (err) {
          report(err as Error)
          await sleep(100)
          continue
        }
        if (!job) {
          await nap()
          continue
        }
        const i = slot(job.data)
        startedAt[i] = wallMs()
        try {
          await handle(job)
        } catch (err) {
          report(err as Error)
          continue
        }
        committedAt[i] = wallMs()
        tasks++
        if (job.data.key === 'd') completedWorkflows++
      }
    }

    const startOne =
      variant === 'flow'
        ? (wf: number) =>
            inTransaction(async (client, tx) => {
              await boss.flow(
                KEYS.map((key) => ({
                  ref: key,
                  name: QUEUE,
                  data: { wf, key },
                  ...(PARENTS[key].length > 0 ? { dependsOn: PARENTS[key] } : {}),
                })),
                { db: tx },
              )
              await client.query('SELECT pg_notify($1, $2)', [CHANNEL, '1'])
            })
        : (wf: number) =>
            // The counters and the root job in one transaction, as a user's "start workflow" would.
            inTransaction(async (client, tx) => {
              await client.query(
                `INSERT INTO bench_dep (wf, key, remaining) VALUES ($1, 'b', 1), ($1, 'c', 1), ($1, 'd', 2)`,
                [wf],
              )
              await boss.send(QUEUE, { wf, key: 'a' }, { db: tx })
              await client.query('SELECT pg_notify($1, $2)', [CHANNEL, '1'])
            })

    for (let i = 0; i < concurrency; i++) loops.push(loop())
    const x0 = await transactions(admin, dbName)
    const fetches0 = fetches
    log(`raw pg-boss ${variant}: ${W} diamonds, ${concurrency} fetch loops`)
    const began = wallMs()
    const deadline = began + maxSeconds * 1000
    let next = 0
    const starter = async () => {
      for (;;) {
        const wf = next++
        if (wf >= W || wallMs() > deadline) return
        if (opts.rate) {
          const due = began + (wf / opts.rate) * 1000
          if (due > wallMs()) await sleep(due - wallMs())
        }
        sentAt[wf] = wallMs()
        await startOne(wf)
      }
    }
    await Promise.all(Array.from({ length: opts.rate ? 4 : STARTERS }, starter))
    let lastLog = wallMs()
    while (completedWorkflows < W && wallMs() < deadline) {
      await sleep(20)
      if (wallMs() - lastLog > 10_000) {
        lastLog = wallMs()
        const after = Math.round((lastLog - began) / 1000)
        log(`raw pg-boss ${variant}: ${completedWorkflows}/${W} diamonds, ${tasks} tasks after ${after} s`)
      }
    }
    const capped = completedWorkflows < W
    const ended = capped ? wallMs() : Math.max(...committedAt.filter((t) => !Number.isNaN(t)))
    // Every connection closed (stopping pg-boss included), so every transaction is reported.
    const runFetches = fetches - fetches0
    await close()
    const x1 = await transactions(admin, dbName, 500)

    const dispatch: number[] = []
    const start: number[] = []
    const endToEnd: number[] = []
    let waitingChildren = 0
    for (let wf = 0; wf < W; wf++) {
      const at = (key: Key) => wf * 4 + KEYS.indexOf(key)
      const sent = sentAt[wf] as number
      const aStart = startedAt[at('a')] as number
      if (!Number.isNaN(aStart)) start.push(aStart - sent)
      const dEnd = committedAt[at('d')] as number
      if (!Number.isNaN(dEnd)) endToEnd.push(dEnd - sent)
      for (const key of ['b', 'c', 'd'] as const) {
        const parentsDone = Math.max(...PARENTS[key].map((p) => committedAt[at(p)] as number))
        if (Number.isNaN(parentsDone)) continue
        const s = startedAt[at(key)] as number
        if (Number.isNaN(s)) waitingChildren++
        else dispatch.push(s - parentsDone)
      }
    }
    const seconds = (ended - began) / 1000
    const result: RawPgBossResult = {
      variant,
      workflows: W,
      completedWorkflows,
      tasks,
      seconds: Math.round(seconds * 100) / 100,
      tasksPerSecond: Math.round(tasks / seconds),
      dispatch: percentiles(dispatch),
      start: percentiles(start),
      endToEnd: percentiles(endToEnd),
      transactionsPerTask: tasks > 0 ? Math.round(((x1 - x0) / tasks) * 100) / 100 : NaN,
      capped,
      waitingChildren,
      fetchesPerTask: tasks > 0 ? Math.round((runFetches / tasks) * 100) / 100 : NaN,
      config: {
        pgBoss: bossConfig,
        fetchLoops: concurrency,
        batchSize: 1,
        idlePollMs,
        maxSeconds,
        starters: opts.rate ? 4 : STARTERS,
        rate: opts.rate ?? null,
      },
    }
    log(
      `raw pg-boss ${variant}: ${completedWorkflows}/${W} diamonds, ${tasks} tasks in ${result.seconds} s = ${result.tasksPerSecond} tasks/s${capped ? ' (capped)' : ''}`,
    )
    return result
  } finally {
    await close()
    await admin.end()
    await db.drop()
  }
}

/** Committed transactions of the database so far (backends flush stats at most once a second). */
async function transactions(admin: pg.Client, dbName: string, waitMs = 1500): Promise<number> {
  await sleep(waitMs)
  const { rows } = await admin.query<{ n: string }>(
    'SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1',
    [dbName],
  )
  return Number(rows[0]?.n ?? 0)
}

if (import.meta.main) {
  const adminUrl = process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const variant = (process.argv[3] ?? 'hand-rolled') as 'flow' | 'hand-rolled'
  const workflows = Number(process.argv[4] ?? 200)
  const env = (name: string) => (process.env[name] === undefined ? undefined : Number(process.env[name]))
  const result = await runRawPgBoss({
    adminUrl,
    variant,
    workflows,
    concurrency: env('BENCH_CONCURRENCY'),
    maxSeconds: env('BENCH_MAX_SECONDS'),
    flowIntervalSeconds: env('BENCH_FLOW_INTERVAL_SECONDS'),
    rate: env('BENCH_RATE'),
    log: (line) => console.error(line),
  })
  console.log(JSON.stringify(result, null, 2))
}
