// Soak: a steady open-loop load on real worker processes for a long time (an hour by default), with
// memory (RSS, live heap) and throughput sampled over time. A leak shows as a slope: the summary fits
// a least-squares line to each process's RSS and heapUsed over the second half of the run (the first
// half is warm-up) and gives it in MB per hour. A benchmark, not a CI test.
//
// Usage: npm run bench:soak -- [--duration 1h] [--rate 20] [--workers 2] [--interval 10s]
//          [--tenants 4] [--leak-threshold 5] [--out file.json]
// Each option can also come from the environment: SOAK_DURATION, SOAK_RATE, SOAK_WORKERS, ...
// The database is DATABASE_URL (migrated here; each run makes new tenants, soak-<run>-<n>, and first
// cancels what earlier runs left running) or, without it, an embedded PostgreSQL in a temporary
// directory removed at the end (not the checkout's .data, which `npm start` uses).
//
// This process is the load generator: it starts `rate` workflows a second (diamonds and chains of
// agents sleeping 1-5 ms, round-robin over the tenants) on a fixed schedule, whatever the fleet's
// progress, and samples every `interval`: each worker's memory, CPU and completed tasks over IPC (its
// heap after a full GC, see soak-common.ts), its own, and from the database the backlog (queued and
// running tasks), the workflows in flight and pg-boss's job table. Workflows completed are those
// started minus those still running, failed or cancelled (counts over small indexed sets, so the
// sampling costs the same in the last minute as in the first).
import { type ChildProcess, fork } from 'node:child_process'
import { rmSync } from 'node:fs'
import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { provisionDatabase } from '../src/db/provision.ts'
import { BOSS_SCHEMA } from '../src/db/names.ts'
import { withTenantTx } from '../src/db/tx.ts'
import { createEngine, loadConfig, migrate, type TenantHandle } from '../src/index.ts'
import {
  agents,
  type GeneratorMessage,
  type ProcessSample,
  sampleProcess,
  soakLogger,
  TASKS_PER_WORKFLOW,
  type WorkerMessage,
  workflows,
} from './soak-common.ts'

const USAGE = `usage: npm run bench:soak -- [options]
  --duration <time>        how long the load runs: 3600, 90s, 10m, 1h (SOAK_DURATION, default 1h)
  --rate <n>               workflows started per second (SOAK_RATE, default 20)
  --workers <n>            worker processes (SOAK_WORKERS, default 2)
  --interval <time>        time between samples (SOAK_INTERVAL, default 10s)
  --tenants <n>            tenants the load is spread over (SOAK_TENANTS, default 4)
  --leak-threshold <MB/h>  heap growth called a possible leak (SOAK_LEAK_THRESHOLD, default 5)
  --out <file>             the JSON report (SOAK_OUT, default bench/results/soak-<time>.json)
DATABASE_URL: the database to use; unset, an embedded PostgreSQL in a temporary directory.`

const MB = 1024 * 1024
/** startWorkflow calls in flight at most; the schedule catches up when they return. */
const MAX_STARTS_IN_FLIGHT = 16
/** Shorter than this after warm-up (the span of the second half's samples: 290 s for a 10-minute run), the slopes are reported but not judged. */
const MIN_JUDGED_SECONDS = 240
const READY_TIMEOUT_MS = 60_000
const SAMPLE_TIMEOUT_MS = 5_000
const DRAIN_TIMEOUT_MS = 30_000
const EXIT_TIMEOUT_MS = 30_000

// ---------------------------------------------------------------------------------------------
// Options

