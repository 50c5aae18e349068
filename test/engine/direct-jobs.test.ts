// Our statements write the task jobs pg-boss's API would (src/queue/direct.ts). These tests hold
// the two to the same rows, column by column, so an upgrade of pg-boss that changes what a job is
// fails here rather than in production; and they run workflows through the API path too, which a
// database with another pg-boss schema version takes.
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { completeJobsTx, createBoss, insertJobsTx, queueName, type ReadyJob } from '../../src/queue/boss.ts'
import {
  DIRECT_JOBS_SCHEMA_VERSION,
  disableDirectJobs,
  enableDirectJobs,
  usesDirectJobs,
} from '../../src/queue/direct.ts'
import { clientDb, withTenantTx } from '../../src/db/tx.ts'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'
import { settled, testEngine } from '../helpers/engine.ts'

const manual = defineAgent({ id: 'manual', handler: async () => null })
const step = defineAgent({ id: 'step', handler: async (ctx) => ({ key: ctx.taskKey }) })
const diamond = defineWorkflow({
  name: 'diamond',
  tasks: [
    { key: 'a', agent: step },
    { key: 'b', agent: step, dependsOn: ['a'] },
    { key: 'c', agent: step, dependsOn: ['a'] },
    { key: 'd', agent: step, dependsOn: ['b', 'c'] },
  ],
})
const single = defineWorkflow({ name: 'single', tasks: [{ key: 'a', agent: manual }] })

