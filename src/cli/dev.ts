// What `equilateral dev` keeps between runs and prints at start. The demo tenant's API key is shown
// once by createTenant, so dev keeps it (and the admin token it generates when ADMIN_TOKEN is unset)
// in a git-ignored file beside the embedded database, `<data root>/demo-tenant.json` (mode 0600):
// a later run prints the same key while it still authenticates, or issues a new one.
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { Engine } from '../engine.ts'

export const DEMO_TENANT = 'demo'
export const DEV_STATE_FILE = 'demo-tenant.json'

export interface DevState {
  /** The admin token dev generated (only used when ADMIN_TOKEN is unset). */
  adminToken?: string
  /** The demo tenant's API key, per database (`host:port/db`, no credentials). */
  apiKeys: Record<string, string>
}

export async function readDevState(file: string): Promise<DevState> {
  let parsed: unknown
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'))
  } catch {
    return { apiKeys: {} } // absent, or unreadable: start over (keys are re-issued, not lost)
  }
  const record = (parsed && typeof parsed === 'object' ? parsed : {}) as Record<string, unknown>
  const apiKeys: Record<string, string> = {}
  if (record.apiKeys && typeof record.apiKeys === 'object') {
    for (const [db, key] of Object.entries(record.apiKeys as Record<string, unknown>)) {
      if (typeof key === 'string' && key) apiKeys[db] = key
    }
  }
  return {
    ...(typeof record.adminToken === 'string' && record.adminToken.length >= 16
      ? { adminToken: record.adminToken }
      : {}),
    apiKeys,
  }
}

/** Writes the state readable by its owner only, atomically (a crash leaves the old file or the new). */
export async function writeDevState(file: string, state: DevState): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true })
  const body = {
    note: 'Written by `equilateral dev`: the demo tenant API key per database, and the dev admin token. Not for production.',
    tenant: DEMO_TENANT,
    ...state,
  }
  const temporary = `${file}.${process.pid}.tmp`
  await writeFile(temporary, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 })
  await chmod(temporary, 0o600)
  await rename(temporary, file)
}

/** A path relative to the working directory when it is inside it (`.equilateral/demo-tenant.json`). */
export function displayPath(file: string): string {
  const relative = path.relative(process.cwd(), file)
  return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file
}

export function generateAdminToken(): string {
  return `eqadm_${randomBytes(24).toString('base64url')}`
}

export interface DemoKey {
  apiKey: string
  /** saved: the key from the file still works; created: a new tenant; rotated: the tenant existed. */
  origin: 'saved' | 'created' | 'rotated'
  /** The demo tenant was suspended (by hand): its key is refused until it is resumed. */
  suspended: boolean
}

/**
 * The demo tenant's key: the saved one when it still authenticates, else the key of a new demo
 * tenant, else (the tenant exists but the key is lost or from another database) a rotated one.
 */
export async function demoApiKey(engine: Engine, saved: string | undefined): Promise<DemoKey> {
  if (saved) {
    try {
      const handle = await engine.tenantByApiKey(saved)
      if (handle.id === DEMO_TENANT) return { apiKey: saved, origin: 'saved', suspended: false }
    } catch (error) {
      const code = (error as { code?: string }).code
      if (code === 'tenant_suspended' && (await isDemoSuspended(engine))) {
        return { apiKey: saved, origin: 'saved', suspended: true }
      }
      if (code !== 'unknown_tenant' && code !== 'tenant_suspended') throw error
    }
  }
  try {
    const created = await engine.createTenant({ id: DEMO_TENANT, name: 'Demo tenant' })
    return { apiKey: created.apiKey, origin: 'created', suspended: false }
  } catch (error) {
    if ((error as { code?: string }).code !== 'tenant_exists') throw error
  }
  return {
    apiKey: await engine.rotateApiKey(DEMO_TENANT),
    origin: 'rotated',
    suspended: await isDemoSuspended(engine),
  }
}

async function isDemoSuspended(engine: Engine): Promise<boolean> {
  const tenants = await engine.listTenants()
  return tenants.some((t) => t.id === DEMO_TENANT && t.status === 'suspended')
}