const options = (() => {
  const env = process.env
  let values
  try {
    ;({ values } = parseArgs({
      options: {
        duration: { type: 'string', default: env.SOAK_DURATION ?? '1h' },
        rate: { type: 'string', default: env.SOAK_RATE ?? '20' },
        workers: { type: 'string', default: env.SOAK_WORKERS ?? '2' },
        interval: { type: 'string', default: env.SOAK_INTERVAL ?? '10s' },
        tenants: { type: 'string', default: env.SOAK_TENANTS ?? '4' },
        'leak-threshold': { type: 'string', default: env.SOAK_LEAK_THRESHOLD ?? '5' },
        out: { type: 'string', default: env.SOAK_OUT ?? '' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }))
  } catch (error) {
    fail(`${(error as Error).message}\n${USAGE}`)
  }
  if (values.help) {
    console.log(USAGE)
    process.exit(0)
  }
  const duration = seconds(values.duration, 'duration')
  const interval = seconds(values.interval, 'interval')
  if (interval > duration) fail(`--interval (${interval} s) is longer than --duration (${duration} s)`)
  const stamp = new Date().toISOString().replace(/[:.]/g, '-')
  return {
    duration,
    interval,
    rate: positive(values.rate, 'rate'),
    workers: positive(values.workers, 'workers', true),
    tenants: positive(values.tenants, 'tenants', true),
    leakThreshold: positive(values['leak-threshold'], 'leak-threshold'),
    out: path.resolve(values.out || fileURLToPath(new URL(`results/soak-${stamp}.json`, import.meta.url))),
  }
})()

/** Seconds from `3600`, `90s`, `10m`, `1.5h` or `500ms`. */
function seconds(raw: string, name: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(raw.trim())
  const unit = { ms: 0.001, s: 1, m: 60, h: 3600 }[(m?.[2] ?? 's') as 'ms' | 's' | 'm' | 'h']
  const value = m ? Number(m[1]) * unit : NaN
  if (!(value > 0)) fail(`--${name} must be a time such as 3600, 90s, 10m or 1h (got "${raw}")`)
  return value
}

function positive(raw: string, name: string, integer = false): number {
  const value = Number(raw)
  if (!(value > 0) || (integer && !Number.isInteger(value))) {
    fail(`--${name} must be a positive ${integer ? 'integer' : 'number'} (got "${raw}")`)
  }
  return value
}

function fail(message: string): never {
  process.stderr.write(`soak: ${message}\n`)
  process.exit(2)
}

// ---------------------------------------------------------------------------------------------
// Stopping: at the end of the duration, on Ctrl-C or SIGTERM (a second one exits at once), or when
// a worker process dies.

let stopReason: string | null = null
/** Read through a call: the checks below would otherwise be narrowed as if nothing else set it. */
const stopped = (): string | null => stopReason
let wakeUp = () => {}
const workers: Worker[] = []

function requestStop(reason: string): void {
  stopReason ??= reason
  wakeUp()
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    if (stopReason === null) {
      process.stderr.write(`\nsoak: ${signal}: stopping (again to exit at once)\n`)
      requestStop(`interrupted (${signal})`)
      return
    }
    for (const w of workers) w.child.kill('SIGKILL')
    process.exit(130)
  })
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Sleeps until `at` (performance.now() time) or a stop request, whichever comes first. */
function sleepUntil(at: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, Math.max(0, at - performance.now()))
    function done() {
      clearTimeout(timer)
      wakeUp = () => {}
      resolve()
    }
    wakeUp = done
  })
}

// ---------------------------------------------------------------------------------------------
// The database, the generator's engine, the tenants

let tempDir: string | undefined
if (!process.env.DATABASE_URL?.trim()) {
  const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-soak-'))
  tempDir = dir
  // However the run ends (the embedded server is stopped by then, or told to stop at exit).
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  // As root the server runs as the `postgres` user, which must be able to enter the directory.
  await chmod(dir, 0o755)
}
const db = await provisionDatabase(tempDir ? { dataDir: path.join(tempDir, 'postgres') } : {})
const { log, warnings: generatorWarnings } = soakLogger('generator')
await migrate(loadConfig().migrationDatabaseUrl ?? db.url)
const engine = await createEngine({
  connectionString: db.url,
  agents,
  workflows,
  log,
  supervise: false,
  config: { dbPoolMax: 20 },
})
// Database-wide figures (pg-boss's tables, the database's size) on the login's own connection.
const stats = new pg.Client({ connectionString: db.url })
stats.on('error', (error) => log.warn({ err: error.message }, 'statistics connection lost'))
await stats.connect()

// Workflows an earlier run left running (it was interrupted, or the fleet fell behind) would keep the
// workers busy with their backlog and skew this run's figures: cancel them first (their tasks'
// queued jobs with them). Only tenants named soak-* are touched.
const leftovers: TenantHandle[] = []
for (const t of await engine.listTenants()) {
  if (t.id.startsWith('soak-') && t.status === 'active') leftovers.push(await engine.tenant(t.id))
}
const leftoversCancelled = await cancelRunning(leftovers, 'left running by an earlier soak run')

