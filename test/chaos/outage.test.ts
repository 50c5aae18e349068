// Database outage (issue 8): the real `web` and `worker` commands run against a PostgreSQL server of
// the test's own, which the test stops for several seconds while workflows run and requests arrive,
// then starts again. Neither process may exit; /healthz stays 200 while /readyz answers 503 and then
// 200 again; requests that need the database are answered 503 `database_unavailable` with
// Retry-After (never a 500, never a hang); the outage is logged as warnings at a bounded rate, and
// its end too; every workflow, started before the outage or refused during it and started again
// after, completes without a process being restarted. A `web` and a `worker` started while the
// database is down wait for it instead of exiting.
import { describe, expect, it } from 'vitest'
import { childEnv, cliProcesses, stop, until } from '../cli/run.ts'
import { STALL_MS, untilSettled } from '../helpers/progress.ts'
import { ownServer } from '../helpers/server.ts'

const OUTAGE_MS = 6_000
const BEFORE = 8
const AFTER = 6
/** Each of a workflow's three steps takes this long: the outage lands while agents run. */
const STEP_MS = 700
/** A request the database cannot serve must be answered well within this. */
const REQUEST_TIMEOUT_MS = 15_000
const ADMIN_TOKEN = 'outage-test-admin-token-0123456789'
const REGISTRY = ['--registry', 'test/fixtures/outage-registry.ts']

const server = await ownServer()
const { start } = cliProcesses(
  childEnv({
    DATABASE_URL: server.appUrl,
    MIGRATION_DATABASE_URL: server.url,
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    ADMIN_TOKEN,
    // The sweeper on a local timer, so an attempt lost in the outage would come back in time.
    SWEEP_INTERVAL_MS: '1000',
    STALE_AFTER_MS: '5000',
    HEARTBEAT_INTERVAL_MS: '500',
    POLL_INTERVAL_MS: '500',
  }),
)

interface LogLine {
  level: number
  /** Milliseconds since the epoch (the line's `time` is ISO 8601). */
  at: number
  msg: string
  [key: string]: unknown
}

function logLines(stdout: string): LogLine[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      const line = JSON.parse(l) as LogLine & { time: string }
      return { ...line, at: Date.parse(line.time) }
    })
}

const WARN = 40
const ERROR = 50

/** A `web` and a `worker` process; any exit the test did not ask for is recorded. */
function startProcesses() {
  const worker = start(['worker', ...REGISTRY])
  const web = start(['web', ...REGISTRY])
  const exits: string[] = []
  let stopping = false
  for (const [name, p] of [
    ['worker', worker],
    ['web', web],
  ] as const) {
    p.child.once('exit', (code, signal) => {
      if (!stopping) exits.push(`${name} exited (${code ?? signal}):\n${p.out.stderr}`)
    })
  }
  const logs = () => ({ worker: logLines(worker.out.stdout), web: logLines(web.out.stdout) })
  /** The web's URL once it listens. */
  const listening = async (timeoutMs: number) => {
    const line = await until(
      'the web process to listen',
      () => {
        if (exits.length > 0) throw new Error(exits.join('\n'))
        return logs().web.find((l) => l.msg === 'web: listening')
      },
      timeoutMs,
    )
    await until(
      'the worker to start',
      () => {
        if (exits.length > 0) throw new Error(exits.join('\n'))
        return logs().worker.some((l) => l.msg === 'worker started') || undefined
      },
      timeoutMs,
    )
    return String(line.url)
  }
  const shutdown = async () => {
    stopping = true
    return Promise.all([stop(worker.child, 'SIGTERM', 15_000), stop(web.child, 'SIGTERM', 15_000)])
  }
  return { worker, web, exits, logs, listening, shutdown }
}

interface Answer {
  what: string
  status: number | 'timeout' | 'error'
  code?: string
  retryAfter: string | null
  body: unknown
  ms: number
}

/** One request, never waiting longer than REQUEST_TIMEOUT_MS. */
async function call(what: string, url: string, init: RequestInit = {}): Promise<Answer> {
  const at = performance.now()
  try {
    const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })
    const text = await res.text()
    let body: unknown = text
    try {
      body = JSON.parse(text)
    } catch {
      // not JSON
    }
    const code = (body as { code?: unknown } | null)?.code
    return {
      what,
      status: res.status,
      ...(typeof code === 'string' ? { code } : {}),
      retryAfter: res.headers.get('retry-after'),
      body,
      ms: performance.now() - at,
    }
  } catch (error) {
    const status = (error as Error).name === 'TimeoutError' ? 'timeout' : 'error'
    return { what, status, retryAfter: null, body: String(error), ms: performance.now() - at }
  }
}

