// Real worker processes for the crash and shutdown tests (test/fixtures/worker-process.ts), killed
// at the end of the file whatever happened.
import { type ChildProcess, fork } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { afterAll } from 'vitest'
import { TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'

const script = fileURLToPath(new URL('../fixtures/worker-process.ts', import.meta.url))

export function workerProcesses(databaseUrl: string) {
  const children = new Set<ChildProcess>()
  afterAll(() => {
    for (const c of children) c.kill('SIGKILL')
  })
  /** Starts a worker process; resolves once it runs its worker. */
  function spawn(env: Record<string, string> = {}): Promise<ChildProcess> {
    const child = fork(script, [databaseUrl], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // The template's secret: these processes have no owner login to read it with.
      env: { ...process.env, TENANT_CONTEXT_SECRET: TEST_TENANT_CONTEXT_SECRET, ...env },
    })
    children.add(child)
    child.on('exit', () => children.delete(child))
    return new Promise((resolve, reject) => {
      child.once('message', () => resolve(child))
      child.once('exit', (code, signal) => reject(new Error(`worker exited early with ${signal ?? code}`)))
    })
  }
  /** Sends the signal and resolves with the exit code. */
  function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
    child.kill(signal)
    return exited
  }
  return { children, spawn, stop }
}
