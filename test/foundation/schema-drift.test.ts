// The TypeScript schema (src/db/schema) and the committed migrations (drizzle/) must agree: running
// `drizzle-kit generate` against a copy of the migrations must find nothing to generate. A schema
// change without `npm run db:generate` fails here.
import { execFile } from 'node:child_process'
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { describe, expect, test } from 'vitest'
import controlConfig from '../../drizzle.control.config.ts'
import tenantConfig from '../../drizzle.tenant.config.ts'

const run = promisify(execFile)
const root = fileURLToPath(new URL('../..', import.meta.url))
const drizzleKit = path.join(root, 'node_modules/drizzle-kit/bin.cjs')

interface KitConfig {
  dialect: string
  schema?: string | string[]
  out?: string
}

interface GenerateResult {
  output: string
  newFiles: string[]
}

/**
 * Runs `drizzle-kit generate` for a config with its `out` pointed at a temporary copy of the
 * committed migrations, and reports what it printed and which files it added.
 */
async function generateAgainstCopy(config: KitConfig, schema = config.schema): Promise<GenerateResult> {
  if (!config.out) throw new Error('drizzle config without out')
  const dir = await mkdtemp(path.join(tmpdir(), 'equilateral-drift-'))
  try {
    const out = path.join(dir, 'migrations')
    await cp(path.resolve(root, config.out), out, { recursive: true })
    const before = await listFiles(out)
    const configFile = path.join(dir, 'drizzle.config.js')
    // drizzle-kit prefixes `out` with "./", so it has to be relative to the working directory.
    const tempConfig = { ...config, schema, out: path.relative(root, out) }
    await writeFile(configFile, `export default ${JSON.stringify(tempConfig, null, 2)}\n`)
    const { stdout, stderr } = await run(process.execPath, [drizzleKit, 'generate', '--config', configFile], {
      cwd: root,
      timeout: 60_000,
      env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
    })
    const after = await listFiles(out)
    return { output: `${stdout}\n${stderr}`, newFiles: after.filter((file) => !before.includes(file)) }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true })
  return entries.map((entry) => entry.toString()).sort()
}

describe('schema drift', () => {
  test.each([
    ['control', controlConfig],
    ['tenant', tenantConfig],
  ])('the %s schema matches the committed migrations', async (_set, config) => {
    const result = await generateAgainstCopy(config)
    // drizzle-kit exits 0 even when it fails, so success is recognised by its message only.
    expect(result.output).toContain('No schema changes')
    expect(result.newFiles).toEqual([])
  })

  test('the check fails when the schema has something the migrations lack', async () => {
    // A copy of the control schema plus one table, inside the repository (in the git-ignored
    // test-artifacts folder) so its imports resolve.
    await mkdir(path.join(root, 'test-artifacts'), { recursive: true })
    const dir = await mkdtemp(path.join(root, 'test-artifacts', 'drift-'))
    try {
      const schema = path.join(dir, 'control-plus-table.ts')
      const original = path.resolve(root, String(controlConfig.schema))
      await cp(original, schema)
      // The value lists the schema imports (shared with the runtime, which must not load drizzle).
      await cp(path.join(path.dirname(original), 'values.ts'), path.join(dir, 'values.ts'))
      await writeFile(
        schema,
        `\nimport { pgTable as probeTable, text as probeText } from 'drizzle-orm/pg-core'\n` +
          `export const driftProbe = probeTable('drift_probe', { id: probeText('id').primaryKey() })\n`,
        { flag: 'a' },
      )
      const result = await generateAgainstCopy(controlConfig, path.relative(root, schema))
      expect(result.output).not.toContain('No schema changes')
      expect(result.newFiles.filter((file) => file.endsWith('.sql'))).toHaveLength(1)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
