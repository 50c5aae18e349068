// The project configuration file (equilateral.config.ts): found walking up from the working
// directory or named by EQUILATERAL_CONFIG, its modules' agents, workflows and schedules loaded,
// --registry overriding it, and one typed line for each way it can be wrong. The command line runs
// a project's workflow with no --registry at all.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { describe, expect, it } from 'vitest'
import { applySchedules, findConfigFile, loadProjectRegistry } from '../../src/cli/config.ts'
import { ProjectConfigError } from '../../src/errors.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { testEngine } from '../helpers/engine.ts'
import { childEnv, cliProcesses, messages } from './run.ts'

const INDEX = pathToFileURL(path.resolve(import.meta.dirname, '../../src/index.ts')).href
const root = await mkdtemp(path.join(tmpdir(), 'eq-config-'))
const db = await createTestDatabase()
const { run, start } = cliProcesses(childEnv({ DATABASE_URL: db.url, LOG_LEVEL: 'warn' }), async () => {
  await db.drop()
  await rm(root, { recursive: true, force: true })
})

/** A project folder with these files (paths relative to it). */
async function project(name: string, files: Record<string, string>): Promise<string> {
  const dir = path.join(root, name)
  for (const [file, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, file)), { recursive: true })
    await writeFile(path.join(dir, file), text)
  }
  return dir
}

// A TypeScript config with types (Node strips them), a module exporting agents one by one and one
// exporting the `workflows` and `schedules` lists.
const CONFIG_TS = `import type { EquilateralConfig } from '${INDEX}'
const modules: string[] = ['./src/agents.ts', './src/flows.mjs']
export default { modules } satisfies EquilateralConfig
`
const AGENTS = `import { defineAgent } from '${INDEX}'
export const upper = defineAgent<{ text: string }>({ id: 'cfg-upper', handler: async (ctx) => ({ text: ctx.data.text.toUpperCase() }) })
export const exclaim = defineAgent({ id: 'cfg-exclaim', handler: async (ctx) => ({ text: (ctx.results.upper as { text: string }).text + '!' }) })
export const notADefinition = 42
`
const FLOWS = `import { defineWorkflow, defineSchedule } from '${INDEX}'
import { upper, exclaim } from './agents.ts'
const shout = defineWorkflow({
  name: 'cfg-shout',
  tasks: [
    { key: 'upper', agent: upper, data: (input) => ({ text: input.text }) },
    { key: 'exclaim', agent: exclaim, dependsOn: ['upper'] },
  ],
})
// Not in the lists below: a module that exports lists is taken at its word.
export const draft = defineWorkflow({ name: 'cfg-draft', tasks: [{ key: 'a', agent: upper }] })
export const workflows = [shout, shout] // the same definition twice counts once
export const schedules = [
  defineSchedule({ tenant: 'cfg-acme', id: 'nightly', workflowType: 'cfg-shout', cron: '0 3 * * *', input: { text: 'night' } }),
  defineSchedule({ tenant: 'cfg-nobody', id: 'nightly', workflowType: 'cfg-shout', cron: '0 3 * * *' }),
]
`

const good = await project('good', {
  'equilateral.config.ts': CONFIG_TS,
  'src/agents.ts': AGENTS,
  'src/flows.mjs': FLOWS,
  'deep/er/folder/.keep': '',
})