/** Cancels the tenants' running workflows; returns how many it cancelled. */
async function cancelRunning(handles: TenantHandle[], reason: string): Promise<number> {
  let cancelled = 0
  let noted = false
  for (const tenant of handles) {
    for (;;) {
      const page = await tenant.listWorkflows({ status: 'running', limit: 200 })
      if (page.workflows.length === 0) break
      if (!noted) process.stderr.write(`soak: cancelling workflows ${reason}\n`)
      noted = true
      const before = cancelled
      for (let i = 0; i < page.workflows.length; i += 8) {
        const results = await Promise.allSettled(
          page.workflows
            .slice(i, i + 8)
            .map((w) =>
              tenant.cancelWorkflow(w.id, { reason: `bench/soak: ${reason}`, actor: 'bench/soak' }),
            ),
        )
        for (const r of results) if (r.status === 'fulfilled' && r.value.cancelled) cancelled++
      }
      if (cancelled === before) break // nothing moved (they ended meanwhile, or cancelling fails)
    }
  }
  if (noted) process.stderr.write(`soak: ${cancelled} workflows cancelled\n`)
  return cancelled
}

const runId = Date.now().toString(36)
const tenants: TenantHandle[] = []
for (let i = 1; i <= options.tenants; i++) {
  const id = `soak-${runId}-${i}`
  await engine.createTenant({ id })
  tenants.push(await engine.tenant(id))
}
const types = workflows.map((w) => w.name)

// ---------------------------------------------------------------------------------------------
// Worker processes

interface Worker {
  name: string
  child: ChildProcess
  exitCode: number | null | undefined
  exited: Promise<void>
  last: Extract<WorkerMessage, { type: 'sample' }> | null
}

const workerScript = fileURLToPath(new URL('soak-worker.ts', import.meta.url))

