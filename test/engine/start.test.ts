// Starting workflows: idempotency, joining the caller's transaction, and refusing bad definitions
// and bad inputs with typed errors before anything is written.
import pg from 'pg'
import { describe, expect, it } from 'vitest'
import {
  clientDb,
  DefinitionError,
  defineAgent,
  defineWorkflow,
  IdempotencyConflictError,
  InvalidInputError,
  TenantError,
  UnknownWorkflowTypeError,
} from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ got: ctx.input }) })
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'only', agent: echo }] })
const other = defineWorkflow({ name: 'other', tasks: [{ key: 'only', agent: echo }] })
const computed = defineWorkflow<{ items: string[] }>({
  name: 'computed',
  tasks: [{ key: 'x', agent: echo, data: (input) => ({ first: input.items[0] ?? null }) }],
})

const timed = defineWorkflow<{ at: string }>({
  name: 'timed',
  tasks: [{ key: 'x', agent: echo, startAfter: (input) => input.at }],
})

const { engine, db } = await testEngine({ agents: [echo], workflows: [single, other, computed, timed] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

async function counts() {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    const { rows } = await c.query(`SELECT
      (SELECT count(*) FROM equilateral.workflows)::int AS workflows,
      (SELECT count(*) FROM equilateral.agent_coordination)::int AS tasks,
      (SELECT count(*) FROM equilateral.agent_audit_log)::int AS audit,
      (SELECT count(*) FROM pgboss.job WHERE name LIKE 'eq.%')::int AS jobs`)
    return rows[0]
  } finally {
    await c.end()
  }
}

describe('starting workflows', () => {
  it('returns the same workflow for the same idempotency key, never a second one', async () => {
    const first = await acme.startWorkflow('single', { a: 1 }, { idempotencyKey: 'order-1' })
    const again = await Promise.all([
      acme.startWorkflow('single', { a: 1 }, { idempotencyKey: 'order-1' }),
      acme.startWorkflow('single', { a: 1 }, { idempotencyKey: 'order-1' }),
    ])
    expect(first.created).toBe(true)
    for (const a of again) expect(a).toMatchObject({ id: first.id, created: false })
    await expect(acme.startWorkflow('other', null, { idempotencyKey: 'order-1' })).rejects.toBeInstanceOf(
      IdempotencyConflictError,
    )
  })

  it("commits with the caller's transaction and leaves nothing when it rolls back", async () => {
    const before = await counts()
    const client = new pg.Client({ connectionString: db.url })
    await client.connect()
    try {
      await client.query('BEGIN')
      await client.query('CREATE TEMP TABLE orders (id int)')
      await client.query('INSERT INTO orders VALUES (1)')
      const started = await acme.startWorkflow('single', { order: 1 }, { db: clientDb(client) })
      // the caller's own settings are back after the call
      const { rows } = await client.query("SELECT current_setting('app.tenant_id', true) AS t")
      expect(rows[0].t ?? '').toBe('')
      await client.query('ROLLBACK')
      expect(await counts()).toEqual(before)
      await expect(acme.getWorkflow(started.id)).rejects.toMatchObject({ code: 'not_found' })

      await client.query('BEGIN')
      const kept = await acme.startWorkflow('single', { order: 2 }, { db: clientDb(client) })
      await client.query('COMMIT')
      await engine.startWorker()
      expect((await settled(engine, 'acme', kept.id)).output).toEqual({ only: { got: { order: 2 } } })
    } finally {
      await client.end()
    }
  })

  it('computes task data from the input when the workflow starts', async () => {
    const { id } = await acme.startWorkflow('computed', { items: ['p', 'q'] })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
  })

  it.each([
    ['a NUL character', { s: 'a\u0000b' }, '$.input.s'],
    ['a lone surrogate', { s: 'x\ud800y' }, '$.input.s'],
    ['a lone surrogate in a key', { ['k\udc00']: 1 }, '$.input'],
    ['NaN', { n: Number.NaN }, '$.input.n'],
    ['a function', { f: () => 1 }, '$.input.f'],
    ['deep nesting', JSON.parse('['.repeat(100) + ']'.repeat(100)), undefined],
    ['an oversized payload', { s: 'x'.repeat(2 * 1024 * 1024) }, '$.input'],
  ])('refuses an input with %s, writing nothing', async (_name, input, path) => {
    const before = await counts()
    const error = await acme.startWorkflow('single', input as never).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidInputError)
    if (path) expect((error as InvalidInputError).path).toBe(path)
    expect(await counts()).toEqual(before)
  })

  it.each([
    ['a time without a zone', '2099-12-01T09:00:00'],
    ['a date alone', '2099-12-01'],
  ])('refuses a startAfter computed as %s, naming its path, writing nothing', async (_name, at) => {
    const before = await counts()
    const error = await acme.startWorkflow('timed', { at }).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(InvalidInputError)
    expect(error).toMatchObject({
      path: '$.tasks.x.startAfter',
      message: expect.stringMatching(/needs a zone/),
    })
    expect(await counts()).toEqual(before)
    // The same time with its zone is taken.
    await expect(acme.startWorkflow('timed', { at: '2099-12-01T09:00:00+01:00' })).resolves.toMatchObject({
      created: true,
    })
  })

  it('refuses an unknown workflow type and an unknown tenant', async () => {
    await expect(acme.startWorkflow('nope')).rejects.toBeInstanceOf(UnknownWorkflowTypeError)
    await expect(engine.tenant('ghost')).rejects.toMatchObject({ code: 'unknown_tenant' })
    await expect(engine.tenant("x'; DROP TABLE tenants; --")).rejects.toBeInstanceOf(TenantError)
  })
})

