// Files that ship beside the code (migrations, the web page, package.json)
// are found from the package root, which is two folders above a source module (src/db/x.ts) and
// three above its compiled twin (dist/src/db/x.js).
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

function findPackageRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'drizzle'))) return dir
    const parent = path.dirname(dir)
    if (parent === dir)
      throw new Error('equilateral-agents: cannot find the package root (package.json and drizzle/)')
    dir = parent
  }
}

export const packageRoot = findPackageRoot()

/** A path inside the package root. */
export function packagePath(...parts: string[]): string {
  return path.join(packageRoot, ...parts)
}
