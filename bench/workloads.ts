// The engine's side of the benchmark: a fleet of worker processes (bench/bench-worker.ts) and a
// workload runner that starts workflows from this process (as fast as it can, or at a set rate),
// waits for them, and turns the fleet's records into throughput, latency and cost per task.
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import type { TenantHandle } from '../src/engine.ts'
import { parentsOf, type Shape, shapes } from './defs.ts'
import { type Percentiles, percentiles, statementsSentSoFar, wallMs } from './lib/stats.ts'

const workerScript = fileURLToPath(new URL('./bench-worker.ts', import.meta.url))

type TaskEvent = [taskId: string, workflowId: string, key: string, kind: 's' | 'c', at: number]
interface Collected {
  events: TaskEvent[]
  statements: number
  peakRss: number
  /** Per process: the most connections it held at once since the last collect, by `pool/kind`. */
  peakConnections: Record<string, number>[]
}
/** One process's answer to a collect. */
type Part = Omit<Collected, 'peakConnections'> & { peakConnections?: Record<string, number> }
interface TaskRecord {
  workflowId: string
  key: string
  startedAt: number
  /** 0 until its completion committed. */
  committedAt: number
}

export interface Fleet {
  size: number
  /** Every process's records since the last collect (and resets them). */
  collect(): Promise<Collected>
  stop(): Promise<void>
}

export async function startFleet(
  url: string,
  size: number,
  env: Record<string, string> = {},
): Promise<Fleet> {
  const children: ChildProcess[] = []
  const pending = new Map<ChildProcess, (c: Part) => void>()
  for (let i = 0; i < size; i++) {
    const child = fork(workerScript, [url], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, ...env },
    })
    child.on('message', (m: { kind: string } & Part) => {
      if (m.kind === 'events') pending.get(child)?.(m)
    })
    children.push(child)
  }
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve, reject) => {
          c.once('message', () => resolve())
          c.once('exit', (code) => reject(new Error(`bench worker exited with ${code}`)))
        }),
    ),
  )
  return {
    size,
    async collect() {
      const parts = await Promise.all(
        children.map(
          (c) =>
            new Promise<Part>((resolve) => {
              pending.set(c, resolve)
              c.send({ kind: 'collect' })
            }),
        ),
      )
      return {
        events: parts.flatMap((p) => p.events),
        statements: parts.reduce((n, p) => n + p.statements, 0),
        peakRss: Math.max(...parts.map((p) => p.peakRss)),
        peakConnections: parts.map((p) => p.peakConnections ?? {}),
      }
    },
    async stop() {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null) return resolve()
              c.once('exit', () => resolve())
              c.kill('SIGTERM')
            }),
        ),
      )
    },
  }
}

export interface WorkloadResult {
  name: string
  shape: Shape
  workers: number
  workflows: number
  tasks: number
  seconds: number
  tasksPerSecond: number
  workflowsPerSecond: number
  /** Last parent's commit -> child agent start, ms. */
  dispatch: Percentiles
  /** startWorkflow call -> first agent running, ms. */
  start: Percentiles
  /** startWorkflow call -> last task's commit, ms. */
  endToEnd: Percentiles
  perTask: { transactions: number; statements: number; workerStatements: number }
  peakWorkerRssMb: number
  /** The most connections one worker process held at once, by `pool/kind` (equilateral_db_connections). */
  peakWorkerConnections: Record<string, number>
  /** Workflows started per second when paced (null: as fast as the starter goes). */
  pacedRate: number | null
}