/** The tenant API of the web at `base`, with the tenant's key. */
function api(base: string, apiKey: string) {
  const auth = { authorization: `Bearer ${apiKey}` }
  return {
    start: (idempotencyKey: string) =>
      call('start', `${base}/v1/workflows`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ type: 'outage-chain', input: { ms: STEP_MS }, idempotencyKey }),
      }),
    get: (id: string) => call('get', `${base}/v1/workflows/${id}`, { headers: auth }),
    list: () => call('list', `${base}/v1/workflows?limit=5`, { headers: auth }),
  }
}

type WorkflowBody = { id: string; status: string; tasks: { status: string }[] }

/** Waits until every workflow has ended (failing when no task moves for a while); returns their statuses. */
async function settled(tenant: ReturnType<typeof api>, ids: string[]): Promise<string[]> {
  let statuses: string[] = []
  await untilSettled('every workflow to end', async () => {
    const answers = await Promise.all(ids.map((id) => tenant.get(id)))
    const bodies = answers.map((a) => (a.status === 200 ? (a.body as WorkflowBody) : null))
    statuses = bodies.map((b) => b?.status ?? 'unknown')
    return {
      done: !statuses.includes('running') && !statuses.includes('unknown'),
      progress: bodies.map((b) => b?.tasks.map((t) => t.status)),
      state: `statuses ${statuses.join(', ')}`,
    }
  })
  return statuses
}

/** `count x level message` for the lines in [from, to], for the summary. */
function tally(lines: LogLine[]): string[] {
  const counts = new Map<string, number>()
  for (const l of lines) counts.set(`${l.level} ${l.msg}`, (counts.get(`${l.level} ${l.msg}`) ?? 0) + 1)
  return [...counts].map(([k, v]) => `    ${v} x ${k}`)
}