function forkWorker(name: string): Promise<Worker> {
  const child = fork(workerScript, [db.url, name], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  let markExited = () => {}
  const w: Worker = {
    name,
    child,
    exitCode: undefined,
    exited: new Promise((resolve) => (markExited = resolve)),
    last: null,
  }
  child.once('exit', (code, signal) => {
    w.exitCode = code
    markExited()
    if (!shuttingDown) requestStop(`${name} exited (${signal ?? `code ${code}`}) during the run`)
  })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} not ready within 60 s`)), READY_TIMEOUT_MS)
    child.on('message', (m: WorkerMessage) => {
      if (m.type !== 'ready') return
      clearTimeout(timer)
      resolve(w)
    })
    void w.exited.then(() => {
      clearTimeout(timer)
      reject(new Error(`${name} exited before it was ready`))
    })
  })
}

/** The worker's answer to a sample request, or null when it does not answer in time. */
function askWorker(w: Worker, seq: number): Promise<Extract<WorkerMessage, { type: 'sample' }> | null> {
  return new Promise((resolve) => {
    const done = (answer: Extract<WorkerMessage, { type: 'sample' }> | null) => {
      clearTimeout(timer)
      w.child.off('message', onMessage)
      resolve(answer)
    }
    const onMessage = (m: WorkerMessage) => {
      if (m.type === 'sample' && m.seq === seq) done(m)
    }
    const timer = setTimeout(() => done(null), SAMPLE_TIMEOUT_MS)
    w.child.on('message', onMessage)
    try {
      w.child.send({ type: 'sample', seq } satisfies GeneratorMessage)
    } catch {
      done(null)
    }
  })
}

let shuttingDown = false

// ---------------------------------------------------------------------------------------------
// The load: an open-loop schedule (workflow n is due at n / rate seconds), not paced by completions.

const load = { due: 0, issued: 0, started: 0, errors: 0, inFlight: 0 }
let loadStart = 0

function pump(): void {
  load.due = Math.floor(((performance.now() - loadStart) / 1000) * options.rate)
  while (load.issued < load.due && load.inFlight < MAX_STARTS_IN_FLIGHT) {
    const n = load.issued++
    load.inFlight++
    const tenant = tenants[n % tenants.length] as TenantHandle
    // Each tenant alternates the types.
    const type = types[Math.floor(n / tenants.length) % types.length] as string
    tenant
      .startWorkflow(type, { n })
      .then(
        () => void load.started++,
        (error: unknown) => {
          if (++load.errors <= 5) process.stderr.write(`soak: startWorkflow failed: ${String(error)}\n`)
        },
      )
      .finally(() => load.inFlight--)
  }
}

// ---------------------------------------------------------------------------------------------
// Samples

interface ProcessPoint {
  name: string
  rssMB: number
  heapUsedMB: number
  heapTotalMB: number
  externalMB: number
  /** Share of one core over the interval. */
  cpuPercent: number
}

interface WorkerPoint extends ProcessPoint {
  tasks: number
  otherOutcomes: number
  workflows: number
  warnings: number
}

interface Sample {
  /** Seconds since the load began. */
  t: number
  tasksPerSecond: number
  workflowsPerSecond: number
  startedPerSecond: number
  /** Tasks queued or running. */
  backlog: number
  /** Workflows started and not ended. */
  inFlight: number
  /** Totals since the start. */
  started: number
  completed: number
  failed: number
  startErrors: number
  /** Workflows due by the schedule and not yet started. */
  generatorLag: number
  jobRows: number
  jobMB: number
  databaseMB: number
  /** null: the worker did not answer this time. */
  workers: (WorkerPoint | null)[]
  generator: ProcessPoint
}

const samples: Sample[] = []
let previous = { at: 0, tasks: 0, completed: 0, started: 0 }
const previousCpu = new Map<string, { at: number; cpuMs: number }>()

function point(name: string, p: ProcessSample, at: number): ProcessPoint {
  const before = previousCpu.get(name) ?? { at: loadStart, cpuMs: p.cpuMs }
  previousCpu.set(name, { at, cpuMs: p.cpuMs })
  return {
    name,
    rssMB: round(p.rss / MB, 1),
    heapUsedMB: round(p.heapUsed / MB, 2),
    heapTotalMB: round(p.heapTotal / MB, 1),
    externalMB: round(p.external / MB, 2),
    cpuPercent: at > before.at ? round(((p.cpuMs - before.cpuMs) / (at - before.at)) * 100, 1) : 0,
  }
}

async function databaseCounts(): Promise<{ backlog: number; running: number; ended: number }> {
  const total = { backlog: 0, running: 0, ended: 0 }
  for (const tenant of tenants) {
    const { rows } = await withTenantTx(engine.pool, tenant.scope, (tx) =>
      tx.executeSql(
        `SELECT
           (SELECT count(*) FROM agent_coordination
             WHERE tenant_id = $1 AND status IN ('queued', 'running'))::int AS backlog,
           (SELECT count(*) FROM workflows
             WHERE tenant_id = $1 AND type = ANY($2) AND status = 'running')::int AS running,
           (SELECT count(*) FROM workflows
             WHERE tenant_id = $1 AND type = ANY($2) AND status IN ('failed', 'cancelled'))::int AS ended`,
        [tenant.id, types],
      ),
    )
    total.backlog += rows[0].backlog
    total.running += rows[0].running
    total.ended += rows[0].ended
  }
  return total
}

async function takeSample(seq: number): Promise<Sample> {
  const [answers, counts, global] = await Promise.all([
    Promise.all(workers.map((w) => askWorker(w, seq))),
    databaseCounts(),
    stats.query(
      `SELECT
         (SELECT coalesce(sum(s.n_live_tup), 0) FROM pg_partition_tree($1::regclass) p
            JOIN pg_stat_user_tables s ON s.relid = p.relid)::bigint AS job_rows,
         (SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_partition_tree($1::regclass))::bigint
           AS job_bytes,
         pg_database_size(current_database())::bigint AS database_bytes`,
      [`${BOSS_SCHEMA}.job`],
    ),
  ])
  const at = performance.now()
  const started = load.started
  const completed = started - counts.running - counts.ended
  workers.forEach((w, i) => {
    if (answers[i]) w.last = answers[i]
  })
  const tasks = workers.reduce((sum, w) => sum + (w.last?.tasks ?? 0), 0)
  const dt = (at - previous.at) / 1000
  const row = global.rows[0]
  const sample: Sample = {
    t: round((at - loadStart) / 1000, 1),
    tasksPerSecond: round((tasks - previous.tasks) / dt, 1),
    workflowsPerSecond: round((completed - previous.completed) / dt, 1),
    startedPerSecond: round((started - previous.started) / dt, 1),
    backlog: counts.backlog,
    inFlight: counts.running,
    started,
    completed,
    failed: counts.ended,
    startErrors: load.errors,
    generatorLag: Math.max(0, load.due - started - load.errors),
    jobRows: Number(row.job_rows),
    jobMB: round(Number(row.job_bytes) / MB, 1),
    databaseMB: round(Number(row.database_bytes) / MB, 1),
    workers: workers.map((w, i) => {
      const a = answers[i]
      if (!a) return null
      const { tasks: done, otherOutcomes, workflows: ended, warnings } = a
      return { ...point(w.name, a.process, at), tasks: done, otherOutcomes, workflows: ended, warnings }
    }),
    generator: point('generator', sampleProcess(), at),
  }
  previous = { at, tasks, completed, started }
  return sample
}

// ---------------------------------------------------------------------------------------------
// Printing

const round = (x: number, digits: number) => Number(x.toFixed(digits))
const signed = (x: number, digits = 1) => `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`

function clock(s: number): string {
  const t = Math.round(s)
  const h = Math.floor(t / 3600)
  const m = Math.floor((t % 3600) / 60)
  const ss = String(t % 60).padStart(2, '0')
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`
}