export interface WorkloadOptions {
  name: string
  url: string
  adminUrl: string
  fleet: Fleet
  shape: Shape
  workflows: number
  tenants: readonly TenantHandle[]
  /** Start this many workflows per second; default: as fast as possible (16 starts in flight). */
  rate?: number
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Committed transactions of the database so far (stats are flushed at most once a second). */
async function transactions(adminUrl: string, url: string): Promise<number> {
  await sleep(1100)
  const c = new pg.Client({ connectionString: adminUrl })
  await c.connect()
  try {
    const name = new URL(url).pathname.slice(1)
    const { rows } = await c.query<{ n: string }>(
      'SELECT xact_commit AS n FROM pg_stat_database WHERE datname = $1',
      [name],
    )
    return Number(rows[0]?.n ?? 0)
  } finally {
    await c.end()
  }
}

export async function runWorkload(o: WorkloadOptions): Promise<WorkloadResult> {
  const tasksPer = shapes[o.shape].tasks.length
  await o.fleet.collect() // drops what earlier runs recorded
  const x0 = await transactions(o.adminUrl, o.url)
  // Statements this process sends (workflow starts), so the per-task figures include them.
  const s0 = statementsSentSoFar()

  const calledAt = new Map<string, number>()
  const began = wallMs()
  let next = 0
  const starter = async () => {
    for (;;) {
      const i = next++
      if (i >= o.workflows) return
      if (o.rate) {
        const due = began + (i / o.rate) * 1000
        if (due > wallMs()) await sleep(due - wallMs())
      }
      const tenant = o.tenants[i % o.tenants.length] as TenantHandle
      const at = wallMs()
      const { id } = await tenant.startWorkflow(o.shape, { i })
      calledAt.set(id, at)
    }
  }
  await Promise.all(Array.from({ length: o.rate ? 4 : 16 }, starter))
  const startStatements = statementsSentSoFar() - s0

  // Wait for the fleet: every task of this run's workflows committed (other work, such as the
  // multi-tenant flood, may run beside it).
  const expected = o.workflows * tasksPer
  const byTask = new Map<string, TaskRecord>()
  let workerStatements = 0
  let peakRss = 0
  const peakConnections: Record<string, number> = {}
  let committed = 0
  for (;;) {
    const part = await o.fleet.collect()
    for (const [taskId, workflowId, key, kind, at] of part.events) {
      if (!calledAt.has(workflowId)) continue
      let r = byTask.get(taskId)
      if (!r) byTask.set(taskId, (r = { workflowId, key, startedAt: 0, committedAt: 0 }))
      // A task that ran more than once (it does not here) keeps its last start and first commit.
      if (kind === 's') r.startedAt = at
      else if (r.committedAt === 0) {
        r.committedAt = at
        committed++
      }
    }
    workerStatements += part.statements
    peakRss = Math.max(peakRss, part.peakRss)
    for (const one of part.peakConnections)
      for (const [k, n] of Object.entries(one)) peakConnections[k] = Math.max(peakConnections[k] ?? 0, n)
    if (committed >= expected) break
    await sleep(50)
  }
  const records = [...byTask.values()]
  const ended = Math.max(...records.map((r) => r.committedAt))
  const x1 = await transactions(o.adminUrl, o.url)

  const byWorkflow = Map.groupBy(records, (r) => r.workflowId)
  const parents = parentsOf(o.shape)
  const dispatch: number[] = []
  const start: number[] = []
  const endToEnd: number[] = []
  for (const [id, list] of byWorkflow) {
    if (!calledAt.has(id)) continue
    const byKey = new Map(list.map((r) => [r.key, r]))
    const called = calledAt.get(id) as number
    let first = Infinity
    let last = 0
    for (const r of list) {
      const ps = parents.get(r.key) ?? []
      if (ps.length === 0) first = Math.min(first, r.startedAt)
      else dispatch.push(r.startedAt - Math.max(...ps.map((p) => byKey.get(p)?.committedAt ?? NaN)))
      last = Math.max(last, r.committedAt)
    }
    start.push(first - called)
    endToEnd.push(last - called)
  }
  const seconds = (ended - began) / 1000
  const tasks = expected
  return {
    name: o.name,
    shape: o.shape,
    workers: o.fleet.size,
    workflows: o.workflows,
    tasks,
    seconds: round(seconds, 2),
    tasksPerSecond: Math.round(tasks / seconds),
    workflowsPerSecond: Math.round(o.workflows / seconds),
    dispatch: percentiles(dispatch.filter((d) => Number.isFinite(d))),
    start: percentiles(start),
    endToEnd: percentiles(endToEnd),
    perTask: {
      transactions: round((x1 - x0) / tasks, 2),
      statements: round((workerStatements + startStatements) / tasks, 2),
      workerStatements: round(workerStatements / tasks, 2),
    },
    peakWorkerRssMb: Math.round(peakRss / 1024 / 1024),
    peakWorkerConnections: peakConnections,
    pacedRate: o.rate ?? null,
  }
}

function round(v: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(v * f) / f
}
