// `equilateral init`: what it writes in an empty folder and in an existing package, where the
// dependency is installed from, and that it overwrites nothing without --force. (The scaffolded
// project installed from the packed tarball and run is test/process/new-user.test.ts.)
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { init, InitError } from '../../src/cli/init.ts'
import { childEnv, cliProcesses, messages, ROOT } from './run.ts'

const root = await mkdtemp(path.join(tmpdir(), 'eq-init-'))
afterAll(() => rm(root, { recursive: true, force: true }))
const { run } = cliProcesses(childEnv({}))

const SCAFFOLD = [
  '.gitignore',
  'Procfile',
  'equilateral.config.ts',
  'package.json',
  'src/agents.ts',
  'src/workflows.ts',
  'test/hello.test.ts',
  'tsconfig.json',
]

async function files(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort()
}

async function json(file: string): Promise<any> {
  return JSON.parse(await readFile(file, 'utf8'))
}

describe('equilateral init', () => {
  it('scaffolds an empty folder: config, agent, workflow, test, scripts, Procfile; the dependency from --package', async () => {
    const dir = path.join(root, 'empty')
    const tarball = path.join(root, 'equilateral-agents-0.1.0.tgz')
    await writeFile(tarball, '')
    const result = await init({ dir, package: tarball })
    expect(await files(dir)).toEqual(SCAFFOLD)
    const pkg = await json(path.join(dir, 'package.json'))
    expect(pkg).toMatchObject({
      name: 'empty',
      private: true,
      type: 'module',
      scripts: {
        start: 'equilateral dev',
        worker: 'equilateral worker',
        web: 'equilateral web',
        test: 'node --test "test/**/*.test.ts"',
      },
      dependencies: { 'equilateral-agents': 'file:../equilateral-agents-0.1.0.tgz' },
    })
    expect(result.dependency).toBe('file:../equilateral-agents-0.1.0.tgz')
    expect(await readFile(path.join(dir, 'equilateral.config.ts'), 'utf8')).toContain(
      "modules: ['./src/agents.ts', './src/workflows.ts']",
    )
    expect(await readFile(path.join(dir, 'Procfile'), 'utf8')).toBe(
      [
        'release: node node_modules/equilateral-agents/bin/equilateral.js migrate',
        'web: node node_modules/equilateral-agents/bin/equilateral.js web',
        'worker: node node_modules/equilateral-agents/bin/equilateral.js worker',
        '',
      ].join('\n'),
    )
  })

  it('refuses to overwrite, in one line naming the files, and writes nothing; --force overwrites', async () => {
    const dir = path.join(root, 'taken')
    await mkdir(path.join(dir, 'src'), { recursive: true })
    await writeFile(path.join(dir, 'Procfile'), 'web: my-server\n')
    await writeFile(path.join(dir, 'src', 'agents.ts'), '// mine\n')
    const refused = await run(['init', dir])
    expect(refused.code).toBe(2)
    expect(messages(refused.stderr)).toEqual([
      `equilateral: init would overwrite src/agents.ts, Procfile in ${dir} (nothing written; --force overwrites)`,
    ])
    expect(await files(dir)).toEqual(['Procfile', 'src/agents.ts'])
    expect(await readFile(path.join(dir, 'Procfile'), 'utf8')).toBe('web: my-server\n')

    const forced = await run(['init', dir, '--force'])
    expect(forced.code, forced.stderr).toBe(0)
    expect(forced.stdout).toMatch(/^init: wrote equilateral\.config\.ts, src\/agents\.ts, /)
    expect(await files(dir)).toEqual(SCAFFOLD)
    // From this checkout, the dependency is the checkout itself (a path npm links).
    expect((await json(path.join(dir, 'package.json'))).dependencies['equilateral-agents']).toBe(
      `file:${path.relative(dir, ROOT.replace(/\/$/, ''))}`,
    )
  })

  it('adds to an existing package: keeps its fields, scripts and dependency; refuses a different test script', async () => {
    const dir = path.join(root, 'existing')
    await mkdir(dir)
    const before = {
      name: 'billing',
      version: '3.1.0',
      type: 'module',
      scripts: { build: 'tsc', test: 'vitest run' },
      dependencies: { 'equilateral-agents': 'file:vendor/equilateral-agents-0.1.0.tgz', pg: '^8.0.0' },
    }
    await writeFile(path.join(dir, 'package.json'), JSON.stringify(before))
    await writeFile(path.join(dir, '.gitignore'), 'dist/\n')

    const refused = await init({ dir }).then(
      () => undefined,
      (e: unknown) => e,
    )
    expect(refused).toBeInstanceOf(InitError)
    expect((refused as Error).message).toBe(
      `init would overwrite package.json scripts test in ${dir} (nothing written; --force overwrites)`,
    )
    expect(await json(path.join(dir, 'package.json'))).toEqual(before)

    const result = await init({ dir, force: true })
    expect(result.skipped).toEqual(['.gitignore'])
    expect(await readFile(path.join(dir, '.gitignore'), 'utf8')).toBe('dist/\n')
    const pkg = await json(path.join(dir, 'package.json'))
    expect(pkg).toEqual({
      ...before,
      scripts: {
        build: 'tsc',
        test: 'node --test "test/**/*.test.ts"',
        start: 'equilateral dev',
        worker: 'equilateral worker',
        web: 'equilateral web',
        migrate: 'equilateral migrate',
      },
    })
  })

  it('writes .mts files in a package that is not "type": "module", and asks for --package when it cannot choose', async () => {
    const dir = path.join(root, 'commonjs')
    await mkdir(dir)
    await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'legacy' }))
    await init({ dir })
    expect(await files(dir)).toEqual([
      '.gitignore',
      'Procfile',
      'equilateral.config.mts',
      'package.json',
      'src/agents.mts',
      'src/workflows.mts',
      'test/hello.test.mts',
      'tsconfig.json',
    ])
    expect(await readFile(path.join(dir, 'src/workflows.mts'), 'utf8')).toContain("from './agents.mts'")

    // Run from an installed copy (inside node_modules) with nothing to go on: no guess.
    const installed = path.join(root, 'x', 'node_modules', 'equilateral-agents')
    await mkdir(installed, { recursive: true })
    const fresh = path.join(root, 'fresh')
    await expect(init({ dir: fresh, packageRoot: installed })).rejects.toThrow(
      /^init: equilateral-agents is not on a public registry: pass --package <tarball or directory>/,
    )
    expect(existsSync(fresh)).toBe(false)
  })
})