describe('workflow definitions', () => {
  const a = defineAgent({ id: 'a', taskTypes: ['scan', 'fix'], handler: async () => null })
  it.each([
    [
      'a cycle',
      [
        { key: 'x', agent: a, dependsOn: ['z'] },
        { key: 'y', agent: a, dependsOn: ['x'] },
        { key: 'z', agent: a, dependsOn: ['y'] },
      ],
      /cycle/,
    ],
    ['a self-dependency', [{ key: 'x', agent: a, dependsOn: ['x'] }], /depends on itself/],
    ['an unknown dependency', [{ key: 'x', agent: a, dependsOn: ['nope'] }], /unknown task "nope"/],
    [
      'a duplicate key',
      [
        { key: 'x', agent: a },
        { key: 'x', agent: a },
      ],
      /duplicate task key "x"/,
    ],
    ['a task type the agent does not handle', [{ key: 'x', agent: a, type: 'deploy' }], /does not handle/],
    ['no tasks', [], /no tasks/],
    ['a bad key', [{ key: 'has space', agent: a }], /task key/],
    ['bad retry options', [{ key: 'x', agent: a, maxAttempts: 0 }], /maxAttempts/],
    [
      'a startAfter time without a zone',
      [{ key: 'x', agent: a, startAfter: '2026-12-01T09:00:00' }],
      /has no time zone: a time needs a zone/,
    ],
    ['a startAfter date alone', [{ key: 'x', agent: a, startAfter: '2026-12-01' }], /needs a zone/],
  ])('rejects %s with a DefinitionError naming the key', (_name, tasks, message) => {
    const error = (() => {
      try {
        defineWorkflow({ name: 'w', tasks: tasks as never })
      } catch (e) {
        return e
      }
    })()
    expect(error).toBeInstanceOf(DefinitionError)
    expect((error as Error).message).toMatch(message)
    if (tasks.length > 0 && !/no tasks/.test(String(message))) {
      expect(['x', 'y', 'z', 'has space']).toContain((error as DefinitionError).key)
    }
  })

  it('names the cycle member, not a task that merely depends on the cycle', () => {
    const error = (() => {
      try {
        defineWorkflow({
          name: 'w',
          tasks: [
            { key: 'tail', agent: a, dependsOn: ['p'] },
            { key: 'p', agent: a, dependsOn: ['q'] },
            { key: 'q', agent: a, dependsOn: ['p'] },
          ],
        })
      } catch (e) {
        return e as DefinitionError
      }
    })()
    expect(['p', 'q']).toContain(error?.key)
  })

  it('refuses what an untyped caller can pass with a DefinitionError, never a TypeError', () => {
    const sparse: unknown[] = []
    sparse[1] = { key: 'x', agent: a }
    const task = (t: object) => () => defineWorkflow({ name: 'w', tasks: [{ key: 'x', agent: a, ...t }] })
    const cases: [string, () => unknown][] = [
      ['no workflow spec', () => defineWorkflow(null as never)],
      ['a sparse task list', () => defineWorkflow({ name: 'w', tasks: sparse as never })],
      ['an agent-shaped object', task({ agent: { kind: 'agent', id: 'forged' } })],
      ['a type that is not a string', task({ agent: 'a', type: ['scan'] })],
      ['a BigInt key', task({ key: 10n })],
      ['no agent spec', () => defineAgent(null as never)],
      [
        'task types in a string',
        () => defineAgent({ id: 'x', taskTypes: 'scan' as never, handler: a.handler }),
      ],
      ['task types in a number', () => defineAgent({ id: 'x', taskTypes: 5 as never, handler: a.handler })],
    ]
    for (const [what, define] of cases) expect(define, what).toThrow(DefinitionError)
  })

  it('rejects a workflow whose agent the engine does not know', () => {
    const stranger = defineAgent({ id: 'stranger', handler: async () => null })
    expect(() =>
      engine.registerWorkflow(defineWorkflow({ name: 'w', tasks: [{ key: 'k', agent: stranger }] })),
    ).toThrow(/unknown agent "stranger"/)
  })
})
