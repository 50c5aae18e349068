// No import cycles in src/ (issue 24, item 4): `npm run lint` runs import-x/no-cycle on src/ (the
// block lint/no-cycle.js builds). This shows the rule catches a cycle planted in a fixture (through
// a third module and through a lazy `await import()`, not through type-only imports), that the
// tree itself has none, and that the team's eslint.config.js applies the rule to src/. No database;
// the rule alone on src/ with the plain TypeScript parser (no type information), so it stays cheap.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ESLint } from 'eslint'
import { afterAll, describe, expect, it } from 'vitest'
// @ts-expect-error a plain JavaScript module of the lint configuration, without type declarations
import { noCycle } from '../../lint/no-cycle.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const fixture = mkdtempSync(path.join(tmpdir(), 'no-cycle-'))
afterAll(() => rmSync(fixture, { recursive: true, force: true }))

/** Writes the fixture's files (path -> text) under a fresh directory; returns it. */
function plant(name: string, files: Record<string, string>): string {
  const dir = path.join(fixture, name)
  for (const [file, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, file)), { recursive: true })
    writeFileSync(path.join(dir, file), text)
  }
  return dir
}

/** The no-cycle reports of linting `dir`'s src/ with the rule alone, as "file:line". */
async function cycles(dir: string): Promise<string[]> {
  const eslint = new ESLint({
    cwd: dir,
    overrideConfigFile: true,
    overrideConfig: [noCycle(['src/**/*.ts'])],
  })
  const results = await eslint.lintFiles(['src'])
  const problems = results.flatMap((r) => r.messages.map((m) => ({ file: r.filePath, ...m })))
  // Anything else (a parse error, a resolver that cannot load) would make "no cycle" meaningless.
  expect(problems.filter((p) => p.ruleId !== 'import-x/no-cycle')).toEqual([])
  return problems.map((p) => `${path.relative(dir, p.file)}:${p.line}`).sort()
}

describe('import-x/no-cycle', () => {
  it('fails on a cycle planted through a third module, and on one closed by a lazy import', async () => {
    const dir = plant('cycle', {
      'src/a.ts': "import { b } from './db/b.ts'\nexport const a = (): number => b() + 1\n",
      'src/db/b.ts': "import { c } from '../c.ts'\nexport const b = (): number => c()\n",
      'src/c.ts': "import { a } from './a.ts'\nexport const c = (): number => (a.length > 0 ? 1 : 0)\n",
      'src/lazy.ts':
        "export async function lazy(): Promise<number> {\n  return (await import('./d.ts')).d\n}\n",
      'src/d.ts': "import { lazy } from './lazy.ts'\nexport const d = 1\nexport const again = lazy\n",
    })
    expect(await cycles(dir)).toEqual([
      'src/a.ts:1',
      'src/c.ts:1',
      'src/d.ts:1',
      'src/db/b.ts:1',
      'src/lazy.ts:2',
    ])
  })

  it('passes on the same modules once the cycle is broken, type-only imports included', async () => {
    const dir = plant('broken', {
      'src/a.ts': "import { b } from './db/b.ts'\nexport const a = (): number => b() + 1\n",
      'src/db/b.ts': "import { c } from '../c.ts'\nexport const b = (): number => c()\n",
      // A type import back to a.ts is erased at run time: not a cycle.
      'src/c.ts':
        "import type { a } from './a.ts'\nexport const c = (): number => 1\nexport type A = typeof a\n",
    })
    expect(await cycles(dir)).toEqual([])
  })

  it('passes on src/', async () => {
    expect(await cycles(root)).toEqual([])
  }, 120_000)

  it("is on for src/ in the team's eslint.config.js", async () => {
    const eslint = new ESLint({ cwd: root })
    const config = await eslint.calculateConfigForFile(path.join(root, 'src/engine.ts'))
    expect(config.rules['import-x/no-cycle']?.[0]).toBe(2)
  })
})
