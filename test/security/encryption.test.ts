// Encryption at rest of workflow inputs, task data and results: with keys, the columns hold
// envelopes only (checked with raw SQL as the owner), agents and the API see the plain values; a
// value copied into another tenant's row, a missing key or a removed key is a typed error, never
// garbage; the re-encryption command moves every row to the active key; without keys it all works
// unencrypted; the key ring's configuration errors are reported by loadConfig, all at once.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import {
  ConfigError,
  createEngine,
  defineAgent,
  defineWorkflow,
  type Engine,
  EncryptionError,
  InvalidInputError,
  isEnvelope,
  KeyRing,
  loadConfig,
} from '../../src/index.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { queryOnce } from '../helpers/db.ts'

const MARKER = 'MARKER-c0ffee-7f3a'
const K1 = KeyRing.generateKey()
const K2 = KeyRing.generateKey()
const K4 = KeyRing.generateKey()
const ring1 = KeyRing.of({ k1: K1 })

const echo = defineAgent<{ note: string }>({
  id: 'echo',
  handler: async (ctx) => {
    if (ctx.taskKey === 'first')
      ctx.spawn({ key: 'spawned', agent: 'echo', data: { note: `${MARKER}-spawned` } })
    return { got: ctx.data, input: ctx.input, parents: ctx.results, secret: `${MARKER}-result` }
  },
})
const heldRanFor: string[] = []
const held = defineAgent({
  id: 'held',
  handler: async (ctx) => {
    heldRanFor.push(ctx.tenantId)
    return { ran: true }
  },
})
const chain = defineWorkflow<{ secret: string }>({
  name: 'chain',
  tasks: [
    { key: 'first', agent: echo, data: (input) => ({ note: `${input.secret}-data` }) },
    { key: 'second', agent: echo, dependsOn: ['first'] },
  ],
})
const waiting = defineWorkflow({ name: 'waiting', tasks: [{ key: 'only', agent: held, data: { n: 1 } }] })
// An event wait behind a task no worker here runs: an event sent to it is kept in the inbox.
const inbox = defineWorkflow({
  name: 'inbox',
  tasks: [
    { key: 'hold', agent: held },
    { key: 'note', event: { name: 'note' }, dependsOn: ['hold'] },
  ],
})
const definitions = { agents: [echo, held], workflows: [chain, waiting, inbox] }

/** Every payload column as raw text, read as the owner (behind the engine's back). */
async function rawPayloads(url: string): Promise<{ where: string; text: string; value: unknown }[]> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    const { rows } = await c.query(`
      SELECT 'workflows.input ' || id AS where, input AS value, input::text AS text FROM equilateral.workflows
      UNION ALL SELECT 'task.data ' || task_key, data, data::text FROM equilateral.agent_coordination
      UNION ALL SELECT 'task.result ' || task_key, result, result::text FROM equilateral.agent_coordination
      UNION ALL SELECT 'event.payload ' || event_id, payload, payload::text FROM equilateral.workflow_events
      UNION ALL SELECT 'schedule.input ' || id, input, input::text FROM equilateral.workflow_schedules`)
    return rows.filter((r) => r.value !== null)
  } finally {
    await c.end()
  }
}

async function ownerQuery(url: string, text: string, values: unknown[] = []): Promise<pg.QueryResult> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    return await c.query(text, values)
  } finally {
    await c.end()
  }
}

/** Another engine on the same database with another key ring (a process configured differently). */
async function engineWith(db: { url: string; appUrl: string }, encryption: KeyRing): Promise<Engine> {
  const engine = await createEngine({
    connectionString: db.appUrl,
    adminConnectionString: db.url,
    ...definitions,
    log: pino({ level: 'silent' }),
    supervise: false,
    config: { encryption },
  })
  afterAll(() => engine.close())
  return engine
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p
  } catch (error) {
    expect(error).toBeInstanceOf(EncryptionError)
    return (error as EncryptionError).code
  }
  return 'no error'
}