/** Backlog past this many tasks (5 s of the load's work) gets a mark in the sample line. */
const backlogMark = Math.max(50, Math.ceil(options.rate * TASKS_PER_WORKFLOW * 5))

function header(): string {
  const procs = [...workers.map((w) => w.name), 'gen'].map((n) => `${n} RSS/heap MB cpu`.padStart(22))
  return ['    time', 'tasks/s', ' wf/s', 'backlog', 'in flight', 'jobs', ...procs].join('  ')
}

function line(s: Sample): string {
  const proc = (p: ProcessPoint | null) =>
    p
      ? `${p.rssMB.toFixed(0)}/${p.heapUsedMB.toFixed(1)} ${p.cpuPercent.toFixed(0).padStart(3)}%`.padStart(
          22,
        )
      : 'no answer'.padStart(22)
  const marks = [
    s.backlog > backlogMark ? `! backlog over ${backlogMark}` : '',
    s.generatorLag > Math.max(10, options.rate) ? `! generator ${s.generatorLag} behind` : '',
    s.failed > 0 ? `! ${s.failed} failed` : '',
  ].filter(Boolean)
  return [
    clock(s.t).padStart(8),
    s.tasksPerSecond.toFixed(1).padStart(7),
    s.workflowsPerSecond.toFixed(1).padStart(5),
    String(s.backlog).padStart(7),
    String(s.inFlight).padStart(9),
    (s.jobRows >= 10_000 ? `${(s.jobRows / 1000).toFixed(0)}k` : String(s.jobRows)).padStart(4),
    ...s.workers.map(proc),
    proc(s.generator),
    ...marks,
  ].join('  ')
}

// ---------------------------------------------------------------------------------------------
// Summary

interface Fit {
  /** Per hour. */
  slope: number
  /** Standard error of the slope, per hour. */
  stderr: number
  first: number
  last: number
}

/** Least-squares line through (t seconds, y); slope and its standard error per hour. */
function fit(points: { t: number; y: number }[]): Fit | null {
  const n = points.length
  if (n < 3) return null
  const tm = points.reduce((s, p) => s + p.t, 0) / n
  const ym = points.reduce((s, p) => s + p.y, 0) / n
  const sxx = points.reduce((s, p) => s + (p.t - tm) ** 2, 0)
  if (sxx === 0) return null
  const slope = points.reduce((s, p) => s + (p.t - tm) * (p.y - ym), 0) / sxx
  const residuals = points.reduce((s, p) => s + (p.y - ym - slope * (p.t - tm)) ** 2, 0)
  const stderr = Math.sqrt(residuals / (n - 2) / sxx)
  return {
    slope: slope * 3600,
    stderr: stderr * 3600,
    first: (points[0] as { y: number }).y,
    last: (points[n - 1] as { y: number }).y,
  }
}

function stat(values: number[]) {
  if (values.length === 0) return { mean: 0, min: 0, max: 0 }
  return {
    mean: round(values.reduce((a, b) => a + b, 0) / values.length, 1),
    min: Math.min(...values),
    max: Math.max(...values),
  }
}

