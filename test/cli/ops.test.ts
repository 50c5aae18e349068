// `workflow retry|replay` and `dead-letters list|redrive` end to end, as child processes on a test
// database with a real worker process: a deploy-feature run blocked for good (a PermanentError of
// the deployer) is listed as a dead letter, replayed from its deploy task and redriven, each command
// printing what the HTTP routes answer; refusals are one line with exit code 2.
import { describe, expect, it } from 'vitest'
import { createTestDatabase } from '../helpers/db.ts'
import { childEnv, cliProcesses, type Result } from './run.ts'

const db = await createTestDatabase()
const { run, start } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'warn' }),
  () => db.drop(),
)

function json(result: Result): any {
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

describe('operating workflows from the command line', () => {
  it('lists a dead letter, replays from it, redrives it, and refuses what cannot be done', async () => {
    json(await run(['tenant', 'create', 'acme']))
    start(['worker']) // stopped at the end of the file
    const blocked = await run([
      'workflow',
      'start',
      'deploy-feature',
      '--tenant',
      'acme',
      '--input',
      '@examples/deploy-feature-blocked.json',
      '--wait',
    ])
    expect(blocked.code, blocked.stderr).toBe(1)
    const id = JSON.parse(blocked.stdout).id as string

    const listed = json(await run(['dead-letters', 'list', '--tenant', 'acme', '--agent', 'deployer']))
    expect(listed.deadLetters).toEqual([
      expect.objectContaining({ workflowId: id, taskKey: 'deploy', agent: 'deployer', attempt: 1 }),
    ])
    const taskId = listed.deadLetters[0].taskId as string

    const replay = json(
      await run(['workflow', 'replay', id, '--tenant', 'acme', '--from', 'deploy', '--actor', 'ops']),
    )
    expect(replay).toMatchObject({ status: 'running', replayOf: id, from: 'deploy', rerun: ['deploy'] })
    expect(replay.reused.sort()).toEqual(['security', 'tests'])

    const redriven = json(
      await run(['dead-letters', 'redrive', '--tenant', 'acme', '--task', taskId, '--request-key', 'k1']),
    )
    expect(redriven).toEqual({ redriven: [{ taskId, workflowId: id }], workflowsRetried: 1, more: false })
    // The same request key: the same answer, nothing redriven twice.
    expect(
      json(
        await run(['dead-letters', 'redrive', '--tenant', 'acme', '--task', taskId, '--request-key', 'k1']),
      ),
    ).toEqual(redriven)
    const history = json(await run(['workflow', 'history', id, '--tenant', 'acme']))
    expect(history.filter((h: any) => h.action === 'dead_letter_redriven')).toEqual([
      expect.objectContaining({ actor: 'cli', taskId }),
    ])

    const unknown = await run(['workflow', 'replay', id, '--tenant', 'acme', '--from', 'nope'])
    expect(unknown.code).toBe(2)
    expect(unknown.stderr).toMatch(/^equilateral: workflow \S+ has no task "nope"/)
    const neither = await run(['dead-letters', 'redrive', '--tenant', 'acme'])
    expect(neither).toMatchObject({
      code: 2,
      stderr: 'equilateral: give exactly one of --task <id> and --agent <id>\n',
    })
    const missing = await run([
      'workflow',
      'retry',
      '00000000-0000-4000-8000-000000000000',
      '--tenant',
      'acme',
    ])
    expect(missing).toMatchObject({
      code: 2,
      stderr: 'equilateral: workflow 00000000-0000-4000-8000-000000000000 not found\n',
    })
  })
})
