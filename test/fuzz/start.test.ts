// Fuzzing TenantHandle.startWorkflow on a real database with hostile inputs and options: JSON nested
// past the depth limit, strings past the size limit, NUL and lone surrogates (which jsonb refuses),
// `__proto__` keys, values JSON has no notation for, unknown workflow types, bad idempotency keys.
// Each start either succeeds, and the input reads back as JSON.stringify would have written it, or
// throws one of the library's typed errors (never a PostgreSQL error or a TypeError) having written
// nothing at all; and workflows of thousands of tasks start whole.
import fc from 'fast-check'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { LIMITS } from '../../src/core/definition.ts'
import {
  defineAgent,
  defineWorkflow,
  EquilateralError,
  type Json,
  type StartOptions,
} from '../../src/index.ts'
import { testEngine } from '../helpers/engine.ts'
import {
  databaseFingerprint,
  fuzzSeed,
  nastyString,
  prototypeKey,
  startInput,
  storableJson,
  storableString,
} from './arbitraries.ts'

const seed = fuzzSeed('test/fuzz/start.test.ts')
const runs = (numRuns: number) => ({ seed, numRuns })

const MAX_BYTES = 8192

const echo = defineAgent({ id: 'echo', handler: async (ctx) => ctx.input })
/** One task; its data is the input itself. */
const single = defineWorkflow({
  name: 'single',
  tasks: [{ key: 'only', agent: echo, data: (input) => input }],
})
/** A diamond whose task data is computed from the input: twice the input (over the limit sooner), a field of it. */
const diamond = defineWorkflow<any>({
  name: 'diamond',
  tasks: [
    { key: 'a', agent: echo, data: (input) => ({ twice: [input, input] }) },
    { key: 'b', agent: echo, dependsOn: ['a'], data: (input) => input?.items?.[0] ?? null },
    { key: 'c', agent: echo, dependsOn: ['a'] },
    { key: 'd', agent: echo, dependsOn: ['b', 'c'] },
  ],
})

// No worker runs: nothing but the starts below writes to the database.
const { engine, db } = await testEngine({
  agents: [echo],
  workflows: [single, diamond],
  config: { maxPayloadBytes: MAX_BYTES },
})
// A compliance profile, so that every task row written also writes compliance events.
await engine.createTenant({ id: 'acme', complianceProfile: { GDPR: { retentionDays: 30 } } })
const acme = await engine.tenant('acme')

const superuser = new pg.Client({ connectionString: db.url })
await superuser.connect()
afterAll(() => superuser.end())
const fingerprint = () => databaseFingerprint(superuser)

/** The error codes a refused start may have: bad input or options, an unknown type, a reused key. */
const REFUSALS = ['invalid_input', 'unknown_workflow_type', 'idempotency_conflict']

/** What the input becomes in jsonb, and so what reading it back must give. */
const asStored = (input: unknown): Json => JSON.parse(JSON.stringify(input ?? null) ?? 'null')

/** A start option: mostly absent, else fine, hostile, of the wrong type, or around the length limit. */
const option = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.stringMatching(/^[a-z0-9-]{1,40}$/) },
  { weight: 1, arbitrary: nastyString },
  { weight: 1, arbitrary: prototypeKey },
  {
    weight: 1,
    arbitrary: fc.constantFrom('', 'k'.repeat(200), 'k'.repeat(201), null, 42, { key: 'k' }, ['k']),
  },
)

/**
 * Starts a workflow and checks the outcome: created, and the input reads back as stored; or an
 * earlier workflow with the same idempotency key, and nothing written; or a typed refusal, and
 * nothing written.
 */
async function startAndCheck(type: string, input: unknown, options: StartOptions): Promise<void> {
  const before = await fingerprint()
  let started: Awaited<ReturnType<typeof acme.startWorkflow>>
  try {
    started = await acme.startWorkflow(type, input as Json, options)
  } catch (error) {
    expect(error, String(error)).toBeInstanceOf(EquilateralError)
    expect(REFUSALS, String(error)).toContain((error as EquilateralError).code)
    expect(await fingerprint(), `${String(error)}, yet something was written`).toEqual(before)
    return
  }
  if (!started.created) {
    expect(options.idempotencyKey).toBeDefined()
    expect(await fingerprint()).toEqual(before)
    return
  }
  const wf = await acme.getWorkflow(started.id)
  expect(wf.type).toBe(type)
  expect(wf.input).toEqual(asStored(input))
  expect(wf.tasks).toHaveLength(engine.workflow(type).tasks.length)
  if (options.correlationId !== undefined) expect(wf.correlationId).toBe(options.correlationId)
}

