// `equilateral init`: a working project in an empty folder or an existing package. It writes the
// configuration file, one agent, one workflow, a test of them with the test kit (node:test, so the
// project needs no test runner of its own), a Procfile, and the package.json scripts (start, worker,
// web, test, migrate) with the dependency on equilateral-agents. It overwrites nothing: existing
// files (and package.json scripts it would change) are listed in one line and nothing is written,
// unless `force`. Files only a new project needs (.gitignore, tsconfig.json) are skipped if present.
//
// The package is not on a public registry, so the dependency names where to install it from:
// `--package <spec>` (a tarball or a directory, written as a relative `file:` spec, or any npm spec),
// else the dependency package.json already has, else this checkout (`file:` path), else an error
// asking for --package.
import { existsSync, statSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { EquilateralError } from '../errors.ts'
import { packageRoot } from '../paths.ts'

export const PACKAGE_NAME = 'equilateral-agents'

export interface InitOptions {
  /** The project folder (created if missing). */
  dir: string
  /** Where to install equilateral-agents from: a tarball, a directory, or an npm spec. */
  package?: string | undefined
  /** Overwrite existing files and scripts. */
  force?: boolean
  /** This package's root (default: the one running), for the default dependency spec. */
  packageRoot?: string
}

export interface InitResult {
  dir: string
  /** Files written, relative to dir (package.json included when created or changed). */
  written: string[]
  /** Optional files left as they were. */
  skipped: string[]
  /** The dependency spec written to package.json. */
  dependency: string
  /** What to run next, one command a line. */
  next: string[]
}

/** Refused: files exist (code `init_conflict`) or the dependency cannot be chosen (`init_package`). */
export class InitError extends EquilateralError {}

const BIN = `node node_modules/${PACKAGE_NAME}/bin/equilateral.js`

export async function init(options: InitOptions): Promise<InitResult> {
  const dir = path.resolve(options.dir)
  const pkgFile = path.join(dir, 'package.json')
  const existing = existsSync(pkgFile) ? await readPackageJson(pkgFile) : undefined
  // Without "type": "module" Node reads .ts files as CommonJS first (and warns): .mts is ESM as it is.
  const ext = existing === undefined || existing.type === 'module' ? 'ts' : 'mts'
  const dependency = chooseDependency(dir, options, existing)

  const files = scaffold(ext)
  const optional = optionalFiles(ext)
  const conflicts = Object.keys(files).filter((f) => existsSync(path.join(dir, f)))

  const scripts: Record<string, string> = {
    start: 'equilateral dev',
    worker: 'equilateral worker',
    web: 'equilateral web',
    migrate: 'equilateral migrate',
    test: `node --test "test/**/*.test.${ext}"`,
  }
  const current = (existing?.scripts ?? {}) as Record<string, unknown>
  const changedScripts = Object.keys(scripts).filter(
    (name) => current[name] !== undefined && current[name] !== scripts[name],
  )
  if (changedScripts.length > 0) conflicts.push(`package.json scripts ${changedScripts.join(', ')}`)
  if (conflicts.length > 0 && !options.force) {
    throw new InitError(
      'init_conflict',
      `init would overwrite ${conflicts.join(', ')} in ${dir} (nothing written; --force overwrites)`,
    )
  }

  await mkdir(dir, { recursive: true })
  const written: string[] = []
  const skipped: string[] = []
  for (const [name, text] of Object.entries(files)) {
    await mkdir(path.dirname(path.join(dir, name)), { recursive: true })
    await writeFile(path.join(dir, name), text)
    written.push(name)
  }
  for (const [name, text] of Object.entries(optional)) {
    if (existsSync(path.join(dir, name))) skipped.push(name)
    else {
      await writeFile(path.join(dir, name), text)
      written.push(name)
    }
  }
  const pkg: Record<string, unknown> = existing ?? {
    name: packageName(dir),
    version: '0.1.0',
    private: true,
    type: 'module',
    // Node.js runs the TypeScript files as they are (type stripping) from 22.18 on.
    engines: { node: '>=22.18.0' },
  }
  pkg.scripts = { ...(existing?.scripts as object | undefined), ...scripts }
  pkg.dependencies = { ...(existing?.dependencies as object | undefined), [PACKAGE_NAME]: dependency }
  await writeFile(pkgFile, `${JSON.stringify(pkg, null, 2)}\n`)
  written.push('package.json')

  const cd = path.relative(process.cwd(), dir)
  return {
    dir,
    written,
    skipped,
    dependency,
    next: [
      ...(cd ? [`cd ${cd}`] : []),
      'npm install',
      'npm test        # the workflow, run by the test kit (TEST_DATABASE_URL, DATABASE_URL or an embedded PostgreSQL)',
      'npm start       # the API, a worker and an embedded PostgreSQL (or DATABASE_URL); prints an API key',
    ],
  }
}

/** What `equilateral init` prints: what it wrote, what it kept, and the commands to run next. */
export function describeInit(result: InitResult): string {
  const lines = [
    `init: wrote ${result.written.join(', ')} (${PACKAGE_NAME} from ${result.dependency})`,
    ...(result.skipped.length > 0 ? [`init: kept the existing ${result.skipped.join(', ')}`] : []),
    'next:',
    ...result.next.map((line) => `  ${line}`),
  ]
  return `${lines.join('\n')}\n`
}

function chooseDependency(dir: string, options: InitOptions, existing: PackageJson | undefined): string {
  const given = options.package?.trim()
  if (given) {
    const local = path.resolve(given)
    // A tarball or a directory on disk: relative to the project, as `npm install <path>` saves it.
    if (existsSync(local)) return `file:${toPosix(path.relative(dir, local)) || '.'}`
    return given
  }
  const deps = existing?.dependencies as Record<string, string> | undefined
  const declared = deps?.[PACKAGE_NAME]
  if (declared) return declared
  const root = options.packageRoot ?? packageRoot
  if (!root.split(path.sep).includes('node_modules') && statSync(root).isDirectory()) {
    return `file:${toPosix(path.relative(dir, root))}`
  }
  throw new InitError(
    'init_package',
    `init: ${PACKAGE_NAME} is not on a public registry: pass --package <tarball or directory> (e.g. --package ./${PACKAGE_NAME}-0.1.0.tgz, made by \`npm pack\` in its repository)`,
  )
}

type PackageJson = Record<string, unknown> & { type?: unknown; scripts?: unknown; dependencies?: unknown }

async function readPackageJson(file: string): Promise<PackageJson> {
  try {
    const parsed: unknown = JSON.parse(await readFile(file, 'utf8'))
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) return parsed as PackageJson
  } catch {
    // reported below
  }
  throw new InitError('init_conflict', `init: ${file} is not a JSON object; fix it or run init elsewhere`)
}

