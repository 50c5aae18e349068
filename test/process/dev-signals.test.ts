// `npm start` (`equilateral dev`) on the embedded PostgreSQL, stopped the ways a user stops it:
// Ctrl-C in a terminal (SIGINT to the whole foreground process group) stops the engine first and
// then the server, quietly, with one line; a SIGKILLed dev leaves no server holding the port. And
// without EQUILATERAL_DATA_DIR the data goes to `.equilateral/` in the working directory.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { chmod, cp, mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { findFreePort, isPortFree } from '../../src/db/provision.ts'
import { childEnv, ROOT, stop, until } from '../cli/run.ts'

const BIN = path.join(ROOT, 'bin', 'equilateral.js')
const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-dev-signals-'))
// As root the embedded server runs as `postgres`, which must be able to enter the directory.
await chmod(dir, 0o755)
const children = new Set<ChildProcess>()
afterAll(async () => {
  for (const child of children) await stop(child, 'SIGKILL', 1_000)
  for (const data of [
    path.join(dir, 'data'),
    path.join(dir, 'project', '.equilateral'),
    path.join(dir, 'checkout', '.equilateral'),
  ]) {
    const pid = await postmasterPid(data).catch(() => undefined)
    if (pid && alive(pid)) process.kill(pid, 'SIGQUIT')
  }
  await rm(dir, { recursive: true, force: true })
})

interface Running {
  child: ChildProcess
  out: { stdout: string; stderr: string }
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/** Runs the command as a shell does: in a process group of its own (a terminal's foreground job). */
function launch(args: string[], env: Record<string, string>, cwd = ROOT, bin = BIN): Running {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd,
    env: childEnv(env),
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.add(child)
  const out = { stdout: '', stderr: '' }
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out.stdout += chunk))
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (out.stderr += chunk))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => {
      children.delete(child)
      resolve({ code, signal })
    }),
  )
  return { child, out, exited }
}

async function startDev(dataDir: string, port: number): Promise<Running> {
  const dev = launch(['dev'], { EQUILATERAL_DATA_DIR: dataDir, PORT: String(port), LOG_LEVEL: 'info' })
  await until(
    'the dev banner',
    () => {
      if (dev.child.exitCode !== null)
        throw new Error(`dev exited with ${dev.child.exitCode}:\n${dev.out.stderr}`)
      return dev.out.stderr.includes('Stop with Ctrl-C.') ? true : undefined
    },
    60_000,
  )
  return dev
}