describe('starting workflows with hostile input', () => {
  it('starts the workflow, or refuses with a typed error and writes nothing', async () => {
    const start = fc.record({
      type: fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom('single', 'diamond') },
        { weight: 1, arbitrary: fc.oneof(nastyString, prototypeKey) },
      ),
      input: startInput(MAX_BYTES),
      options: fc.record({ idempotencyKey: option, correlationId: option, subjectKey: option }),
    })
    await fc.assert(
      fc.asyncProperty(start, async ({ type, input, options }) => {
        await startAndCheck(type, input, options as StartOptions)
      }),
      runs(250),
    )
  })

  it('accepts every storable JSON input within the limits, which reads back as given', async () => {
    const fits = (v: unknown) => Buffer.byteLength(JSON.stringify({ twice: [v, v] })) <= MAX_BYTES
    const start = fc.record({
      type: fc.constantFrom('single', 'diamond'),
      input: storableJson.filter(fits),
      subjectKey: fc.option(
        storableString.filter((s) => s.length > 0 && s.length <= 200),
        { nil: undefined },
      ),
    })
    await fc.assert(
      fc.asyncProperty(start, async ({ type, input, subjectKey }) => {
        const started = await acme.startWorkflow(type, input as Json, subjectKey ? { subjectKey } : {})
        expect(started.created).toBe(true)
        expect((await acme.getWorkflow(started.id)).input).toEqual(asStored(input))
      }),
      runs(100),
    )
  })

  it('returns the first workflow for a repeated idempotency key, or refuses another type, writing nothing', async () => {
    const repeat = fc.record({
      key: storableString.filter((s) => s.length > 0 && s.length <= 200),
      first: fc.constantFrom('single', 'diamond'),
      second: fc.constantFrom('single', 'diamond'),
      input: storableJson,
    })
    await fc.assert(
      fc.asyncProperty(repeat, async ({ key, first, second, input }) => {
        const idempotencyKey = `repeat:${key}`
        const original = await acme.startWorkflow(first, null, { idempotencyKey }).catch(() => undefined)
        fc.pre(original !== undefined) // the key was used by an earlier run for another type
        const before = await fingerprint()
        const again = await acme
          .startWorkflow(second, input as Json, { idempotencyKey })
          .catch((error: EquilateralError) => error)
        if (first === second) expect(again).toMatchObject({ id: original.id, created: false })
        else expect(again).toMatchObject({ code: 'idempotency_conflict' })
        expect(await fingerprint()).toEqual(before)
      }),
      runs(40),
    )
  })
})

describe('starting enormous workflows', () => {
  const jobs = async (): Promise<number> =>
    (await superuser.query("SELECT count(*)::int AS n FROM pgboss.job WHERE name LIKE 'eq.%'")).rows[0].n

  it('starts a workflow of up to the task limit whole, or refuses it having written none of it', async () => {
    let n = 0
    const big = fc.record({
      size: fc.integer({ min: 500, max: LIMITS.maxTasksPerWorkflow }),
      roots: fc.integer({ min: 1, max: 50 }),
    })
    await fc.assert(
      fc.asyncProperty(big, async ({ size, roots }) => {
        // `roots` tasks without dependencies, every other task waiting for the one `roots` before
        // it; the last task's data is the input twice: an input over half the limit is refused there.
        const type = `big-${n++}`
        const tasks = Array.from({ length: size }, (_, i) => ({
          key: `t${i}`,
          agent: echo,
          dependsOn: i < roots ? [] : [`t${i - roots}`],
          ...(i === size - 1 ? { data: (input: unknown) => [input, input] as Json } : {}),
        }))
        engine.registerWorkflow(defineWorkflow({ name: type, tasks }))

        const before = await fingerprint()
        await expect(acme.startWorkflow(type, 'x'.repeat(MAX_BYTES / 2 + 8))).rejects.toMatchObject({
          code: 'invalid_input',
          path: `$.tasks.t${size - 1}.data`,
        })
        expect(await fingerprint()).toEqual(before)

        const jobsBefore = await jobs()
        const { id } = await acme.startWorkflow(type, { size })
        const { rows } = await superuser.query(
          `SELECT count(*)::int AS tasks, count(*) FILTER (WHERE status = 'queued')::int AS queued
           FROM equilateral.agent_coordination WHERE workflow_id = $1`,
          [id],
        )
        expect(rows[0]).toEqual({ tasks: size, queued: roots })
        expect((await jobs()) - jobsBefore).toBe(roots)
      }),
      runs(3),
    )
  })
})
