// `equilateral erase --crypto`, `keys rotate` and `keys rewrap` end to end, as child processes with
// DATA_KEYS=per-tenant, on a database an in-process engine (the same keys) writes and reads.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow, KeyRing, LocalKeyProvider } from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { settled, testEngine } from '../helpers/engine.ts'
import { childEnv, cliProcesses } from '../cli/run.ts'

const K1 = KeyRing.generateKey()
const K2 = KeyRing.generateKey()
const ring = KeyRing.of({ k1: K1 })
const echo = defineAgent({ id: 'echo', handler: async (ctx) => ({ saw: ctx.input }) })
const wf = defineWorkflow<{ who: string }>({ name: 'wf', tasks: [{ key: 'a', agent: echo }] })

describe('keys and crypto-erasure on the command line', async () => {
  const { engine, db } = await testEngine({
    agents: [echo],
    workflows: [wf],
    config: { encryption: ring, keyProvider: new LocalKeyProvider(ring) },
  })
  await engine.createTenant({ id: 'acme' })
  await engine.startWorker({ agents: [echo] })
  const acme = await engine.tenant('acme')
  const env = {
    DATABASE_URL: db.url,
    MIGRATION_DATABASE_URL: db.url,
    LOG_LEVEL: 'warn',
    DATA_KEYS: 'per-tenant',
  }
  const { run } = cliProcesses(childEnv({ ...env, ENCRYPTION_KEYS: `k1:${K1}` }))

  it('erase --crypto destroys the subject key; keys rotate and keys rewrap rotate data key and KEK', async () => {
    const gone = (await acme.startWorkflow('wf', { who: 'gone' }, { subjectKey: 'gone@example.com' })).id
    const kept = (await acme.startWorkflow('wf', { who: 'kept' })).id
    await settled(engine, 'acme', gone)
    await settled(engine, 'acme', kept)

    const erased = await run(['erase', '--tenant', 'acme', '--subject', 'gone@example.com', '--crypto'])
    expect(erased.code, erased.stderr).toBe(0)
    const report = JSON.parse(erased.stdout)
    expect(report).toMatchObject({ tenantId: 'acme', scope: 'subject', crypto: true, keys: 1 })
    // This process cached the key before: it sees the erasure within the cache's lifetime; forget now.
    engine.keyRing.dataKeys?.forget('acme')
    expect((await acme.getWorkflow(gone)).input).toEqual({ $erased: true, erasure: report.erasureId })
    expect((await acme.getWorkflow(kept)).input).toEqual({ who: 'kept' })

    const rotated = await run(['keys', 'rotate', '--tenant', 'acme'])
    expect(rotated.code, rotated.stderr).toBe(0)
    expect(JSON.parse(rotated.stdout)).toMatchObject({ tenants: 1, workflows: 1, tasks: 1 })

    const rewrap = await run(['keys', 'rewrap'], {
      ENCRYPTION_KEYS: `k1:${K1},k2:${K2}`,
      ENCRYPTION_ACTIVE_KEY: 'k2',
    })
    expect(rewrap.code, rewrap.stderr).toBe(0)
    expect(JSON.parse(rewrap.stdout)).toEqual([{ tenant: 'acme', rewrapped: 2, current: 0 }])
    const keys = await queryOnce(db.url, `SELECT state, kek FROM equilateral.tenant_data_keys ORDER BY state`)
    expect(keys).toEqual([
      { state: 'active', kek: 'k2' },
      { state: 'destroyed', kek: null },
      { state: 'retired', kek: 'k2' },
    ])
  })
})