describe('with keys configured', async () => {
  const { engine, db } = await testEngine({ ...definitions, config: { encryption: ring1 } })
  await engine.createTenant({ id: 'acme' })
  await engine.createTenant({ id: 'globex' })
  await engine.startWorker({ agents: [echo] })
  const acme = await engine.tenant('acme')
  const globex = await engine.tenant('globex')

  it('stores no plaintext in the payload columns, and agents and the API see the plain values', async () => {
    const { id } = await acme.startWorkflow('chain', { secret: MARKER })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.input).toEqual({ secret: MARKER })
    const byKey = Object.fromEntries(wf.tasks.map((t) => [t.key, t.result]))
    expect(byKey.first).toEqual({
      got: { note: `${MARKER}-data` },
      input: { secret: MARKER },
      parents: {},
      secret: `${MARKER}-result`,
    })
    expect(byKey.second).toMatchObject({ got: null, parents: { first: byKey.first } })
    expect(byKey.spawned).toMatchObject({ got: { note: `${MARKER}-spawned` } })
    expect(Object.keys(wf.output).sort()).toEqual(['second', 'spawned'])
    // result() decrypts the outputs as getWorkflow does.
    expect(await acme.result(id)).toEqual(wf.output)
    expect((await acme.result(id)).second).toMatchObject({ secret: `${MARKER}-result` })

    const raw = await rawPayloads(db.url)
    // input, first's data, the spawned task's data, and three results
    expect(raw.length).toBe(6)
    for (const r of raw) {
      expect(r.text, r.where).not.toContain('MARKER')
      expect(isEnvelope(r.value), r.where).toBe(true)
      expect((r.value as { k: string }).k).toBe('k1')
    }
  })

  it("fails, with a typed error, to read a value copied into another tenant's row", async () => {
    const a = await acme.startWorkflow('chain', { secret: MARKER })
    const g = await globex.startWorkflow('chain', { secret: 'globex' })
    await settled(engine, 'acme', a.id)
    await settled(engine, 'globex', g.id)
    await ownerQuery(
      db.url,
      `UPDATE equilateral.workflows SET input = (SELECT input FROM equilateral.workflows WHERE tenant_id = 'acme' AND id = $1)
       WHERE tenant_id = 'globex' AND id = $2`,
      [a.id, g.id],
    )
    const error = await globex.getWorkflow(g.id).catch((e: unknown) => e)
    expect(error).toBeInstanceOf(EncryptionError)
    expect(error).toMatchObject({ code: 'decryption_failed' })
    expect((error as Error).message).toMatch(
      /workflow.input of tenant "globex" failed to decrypt with key "k1"/,
    )
    expect((error as Error).message).not.toContain(MARKER)
    // Moving it to another column of the same tenant fails the same way.
    await ownerQuery(
      db.url,
      `UPDATE equilateral.agent_coordination SET result = (SELECT input FROM equilateral.workflows WHERE tenant_id = 'acme' AND id = $1)
       WHERE tenant_id = 'acme' AND workflow_id = $1 AND task_key = 'second'`,
      [a.id],
    )
    expect(await codeOf(acme.getWorkflow(a.id))).toBe('decryption_failed')
  })

  it('fails the task, without running the agent, when the worker cannot decrypt its data', async () => {
    const a = await acme.startWorkflow('waiting')
    const g = await globex.startWorkflow('waiting')
    // No worker serves `held` yet: plant acme's task data in globex's queued task.
    await ownerQuery(
      db.url,
      `UPDATE equilateral.agent_coordination SET data = (SELECT data FROM equilateral.agent_coordination WHERE tenant_id = 'acme' AND workflow_id = $1)
       WHERE tenant_id = 'globex' AND workflow_id = $2`,
      [a.id, g.id],
    )
    await engine.startWorker({ agents: [held] })
    const wf = await settled(engine, 'globex', g.id)
    expect(wf.status).toBe('failed')
    expect(wf.tasks[0]?.result).toBeNull()
    expect(wf.tasks[0]?.error).toMatchObject({ name: 'EncryptionError', code: 'decryption_failed' })
    expect(wf.tasks[0]?.failures).toBe(1) // permanent: not retried
    expect((await settled(engine, 'acme', a.id)).tasks[0]?.result).toEqual({ ran: true })
    expect(heldRanFor).toEqual(['acme'])
  })

  it('refuses a value of the reserved envelope shape', async () => {
    const fake = { $eq: 1, k: 'k1', iv: 'x', ct: 'y', tag: 'z' }
    await expect(acme.startWorkflow('chain', fake as never)).rejects.toBeInstanceOf(InvalidInputError)
  })
})