const { engine, db } = await testEngine({ agents: [manual, step], workflows: [diamond, single] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')

// A second pg-boss on the same database, which never takes our statements: the API's rows.
const viaApi = createBoss({ connectionString: db.appUrl, supervise: false, schedule: false })
await viaApi.start()
afterAll(() => viaApi.stop({ graceful: false }))

/** Every column of the jobs, minus what differs by nature (ids, and times taken at insert). */
async function jobRows(ids: string[]) {
  const rows = await queryOnce(
    db.url,
    `SELECT to_jsonb(j) - 'id' - 'data' - 'created_on' - 'start_after' - 'keep_until' - 'completed_on'
         - 'started_on' AS job,
       j.data - 'k' AS data, keep_until - start_after AS kept_for,
       start_after > now() + interval '1 minute' AS later, completed_on IS NOT NULL AS has_completed_on
     FROM pgboss.job j WHERE id = ANY($1::uuid[]) ORDER BY array_position($1::uuid[], id)`,
    [ids],
  )
  return rows.map(({ job, ...rest }) => ({ ...job, ...rest }))
}

function readyJob(queue: string, overrides: Partial<ReadyJob> = {}): ReadyJob {
  return {
    queue,
    jobId: randomUUID(),
    workflowId: '00000000-0000-4000-8000-000000000001',
    taskId: randomUUID(),
    attempt: 2,
    timeoutMs: 90_500,
    ...overrides,
  }
}

describe('the jobs our statements write', () => {
  it('are the rows pg-boss writes for the same jobs, and complete the same way', async () => {
    expect(usesDirectJobs(engine.boss)).toBe(true)
    const later = '2099-01-01T00:00:00.000Z'
    const shapes: Partial<ReadyJob>[] = [
      {},
      { startAfter: later },
      { queue: queueName('@approval'), timeout: true },
    ]
    const ours: ReadyJob[] = []
    const theirs: ReadyJob[] = []
    for (const shape of shapes) {
      ours.push(readyJob(queueName('manual'), shape))
      theirs.push(readyJob(queueName('manual'), shape))
    }
    await withTenantTx(engine.pool, acme.scope, async (tx) => {
      await insertJobsTx({ db: tx, boss: engine.boss, scope: acme.scope }, ours)
      await insertJobsTx({ db: tx, boss: viaApi, scope: acme.scope }, theirs)
    })
    expect(await jobRows(ours.map((j) => j.jobId))).toEqual(await jobRows(theirs.map((j) => j.jobId)))

    // Fetched (by pg-boss, as the worker does), then completed: one fenced on a stale attempt.
    const fetched = await engine.boss.fetch(queueName('manual'), { batchSize: 10 })
    const byId = new Map(fetched.map((j) => [j.id, j]))
    const [mine, yours] = [ours[0], theirs[0]].map((j) => byId.get(j?.jobId ?? ''))
    if (!mine || !yours) throw new Error('the first jobs were not fetched')
    await withTenantTx(engine.pool, acme.scope, async (tx) => {
      await completeJobsTx({ db: tx, boss: engine.boss }, [
        { queue: mine.name, jobId: mine.id, retryCount: mine.retryCount },
      ])
      await completeJobsTx({ db: tx, boss: viaApi }, [
        { queue: yours.name, jobId: yours.id, retryCount: yours.retryCount },
      ])
      await completeJobsTx({ db: tx, boss: engine.boss }, [
        { queue: mine.name, jobId: mine.id, retryCount: mine.retryCount + 1 },
      ])
    })
    const [a, b] = [await jobRows([mine.id]), await jobRows([yours.id])]
    expect(a).toEqual(b)
    expect(a[0]).toMatchObject({ state: 'completed', has_completed_on: true, output: null })
  })

  it('run a workflow to the end with every job completed', async () => {
    const worker = await engine.startWorker({ agents: [step] })
    try {
      const { id } = await acme.startWorkflow('diamond')
      expect((await settled(engine, 'acme', id)).status).toBe('completed')
      const jobs = await engine.boss.findJobs(queueName('step'), { data: { w: id } })
      // The root's job at least (local continuation runs some tasks without one).
      expect(jobs.length).toBeGreaterThan(0)
      expect(jobs.every((j) => j.state === 'completed')).toBe(true)
    } finally {
      await worker.stop()
    }
  })

  it('leave a job of another attempt active', async () => {
    const job = readyJob(queueName('manual'))
    await withTenantTx(engine.pool, acme.scope, (tx) =>
      insertJobsTx({ db: tx, boss: engine.boss, scope: acme.scope }, [job]),
    )
    const [fetched] = (await engine.boss.fetch(queueName('manual'), { batchSize: 10 })).filter(
      (j) => j.id === job.jobId,
    )
    if (!fetched) throw new Error('not fetched')
    await withTenantTx(engine.pool, acme.scope, (tx) =>
      completeJobsTx({ db: tx, boss: engine.boss }, [
        { queue: fetched.name, jobId: fetched.id, retryCount: fetched.retryCount + 1 },
      ]),
    )
    expect((await jobRows([job.jobId]))[0]).toMatchObject({ state: 'active', has_completed_on: false })
  })
})

describe('a pg-boss schema other than the one our statements were written for', () => {
  it('is left to pg-boss: the engine does not write its jobs', async () => {
    const other = await createTestDatabase()
    const client = new pg.Client({ connectionString: other.url })
    await client.connect()
    try {
      const boss = createBoss({ connectionString: other.url, supervise: false, schedule: false })
      const queues = [queueName('manual')]
      await boss.start()
      await boss.createQueue(queues[0] as string, { retryLimit: 0 })
      expect(await enableDirectJobs(boss, clientDb(client), queues)).toBe(true)
      await client.query('UPDATE pgboss.version SET version = $1', [DIRECT_JOBS_SCHEMA_VERSION + 1])
      expect(await enableDirectJobs(boss, clientDb(client), queues)).toBe(false)
      expect(usesDirectJobs(boss)).toBe(false)
      await boss.stop({ graceful: false })
    } finally {
      await client.end()
      await other.drop()
    }
  })

  it('runs workflows through pg-boss API as before', async () => {
    disableDirectJobs(engine.boss)
    const worker = await engine.startWorker({ agents: [step] })
    try {
      const { id } = await acme.startWorkflow('diamond')
      const view = await settled(engine, 'acme', id)
      expect(view.status).toBe('completed')
      const jobs = await engine.boss.findJobs(queueName('step'), { data: { w: id } })
      // Every job the run had (local continuation takes some without one) was completed.
      expect(jobs.length).toBeGreaterThan(0)
      expect(jobs.every((j) => j.state === 'completed')).toBe(true)
    } finally {
      await worker.stop()
    }
  })
})
