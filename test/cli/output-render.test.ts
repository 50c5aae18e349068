// The human form of a command's result on a terminal of a given width (src/cli/output.ts): a table
// too wide for it leaves out ids (but the first column), then columns from the right; values too
// long for a line are cut. No database.
import { describe, expect, it } from 'vitest'
import { render } from '../../src/cli/output.ts'

const at = new Date('2026-03-01T08:00:00Z')
const tasks = [
  {
    id: '0dcfff02-75f1-42c8-abe9-dce1c1849f05',
    key: 'security',
    agent: 'security-reviewer',
    env: 'staging',
    attempt: 1,
    queuedAt: at,
  },
  {
    id: '7c2fe84d-08d2-42b9-9a48-2ac7ec336541',
    key: 'tests',
    agent: 'test-runner',
    env: 'staging',
    attempt: 1,
    queuedAt: at,
  },
].map((t, i) => ({ ...t, workflowId: `28bedea2-072c-4774-b78a-2d043df5933${i}` }))

describe('human output on a terminal of a given width', () => {
  it('prints every column when the table fits, times in the given zone', () => {
    const text = render(tasks, 'human', { timeZone: 'America/New_York' })
    expect(text.split('\n')[0]).toBe(
      'ID                                    KEY       AGENT              ENV      ATTEMPT  QUEUED AT                WORKFLOW ID',
    )
    expect(text).toContain('2026-03-01 03:00:00 EST')
  })

  it('leaves out other ids first, then columns from the right', () => {
    const lines = render(tasks, 'human', { timeZone: 'UTC', columns: 110 }).trimEnd().split('\n')
    expect(lines[0]).toBe(
      'ID                                    KEY       AGENT              ENV      ATTEMPT  QUEUED AT',
    )
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(110)
    const narrow = render(tasks, 'human', { timeZone: 'UTC', columns: 80 }).split('\n')[0]
    expect(narrow).toBe('ID                                    KEY       AGENT              ENV')
  })

  it('prints a page as its table and the whole cursor of the next page', () => {
    const page = { workflows: tasks.map(({ id, key }) => ({ id, key })), nextCursor: 'c'.repeat(120) }
    const lines = render(page, 'human', { columns: 80 }).trimEnd().split('\n')
    expect(lines[0]).toBe('ID                                    KEY')
    expect(lines.at(-1)).toBe(`next page: --cursor ${'c'.repeat(120)}`)
  })

  it('cuts a long value in key/value lines to the width, and says (none) for an empty list', () => {
    const lines = render({ id: 'w1', input: { tests: [1], source: 'x'.repeat(500) }, failed: [] }, 'human', {
      columns: 60,
    }).split('\n')
    expect(lines[0]).toBe('id:      w1')
    expect(lines[1]).toHaveLength(60)
    expect(lines[1]).toMatch(/^input: {3}\{"tests":\[1\],"source":"x+…$/)
    expect(lines[2]).toBe('failed:  (none)')
  })
})