function packageName(dir: string): string {
  const name = path
    .basename(dir)
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[._-]+/, '')
  return name || 'my-agents'
}

function toPosix(p: string): string {
  return p.split(path.sep).join('/')
}

/** The files init writes (refusing when they exist), by path relative to the project. */
export function scaffold(ext: 'ts' | 'mts'): Record<string, string> {
  return {
    [`equilateral.config.${ext}`]: `// Which modules hold this project's agents, workflows and schedules: every \`equilateral\` command
// (npm start, npm run worker, npm run web, the Procfile's processes) loads them from here.
import { defineConfig } from '${PACKAGE_NAME}'

export default defineConfig({
  modules: ['./src/agents.${ext}', './src/workflows.${ext}'],
})
`,
    [`src/agents.${ext}`]: `// Agents: each exported defineAgent(...) is registered (the config file names this module).
import { defineAgent } from '${PACKAGE_NAME}'

/** Greets whoever the task's data names. */
export const greeter = defineAgent<{ name: string }>({
  id: 'greeter',
  handler: async (ctx) => {
    ctx.log.info({ name: ctx.data.name }, 'greeting')
    return { greeting: \`Hello, \${ctx.data.name}!\` }
  },
})
`,
    [`src/workflows.${ext}`]: `// Workflows: each exported defineWorkflow(...) is a workflow type clients can start.
import { defineWorkflow } from '${PACKAGE_NAME}'
import { greeter } from './agents.${ext}'

export const hello = defineWorkflow<{ name?: string } | null>({
  name: 'hello',
  tasks: [{ key: 'greet', agent: greeter, data: (input) => ({ name: input?.name ?? 'world' }) }],
})
`,
    [`test/hello.test.${ext}`]: `// The hello workflow run by the test kit: a real engine, worker and tenant on a real PostgreSQL
// (TEST_DATABASE_URL, else DATABASE_URL, else the project's embedded PostgreSQL).
import assert from 'node:assert/strict'
import { after, test } from 'node:test'
import { provisionDatabase } from '${PACKAGE_NAME}'
import { createTestKit } from '${PACKAGE_NAME}/testing'
import * as agents from '../src/agents.${ext}'
import * as workflows from '../src/workflows.${ext}'

const url = process.env.TEST_DATABASE_URL ?? process.env.DATABASE_URL
const db = await provisionDatabase({ env: url ? { DATABASE_URL: url } : process.env, log: () => {} })
const kit = await createTestKit({
  databaseUrl: db.url,
  agents: Object.values(agents),
  workflows: Object.values(workflows),
})
after(async () => {
  await kit.close()
  await db.stop()
})

test('hello greets the name it is given', async () => {
  const wf = await kit.runToCompletion('hello', { name: 'Ada' })
  assert.deepEqual(wf.output, { greet: { greeting: 'Hello, Ada!' } })
  const audit = await kit.audit(wf.id)
  audit.expectExactlyOnce('task_completed', 'greet')
})
`,
    Procfile: `release: ${BIN} migrate
web: ${BIN} web
worker: ${BIN} worker
`,
  }
}

function optionalFiles(ext: 'ts' | 'mts'): Record<string, string> {
  return {
    '.gitignore': `node_modules/
.data/
.equilateral/
`,
    // For editors and \`npx tsc\`: Node.js runs the files without compiling them.
    'tsconfig.json': `${JSON.stringify(
      {
        compilerOptions: {
          target: 'es2023',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          strict: true,
          noEmit: true,
          allowImportingTsExtensions: true,
          verbatimModuleSyntax: true,
          erasableSyntaxOnly: true,
          skipLibCheck: true,
        },
        include: [`**/*.${ext}`],
        exclude: ['node_modules'],
      },
      null,
      2,
    )}\n`,
  }
}
