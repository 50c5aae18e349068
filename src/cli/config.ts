// Where the `equilateral` command gets the project's agents, workflows and schedules from:
//   1. `--registry <module>` (an override: one module, relative to the working directory);
//   2. the configuration file EQUILATERAL_CONFIG names, or the first `equilateral.config.{ts,mts,mjs,js}`
//      found walking up from the working directory: the modules its `modules` list names (src/project.ts);
//   3. neither: the examples this package ships (workers/registry.ts), so a checkout runs its demo.
// A module that cannot be found, fails to load or exports nothing usable is a ProjectConfigError
// whose one line names the configuration file and the module.
import { existsSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import type { Logger } from 'pino'
import type { AgentDefinition, WorkflowDefinition } from '../core/definition.ts'
import type { Engine } from '../engine.ts'
import { ProjectConfigError } from '../errors.ts'
import type { EquilateralConfig, ScheduleDeclaration } from '../project.ts'

/** The names looked for in each directory, in this order. */
export const CONFIG_FILES = [
  'equilateral.config.ts',
  'equilateral.config.mts',
  'equilateral.config.mjs',
  'equilateral.config.js',
] as const

const EXAMPLES = new URL(
  import.meta.url.endsWith('.ts') ? '../../workers/registry.ts' : '../../workers/registry.js',
  import.meta.url,
).href

export interface ProjectRegistry {
  agents: AgentDefinition<any, any>[]
  workflows: WorkflowDefinition<any>[]
  schedules: ScheduleDeclaration[]
  /** Where they came from, for logs: the configuration file, the --registry module, or the examples. */
  source: { kind: 'config' | 'registry' | 'examples'; path: string }
}

export interface LoadOptions {
  /** `--registry`: one module instead of the configuration file. */
  registry?: string | undefined
  /** Default process.cwd(). */
  cwd?: string
  /** Default process.env (EQUILATERAL_CONFIG). */
  env?: NodeJS.ProcessEnv
}

/**
 * The configuration file: EQUILATERAL_CONFIG (relative to `cwd`; it must exist), or the first of
 * CONFIG_FILES found in `cwd` or a directory above it; undefined when there is none.
 */
export function findConfigFile(
  cwd: string = process.cwd(),
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  const named = env.EQUILATERAL_CONFIG?.trim()
  if (named) {
    const file = path.resolve(cwd, named)
    if (!isFile(file)) throw new ProjectConfigError(`EQUILATERAL_CONFIG names ${file}, which is not a file`)
    return file
  }
  for (let dir = path.resolve(cwd); ;) {
    for (const name of CONFIG_FILES) {
      const file = path.join(dir, name)
      if (isFile(file)) return file
    }
    const parent = path.dirname(dir)
    if (parent === dir) return undefined
    dir = parent
  }
}

/** The project's agents, workflows and schedules (see the top of this file for where from). */
export async function loadProjectRegistry(options: LoadOptions = {}): Promise<ProjectRegistry> {
  const cwd = options.cwd ?? process.cwd()
  const registry = new Collector()
  if (options.registry !== undefined) {
    const file = path.resolve(cwd, options.registry)
    const where = `--registry ${options.registry}`
    if (!isFile(file)) throw new ProjectConfigError(`${where}: no such file (${file})`)
    registry.add(where, await importModule(where, pathToFileURL(file).href))
    return registry.done({ kind: 'registry', path: file })
  }
  const configFile = findConfigFile(cwd, options.env ?? process.env)
  if (configFile === undefined) {
    registry.add('the examples', await importModule('the examples', EXAMPLES))
    return registry.done({ kind: 'examples', path: EXAMPLES })
  }
  const shown = displayed(configFile, cwd)
  const config = await readConfig(configFile, shown)
  for (const specifier of config.modules) {
    const where = `${shown}: module ${specifier}`
    registry.add(where, await importModule(where, resolveModule(specifier, configFile, where)))
  }
  return registry.done({ kind: 'config', path: configFile })
}

/**
 * Puts the project's schedules (idempotent: the same cron keeps its next slot). A tenant that does
 * not exist (yet) or is suspended is skipped with a warning; any other failure is thrown.
 */
export async function applySchedules(
  engine: Engine,
  schedules: readonly ScheduleDeclaration[],
  log: Logger,
): Promise<void> {
  for (const { tenant, ...spec } of schedules) {
    let handle
    try {
      handle = await engine.tenant(tenant)
    } catch (error) {
      const code = (error as { code?: string }).code
      if (code !== 'unknown_tenant' && code !== 'tenant_suspended') throw error
      log.warn({ tenant, schedule: spec.id, code }, 'schedule not put: its tenant is not active')
      continue
    }
    await handle.putSchedule(spec)
  }
}

async function readConfig(file: string, shown: string): Promise<EquilateralConfig> {
  const mod = await importModule(shown, pathToFileURL(file).href)
  const config = mod.default as Partial<EquilateralConfig> | undefined
  if (config === null || typeof config !== 'object') {
    throw new ProjectConfigError(
      `${shown} must export a configuration as its default export: export default defineConfig({ modules: [...] })`,
    )
  }
  const modules = config.modules
  if (
    !Array.isArray(modules) ||
    modules.length === 0 ||
    modules.some((m) => typeof m !== 'string' || m.trim() === '')
  ) {
    throw new ProjectConfigError(
      `${shown}: \`modules\` must be a non-empty list of module paths, e.g. ['./src/agents.ts', './src/workflows.ts']`,
    )
  }
  return { modules }
}

/** A module's URL: a path relative to the configuration file, an absolute path, or a package name. */
function resolveModule(specifier: string, configFile: string, where: string): string {
  if (specifier.startsWith('.') || path.isAbsolute(specifier)) {
    const file = path.resolve(path.dirname(configFile), specifier)
    if (!isFile(file)) throw new ProjectConfigError(`${where}: no such file (${file})`)
    return pathToFileURL(file).href
  }
  if (specifier.startsWith('file:')) return specifier
  try {
    return pathToFileURL(createRequire(configFile).resolve(specifier)).href
  } catch (error) {
    throw new ProjectConfigError(`${where}: cannot find the package: ${firstLine(error)}`, { cause: error })
  }
}

async function importModule(where: string, url: string): Promise<Record<string, unknown>> {
  try {
    return (await import(url)) as Record<string, unknown>
  } catch (error) {
    if ((error as { code?: string }).code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.m?ts$/.test(url)) {
      throw new ProjectConfigError(
        `${where}: this Node.js (${process.version}) cannot load TypeScript; use Node.js >= 22.18 (or a .mjs/.js file)`,
        { cause: error },
      )
    }
    if (error instanceof ProjectConfigError) throw error
    throw new ProjectConfigError(`${where}: cannot load it: ${firstLine(error)}`, { cause: error })
  }
}

/** Gathers definitions from modules; the same object exported twice counts once. */
class Collector {
  readonly #agents = new Set<AgentDefinition<any, any>>()
  readonly #workflows = new Set<WorkflowDefinition<any>>()
  readonly #schedules = new Set<ScheduleDeclaration>()

  /**
   * A module that exports any of the lists `agents`, `workflows`, `schedules` is taken at its word:
   * those lists, nothing else it exports. Otherwise every export that is an agent or a workflow.
   */
  add(where: string, mod: Record<string, unknown>): void {
    let found = 0
    const lists = (['agents', 'workflows', 'schedules'] as const).filter((name) => name in mod)
    for (const name of lists) {
      const value = mod[name]
      if (!Array.isArray(value)) throw new ProjectConfigError(`${where}: \`${name}\` must be an array`)
      value.forEach((item, i) => this.#addListed(name, item, `${where}: ${name}[${i}]`))
      found += value.length
    }
    for (const value of lists.length > 0 ? [] : Object.values(mod)) {
      if (isKind(value, 'agent')) {
        this.#agents.add(value as AgentDefinition<any, any>)
        found++
      } else if (isKind(value, 'workflow')) {
        this.#workflows.add(value as WorkflowDefinition<any>)
        found++
      }
    }
    if (found === 0) {
      throw new ProjectConfigError(
        `${where} exports no agent, workflow or schedule (export what defineAgent and defineWorkflow return, or arrays named agents, workflows, schedules)`,
      )
    }
  }

  #addListed(list: 'agents' | 'workflows' | 'schedules', item: unknown, where: string): void {
    if (list === 'agents') {
      if (!isKind(item, 'agent')) throw new ProjectConfigError(`${where} is not an agent (use defineAgent)`)
      this.#agents.add(item as AgentDefinition<any, any>)
    } else if (list === 'workflows') {
      if (!isKind(item, 'workflow'))
        throw new ProjectConfigError(`${where} is not a workflow (use defineWorkflow)`)
      this.#workflows.add(item as WorkflowDefinition<any>)
    } else {
      const s = item as Partial<ScheduleDeclaration> | null
      if (!s || typeof s !== 'object' || typeof s.tenant !== 'string' || typeof s.id !== 'string') {
        throw new ProjectConfigError(
          `${where} is not a schedule: it needs at least \`tenant\`, \`id\`, \`workflowType\` and \`cron\``,
        )
      }
      this.#schedules.add(s as ScheduleDeclaration)
    }
  }

  done(source: ProjectRegistry['source']): ProjectRegistry {
    return {
      agents: [...this.#agents],
      workflows: [...this.#workflows],
      schedules: [...this.#schedules],
      source,
    }
  }
}

function isKind(value: unknown, kind: 'agent' | 'workflow'): boolean {
  return value !== null && typeof value === 'object' && (value as { kind?: unknown }).kind === kind
}

function isFile(file: string): boolean {
  return existsSync(file) && statSync(file).isFile()
}

function displayed(file: string, cwd: string): string {
  const relative = path.relative(cwd, file)
  return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error)
  return message.split('\n')[0] ?? message
}