describe('database outage', () => {
  let first: ReturnType<typeof startProcesses>

  it(
    'web and worker survive PostgreSQL going away and coming back, and every workflow completes',
    // Waits fail when nothing moves (test/helpers/progress.ts); this only bounds the whole test.
    { timeout: 300_000 },
    async () => {
      first = startProcesses()
      const base = await first.listening(STALL_MS)
      const created = await call('create tenant', `${base}/v1/admin/tenants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ id: 'outage' }),
      })
      expect(created.status).toBe(201)
      const tenant = api(base, (created.body as { apiKey: string }).apiKey)

      // Workflows in flight when the database goes away: agents run, the next steps are queued.
      const ids: string[] = []
      for (let i = 0; i < BEFORE; i++) {
        const s = await tenant.start(`before-${i}`)
        expect(s.status).toBe(201)
        ids.push((s.body as WorkflowBody).id)
      }
      await until('agents to run', async () => {
        const wf = (await tenant.get(ids[BEFORE - 1]!)).body as WorkflowBody
        return wf.tasks.some((t) => t.status === 'running') || undefined
      })

      // The outage: requests keep arriving until the database is started again.
      const stopping = Date.now()
      await server.stop()
      const down = performance.now()
      const answers: Answer[] = []
      const refused: string[] = []
      let firstNotReadyMs: number | undefined
      for (let n = 0; performance.now() - down < OUTAGE_MS; n++) {
        const round = await Promise.all([
          call('healthz', `${base}/healthz`),
          call('readyz', `${base}/readyz`),
          tenant.start(`during-${n}`),
          tenant.get(ids[0]!),
          tenant.list(),
        ])
        answers.push(...round)
        if (round[2]?.status === 503) refused.push(`during-${n}`)
        firstNotReadyMs ??= round[1]?.status === 503 ? performance.now() - down : undefined
        await new Promise((r) => setTimeout(r, 250))
      }
      await server.start()
      const up = performance.now()
      const started = Date.now()
      const readyAgainMs = await until(
        'readyz 200 once the database is back',
        async () =>
          (await call('readyz', `${base}/readyz`)).status === 200 ? performance.now() - up : undefined,
        STALL_MS,
      )

      // Starts refused during the outage, repeated with their idempotency keys: nothing was created.
      expect(refused.length).toBeGreaterThanOrEqual(AFTER)
      for (const key of refused.slice(0, AFTER)) {
        const s = await tenant.start(key)
        expect(s.status).toBe(201)
        ids.push((s.body as WorkflowBody).id)
      }
      const statuses = await settled(tenant, ids)
      const allDoneMs = performance.now() - up

      const { worker: workerLogs, web: webLogs } = first.logs()
      const inOutage = (lines: LogLine[]) => lines.filter((l) => l.at >= stopping && l.at <= started)
      const outageSeconds = (started - stopping) / 1000
      const groups = Object.entries(
        Object.groupBy(answers, (a) => `${a.what} ${a.status}${a.code ? ` ${a.code}` : ''}`),
      )
      console.log(
        [
          `outage summary: database down ${outageSeconds.toFixed(1)} s`,
          `  readyz 503 ${firstNotReadyMs?.toFixed(0)} ms after the stop, 200 ${readyAgainMs.toFixed(0)} ms after the start; every workflow done ${allDoneMs.toFixed(0)} ms after the start`,
          `  answers during the outage: ${groups.map(([k, v]) => `${k}: ${v?.length} (slowest ${Math.max(...(v ?? []).map((a) => a.ms)).toFixed(0)} ms)`).join(', ')}`,
          `  worker log lines during the outage: ${inOutage(workerLogs).length}`,
          ...tally(inOutage(workerLogs)),
          `  web log lines during the outage: ${inOutage(webLogs).length}`,
          ...tally(inOutage(webLogs)),
        ].join('\n'),
      )

      // No process exited, and both still serve.
      expect(first.exits).toEqual([])
      expect(first.worker.child.exitCode).toBeNull()
      expect(first.web.child.exitCode).toBeNull()

      // Liveness stayed up; readiness was 503 (the database unreachable) throughout the outage.
      const of = (what: string) => answers.filter((a) => a.what === what)
      expect(of('healthz').map((a) => a.status)).toEqual(of('healthz').map(() => 200))
      expect(firstNotReadyMs).toBeDefined()
      for (const a of of('readyz')) {
        expect(a.status).toBe(503)
        expect(a.body).toMatchObject({ ready: false, database: 'unreachable' })
      }
      // Requests that need the database: a 503 problem to retry, never a 500 nor a hang.
      const needDatabase = answers.filter((a) => ['start', 'get', 'list'].includes(a.what))
      expect(needDatabase.length).toBeGreaterThan(0)
      for (const a of needDatabase) {
        expect(a, `${a.what}: ${JSON.stringify(a.body)}`).toMatchObject({
          status: 503,
          code: 'database_unavailable',
          retryAfter: '5',
        })
      }

      // Every workflow completed: those in flight and those started after the outage.
      expect(statuses).toEqual(ids.map(() => 'completed'))

      // Logged as warnings, not errors, at a bounded rate (backoff, not a retry loop); and the end.
      for (const [name, lines, allowed] of [
        ['worker', workerLogs, 0],
        ['web', webLogs, needDatabase.length],
      ] as const) {
        const warnings = inOutage(lines).filter((l) => l.level >= WARN)
        expect(
          warnings.filter((l) => l.level >= ERROR),
          `${name}: error lines`,
        ).toEqual([])
        // Beyond one line per refused request: a few as the connections drop, then a few a second.
        expect(warnings.length, `${name}: warnings`).toBeLessThanOrEqual(allowed + 15 + 5 * outageSeconds)
        expect(
          inOutage(lines).some((l) => l.msg === 'database unreachable; waiting for it to come back'),
        ).toBe(true)
        const back = await until(`${name} to log that the database is back`, () =>
          logLines((name === 'worker' ? first.worker : first.web).out.stdout).find(
            (l) => l.msg === 'database reachable again' && l.at >= stopping,
          ),
        )
        console.log(
          `${name}: database reachable again ${JSON.stringify({ downMs: back.downMs, errorsNotLogged: back.errorsNotLogged })}`,
        )
      }
    },
  )

  it(
    'a web and a worker started while the database is down wait for it, then work',
    // Waits fail when nothing moves (test/helpers/progress.ts); this only bounds the whole test.
    { timeout: 300_000 },
    async () => {
      // The processes of the first test stop cleanly after the outage.
      expect(await first.shutdown()).toEqual([0, 0])

      await server.stop()
      const late = startProcesses()
      try {
        await until(
          'both processes to wait for the database',
          () => {
            if (late.exits.length > 0) throw new Error(late.exits.join('\n'))
            const { worker, web } = late.logs()
            const waiting = (lines: LogLine[]) =>
              lines.some((l) => l.level === WARN && l.msg === 'database unavailable at start; waiting for it')
            return waiting(worker) && waiting(web) ? true : undefined
          },
          STALL_MS,
        )
      } finally {
        await server.start()
      }
      const up = performance.now()
      const base = await late.listening(STALL_MS)
      const waits = late
        .logs()
        .worker.filter((l) => l.msg === 'database unavailable at start; waiting for it')
      console.log(
        `started while down: ${waits.length} waits logged by the worker; both serving ${(performance.now() - up).toFixed(0)} ms after the database started`,
      )
      const created = await call('create tenant', `${base}/v1/admin/tenants`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ id: 'late' }),
      })
      expect(created.status).toBe(201)
      const tenant = api(base, (created.body as { apiKey: string }).apiKey)
      const s = await tenant.start('late-1')
      expect(s.status).toBe(201)
      expect(await settled(tenant, [(s.body as WorkflowBody).id])).toEqual(['completed'])
      expect(late.exits).toEqual([])
      // No error line for people on stderr: the wait is in the JSON log, the process never failed.
      expect(late.worker.out.stderr).not.toMatch(/^equilateral:/m)
      expect(late.web.out.stderr).not.toMatch(/^equilateral:/m)
      expect(await late.shutdown()).toEqual([0, 0])
    },
  )
})
