// The `equilateral` command end to end, as child processes on a test database: help for every
// command, a tenant, a deploy-feature workflow started, read and watched to its end while a real
// worker process runs it, the audit chain sealed and verified, and errors as one line with exit 2.
import { describe, expect, it } from 'vitest'
import { createTestDatabase } from '../helpers/db.ts'
import { childEnv, cliProcesses, messages, type Result, until } from './run.ts'

const db = await createTestDatabase()
const { run, start } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'warn' }),
  () => db.drop(),
)

// Every command and subcommand the CLI has today; a new one (stats) adds to the help, not to this list.
const COMMANDS = [
  'migrate',
  'worker',
  'web',
  'dev',
  'tenant',
  'tenant create',
  'tenant list',
  'tenant suspend',
  'tenant resume',
  'tenant rotate-key',
  'tenant compliance',
  'workflow',
  'workflow start',
  'workflow status',
  'workflow watch',
  'workflow history',
  'workflow cancel',
  'audit',
  'audit seal',
  'audit verify',
  'retention',
  'retention purge',
  'erase',
  'openapi',
  'stats',
  'sweep',
  'reencrypt',
]

/** The lines of one section (`Commands:`, `Options:`, `Arguments:`) of a help text. */
function section(help: string, title: string): string[] {
  const lines = help.split('\n')
  const from = lines.indexOf(`${title}:`)
  if (from < 0) return []
  const body: string[] = []
  for (const line of lines.slice(from + 1)) {
    if (line.trim() === '') break
    body.push(line)
  }
  return body
}

/** Names in a `Commands:` section (entries start at two spaces; wrapped descriptions are deeper). */
function subcommands(help: string): string[] {
  return section(help, 'Commands')
    .filter((line) => /^ {2}\S/.test(line))
    .map((line) => line.trim().split(/\s+/)[0] ?? '')
    .filter((name) => name !== 'help')
}