async function postmasterPid(dataRoot: string): Promise<number> {
  const text = await readFile(path.join(dataRoot, 'postgres', 'postmaster.pid'), 'utf8')
  return Number.parseInt(text.split('\n')[0] ?? '', 10)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** What dev printed after `mark` (both streams), as lines. */
function linesAfter(text: string, mark: number): string[] {
  return text
    .slice(mark)
    .split('\n')
    .filter((line) => line.trim() !== '')
}

describe('equilateral dev on the embedded PostgreSQL', () => {
  const data = path.join(dir, 'data')

  it('Ctrl-C (SIGINT to the process group) stops the engine, then the server: exit 0, one line, no warning', async () => {
    const port = await findFreePort()
    const dev = await startDev(data, port)
    const server = await postmasterPid(data)
    expect(alive(server)).toBe(true)
    const marks = { stdout: dev.out.stdout.length, stderr: dev.out.stderr.length }

    process.kill(-dev.child.pid!, 'SIGINT') // what the terminal does on Ctrl-C
    const timer = setTimeout(() => dev.child.kill('SIGKILL'), 20_000)
    const { code, signal } = await dev.exited
    clearTimeout(timer)

    const stdout = linesAfter(dev.out.stdout, marks.stdout)
    const stderr = linesAfter(dev.out.stderr, marks.stderr)
    expect({ code, signal }, [...stdout, ...stderr].join('\n')).toEqual({ code: 0, signal: null })
    // Log lines (JSON when not on a terminal) at warn (40) or above, and stack traces: none.
    const logged = [...stdout, ...stderr].filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))
    expect(logged.filter((l: { level: number }) => l.level >= 40)).toEqual([])
    expect([...stdout, ...stderr].filter((l) => /^\s+at /.test(l))).toEqual([])
    expect(stderr).toEqual(['equilateral dev: stopped.'])
    expect(alive(server)).toBe(false)
    expect(existsSync(path.join(data, 'postgres', 'postmaster.pid'))).toBe(false)
    expect(await isPortFree(port)).toBe(true)
  })

  it('a SIGKILLed dev leaves no server behind, and the next start starts its own', async () => {
    const dev = await startDev(data, await findFreePort())
    const server = await postmasterPid(data)
    const { port } = JSON.parse(await readFile(path.join(data, 'postgres.json'), 'utf8')) as { port: number }
    dev.child.kill('SIGKILL') // the node process only, as the OOM killer or `kill -9` would
    await dev.exited
    await until('the orphaned server to exit', () => (alive(server) ? undefined : true), 30_000)
    expect(await isPortFree(port)).toBe(true)

    const next = await startDev(data, await findFreePort())
    expect(next.out.stdout).not.toContain('already running')
    const again = await postmasterPid(data)
    expect(again).not.toBe(server)
    expect(await stop(next.child, 'SIGTERM', 20_000)).toBe(0)
    expect(alive(again)).toBe(false)
  })

  it('keeps its data in .equilateral/ of the working directory when EQUILATERAL_DATA_DIR is unset', async () => {
    const project = path.join(dir, 'project')
    await mkdir(project)
    await chmod(project, 0o755)
    const migrated = launch(['migrate'], {}, project)
    expect((await migrated.exited).code, migrated.out.stderr).toBe(0)
    const listed = launch(['tenant', 'list'], {}, project)
    const { code } = await listed.exited
    expect(code, listed.out.stderr).toBe(0)
    expect(JSON.parse(listed.out.stdout)).toEqual([])
    // No set-up warning, and no "connection lost" from pools whose server stopped under them.
    expect(listed.out.stderr).toBe('')
    expect(existsSync(path.join(project, '.equilateral', 'postgres', 'PG_VERSION'))).toBe(true)
    expect(existsSync(path.join(project, '.equilateral', 'postgres.json'))).toBe(true)
  })

  it('moves the .data/ an earlier version kept in the package folder to .equilateral/, once, saying so', async () => {
    // A checkout (the package folder is the working directory) of the code under test.
    const checkout = path.join(dir, 'checkout')
    await mkdir(checkout)
    await chmod(checkout, 0o755)
    for (const part of ['bin', 'src', 'drizzle', 'workers', 'package.json'])
      await cp(path.join(ROOT, part), path.join(checkout, part), { recursive: true })
    await symlink(path.join(ROOT, 'node_modules'), path.join(checkout, 'node_modules'))
    const bin = path.join(checkout, 'bin', 'equilateral.js')
    const cli = async (args: string[], env: Record<string, string> = {}) => {
      const ran = launch(args, env, checkout, bin)
      const { code } = await ran.exited
      expect(code, ran.out.stderr).toBe(0)
      return ran.out
    }
    // What an earlier version left there: the embedded database in `.data/`, with a tenant.
    const legacy = { EQUILATERAL_DATA_DIR: path.join(checkout, '.data') }
    await cli(['migrate'], legacy)
    await cli(['tenant', 'create', 'kept'], legacy)

    const first = await cli(['tenant', 'list'])
    expect(first.stderr).toBe(
      'equilateral: moved the embedded database from .data to .equilateral (the data folder is now in the working directory)\n',
    )
    expect(JSON.parse(first.stdout)).toEqual([expect.objectContaining({ id: 'kept' })])
    expect(existsSync(path.join(checkout, '.data'))).toBe(false)
    expect(existsSync(path.join(checkout, '.equilateral', 'postgres', 'PG_VERSION'))).toBe(true)

    const second = await cli(['tenant', 'list'])
    expect(second.stderr).toBe('')
    expect(JSON.parse(second.stdout)).toEqual([expect.objectContaining({ id: 'kept' })])
  })
})
