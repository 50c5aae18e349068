// Issue 20, item 2: a worker process as the recommended setup starts it (README, docker-compose.yml,
// Procfile): the application login as DATABASE_URL, the maintenance login as
// MAINTENANCE_DATABASE_URL, and no owner URL anywhere in its environment. It schedules the retention
// purge and runs it: what is past the tenant's retention is purged and the purge recorded. The
// one-off commands a scheduler or an operator runs, `retention purge` and `erase`, need no more.
import pg from 'pg'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { RETENTION_QUEUE, ensureRetentionQueue } from '../../src/compliance/retention.ts'
import { createEngine } from '../../src/engine.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { childEnv, cliProcesses, until } from '../cli/run.ts'
import { createTestDatabase } from '../helpers/db.ts'
import { settled } from '../helpers/engine.ts'
import { TEST_TENANT_CONTEXT_SECRET } from '../setup/global.ts'

const noop = defineAgent({ id: 'noop', handler: async () => null })
const once = defineWorkflow({ name: 'once', tasks: [{ key: 'only', agent: noop }] })

const db = await createTestDatabase()
const { start, run } = cliProcesses(childEnv({ LOG_LEVEL: 'info' }), () => db.drop())
// The release step's side: tenant administration and a first workflow, as the owner.
const engine = await createEngine({
  connectionString: db.appUrl,
  adminConnectionString: db.url,
  agents: [noop],
  workflows: [once],
  log: pino({ level: 'silent' }),
  supervise: false,
})
const owner = new pg.Client({ connectionString: db.url })
await owner.connect()
afterAll(async () => {
  await owner.end()
  await engine.close()
})

function logLines(stdout: string): { level: number; msg: string; [key: string]: unknown }[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l))
}

describe('a worker without the owner URL', () => {
  it('runs the retention purge with the maintenance login', async () => {
    await engine.createTenant({ id: 'acme', complianceProfile: { dataRetentionDays: 1 } })
    await engine.startWorker()
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow('once')
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
    await owner.query(`BEGIN; SET LOCAL session_replication_role = replica;
      UPDATE equilateral.workflows SET created_at = now() - interval '3 days', completed_at = now() - interval '2 days';
      COMMIT`)
    // The hourly schedule's job, due now (the cron would send it at minute 17).
    await ensureRetentionQueue(engine.boss)
    await engine.boss.send(RETENTION_QUEUE, {})

    const worker = start(['worker', '--registry', 'test/fixtures/agent-pool-registry.ts'], {
      DATABASE_URL: db.appUrl,
      MAINTENANCE_DATABASE_URL: db.maintenanceUrl,
      // Without the owner's login, the tenant context secret `migrate` stored (the template's).
      TENANT_CONTEXT_SECRET: TEST_TENANT_CONTEXT_SECRET,
    })
    expect(worker.child.spawnargs.join(' ')).not.toContain(db.url)
    const purged = await until('the retention purge', () => {
      if (worker.child.exitCode !== null) throw new Error(`worker exited:\n${worker.out.stderr}`)
      return logLines(worker.out.stdout).find((l) => l.msg === 'retention purge')
    })
    expect(purged).toMatchObject({ workflows: 1, tasks: 1, tenants: 1, complete: true })
    expect(
      logLines(worker.out.stdout).filter((l) => l.msg.startsWith('retention purge not scheduled')),
    ).toEqual([])
    const { rows } = await owner.query(
      `SELECT (SELECT count(*) FROM equilateral.workflows WHERE id = $1)::int AS left,
         (SELECT count(*) FROM equilateral.compliance_events WHERE event_type = 'purge' AND agent_id = 'eq/retention')::int AS records`,
      [id],
    )
    expect(rows).toEqual([{ left: 0, records: 1 }])
  })

  it('runs `retention purge` and `erase` as one-off commands with the same two logins', async () => {
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow('once', null, { subjectKey: 'alice' })
    expect((await settled(engine, 'acme', id)).status).toBe('completed')
    const env = {
      DATABASE_URL: db.appUrl,
      MAINTENANCE_DATABASE_URL: db.maintenanceUrl,
      TENANT_CONTEXT_SECRET: TEST_TENANT_CONTEXT_SECRET,
    }
    const purge = await run(['retention', 'purge'], env)
    expect(purge.code, purge.stderr).toBe(0)
    expect(JSON.parse(purge.stdout)).toMatchObject({ tenants: 1, complete: true, problems: [] })
    const erased = await run(['erase', '--tenant', 'acme', '--subject', 'alice'], env)
    expect(erased.code, erased.stderr).toBe(0)
    expect(JSON.parse(erased.stdout)).toMatchObject({ tenantId: 'acme', workflows: 1, events: 1 })
    const { rows } = await owner.query(`SELECT subject_key FROM equilateral.workflows WHERE id = $1`, [id])
    expect(rows).toEqual([{ subject_key: null }])
  })
})
