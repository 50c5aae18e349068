// Typed inputs: a workflow type's input schema (a Standard Schema validator such as zod, or a JSON
// Schema) is checked when a run starts; a refusal names the path of the first problem and writes
// nothing, and the tasks get the validated value.
import pg from 'pg'
import { z } from 'zod'
import { describe, expect, expectTypeOf, it } from 'vitest'
import {
  DefinitionError,
  defineAgent,
  defineWorkflow,
  InvalidInputError,
  type StandardSchemaV1,
} from '../../src/index.ts'
import { testEngine } from '../helpers/engine.ts'

const echo = defineAgent({ id: 'typed-echo', handler: async (ctx) => ({ data: ctx.data, input: ctx.input }) })

const signupSchema = z.object({
  user: z.object({ email: z.email(), name: z.string().min(1) }),
  plan: z.enum(['free', 'pro']).default('free'),
})
const signup = defineWorkflow({
  name: 'signup',
  input: signupSchema,
  // The tasks get the validated value: the default plan is filled in.
  tasks: [{ key: 'welcome', agent: echo, data: (input) => ({ to: input.user.email, plan: input.plan }) }],
})

// A JSON Schema as TypeBox produces it (TypeBox adds symbol keys, which are not JSON).
const orderSchema = {
  type: 'object',
  required: ['items'],
  additionalProperties: false,
  properties: {
    items: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        required: ['sku', 'qty'],
        properties: {
          sku: { type: 'string', pattern: '^[A-Z]{3}-\\d+$' },
          qty: { type: 'integer', minimum: 1 },
        },
      },
    },
    contact: { type: 'string', format: 'email' },
  },
  [Symbol.for('TypeBox.Kind')]: 'Object',
}
const order = defineWorkflow<{ items: { sku: string; qty: number }[] }>({
  name: 'order',
  input: orderSchema,
  tasks: [{ key: 'pick', agent: echo, data: (input) => ({ lines: input.items.length }) }],
})

/** A Standard Schema validator whose check is asynchronous (e.g. it looks something up). */
const slowlyChecked: StandardSchemaV1<{ code: string }> = {
  '~standard': {
    version: 1,
    vendor: 'test',
    validate: async (value) => {
      await new Promise((r) => setTimeout(r, 5))
      const code = (value as { code?: unknown } | null)?.code
      return typeof code === 'string' && code.startsWith('ok')
        ? { value: { code } }
        : { issues: [{ message: 'is not an ok code', path: [{ key: 'code' }] }] }
    },
  },
}
const coupon = defineWorkflow({ name: 'coupon', input: slowlyChecked, tasks: [{ key: 'x', agent: echo }] })