function json(result: Result): any {
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

async function inBatches<T, R>(items: T[], size: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = []
  for (let i = 0; i < items.length; i += size)
    results.push(...(await Promise.all(items.slice(i, i + size).map(fn))))
  return results
}

describe('help', () => {
  it('documents every command and subcommand: usage, a description for every option and argument', async () => {
    const top = await run(['--help'])
    expect(top.code).toBe(0)
    expect(top.stdout).toMatch(/^Usage: equilateral \[options\] \[command\]/)

    // Walk the tree from the top-level help, asking each command for its own.
    const found: string[] = []
    const helps = new Map<string, Result>()
    let level = subcommands(top.stdout)
    while (level.length > 0) {
      const results = await inBatches(
        level,
        8,
        async (path) => [path, await run([...path.split(' '), '--help'])] as const,
      )
      const next: string[] = []
      for (const [path, result] of results) {
        found.push(path)
        helps.set(path, result)
        next.push(...subcommands(result.stdout).map((name) => `${path} ${name}`))
      }
      level = next
    }
    expect(found).toEqual(expect.arrayContaining(COMMANDS))

    for (const [path, result] of helps) {
      expect(result.code, `${path} --help: ${result.stderr}`).toBe(0)
      expect(result.stdout, path).toMatch(new RegExp(`^Usage: equilateral ${path} `))
      const options = section(result.stdout, 'Options').filter((line) => /^ {2}-/.test(line))
      expect(options.length, path).toBeGreaterThan(0)
      for (const line of options)
        expect(line, `${path}: option without a description`).toMatch(/^ {2}\S.*? {2,}\S/)
      if (/^Usage: .*</.test(result.stdout)) {
        const args = section(result.stdout, 'Arguments')
        expect(args.length, `${path}: arguments without descriptions`).toBeGreaterThan(0)
        for (const line of args.filter((l) => /^ {2}\S/.test(l))) expect(line).toMatch(/^ {2}\S+ {2,}\S/)
      }
    }
  })
})

describe('a workflow from the command line', () => {
  let workflowId = ''

  it('tenant create prints the API key, once', async () => {
    const created = json(await run(['tenant', 'create', 'acme', '--name', 'Acme']))
    expect(created).toMatchObject({ id: 'acme', name: 'Acme', tier: 'standard' })
    expect(created.apiKey).toMatch(/^eqk_[A-Za-z0-9_-]{20,}$/)
    const listed = json(await run(['tenant', 'list']))
    expect(listed).toEqual([expect.objectContaining({ id: 'acme', status: 'active' })])
    expect(JSON.stringify(listed)).not.toContain(created.apiKey)
  })

  it('workflow start, status and history, before any worker runs', async () => {
    const started = json(
      await run([
        'workflow',
        'start',
        'deploy-feature',
        '--tenant',
        'acme',
        '--input',
        '@examples/deploy-feature.json',
      ]),
    )
    expect(started).toMatchObject({ status: 'running', created: true })
    workflowId = started.id

    const status = json(await run(['workflow', 'status', workflowId, '--tenant', 'acme']))
    expect(status).toMatchObject({ id: workflowId, type: 'deploy-feature', status: 'running' })
    expect(status.input).toMatchObject({ service: 'storefront-text', version: '1.4.0' })
    expect(Object.fromEntries(status.tasks.map((t: any) => [t.key, t.status]))).toEqual({
      security: 'queued',
      tests: 'queued',
      deploy: 'pending',
    })

    const history = json(await run(['workflow', 'history', workflowId, '--tenant', 'acme']))
    expect(history[0]).toMatchObject({ action: 'workflow_started' })
  })

  it('workflow watch prints a line per change while a worker runs it, and exits 0 when it completed', async () => {
    const watch = start(['workflow', 'watch', workflowId, '--tenant', 'acme', '--interval', '100'])
    await until('the first poll', () => (watch.out.stdout.includes('\n') ? true : undefined))
    expect(watch.out.stdout.split('\n')[0]).toBe(
      `workflow ${workflowId} (deploy-feature): running, 0/3 tasks done`,
    )
    start(['worker']) // stopped at the end of the file

    const result = await watch.exited
    expect(result.code, result.stderr).toBe(0)
    const lines = result.stdout.trim().split('\n')
    expect(lines.slice(1, 4).sort()).toEqual([
      'task deploy (deployer): pending',
      'task security (security-reviewer): queued, attempt 1',
      'task tests (test-runner): queued, attempt 1',
    ])
    // Each task's last line says it completed; the changes came one poll at a time, in order.
    for (const key of ['security', 'tests', 'deploy']) {
      const mine = lines.filter((l) => l.startsWith(`task ${key} `))
      expect(mine.length, key).toBeGreaterThan(1)
      expect(mine.at(-1), key).toMatch(new RegExp(`^task ${key} \\(\\S+\\): completed, attempt 1, \\d`))
    }
    expect(lines.at(-1)).toMatch(
      new RegExp(`^workflow ${workflowId} completed in \\S+: 3/3 tasks completed$`),
    )
    expect(result.stdout).not.toContain('\x1b[') // no terminal, no escape codes
  })

  it('workflow watch exits 1 when the workflow failed, naming the task and its error', async () => {
    const started = json(
      await run([
        'workflow',
        'start',
        'deploy-feature',
        '--tenant',
        'acme',
        '--input',
        '@examples/deploy-feature-blocked.json',
      ]),
    )
    const result = await run(['workflow', 'watch', started.id, '--tenant', 'acme', '--interval', '100'])
    expect(result.code, result.stderr).toBe(1)
    const lines = result.stdout.trim().split('\n')
    expect(lines.at(-2)).toMatch(
      /^workflow \S+ failed in \S+: 2\/3 tasks completed \(2 completed, 1 failed\)$/,
    )
    expect(lines.at(-1)).toMatch(/^ {2}task deploy \(deployer\) failed: PermanentError: deploy blocked/)
  })

  it("stats reports the tenant's workflows and agents over the window", async () => {
    const stats = json(await run(['stats', '--tenant', 'acme']))
    const deploy = stats.workflows.find((w: { type: string }) => w.type === 'deploy-feature')
    expect(deploy).toMatchObject({ completed: 1, failed: 1 })
    expect(stats.agents.map((a: { agent: string }) => a.agent).sort()).toEqual([
      'deployer',
      'security-reviewer',
      'test-runner',
    ])
    const all = json(await run(['stats']))
    expect(all.tenants.map((t: { tenantId: string }) => t.tenantId)).toContain('acme')
  })

  it('workflow start --wait prints the ended workflow: exit 0 when it completed, 1 when it failed', async () => {
    const startAndWait = (input: string) =>
      run(['workflow', 'start', 'deploy-feature', '--tenant', 'acme', '--input', input, '--wait'])
    const [completed, failed] = await Promise.all([
      startAndWait('@examples/deploy-feature.json'),
      startAndWait('@examples/deploy-feature-blocked.json'),
    ])
    expect(completed.code, completed.stderr).toBe(0)
    expect(JSON.parse(completed.stdout)).toMatchObject({
      type: 'deploy-feature',
      status: 'completed',
      output: { deploy: expect.anything() },
    })
    expect(failed.code, failed.stderr).toBe(1)
    expect(JSON.parse(failed.stdout)).toMatchObject({ status: 'failed', error: { agent: 'deployer' } })
  })

  it('audit seal, then audit verify reports the chain intact', async () => {
    const sealed = json(await run(['audit', 'seal']))
    expect(sealed.rows).toBeGreaterThan(0)
    const verified = await run(['audit', 'verify', '--tenant', 'acme'])
    expect(verified.code, verified.stderr).toBe(0)
    expect(verified.stdout).toMatch(
      /^ok {8}acme: \d+ rows in \d+ blocks \(0 redacted, 0 blocks purged, 0 not sealed yet\)\n$/,
    )
  })
})

// Independent of each other (read-only, or refused): run side by side.
describe.concurrent('errors: one line, exit code 2, no stack trace', () => {
  it('a malformed workflow id is refused before connecting', async () => {
    const result = await run(['workflow', 'status', 'not-a-uuid', '--tenant', 'acme'])
    expect(result).toMatchObject({
      code: 2,
      stdout: '',
      stderr: 'equilateral: workflow id must be a UUID (got "not-a-uuid")\n',
    })
  })

  it.each([
    [['workflow', 'start', 'deploy-feature', '--tenant', 'nobody'], 'equilateral: unknown tenant "nobody"'],
    [
      ['workflow', 'history', '00000000-0000-4000-8000-000000000000', '--tenant', 'nobody'],
      'equilateral: unknown tenant "nobody"',
    ],
    [
      ['workflow', 'status', '00000000-0000-4000-8000-000000000000', '--tenant', 'acme'],
      'equilateral: workflow 00000000-0000-4000-8000-000000000000 not found',
    ],
    [
      ['workflow', 'start', 'deploy-everything', '--tenant', 'acme'],
      'equilateral: unknown workflow type "deploy-everything" (known: deploy-feature, deploy-feature-approved)',
    ],
    [
      ['workflow', 'start', 'deploy-feature', '--tenant', 'acme', '--input', '{"service":'],
      /^equilateral: --input is not valid JSON: /,
    ],
    [
      ['workflow', 'start', 'deploy-feature', '--tenant', 'acme', '--input', '@missing.json'],
      /^equilateral: --input: cannot read missing.json: ENOENT/,
    ],
    [['tenant', 'create', 'no spaces allowed'], /^equilateral: tenant id "no spaces allowed" must be/],
    [['tenant', 'create', 'acme'], /^equilateral: .*acme.* exists/],
  ])('%j', async (args, expected) => {
    const result = await run(args)
    expect(result.code, result.stderr).toBe(2)
    expect(result.stdout).toBe('')
    const said = messages(result.stderr)
    expect(said).toHaveLength(1)
    expect(said[0]).toMatch(expected instanceof RegExp ? expected : new RegExp(`^${escape(expected)}$`))
    expect(result.stderr).not.toMatch(/^\s+at /m)
  })

  it.each([
    [
      ['workflow', 'status', '00000000-0000-4000-8000-000000000000'],
      "equilateral: required option '--tenant <id>' not specified",
    ],
    [['wrokflow'], "equilateral: unknown command 'wrokflow'"],
    [
      ['worker', '--concurrency', 'lots'],
      "equilateral: option '--concurrency <n>' argument 'lots' is invalid. must be a positive integer",
    ],
  ])('usage: %j', async (args, expected) => {
    const result = await run(args)
    expect(result.code).toBe(2)
    expect(result.stderr.split('\n')[0]).toBe(expected)
    expect(result.stderr).toContain('(add --help for usage)')
    expect(result.stderr).not.toMatch(/^\s+at /m)
  })
})

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}