describe('loading the configuration file', () => {
  it('is found walking up from the working directory and loads what its modules export', async () => {
    const cwd = path.join(good, 'deep', 'er', 'folder')
    expect(findConfigFile(cwd, {})).toBe(path.join(good, 'equilateral.config.ts'))
    const registry = await loadProjectRegistry({ cwd, env: {} })
    expect(registry.source).toEqual({ kind: 'config', path: path.join(good, 'equilateral.config.ts') })
    expect(registry.agents.map((a) => a.id).sort()).toEqual(['cfg-exclaim', 'cfg-upper'])
    expect(registry.workflows.map((w) => w.name)).toEqual(['cfg-shout'])
    expect(registry.schedules.map((s) => s.tenant)).toEqual(['cfg-acme', 'cfg-nobody'])
  })

  it('EQUILATERAL_CONFIG names the file; --registry overrides both; neither: the examples', async () => {
    const elsewhere = await project('elsewhere', {})
    const env = { EQUILATERAL_CONFIG: path.relative(elsewhere, path.join(good, 'equilateral.config.ts')) }
    const named = await loadProjectRegistry({ cwd: elsewhere, env })
    expect(named.workflows.map((w) => w.name)).toEqual(['cfg-shout'])

    const override = await loadProjectRegistry({ cwd: good, env: {}, registry: 'src/agents.ts' })
    expect(override.source.kind).toBe('registry')
    expect(override.workflows).toEqual([])
    expect(override.agents.map((a) => a.id).sort()).toEqual(['cfg-exclaim', 'cfg-upper'])

    const none = await loadProjectRegistry({ cwd: elsewhere, env: {} })
    expect(none.source.kind).toBe('examples')
    expect(none.workflows.map((w) => w.name)).toContain('deploy-feature')
  })

  it('refuses, in one line naming the file and the module, what it cannot use', async () => {
    const cases: [string, Record<string, string>, RegExp][] = [
      [
        'missing',
        { 'equilateral.config.mjs': `export default { modules: ['./src/nope.ts'] }` },
        /^equilateral\.config\.mjs: module \.\/src\/nope\.ts: no such file \(.*src\/nope\.ts\)$/,
      ],
      [
        'empty',
        {
          'equilateral.config.mjs': `export default { modules: ['./lib.mjs'] }`,
          'lib.mjs': 'export const answer = 42\n',
        },
        /^equilateral\.config\.mjs: module \.\/lib\.mjs exports no agent, workflow or schedule \(/,
      ],
      [
        'not-an-agent',
        {
          'equilateral.config.mjs': `export default { modules: ['./lib.mjs'] }`,
          'lib.mjs': `export const agents = [{ id: 'x' }]\n`,
        },
        /^equilateral\.config\.mjs: module \.\/lib\.mjs: agents\[0\] is not an agent \(use defineAgent\)$/,
      ],
      [
        'broken',
        {
          'equilateral.config.mjs': `export default { modules: ['./lib.mjs'] }`,
          'lib.mjs': `import { nothing } from './absent.mjs'\nexport const agents = [nothing]\n`,
        },
        /^equilateral\.config\.mjs: module \.\/lib\.mjs: cannot load it: .*absent\.mjs/,
      ],
      [
        'no-default',
        { 'equilateral.config.js': `export const modules = ['./lib.mjs']\n` },
        /^equilateral\.config\.js must export a configuration as its default export/,
      ],
      [
        'no-modules',
        { 'equilateral.config.mjs': `export default { modules: [] }\n` },
        /^equilateral\.config\.mjs: `modules` must be a non-empty list of module paths/,
      ],
    ]
    for (const [name, files, message] of cases) {
      const cwd = await project(name, { ...files, 'package.json': '{"type":"module"}' })
      const error = await loadProjectRegistry({ cwd, env: {} }).then(
        () => undefined,
        (e: unknown) => e,
      )
      expect(error, name).toBeInstanceOf(ProjectConfigError)
      expect((error as ProjectConfigError).code).toBe('invalid_project_config')
      expect((error as Error).message, name).toMatch(message)
      expect((error as Error).message, name).not.toContain('\n')
    }
    expect(() => findConfigFile(root, { EQUILATERAL_CONFIG: 'nowhere.ts' })).toThrow(
      /^EQUILATERAL_CONFIG names .*nowhere\.ts, which is not a file$/,
    )
  })

  it("puts the modules' schedules for tenants that exist, and skips the others with a warning", async () => {
    const registry = await loadProjectRegistry({ cwd: good, env: {} })
    const { engine } = await testEngine({ agents: registry.agents, workflows: registry.workflows })
    await engine.createTenant({ id: 'cfg-acme' })
    const warnings: unknown[] = []
    const log = { warn: (o: unknown) => warnings.push(o) } as never
    await applySchedules(engine, registry.schedules, log)
    await applySchedules(engine, registry.schedules, log) // at every start: the same schedule
    const listed = await (await engine.tenant('cfg-acme')).listSchedules()
    expect(listed.map((s) => [s.id, s.workflowType, s.cron, s.input])).toEqual([
      ['nightly', 'cfg-shout', '0 3 * * *', { text: 'night' }],
    ])
    expect(warnings).toEqual([
      { tenant: 'cfg-nobody', schedule: 'nightly', code: 'unknown_tenant' },
      { tenant: 'cfg-nobody', schedule: 'nightly', code: 'unknown_tenant' },
    ])
  })
})

describe('the command line with a configuration file', () => {
  it("runs the project's workflow without --registry, and names a bad module in one line", async () => {
    const config = { EQUILATERAL_CONFIG: path.join(good, 'equilateral.config.ts') }
    const created = await run(['tenant', 'create', 'cfg-cli'], config)
    expect(created.code, created.stderr).toBe(0)
    // A worker and `workflow start`, both from the configuration file.
    start(['worker', '--concurrency', '2'], config)
    const started = await run(
      ['workflow', 'start', 'cfg-shout', '--tenant', 'cfg-cli', '--input', '{"text":"hi"}', '--wait'],
      config,
    )
    expect(started.code, started.stderr).toBe(0)
    expect(JSON.parse(started.stdout)).toMatchObject({
      status: 'completed',
      output: { exclaim: { text: 'HI!' } },
    })

    const broken = await project('cli-broken', {
      'equilateral.config.mjs': `export default { modules: ['./agents.ts'] }\n`,
    })
    const failed = await run(['workflow', 'start', 'cfg-shout', '--tenant', 'cfg-cli'], {
      EQUILATERAL_CONFIG: path.join(broken, 'equilateral.config.mjs'),
    })
    expect(failed.code).toBe(2)
    expect(messages(failed.stderr)).toEqual([
      `equilateral: ${path.join(broken, 'equilateral.config.mjs')}: module ./agents.ts: no such file (${path.join(broken, 'agents.ts')})`,
    ])
  })
})