const { engine, db } = await testEngine({ agents: [echo], workflows: [signup, order, coupon] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')
await engine.startWorker()

async function written(): Promise<number[]> {
  const c = new pg.Client({ connectionString: db.url })
  await c.connect()
  try {
    const { rows } = await c.query(`SELECT
      (SELECT count(*) FROM equilateral.workflows)::int AS w,
      (SELECT count(*) FROM equilateral.agent_coordination)::int AS t,
      (SELECT count(*) FROM equilateral.agent_audit_log)::int AS a,
      (SELECT count(*) FROM pgboss.job WHERE name LIKE 'eq.%')::int AS j`)
    return [rows[0].w, rows[0].t, rows[0].a, rows[0].j]
  } finally {
    await c.end()
  }
}

async function refusal(start: Promise<unknown>): Promise<InvalidInputError> {
  const error = await start.then(
    () => {
      throw new Error('the start was accepted')
    },
    (e: unknown) => e,
  )
  expect(error).toBeInstanceOf(InvalidInputError)
  return error as InvalidInputError
}

describe('typed inputs', () => {
  it('refuses an input a zod schema rejects, naming the path, and writes nothing', async () => {
    const before = await written()
    const bad = await refusal(
      acme.startWorkflow(signup, { user: { email: 'not-an-address', name: 'Ann' }, plan: 'free' }),
    )
    expect(bad).toMatchObject({ code: 'invalid_input', path: '$.input.user.email' })
    expect(bad.message).toMatch(/^\$\.input\.user\.email: /)
    // By name too (HTTP and the CLI start by name), with the input as untyped JSON.
    expect(await refusal(acme.startWorkflow('signup', { user: { email: 'a@b.co' } }))).toMatchObject({
      path: '$.input.user.name',
    })
    expect(await written()).toEqual(before)
  })

  it('starts with a valid input, and the tasks get the validated value', async () => {
    const run = await acme.startWorkflow(signup, { user: { email: 'ann@example.com', name: 'Ann' } })
    const output = await run.result()
    expect(output.welcome).toMatchObject({
      data: { to: 'ann@example.com', plan: 'free' },
      input: { user: { email: 'ann@example.com', name: 'Ann' }, plan: 'free' },
    })
    expect((await acme.getWorkflow(run.id)).input).toEqual({
      user: { email: 'ann@example.com', name: 'Ann' },
      plan: 'free',
    })
  })

  it('refuses an input a JSON Schema rejects, naming the path, and writes nothing', async () => {
    const before = await written()
    const cases: [unknown, string][] = [
      [{}, '$.input.items'],
      [{ items: [] }, '$.input.items'],
      [
        {
          items: [
            { sku: 'ABC-1', qty: 1 },
            { sku: 'abc', qty: 1 },
          ],
        },
        '$.input.items[1].sku',
      ],
      [{ items: [{ sku: 'ABC-1' }] }, '$.input.items[0].qty'],
      [{ items: [{ sku: 'ABC-1', qty: 1 }], contact: 'nobody' }, '$.input.contact'],
      [null, '$.input'],
    ]
    for (const [input, path] of cases) {
      expect(await refusal(acme.startWorkflow('order', input as never)), JSON.stringify(input)).toMatchObject(
        {
          path,
        },
      )
    }
    expect(await written()).toEqual(before)
    const run = await acme.startWorkflow(order, { items: [{ sku: 'ABC-1', qty: 2 }] })
    await expect(run.result()).resolves.toMatchObject({ pick: { data: { lines: 1 } } })
  })

  it('awaits an asynchronous Standard Schema validator', async () => {
    const before = await written()
    expect(await refusal(acme.startWorkflow(coupon, { code: 'nope' }))).toMatchObject({
      path: '$.input.code',
    })
    expect(await written()).toEqual(before)
    await expect((await acme.startWorkflow(coupon, { code: 'ok-1' })).result()).resolves.toBeDefined()
  })

  it('checks the input of a cron schedule when it is declared', async () => {
    const error = await refusal(
      acme.putSchedule({ id: 'nightly', workflowType: 'signup', cron: '0 3 * * *', input: { user: {} } }),
    )
    expect(error.path).toBe('$.input.user.email')
    await expect(acme.listSchedules()).resolves.toEqual([])
  })

  it('types the input of a start through the definition', () => {
    type SignupStart = Parameters<typeof acme.startWorkflow<z.input<typeof signupSchema>>>[1]
    expectTypeOf<SignupStart>().toEqualTypeOf<z.input<typeof signupSchema>>()
    // @ts-expect-error: the email must be a string
    void acme.startWorkflow(signup, { user: { email: 1, name: 'x' } }).catch(() => {})
  })

  it('refuses, when the workflow is defined, an input that is neither kind of schema', () => {
    expect(() =>
      defineWorkflow({ name: 'bad', input: 42 as never, tasks: [{ key: 'x', agent: echo }] }),
    ).toThrow(DefinitionError)
    expect(() =>
      defineWorkflow({ name: 'bad', input: { type: 'no-such-type' }, tasks: [{ key: 'x', agent: echo }] }),
    ).toThrow(/workflow "bad" input schema is invalid/)
  })
})
