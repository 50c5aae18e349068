// Process figures: how long `equilateral --help` takes, how long a worker takes from spawn to
// "worker started", and how much memory (RSS) a worker holds idle and at concurrency 32 under load.
// Run alone: `node bench/process.ts` (DATABASE_URL: a superuser URL; unset, an embedded PostgreSQL),
// or as part of `npm run bench` (bench/run.ts). PROCESS_BENCH_ROOT=<checkout> measures another
// checkout's bin/equilateral.js (e.g. main, for a before/after), with this run's database and load.
//
// Cold: NODE_DISABLE_COMPILE_CACHE=1, every module compiled (and its types stripped) from source,
// as on a first start after a deploy. Warm: the compile cache that bin/equilateral.js enables is
// filled (by the first run, not counted), as on every later start on the same machine.
// CPU is the child's user + system time (from /proc/self/stat's cutime/cstime, Linux only).
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { createEngine, migrate } from '../src/index.ts'
import { agents, workflows } from './defs.ts'
import { scratchDatabase } from './lib/stats.ts'

export interface Timing {
  /** Wall milliseconds per run: median and best. */
  wallMs: { median: number; min: number }
  /** CPU (user + system) milliseconds per run, median (null where /proc is missing). */
  cpuMs: number | null
}

export interface ProcessResult {
  root: string
  runs: number
  help: { cold: Timing; warm: Timing }
  /** Spawn -> the "worker started" log line, against a migrated database (CPU: up to that line). */
  workerReady: { cold: Timing; warm: Timing }
  /** RSS of an idle worker 5 s after it started (default concurrency, warm), MB. */
  rssIdleMb: number
  /** Peak RSS of a worker at --concurrency 32 while it runs a backlog of workflows, MB. */
  rssLoadMb: number
  /** Tasks the loaded worker completed while sampled (shows that the load ran). */
  loadTasks: number
}

const here = path.dirname(fileURLToPath(import.meta.url))

export async function measureProcess(options: {
  adminUrl: string
  root?: string
  runs?: number
  loadWorkflows?: number
  log?: (line: string) => void
}): Promise<ProcessResult> {
  const root = options.root ?? path.join(here, '..')
  const runs = options.runs ?? 5
  const log = options.log ?? (() => {})
  const bin = path.join(root, 'bin', 'equilateral.js')
  const registry = path.join(root, 'bench', 'defs.ts')
  const db = await scratchDatabase(options.adminUrl, 'eq_bench_process')
  const cacheDir = await mkdtemp(path.join(tmpdir(), 'equilateral-compile-cache-'))
  const env = (mode: 'cold' | 'warm', extra: Record<string, string> = {}) => {
    const e: Record<string, string | undefined> = {
      ...process.env,
      DATABASE_URL: db.url,
      LOG_LEVEL: 'info',
      METRICS_PORT: '0',
      ...extra,
    }
    delete e.NODE_COMPILE_CACHE
    delete e.NODE_DISABLE_COMPILE_CACHE
    if (mode === 'cold') e.NODE_DISABLE_COMPILE_CACHE = '1'
    else e.NODE_COMPILE_CACHE = cacheDir
    return e
  }
  const engine = await (async () => {
    await migrate(db.url)
    return createEngine({
      connectionString: db.url,
      adminConnectionString: db.url,
      agents,
      workflows,
      log: pino({ level: 'error' }),
      supervise: false,
    })
  })()
  try {
    await engine.createTenant({ id: 'p1' })
    const timed = async (mode: 'cold' | 'warm', once: () => Promise<number>): Promise<Timing> => {
      if (mode === 'warm') await once() // fills the cache
      const walls: number[] = []
      const cpu0 = childCpuMs()
      for (let i = 0; i < runs; i++) walls.push(await once())
      const cpu1 = childCpuMs()
      return {
        wallMs: { median: median(walls), min: Math.min(...walls) },
        cpuMs: cpu0 === null || cpu1 === null ? null : Math.round((cpu1 - cpu0) / runs),
      }
    }

    const help = (mode: 'cold' | 'warm') => async () => {
      const started = performance.now()
      const child = spawn(process.execPath, [bin, '--help'], { env: env(mode), stdio: 'ignore' })
      await exited(child)
      return performance.now() - started
    }
    const result: Partial<ProcessResult> = { root, runs }
    result.help = { cold: await timed('cold', help('cold')), warm: await timed('warm', help('warm')) }
    log(`process: --help cold ${fmt(result.help.cold)}, warm ${fmt(result.help.warm)}`)

    // CPU up to "worker started", read from the child's /proc/<pid>/stat before it is stopped.
    const readyCpu: number[] = []
    let primed = false
    const ready = (mode: 'cold' | 'warm') => async () => {
      const w = await startWorker(bin, registry, env(mode), [])
      readyCpu.push(await cpuMsOf(w.pid))
      // The run that fills the cache lets the worker finish starting: a process writes its compile
      // cache once started (and at exit, which one stopped during its start may not reach).
      if (mode === 'warm' && !primed) {
        primed = true
        await new Promise((r) => setTimeout(r, 2000))
      }
      await w.stop()
      return w.readyMs
    }
    const readyTimed = async (mode: 'cold' | 'warm') => {
      const t = await timed(mode, ready(mode))
      const cpu = readyCpu.splice(0).slice(mode === 'warm' ? 1 : 0)
      return { ...t, cpuMs: cpu.some(Number.isNaN) ? null : median(cpu) }
    }
    result.workerReady = { cold: await readyTimed('cold'), warm: await readyTimed('warm') }
    log(
      `process: worker spawn -> ready cold ${fmt(result.workerReady.cold)}, warm ${fmt(result.workerReady.warm)}`,
    )

    {
      const w = await startWorker(bin, registry, env('warm'), [])
      try {
        await new Promise((r) => setTimeout(r, 5000))
        result.rssIdleMb = await rssMb(w.pid)
      } finally {
        await w.stop()
      }
    }

    {
      // A backlog first, so the worker runs 32 agents at once from its first fetch on.
      const tenant = await engine.tenant('p1')
      const total = options.loadWorkflows ?? 1000
      for (let i = 0; i < total; i++) await tenant.startWorkflow('diamond', {})
      const w = await startWorker(bin, registry, env('warm', { BENCH_AGENT_MS: '5' }), [
        '--concurrency',
        '32',
      ])
      let peak = 0
      try {
        for (;;) {
          peak = Math.max(peak, await rssMb(w.pid))
          const running = await runningWorkflows(engine)
          if (running === 0) break
          await new Promise((r) => setTimeout(r, 100))
        }
      } finally {
        await w.stop()
      }
      result.rssLoadMb = peak
      result.loadTasks = total * 4
    }
    log(
      `process: worker RSS idle ${result.rssIdleMb} MB, at concurrency 32 under load ${result.rssLoadMb} MB`,
    )
    return result as ProcessResult
  } finally {
    await engine.close()
    await db.drop()
    await rm(cacheDir, { recursive: true, force: true })
  }
}

