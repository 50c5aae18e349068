// Acceptance test of dev mode: `npm start` (`equilateral dev`) on a fresh clone with no DATABASE_URL
// prints the demo tenant's key and a curl line; running that line, exactly as printed, from the
// repository root starts a deploy-feature workflow that completes. SIGTERM stops everything, the
// embedded PostgreSQL included, with exit code 0; a second start on the same data prints the same,
// still working, key and admin token.
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import { childEnv, cliProcesses, ROOT, stop, until } from './run.ts'

const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-dev-'))
// As root the embedded server runs as `postgres`, which must be able to enter the directory.
await chmod(dir, 0o755)
const port = await freePort()
const { start } = cliProcesses(childEnv({ EQUILATERAL_DATA_DIR: dir, PORT: String(port) }), async () => {
  await killLeftoverServer()
  await rm(dir, { recursive: true, force: true })
})

interface Banner {
  apiKey: string
  adminToken: string
  startCurl: string
  statusCurl: string
  watch: string
}

/** Starts `equilateral dev` and waits for what it prints once everything runs. */
async function startDev() {
  const dev = start(['dev'])
  const stderr = await until(
    'the dev banner',
    () => {
      if (dev.child.exitCode !== null)
        throw new Error(`dev exited with ${dev.child.exitCode}:\n${dev.out.stderr}`)
      return dev.out.stderr.includes('Stop with Ctrl-C.') ? dev.out.stderr : undefined
    },
    50_000,
  )
  const lines = stderr.split('\n').map((l) => l.trim())
  const find = (what: string, test: (line: string) => boolean) => {
    const line = lines.find(test)
    if (!line) throw new Error(`no ${what} line in:\n${stderr}`)
    return line
  }
  const banner: Banner = {
    apiKey: /^API key:\s+(\S+)/.exec(find('API key', (l) => l.startsWith('API key:')))?.[1] ?? '',
    adminToken:
      /^ADMIN_TOKEN:\s+(\S+)/.exec(find('ADMIN_TOKEN', (l) => l.startsWith('ADMIN_TOKEN:')))?.[1] ?? '',
    startCurl: find('start curl', (l) => l.startsWith('curl ') && l.includes(' -d ')),
    statusCurl: find('status curl', (l) => l.startsWith('curl ') && l.includes('/v1/workflows/<id>')),
    watch: find('watch', (l) => l.includes(' workflow watch <id> ')),
  }
  return { ...dev, banner }
}

