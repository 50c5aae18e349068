// Debian tools some tests drive (docker-compose, promtool, chromium). CI installs them (.ci/run), so
// there a missing tool fails its tests; elsewhere they are skipped with a reason naming the package.
import { spawnSync } from 'node:child_process'

/** CI is set (and not "false"), as CI systems and .ci/run set it. */
export const inCi = Boolean(process.env.CI) && process.env.CI !== 'false'

/** Whether `command args...` runs and exits 0. */
export function runs(command: string, args: string[]): boolean {
  return spawnSync(command, args, { stdio: 'ignore' }).status === 0
}