async function runningWorkflows(engine: Awaited<ReturnType<typeof createEngine>>): Promise<number> {
  const { rows } = await engine.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM equilateral.workflows WHERE status = 'running'`,
  )
  return rows[0]?.n ?? 0
}

interface RunningWorker {
  pid: number
  readyMs: number
  stop: () => Promise<void>
}

/** Spawns `equilateral worker` and resolves when it logs "worker started". */
async function startWorker(
  bin: string,
  registry: string,
  env: Record<string, string | undefined>,
  args: string[],
): Promise<RunningWorker> {
  const started = performance.now()
  const child = spawn(process.execPath, [bin, 'worker', '--registry', registry, ...args], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stderr = ''
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await exited(child)
    }
  }
  try {
    const readyMs = await new Promise<number>((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
        if (out.includes('"worker started"')) resolve(performance.now() - started)
      })
      child.once('exit', (code) => reject(new Error(`worker exited (${code}) before it started: ${stderr}`)))
    })
    return { pid: child.pid as number, readyMs, stop }
  } catch (error) {
    await stop()
    throw error
  }
}

function exited(child: ReturnType<typeof spawn>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

async function rssMb(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '')
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return Math.round(kb / 1024)
}

/** User + system CPU of a running process so far, ms (Linux), or NaN. */
async function cpuMsOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '')
  if (!stat) return Number.NaN
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // utime and stime are fields 14 and 15 of the line; here 11 and 12 (0-based, after the name).
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100
}

/** CPU of this process's waited-for children so far, ms (Linux), or null. */
function childCpuMs(): number | null {
  try {
    // Fields after the command name (which may hold spaces, hence the split at the last ')').
    const { readFileSync } = process.getBuiltinModule('node:fs')
    const stat = readFileSync('/proc/self/stat', 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // cutime and cstime are fields 16 and 17 (1-based, of the whole line); here 13 and 14 (0-based).
    return ((Number(fields[13]) + Number(fields[14])) * 1000) / 100
  } catch {
    return null
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return Math.round(s[Math.floor(s.length / 2)] as number)
}

function fmt(t: Timing): string {
  return `${t.wallMs.median} ms wall (best ${Math.round(t.wallMs.min)}), ${t.cpuMs ?? '?'} ms CPU`
}

// `node bench/process.ts`: this measurement alone, printed as JSON.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { provisionDatabase } = await import('../src/db/provision.ts')
  const tempDir = process.env.DATABASE_URL ? null : await mkdtemp(path.join(tmpdir(), 'equilateral-bench-'))
  const server = await provisionDatabase(tempDir ? { dataDir: path.join(tempDir, 'postgres') } : {})
  try {
    const result = await measureProcess({
      adminUrl: server.url,
      ...(process.env.PROCESS_BENCH_ROOT ? { root: path.resolve(process.env.PROCESS_BENCH_ROOT) } : {}),
      ...(process.env.BENCH_QUICK === '1' ? { runs: 2, loadWorkflows: 200 } : {}),
      log: (line) => console.error(`[bench] ${line}`),
    })
    console.log(JSON.stringify(result, null, 2))
  } finally {
    await server.stop()
    if (tempDir) await rm(tempDir, { recursive: true, force: true })
  }
}
