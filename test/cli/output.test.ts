// What the CLI prints for people and for scripts: tables and key/value lines (times in the local
// zone, named) on a terminal or with --human, JSON with --json or when stdout is a pipe; --version;
// the engine's own agents (@approval) left out of stats unless --all; and no set-up warnings
// (plain payloads, a role that bypasses RLS) on a one-shot command, only once from a worker.
import { execFile } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { agents, workflows } from '../../workers/registry.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { childEnv, cliProcesses, ROOT, stop, until } from './run.ts'

const { engine, db } = await testEngine({ agents, workflows })
// LOG_LEVEL unset: the default a user has (info; one-shot commands log warnings only).
const env = childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, TZ: 'Asia/Kolkata' })
const { run, start } = cliProcesses(env)

await engine.createTenant({ id: 'acme', name: 'Acme Corp' })
const acme = await engine.tenant('acme')
const [tenantRow] = (await engine.listTenants()).filter((t) => t.id === 'acme')
const input = JSON.parse(await readFile(path.join(ROOT, 'examples/deploy-feature.json'), 'utf8'))

/** `2026-12-06 16:55:03 GMT+5:30`: the time in Asia/Kolkata (UTC+5:30, no daylight saving). */
function kolkata(at: Date): string {
  const shifted = new Date(at.getTime() + 330 * 60_000).toISOString()
  return `${shifted.slice(0, 10)} ${shifted.slice(11, 19)} GMT+5:30`
}