describe('rotation and missing keys', async () => {
  const { engine, db } = await testEngine({ ...definitions, config: { encryption: ring1 } })
  await engine.createTenant({ id: 'acme' })
  await engine.createTenant({ id: 'globex' })
  await engine.startWorker({ agents: [echo] })
  const ids: Record<string, string[]> = { acme: [], globex: [] }
  for (let i = 0; i < 3; i++) {
    for (const t of ['acme', 'globex']) {
      const { id } = await (await engine.tenant(t)).startWorkflow('chain', { secret: `${MARKER}-${i}` })
      ids[t]?.push(id)
    }
  }
  // Rows written before keys were configured: plain, and re-encrypted too.
  const plainEngine = await engineWith(db, KeyRing.none)
  const plain = await (await plainEngine.tenant('acme')).startWorkflow('waiting', { secret: MARKER })
  const note = { eventId: 'note-1', name: 'note', payload: { secret: `${MARKER}-event` } }
  const kept = await (await engine.tenant('acme')).startWorkflow('inbox', null)
  await (
    await engine.tenant('acme')
  ).putSchedule({
    id: 'nightly',
    workflowType: 'chain',
    cron: '0 3 * * *',
    input: { secret: `${MARKER}-schedule` },
  })
  expect(await (await engine.tenant('acme')).sendEvent(kept.id, note)).toMatchObject({ status: 'kept' })
  for (const t of ['acme', 'globex']) for (const id of ids[t] ?? []) await settled(engine, t, id)
  const views = async (e: Engine) =>
    Promise.all(
      Object.entries(ids).flatMap(([t, list]) => list.map(async (id) => (await e.tenant(t)).getWorkflow(id))),
    )
  const before = await views(engine)

  it('re-encrypts every row under the new active key, idempotently, and reads them without the old key', async () => {
    expect((await rawPayloads(db.url)).some((r) => r.text.includes(MARKER))).toBe(true) // the plain rows
    await engine.suspendTenant('globex') // suspended tenants are re-encrypted too
    const rotated = await engineWith(db, KeyRing.of({ k1: K1, k2: K2 }, 'k2'))
    const report = await rotated.reencrypt({ batchSize: 2 })
    expect(report).toMatchObject({
      activeKey: 'k2',
      tenants: 2,
      workflows: 7,
      tasks: 19,
      events: 1,
      schedules: 1,
      skipped: 0,
    })
    for (const r of await rawPayloads(db.url)) {
      expect(r.text, r.where).not.toContain('MARKER')
      expect((r.value as { k: string }).k, r.where).toBe('k2')
    }
    expect(await rotated.reencrypt()).toMatchObject({ tenants: 2, workflows: 0, tasks: 0 })
    await engine.resumeTenant('globex')

    const onlyK2 = await engineWith(db, KeyRing.of({ k2: K2 }))
    expect(await views(onlyK2)).toEqual(before)
    const p = await (await onlyK2.tenant('acme')).getWorkflow(plain.id)
    expect(p.input).toEqual({ secret: MARKER })
    // The kept event reads under the new key: the same delivery again is recognised as a duplicate.
    expect(await (await onlyK2.tenant('acme')).sendEvent(kept.id, note)).toMatchObject({
      status: 'duplicate',
    })
  })

  it('gives a clear error when the key is missing, never garbage', async () => {
    const [id] = ids.acme ?? []
    const oldOnly = await engineWith(db, ring1)
    const error = await (await oldOnly.tenant('acme')).getWorkflow(id as string).catch((e: unknown) => e)
    expect(error).toMatchObject({ code: 'unknown_key' })
    expect((error as Error).message).toMatch(/encrypted under key "k2", which is not in the key ring \(k1\)/)
    const none = await engineWith(db, KeyRing.none)
    expect(await codeOf((await none.tenant('acme')).getWorkflow(id as string))).toBe('no_keys')
    await expect(none.reencrypt()).rejects.toMatchObject({ code: 'no_keys' })
    // Re-encrypting with a ring that lacks the rows' key stops with the same error, naming the row.
    const wrong = await engineWith(db, KeyRing.of({ k3: KeyRing.generateKey() }))
    await expect(wrong.reencrypt({ tenant: 'acme' })).rejects.toMatchObject({ code: 'unknown_key' })
    await expect(wrong.reencrypt({ tenant: 'nobody' })).rejects.toMatchObject({ code: 'unknown_tenant' })
  })

  it('with skipUnreadable, goes past a value it cannot decrypt and reports it, rewriting the rest', async () => {
    const [victim, ...others] = ids.acme ?? []
    // A ciphertext altered at rest (the workflow's input): it no longer decrypts under any key.
    await queryOnce(
      db.url,
      `UPDATE equilateral.workflows SET input = jsonb_set(input, '{ct}', to_jsonb('AAAA' || (input->>'ct')))
       WHERE tenant_id = 'acme' AND id = $1`,
      [victim],
    )
    const next = await engineWith(db, KeyRing.of({ k2: K2, k4: K4 }, 'k4'))
    await expect(next.reencrypt({ tenant: 'acme' })).rejects.toMatchObject({ code: 'decryption_failed' })
    const report = await next.reencrypt({ tenant: 'acme', skipUnreadable: true, batchSize: 2 })
    expect(report.unreadable).toEqual([
      {
        tenant: 'acme',
        table: 'workflows',
        id: victim,
        purpose: 'workflow.input',
        code: 'decryption_failed',
      },
    ])
    expect(report.skipped).toBe(0)
    // Everything else moved to k4, and reads without k2; the altered row is left exactly as it was.
    const onlyK4 = await engineWith(db, KeyRing.of({ k4: K4 }))
    for (const id of others) {
      expect((await (await onlyK4.tenant('acme')).getWorkflow(id)).input).toMatchObject({
        secret: expect.stringContaining(MARKER),
      })
    }
    const again = await next.reencrypt({ tenant: 'acme', skipUnreadable: true })
    expect(again).toMatchObject({
      workflows: 0,
      tasks: 0,
      events: 0,
      schedules: 0,
      unreadable: report.unreadable,
    })
  })
})

