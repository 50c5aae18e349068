// `equilateral budgets set|list|remove|pass` and `equilateral usage`, as child processes on a test
// database: a budget set with its actor, listed with its audit trail, removed, and bad input refused
// with exit 2 before anything is written.
import { describe, expect, it } from 'vitest'
import { createTestDatabase } from '../helpers/db.ts'
import { childEnv, cliProcesses, type Result } from '../cli/run.ts'

const db = await createTestDatabase()
const { run } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'warn' }),
  () => db.drop(),
)

function json(result: Result): any {
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

describe('budgets and usage on the command line', () => {
  it('sets, lists, removes a budget (audited), and reads usage', async () => {
    json(await run(['tenant', 'create', 'acme']))
    const set = json(
      await run([
        'budgets',
        'set',
        '--tenant',
        'acme',
        '--dimension',
        'tokens',
        '--period',
        'month',
        '--limit',
        '5000',
        '--hard',
        '--actor',
        'ops',
      ]),
    )
    expect(set).toMatchObject({
      dimension: 'tokens',
      period: 'month',
      limit: 5000,
      hard: true,
      used: 0,
      exhausted: false,
    })
    const listed = json(await run(['budgets', 'list', '--tenant', 'acme']))
    expect(listed.budgets).toHaveLength(1)
    expect(listed.audit).toMatchObject([{ action: 'budget_set', actor: 'ops', dimension: 'tokens' }])
    expect(json(await run(['usage', '--tenant', 'acme']))).toMatchObject({ totals: [], heldTasks: 0 })
    expect(json(await run(['budgets', 'pass', '--clock', set.periodStart]))).toMatchObject({
      rolled: 0,
      released: 0,
    })
    expect(
      json(
        await run(['budgets', 'remove', '--tenant', 'acme', '--dimension', 'tokens', '--period', 'month']),
      ),
    ).toEqual({
      deleted: true,
      released: 0,
    })
    expect(json(await run(['budgets', 'list', '--tenant', 'acme'])).audit[0]).toMatchObject({
      action: 'budget_removed',
      actor: 'cli',
    })
  })

  it('refuses a bad period or limit with exit 2', async () => {
    const bad = await run([
      'budgets',
      'set',
      '--tenant',
      'acme',
      '--dimension',
      'tokens',
      '--period',
      'week',
      '--limit',
      '1',
    ])
    expect(bad.code).toBe(2)
    expect(bad.stderr).toMatch(/day or month/)
    const negative = await run([
      'budgets',
      'set',
      '--tenant',
      'acme',
      '--dimension',
      'tokens',
      '--period',
      'day',
      '--limit',
      '-1',
    ])
    expect(negative.code).toBe(2)
  })
})