describe('output for people and for scripts', () => {
  it('--version prints the version from package.json', async () => {
    const { version } = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as {
      version: string
    }
    for (const flag of ['--version', '-V']) {
      const result = await run([flag])
      expect(result.code, result.stderr).toBe(0)
      expect(result.stdout).toBe(`${version}\n`)
    }
  })

  it('tenant list: a table with --human, JSON with --json and in a pipe', async () => {
    const table = await run(['tenant', 'list', '--human'])
    expect(table.code, table.stderr).toBe(0)
    const lines = table.stdout.trimEnd().split('\n')
    expect(lines).toHaveLength(2)
    expect(lines[0]).toMatch(/^ID {4}NAME {7}TIER {6}STATUS {2}CREATED AT$/)
    expect(lines[1]).toBe(`acme  Acme Corp  standard  active  ${kolkata(tenantRow!.createdAt)}`)

    for (const args of [
      ['tenant', 'list', '--json'],
      ['tenant', 'list'],
      ['--json', 'tenant', 'list'],
    ]) {
      const result = await run(args)
      expect(result.code, result.stderr).toBe(0)
      expect(JSON.parse(result.stdout)).toEqual([
        expect.objectContaining({
          id: 'acme',
          name: 'Acme Corp',
          createdAt: tenantRow!.createdAt.toISOString(),
        }),
      ])
    }
  })

  it('on a terminal the table is the default (stdout a tty, no flag)', async () => {
    // `script` runs the command on a pseudo-terminal, as a user's shell does.
    const command = [process.execPath, path.join(ROOT, 'bin/equilateral.js'), 'tenant', 'list']
      .map((word) => `'${word}'`)
      .join(' ')
    const stdout = await new Promise<string>((resolve, reject) =>
      execFile('script', ['-qec', command, '/dev/null'], { cwd: ROOT, env }, (error, out, err) =>
        error ? reject(new Error(`${error.message}\n${err}`)) : resolve(out),
      ),
    )
    const lines = stdout.replace(/\r/g, '').trimEnd().split('\n')
    expect(lines[0]).toMatch(/^ID {4}NAME {7}TIER {6}STATUS {2}CREATED AT$/)
    expect(lines[1]).toContain('acme  Acme Corp  standard  active')
  })

  it('workflow status --human: key/value lines, then the tasks as a table', async () => {
    const { id } = await acme.startWorkflow('deploy-feature', input)
    const view = await acme.getWorkflow(id)
    const result = await run(['workflow', 'status', id, '--tenant', 'acme', '--human'])
    expect(result.code, result.stderr).toBe(0)
    const lines = result.stdout.split('\n')
    expect(lines).toContain(`id:             ${id}`)
    expect(lines).toContain('status:         running')
    expect(lines).toContain(`createdAt:      ${kolkata(view.createdAt)}`)
    const tasks = lines.indexOf('tasks:')
    expect(tasks).toBeGreaterThan(0)
    expect(lines[tasks + 1]).toMatch(/^ {2}ID +KEY +AGENT +.*STATUS/)
    const rows = lines.slice(tasks + 2, tasks + 5).map((l) => l.trim().split(/\s+/).slice(1, 3))
    expect(rows.sort()).toEqual([
      ['deploy', 'deployer'],
      ['security', 'security-reviewer'],
      ['tests', 'test-runner'],
    ])
  })

  it('workflow list and schedule list: tables, and the next page to ask for', async () => {
    await acme.putSchedule({
      id: 'nightly',
      workflowType: 'deploy-feature',
      cron: '0 9 * * *',
      timezone: 'UTC',
      input,
    })
    const schedules = await run(['schedule', 'list', '--tenant', 'acme', '--human'])
    expect(schedules.code, schedules.stderr).toBe(0)
    const [header, row] = schedules.stdout.split('\n')
    expect(header).toMatch(
      /^ID +WORKFLOW TYPE +CRON +TIMEZONE +MISSED +ENABLED +NEXT SLOT +CREATED AT +UPDATED AT$/,
    )
    expect(row).toMatch(
      /^nightly +deploy-feature +0 9 \* \* \* +UTC +skip +true +\d{4}-\d\d-\d\d 14:30:00 GMT\+5:30 /,
    )

    // Two workflows (with the one of the test above): a page of one, and the next page.
    const newest = await acme.startWorkflow('deploy-feature', input)
    const first = await run(['workflow', 'list', '--tenant', 'acme', '--limit', '1', '--human'])
    expect(first.code, first.stderr).toBe(0)
    const lines = first.stdout.trimEnd().split('\n')
    expect(lines[0]).toMatch(/^ID +TYPE +VERSION +STATUS +CORRELATION ID +TASKS REMAINING +CREATED AT$/)
    expect(lines[1]).toMatch(new RegExp(`^${newest.id} +deploy-feature +1 +running `))
    const cursor = /^next page: --cursor (\S+)$/.exec(lines.at(-1)!)?.[1]
    expect(cursor).toBeTruthy()
    const page = JSON.parse((await run(['workflow', 'list', '--tenant', 'acme', '--cursor', cursor!])).stdout)
    expect(page.nextCursor).toBeNull()
    expect(page.workflows).toHaveLength(1)
    expect(page.workflows[0].id).not.toBe(newest.id)
  })

  it('stats leaves out the engine’s own agents (@approval) unless --all', async () => {
    await engine.startWorker()
    const { id } = await acme.startWorkflow('deploy-feature-approved', input)
    await until('the approval to wait', async () =>
      (await acme.getWorkflow(id)).tasks.some((t) => t.key === 'release' && t.status === 'waiting')
        ? true
        : undefined,
    )
    await acme.decide(id, { name: 'release', approved: true, approver: 'alice' })
    expect((await settled(engine, 'acme', id)).status).toBe('completed')

    const agentsOf = async (args: string[]) => {
      const result = await run(['stats', '--tenant', 'acme', ...args])
      expect(result.code, result.stderr).toBe(0)
      return (JSON.parse(result.stdout) as { agents: { agent: string }[] }).agents.map((a) => a.agent).sort()
    }
    expect(await agentsOf([])).toEqual(['deployer', 'security-reviewer', 'test-runner'])
    expect(await agentsOf(['--all'])).toEqual(['@approval', 'deployer', 'security-reviewer', 'test-runner'])

    const all = await run(['stats'])
    expect(JSON.stringify(JSON.parse(all.stdout))).not.toContain('@approval')

    const table = await run(['stats', '--human'])
    expect(table.code, table.stderr).toBe(0)
    expect(table.stdout).toContain('tenant acme')
    expect(table.stdout).toMatch(/^ {2}TYPE +EXECUTIONS +COMPLETED +FAILED/m)
    expect(table.stdout).toMatch(/^ {2}deploy-feature-approved +1 +1 +0 /m)
    expect(table.stdout).toMatch(/^ {2}AGENT +COMPLETED +FAILED +RETRIED/m)
    expect(table.stdout).not.toContain('@approval')
  })

  it('a one-shot command prints no set-up warning; a worker says each one once', async () => {
    const listed = await run(['tenant', 'list'])
    expect(listed.code).toBe(0)
    expect(listed.stderr).toBe('')

    const worker = start(['worker'])
    await until('the worker to start', () =>
      worker.out.stdout.includes('"worker started"') ? true : undefined,
    )
    await stop(worker.child, 'SIGTERM', 10_000)
    const said = worker.out.stdout.split('\n').filter((l) => l.includes('payloads are stored unencrypted'))
    expect(said).toHaveLength(1)
  })
})