describe('without keys', async () => {
  const { engine, db } = await testEngine({ ...definitions, config: { encryption: KeyRing.none } })
  await engine.createTenant({ id: 'acme' })
  await engine.startWorker({ agents: [echo] })

  it('works unencrypted', async () => {
    const { id } = await (await engine.tenant('acme')).startWorkflow('chain', { secret: MARKER })
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    expect(wf.output.second).toMatchObject({ secret: `${MARKER}-result` })
    const raw = await rawPayloads(db.url)
    expect(raw.length).toBe(6)
    for (const r of raw) expect(isEnvelope(r.value)).toBe(false)
    expect(raw.filter((r) => r.text.includes(MARKER)).length).toBe(6)
  })
})

describe('key ring configuration', () => {
  const short = Buffer.alloc(16, 1).toString('base64')

  it('reads ENCRYPTION_KEYS and ENCRYPTION_ACTIVE_KEY', () => {
    const one = loadConfig({ ENCRYPTION_KEYS: `k1:${K1}` }).encryption
    expect(one.toJSON()).toEqual({ activeKey: 'k1', keys: ['k1'] })
    const two = loadConfig({
      ENCRYPTION_KEYS: ` k1:${K1} , k2:${K2}`,
      ENCRYPTION_ACTIVE_KEY: 'k2',
    }).encryption
    expect(two.toJSON()).toEqual({ activeKey: 'k2', keys: ['k1', 'k2'] })
    expect(loadConfig({}).encryption.enabled).toBe(false)
    // The key material is never serialised.
    expect(JSON.stringify(two)).not.toContain(K1)
  })

  it('reports every problem at once, without echoing a key', () => {
    let error: unknown
    try {
      loadConfig({
        ENCRYPTION_KEYS: `k1:not*base64,k2:${short},${K2},k1:${K1}`,
        ENCRYPTION_ACTIVE_KEY: 'k9',
        WORKER_CONCURRENCY: '0',
      })
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(ConfigError)
    const problems = (error as ConfigError).problems
    expect(problems).toEqual([
      'WORKER_CONCURRENCY must be an integer from 1 to 10000 (got "0")',
      'ENCRYPTION_KEYS key "k1" must be 32 bytes in base64 (44 characters)',
      'ENCRYPTION_KEYS key "k2" must be 32 bytes in base64 (44 characters)',
      'ENCRYPTION_KEYS entry 3 must be <id>:<base64 key>, the id 1-64 of A-Z a-z 0-9 _ . -',
      'ENCRYPTION_KEYS names key "k1" twice',
      'ENCRYPTION_ACTIVE_KEY is not one of the key ids of ENCRYPTION_KEYS (k1, k2)',
    ])
    expect((error as Error).message).not.toContain(K2)
    expect(() => loadConfig({ ENCRYPTION_KEYS: `a:${K1},b:${K2}` })).toThrow(
      /ENCRYPTION_ACTIVE_KEY must name the key to encrypt with/,
    )
    expect(() => loadConfig({ ENCRYPTION_ACTIVE_KEY: 'a' })).toThrow(/ENCRYPTION_KEYS is empty/)
  })
})