function summarize(elapsed: number, drain: { seconds: number; left: number } | null) {
  // The first sample includes the fleet filling up; the slopes use the second half only.
  const steady = samples.slice(1)
  const half = samples.filter((s) => s.t >= elapsed / 2)
  const halfSeconds = half.length > 1 ? (half.at(-1) as Sample).t - (half[0] as Sample).t : 0
  const judged = halfSeconds >= MIN_JUDGED_SECONDS
  const processes = [...workers.map((w, i) => ({ name: w.name, at: i })), { name: 'generator', at: -1 }]
  const memory = processes.map(({ name, at }) => {
    const pts = half
      .map((s) => ({ t: s.t, p: at < 0 ? s.generator : s.workers[at] }))
      .filter((x): x is { t: number; p: ProcessPoint } => x.p !== null && x.p !== undefined)
    const rss = fit(pts.map((x) => ({ t: x.t, y: x.p.rssMB })))
    const heap = fit(pts.map((x) => ({ t: x.t, y: x.p.heapUsedMB })))
    // Growth past the threshold and clearly more than the noise of the samples.
    const grows = (f: Fit | null, threshold: number) =>
      f !== null && f.slope > threshold && f.slope - 2 * f.stderr > 0
    return {
      name,
      rss,
      heap,
      heapLeak: judged && grows(heap, options.leakThreshold),
      rssGrowth: judged && grows(rss, options.leakThreshold * 4),
    }
  })
  const backlog = fit(half.map((s) => ({ t: s.t, y: s.backlog })))
  const halfStarted = half.length > 1 ? (half.at(-1) as Sample).started - (half[0] as Sample).started : 0
  const halfCompleted =
    half.length > 1 ? (half.at(-1) as Sample).completed - (half[0] as Sample).completed : 0
  // Behind: over the second half the backlog grew by more than 2 s of work, or completions fell
  // short of starts by more than 2%.
  const backlogGrowth = backlog ? (backlog.slope * halfSeconds) / 3600 : 0
  const fleetBehind =
    backlogGrowth > Math.max(20, options.rate * TASKS_PER_WORKFLOW * 2) ||
    (halfStarted > 100 && halfCompleted < halfStarted * 0.98)
  const last = samples.at(-1)
  return {
    elapsedSeconds: round(elapsed, 1),
    stopReason,
    samples: samples.length,
    secondHalfSeconds: round(halfSeconds, 1),
    judged,
    throughput: {
      tasksPerSecond: stat(steady.map((s) => s.tasksPerSecond)),
      workflowsPerSecond: stat(steady.map((s) => s.workflowsPerSecond)),
      startedPerSecond: stat(steady.map((s) => s.startedPerSecond)),
    },
    workflows: {
      started: last?.started ?? 0,
      startedInTotal: load.started,
      startErrors: load.errors,
      completed: last?.completed ?? 0,
      failed: last?.failed ?? 0,
      drain,
      leftoversCancelled,
      cancelledAtEnd: 0,
    },
    backlog: {
      ...stat(samples.map((s) => s.backlog)),
      slopePerHour: backlog ? round(backlog.slope, 1) : null,
      secondHalfGrowth: round(backlogGrowth, 1),
      secondHalfStarted: halfStarted,
      secondHalfCompleted: halfCompleted,
      fleetBehind,
    },
    generatorMaxLag: Math.max(0, ...samples.map((s) => s.generatorLag)),
    workerWarnings: workers.reduce((n, w) => n + (w.last?.warnings ?? 0), 0),
    generatorWarnings: generatorWarnings(),
    otherTaskOutcomes: workers.reduce((n, w) => n + (w.last?.otherOutcomes ?? 0), 0),
    memory: memory.map((m) => ({
      name: m.name,
      rssSlopeMBPerHour: m.rss && round(m.rss.slope, 2),
      rssSlopeStderr: m.rss && round(m.rss.stderr, 2),
      heapSlopeMBPerHour: m.heap && round(m.heap.slope, 2),
      heapSlopeStderr: m.heap && round(m.heap.stderr, 2),
      rssMB: m.rss && [m.rss.first, m.rss.last],
      heapUsedMB: m.heap && [m.heap.first, m.heap.last],
      possibleLeak: m.heapLeak,
      rssGrowing: m.rssGrowth,
    })),
  }
}