/** Runs a printed command line as a user pasting it would: bash, from the repository root. */
function bash(line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('bash', ['-c', line], { cwd: ROOT, timeout: 15_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${line}\n${error.message}\n${stderr}`))
      else resolve(stdout)
    })
  })
}

describe('equilateral dev on a fresh clone (embedded PostgreSQL, no DATABASE_URL)', () => {
  let first: Banner
  let workflowId = ''

  it('prints the demo key and a curl line that starts a workflow, which completes', async () => {
    const dev = await startDev()
    first = dev.banner
    expect(first.apiKey).toMatch(/^eqk_/)
    expect(dev.out.stderr).toContain('(new tenant; kept in ')
    expect(first.startCurl).toContain(`http://127.0.0.1:${port}/v1/workflows`)
    expect(first.watch).toBe(
      `EQUILATERAL_DATA_DIR=${dir} node bin/equilateral.js workflow watch <id> --tenant demo`,
    )

    const started = JSON.parse(await bash(first.startCurl)) as {
      id: string
      status: string
      created: boolean
    }
    expect(started).toMatchObject({ status: 'running', created: true })
    workflowId = started.id
    const done = await until(
      'the workflow to complete',
      async () => {
        const wf = JSON.parse(await bash(first.statusCurl.replace('<id>', workflowId))) as { status: string }
        return wf.status === 'running' ? undefined : wf
      },
      30_000,
    )
    expect(done).toMatchObject({ status: 'completed', output: { deploy: { service: 'storefront-text' } } })

    // The key and the generated admin token are kept for the next run, readable by the owner only.
    const file = path.join(dir, 'demo-tenant.json')
    expect((await stat(file)).mode & 0o777).toBe(0o600)
    const saved = JSON.parse(await readFile(file, 'utf8')) as {
      adminToken: string
      apiKeys: Record<string, string>
    }
    expect(saved.adminToken).toBe(first.adminToken)
    expect(Object.values(saved.apiKeys)).toEqual([first.apiKey])
    expect(Object.keys(saved.apiKeys)[0]).toMatch(/^127\.0\.0\.1:\d+\/equilateral$/) // no credentials

    const startedAt = Date.now()
    expect(await stop(dev.child, 'SIGTERM', 15_000)).toBe(0)
    expect(Date.now() - startedAt).toBeLessThan(10_000)
    expect(existsSync(path.join(dir, 'postgres', 'postmaster.pid'))).toBe(false)
    await expect(connect()).rejects.toThrow()
  })

  it('prints the same key, which still works, and the same admin token on the next start', async () => {
    const dev = await startDev()
    expect(dev.banner.apiKey).toBe(first.apiKey)
    expect(dev.banner.adminToken).toBe(first.adminToken)
    expect(dev.out.stderr).toMatch(/API key: +\S+ +\(kept in /)
    const wf = JSON.parse(await bash(dev.banner.statusCurl.replace('<id>', workflowId))) as { status: string }
    expect(wf.status).toBe('completed')

    const tenants = await fetch(`http://127.0.0.1:${port}/v1/admin/tenants`, {
      headers: { authorization: `Bearer ${dev.banner.adminToken}` },
    })
    expect(tenants.status).toBe(200)
    expect(JSON.stringify(await tenants.json())).toContain('"demo"')

    expect(await stop(dev.child, 'SIGTERM', 15_000)).toBe(0)
    expect(existsSync(path.join(dir, 'postgres', 'postmaster.pid'))).toBe(false)
  })
})

describe('equilateral dev when the saved key is lost', () => {
  it('issues a new key for the existing demo tenant, and the old one stops working', async () => {
    const file = path.join(dir, 'demo-tenant.json')
    const before = JSON.parse(await readFile(file, 'utf8')) as { apiKeys: Record<string, string> }
    const oldKey = Object.values(before.apiKeys)[0] ?? ''
    await rm(file)

    const dev = await startDev()
    expect(dev.banner.apiKey).toMatch(/^eqk_/)
    expect(dev.banner.apiKey).not.toBe(oldKey)
    expect(dev.out.stderr).toContain('(a new key for the existing tenant; kept in ')
    const list = (key: string) =>
      fetch(`http://127.0.0.1:${port}/v1/workflows`, { headers: { authorization: `Bearer ${key}` } })
    expect((await list(dev.banner.apiKey)).status).toBe(200)
    expect((await list(oldKey)).status).toBe(401)
    expect(await stop(dev.child, 'SIGTERM', 15_000)).toBe(0)
  })
})

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0))
    })
  })
}

/** Connects to the embedded server (its port and password are in postgres.json). */
async function connect(): Promise<void> {
  const state = JSON.parse(await readFile(path.join(dir, 'postgres.json'), 'utf8')) as {
    port: number
    password: string
  }
  const client = new pg.Client({
    host: '127.0.0.1',
    port: state.port,
    user: 'postgres',
    password: state.password,
    database: 'postgres',
    connectionTimeoutMillis: 2_000,
  })
  client.on('error', () => {})
  await client.connect()
  await client.end()
}

/** A failed test may leave dev killed with its server running: stop that server too. */
async function killLeftoverServer(): Promise<void> {
  const pid = Number.parseInt(
    (await readFile(path.join(dir, 'postgres', 'postmaster.pid'), 'utf8').catch(() => '')).split('\n')[0] ??
      '',
    10,
  )
  if (!Number.isInteger(pid) || pid <= 0) return
  try {
    process.kill(pid, 'SIGQUIT') // immediate shutdown: the data is thrown away anyway
  } catch {
    // already gone
  }
  const alive = () => {
    try {
      process.kill(pid, 0)
      return true
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'EPERM'
    }
  }
  await until('the leftover server to exit', () => (alive() ? undefined : true), 10_000).catch(() => {})
}
