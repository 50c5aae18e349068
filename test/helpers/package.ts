// The package as users get it: `npm pack` of this checkout (which builds dist/ first, as `prepare`),
// made once per test run however many files ask for it, and installed into a project folder with npm
// from the local cache (`--prefer-offline`: the registry is asked only for what the cache lacks).
//
// Several test files may ask at once, in different processes: the first to create the run's lock
// directory packs; the others wait for its result file, and fail if the packing process died
// without writing it. The global setup removes the run's directory at the end (packDir).
import { execFile } from 'node:child_process'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
const repo = path.resolve(import.meta.dirname, '../..')

/** The run's packing directory (under the system's temporary directory), from the run's prefix. */
export function packDir(prefix: string): string {
  return path.join(tmpdir(), `equilateral-pack-${prefix.replace(/_+$/, '')}`)
}

let packed: Promise<string> | undefined

/** The absolute path of this checkout's tarball, packed once per test run. */
export function packedTarball(): Promise<string> {
  // db.ts (vitest's inject) is imported here, not above: the global setup imports packDir.
  return (packed ??= import('./db.ts').then(({ pgContext }) => packOnce(packDir(pgContext().prefix))))
}

async function packOnce(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true })
  const result = path.join(dir, 'tarball.json')
  const lock = path.join(dir, 'lock')
  try {
    await mkdir(lock)
  } catch (error) {
    if ((error as { code?: string }).code !== 'EEXIST') throw error
    return waitForResult(result, lock)
  }
  await writeFile(path.join(lock, 'pid'), String(process.pid))
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], {
    cwd: repo,
    maxBuffer: 16 * 1024 * 1024,
  })
  // (npm prints the prepare script's output before the JSON on some versions)
  const [tarball] = JSON.parse(stdout.slice(stdout.search(/^\[/m))) as { filename: string }[]
  const file = path.join(dir, tarball?.filename ?? '')
  await writeFile(`${result}.tmp`, JSON.stringify({ file }))
  await rename(`${result}.tmp`, result)
  return file
}

/** Waits for another process's packing: while it is alive (no fixed deadline), then reads its result. */
async function waitForResult(result: string, lock: string): Promise<string> {
  for (;;) {
    try {
      return (JSON.parse(await readFile(result, 'utf8')) as { file: string }).file
    } catch {
      // not written yet
    }
    const pid = Number(await readFile(path.join(lock, 'pid'), 'utf8').catch(() => ''))
    if (pid > 0 && !alive(pid)) {
      await new Promise((r) => setTimeout(r, 200)) // its rename may have just landed
      try {
        return (JSON.parse(await readFile(result, 'utf8')) as { file: string }).file
      } catch {
        throw new Error(`npm pack in process ${pid} ended without a tarball`)
      }
    }
    await new Promise((r) => setTimeout(r, 200))
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * `npm install` in a project folder, from the local npm cache where it can (the tarball's own
 * dependencies are this checkout's, already there after the checkout's own install).
 */
export async function npmInstall(dir: string, args: string[] = []): Promise<void> {
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...args], {
    cwd: dir,
    maxBuffer: 16 * 1024 * 1024,
    env: { ...process.env, CI: 'true' },
  })
}