function printSummary(s: ReturnType<typeof summarize>): void {
  const t = s.throughput
  const out = (text = '') => console.log(text)
  out()
  out(
    `soak summary: ${clock(s.elapsedSeconds)} of load at ${options.rate} workflows/s, ${workers.length} workers, ` +
      `${tenants.length} tenants, ${s.samples} samples${s.stopReason ? ` (${s.stopReason})` : ''}`,
  )
  out(
    `throughput: tasks/s mean ${t.tasksPerSecond.mean} min ${t.tasksPerSecond.min}; ` +
      `workflows/s mean ${t.workflowsPerSecond.mean} min ${t.workflowsPerSecond.min} ` +
      `(started ${t.startedPerSecond.mean}/s)`,
  )
  const w = s.workflows
  const drain = w.drain
    ? w.drain.left === 0
      ? `; none of the ${w.startedInTotal} left running ${w.drain.seconds.toFixed(1)} s after the load stopped`
      : `; ${w.drain.left} still running ${w.drain.seconds.toFixed(0)} s after the load stopped`
    : ''
  out(
    `workflows by the last sample: ${w.started} started, ${w.completed} completed, ${w.failed} failed or cancelled` +
      `${w.startErrors ? `, ${w.startErrors} starts failed` : ''}${drain}`,
  )
  const b = s.backlog
  out(
    `backlog (queued + running tasks): mean ${b.mean}, max ${b.max}; over the second half ` +
      `${signed(b.secondHalfGrowth, 0)} tasks, ${b.secondHalfCompleted} of ${b.secondHalfStarted} started workflows completed: ` +
      (b.fleetBehind ? 'THE FLEET DOES NOT KEEP UP with this rate' : 'the fleet keeps up'),
  )
  out(
    s.generatorMaxLag > Math.max(10, options.rate)
      ? `generator: FELL BEHIND its schedule by up to ${s.generatorMaxLag} workflows (startWorkflow too slow)`
      : `generator: kept to its schedule (lag at most ${s.generatorMaxLag} workflows)`,
  )
  if (s.workerWarnings || s.generatorWarnings || s.otherTaskOutcomes) {
    out(
      `problems: ${s.workerWarnings} warnings from workers, ${s.generatorWarnings} from the generator, ` +
        `${s.otherTaskOutcomes} task attempts not completed (retried, failed, lost, released)`,
    )
  }
  out(`memory, least-squares slope over the second half (${s.secondHalfSeconds.toFixed(0)} s), MB/hour:`)
  for (const m of s.memory) {
    const f = (slope: number | null, err: number | null, range: number[] | null) =>
      slope === null || err === null || range === null
        ? 'n/a'
        : `${signed(slope)} ± ${err.toFixed(1)} (${range[0]} -> ${range[1]} MB)`
    out(
      `  ${m.name.padEnd(9)}  RSS ${f(m.rssSlopeMBPerHour, m.rssSlopeStderr, m.rssMB)}, ` +
        `heap ${f(m.heapSlopeMBPerHour, m.heapSlopeStderr, m.heapUsedMB)}${m.possibleLeak ? '  <- heap grows' : ''}` +
        `${m.rssGrowing ? '  <- RSS grows' : ''}`,
    )
  }
  const leaks = s.memory.filter((m) => m.possibleLeak || m.rssGrowing)
  const byHeap = [...s.memory].sort((a, b) => (b.heapSlopeMBPerHour ?? 0) - (a.heapSlopeMBPerHour ?? 0))
  const largest = byHeap[0]
  if (!largest || largest.heapSlopeMBPerHour === null)
    out('verdict: too few samples after warm-up for a slope')
  else if (!s.judged)
    out(
      `verdict: inconclusive: only ${s.secondHalfSeconds.toFixed(0)} s after warm-up, too short to judge ` +
        `(run 10 minutes or more); largest heap slope ${signed(largest.heapSlopeMBPerHour)} MB/h (${largest.name})`,
    )
  else if (leaks.length === 0)
    out(`verdict: no leak detected (heap slope ${signed(largest.heapSlopeMBPerHour)} MB/h, ${largest.name})`)
  else {
    const what = (m: (typeof leaks)[number]) =>
      m.possibleLeak
        ? `${m.name} heap ${signed(m.heapSlopeMBPerHour ?? 0)} MB/h`
        : `${m.name} RSS ${signed(m.rssSlopeMBPerHour ?? 0)} MB/h`
    out(
      `verdict: possible leak: ${leaks.map(what).join(', ')} ` +
        `(thresholds ${options.leakThreshold} MB/h heap, ${options.leakThreshold * 4} MB/h RSS)`,
    )
  }
}