export interface BannerOptions {
  /** The web server's URL, e.g. http://127.0.0.1:3000 */
  url: string
  /** Which database, without credentials: `embedded PostgreSQL at 127.0.0.1:5433/equilateral (...)`. */
  database: string
  apiKey: string
  keyOrigin: DemoKey['origin']
  suspended: boolean
  /** Where the key (and the generated admin token) are kept, as shown to the user. */
  stateFile: string
  /** The admin token and whether dev generated it (false: it is ADMIN_TOKEN, not shown). */
  adminToken: { value: string; generated: boolean }
  /** Prefix that points another terminal's commands at the same database (EQUILATERAL_DATA_DIR=...). */
  envPrefix: string
  /** DATABASE_URL is set: other commands need it too. */
  databaseFromEnv: boolean
  /** How the command is run in this project and which workflow the curl line starts (see projectBanner). */
  project?: ProjectBanner
}

export interface ProjectBanner {
  /** `node bin/equilateral.js` in this repository, `npx equilateral` in a project that installed it. */
  cli: string
  /** The workflow type the curl line starts with an empty input; undefined: the deploy-feature example. */
  start: string | undefined
}

/**
 * This repository (its examples/deploy-feature.json is there) gets the deploy-feature lines; another
 * project (equilateral.config.ts names its own workflows) gets a line starting its first workflow type.
 */
export function projectBanner(workflowTypes: readonly string[], cwd: string = process.cwd()): ProjectBanner {
  const here = existsSync(path.join(cwd, 'bin', 'equilateral.js'))
  const demo =
    workflowTypes.includes('deploy-feature') && existsSync(path.join(cwd, 'examples', 'deploy-feature.json'))
  return {
    cli: here ? 'node bin/equilateral.js' : 'npx equilateral',
    start: demo ? undefined : (workflowTypes[0] ?? 'WORKFLOW-TYPE'),
  }
}

/** Single-quotes a word for bash when it needs it. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./:=@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`
}

/**
 * The lines dev prints once everything runs: the demo tenant's key, the admin token, a curl line
 * that starts the example deploy-feature workflow (paste it in bash from the repository root), one
 * that reads a workflow, and the command that follows it in the terminal.
 */
export function devBanner(o: BannerOptions): string[] {
  const auth = `-H "Authorization: Bearer ${o.apiKey}"`
  const keyNote = {
    saved: `kept in ${o.stateFile}`,
    created: `new tenant; kept in ${o.stateFile}`,
    rotated: `a new key for the existing tenant; kept in ${o.stateFile}`,
  }[o.keyOrigin]
  const cli = `${o.envPrefix}${o.project?.cli ?? 'node bin/equilateral.js'}`
  const start = o.project?.start
  return [
    '',
    'equilateral-agents dev: migrated; the HTTP API, a worker, the sweeper and retention are running.',
    `  database:     ${o.database}`,
    `  API:          ${o.url}   (OpenAPI document: ${o.url}/openapi.json)`,
    `  web page:     ${o.url}/ui/   (sign in with the API key below)`,
    `  tenant:       ${DEMO_TENANT}`,
    `  API key:      ${o.apiKey}   (${keyNote})`,
    o.adminToken.generated
      ? `  ADMIN_TOKEN:  ${o.adminToken.value}   (generated for dev, kept in ${o.stateFile})`
      : '  ADMIN_TOKEN:  from the environment',
    ...(o.suspended
      ? [`  warning: tenant "${DEMO_TENANT}" is suspended; resume it: ${cli} tenant resume ${DEMO_TENANT}`]
      : []),
    '',
    ...(start === undefined
      ? [
          'Start the example deploy-feature workflow (from the repository root):',
          `  curl -sS ${auth} -H 'content-type: application/json' -d "{\\"type\\":\\"deploy-feature\\",\\"input\\":$(cat examples/deploy-feature.json)}" ${o.url}/v1/workflows`,
        ]
      : [
          `Start a ${start} workflow (its input in place of {}):`,
          `  curl -sS ${auth} -H 'content-type: application/json' -d '{"type":"${start}","input":{}}' ${o.url}/v1/workflows`,
        ]),
    'Follow it (put the id it printed in place of <id>):',
    `  curl -sS ${auth} ${o.url}/v1/workflows/<id>`,
    `  ${cli} workflow watch <id> --tenant ${DEMO_TENANT}${o.databaseFromEnv ? '   (with the same DATABASE_URL)' : ''}`,
    'Stop with Ctrl-C.',
    '',
  ]
}