// ---------------------------------------------------------------------------------------------
// The run

let failed = false
let summary: ReturnType<typeof summarize> | null = null
try {
  for (let i = 1; i <= options.workers && !stopped(); i++) workers.push(await forkWorker(`w${i}`))
  console.log(
    `soak: ${options.rate} workflows/s (${types.join(', ')}, ${TASKS_PER_WORKFLOW} tasks each on average) ` +
      `over ${tenants.length} tenants on ${workers.length} worker processes, for ${clock(options.duration)}, ` +
      `a sample every ${options.interval} s; database: ${db.source === 'env' ? 'DATABASE_URL' : 'embedded (temporary)'}`,
  )
  console.log(header())
  // A reading before the load, so the first sample's CPU shares have a start.
  const before = await Promise.all(workers.map((w) => askWorker(w, 0)))
  loadStart = performance.now()
  workers.forEach((w, i) => {
    const b = before[i]
    if (b) previousCpu.set(w.name, { at: loadStart, cpuMs: b.process.cpuMs })
  })
  previousCpu.set('generator', { at: loadStart, cpuMs: sampleProcess().cpuMs })
  previous.at = loadStart
  const pumpTimer = setInterval(pump, 10)
  const endAt = loadStart + options.duration * 1000
  for (let seq = 1; !stopped(); seq++) {
    const dueAt = Math.min(loadStart + seq * options.interval * 1000, endAt)
    await sleepUntil(dueAt)
    if (stopped()) break
    const sample = await takeSample(seq)
    samples.push(sample)
    console.log(line(sample))
    if (dueAt >= endAt) break
  }
  clearInterval(pumpTimer)
  const elapsed = (performance.now() - loadStart) / 1000
  while (load.inFlight > 0) await sleep(10)
  // Let the fleet finish what was started (not after Ctrl-C or a dead worker).
  let drain: { seconds: number; left: number } | null = null
  if (!stopped()) {
    const t0 = performance.now()
    let left = (await databaseCounts()).running
    while (left > 0 && performance.now() - t0 < DRAIN_TIMEOUT_MS && !stopped()) {
      await sleep(250)
      left = (await databaseCounts()).running
    }
    drain = { seconds: round((performance.now() - t0) / 1000, 1), left }
  }
  const reason = stopped()
  failed = reason !== null && !reason.startsWith('interrupted')
  summary = summarize(elapsed, drain)
  printSummary(summary)
  // Leave nothing running for the next run on this database.
  summary.workflows.cancelledAtEnd = await cancelRunning(tenants, 'still running at the end')
} catch (error) {
  failed = true
  process.stderr.write(`soak: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
} finally {
  shuttingDown = true
  for (const w of workers) if (w.exitCode === undefined) w.child.kill('SIGTERM')
  const slow = setTimeout(() => {
    for (const w of workers) if (w.exitCode === undefined) w.child.kill('SIGKILL')
  }, EXIT_TIMEOUT_MS)
  await Promise.all(workers.map((w) => w.exited))
  clearTimeout(slow)
  const badExits = workers.filter((w) => w.exitCode !== 0)
  if (badExits.length > 0) {
    process.stderr.write(
      `soak: ${badExits.map((w) => `${w.name} exited with ${w.exitCode ?? 'a signal'}`).join(', ')}\n`,
    )
  }
  if (samples.length > 0) {
    await mkdir(path.dirname(options.out), { recursive: true })
    const report = {
      options: { ...options, out: undefined },
      database: db.source,
      tenants: tenants.map((t) => t.id),
      workerExitCodes: Object.fromEntries(workers.map((w) => [w.name, w.exitCode])),
      summary,
      samples,
    }
    await writeFile(options.out, `${JSON.stringify(report, null, 2)}\n`)
    const relative = path.relative(process.cwd(), options.out)
    console.log(`report: ${relative.startsWith('..') ? options.out : relative}`)
  }
  await stats.end().catch(() => {})
  await engine.close()
  // pg's Pool.end() resolves before its connections are closed; let them go before the server stops.
  if (db.source === 'embedded') await sleep(200)
  await db.stop()
}
process.exit(failed ? 1 : 0)
