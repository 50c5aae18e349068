// Versions in flight: engines on one database stand for deployments. A run keeps the workflow
// version and the agent versions it started with; a worker without a task's agent version leaves
// it (audited once) for a worker that has it, and past AGENT_VERSION_WAIT_MS the task fails for good
// with AgentVersionUnavailable, its workflow with it.
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import type { Config } from '../../src/config.ts'
import {
  type AgentDefinition,
  createEngine,
  DefinitionError,
  defineAgent,
  defineWorkflow,
  type Engine,
  type Json,
  UnknownWorkflowTypeError,
  UnknownWorkflowVersionError,
  type WorkflowDefinition,
} from '../../src/index.ts'
import { queryOnce } from '../helpers/db.ts'
import { eventually, settled, testEngine } from '../helpers/engine.ts'

/** Opens once; step-b v1 waits on it (its first attempt is released by a deploy). */
let openGate!: () => void
const gate = new Promise<void>((resolve) => (openGate = resolve))
let stepBv1Started!: () => void
const stepBv1Running = new Promise<void>((resolve) => (stepBv1Started = resolve))

const ran = (ctx: { agentVersion: number; taskKey: string }) => ({
  task: ctx.taskKey,
  agentVersion: ctx.agentVersion,
})
const stepA1 = defineAgent({ id: 'step-a', version: 1, handler: async (ctx) => ran(ctx) })
const stepB1 = defineAgent({
  id: 'step-b',
  version: 1,
  handler: async (ctx) => {
    stepBv1Started()
    await gate
    return { ...ran(ctx), from: ctx.results as Json }
  },
})
const stepA2 = defineAgent({ id: 'step-a', version: 2, handler: async (ctx) => ran(ctx) })
const stepB2 = defineAgent({
  id: 'step-b',
  version: 2,
  handler: async (ctx) => ({ ...ran(ctx), from: ctx.results as Json }),
})

const releaseV1 = defineWorkflow({
  name: 'release',
  version: 1,
  tasks: [
    { key: 'a', agent: stepA1 },
    { key: 'b', agent: stepB1, dependsOn: ['a'] },
  ],
})
// v2 changes the DAG too: runs started on v1 keep their two tasks.
const releaseV2 = defineWorkflow({
  name: 'release',
  version: 2,
  tasks: [
    { key: 'a', agent: stepA2 },
    { key: 'b', agent: stepB2, dependsOn: ['a'] },
    { key: 'notify', agent: stepA2, dependsOn: ['b'] },
  ],
})
// An agent named by id: any version, the worker's highest.
const anyVersion = defineWorkflow({ name: 'any-version', tasks: [{ key: 'a', agent: 'step-a' }] })

const quiet = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' })
const fast: Partial<Config> = {
  pollIntervalMs: 100,
  heartbeatIntervalMs: 200,
  staleAfterMs: 2000,
  shutdownGraceMs: 100,
  agentVersionRetryMs: 50,
  agentVersionWaitMs: 60_000,
}

// The first deployment: v1 of everything.
const { engine: v1, db } = await testEngine({
  agents: [stepA1, stepB1],
  workflows: [releaseV1],
  config: fast,
})
await v1.createTenant({ id: 'acme' })

/** Another deployment on the same database, closed after the file. */
async function deploy(
  agents: AgentDefinition<any, any>[],
  workflows: WorkflowDefinition<any>[],
  config: Partial<Config> = {},
): Promise<Engine> {
  const engine = await createEngine({
    connectionString: db.appUrl,
    adminConnectionString: db.url,
    agents,
    workflows,
    log: quiet,
    supervise: false,
    config: { ...fast, ...config },
  })
  afterAll(() => engine.close())
  return engine
}

async function audit(workflowId: string, action: string) {
  return queryOnce<{ task_key: string | null; data: any }>(
    db.url,
    `SELECT t.task_key, a.action_data AS data
     FROM equilateral.agent_audit_log a LEFT JOIN equilateral.agent_coordination t ON t.id = a.task_id
     WHERE a.workflow_id = $1 AND a.action_type = $2 ORDER BY a.id`,
    [workflowId, action],
  )
}

async function taskRow(workflowId: string, key: string) {
  const [row] = await queryOnce<{ attempt: number; failures: number; status: string; unserved: boolean }>(
    db.url,
    `SELECT attempt, failures, status, unserved_since IS NOT NULL AS unserved
     FROM equilateral.agent_coordination WHERE workflow_id = $1 AND task_key = $2`,
    [workflowId, key],
  )
  return row as NonNullable<typeof row>
}

describe('versions in flight', () => {
  it('a run started on v1 finishes on v1 after v2 is deployed; new runs run v2', async () => {
    const acme = await v1.tenant('acme')
    const oldWorker = await v1.startWorker()
    const old = await acme.startWorkflow('release', { change: 'old' })
    await stepBv1Running

    // Deploy v2: workers with only v2 come up, the v1 worker goes away mid-task (its task released).
    const v2only = await deploy([stepA2, stepB2], [releaseV2])
    const v2Worker = await v2only.startWorker()
    await oldWorker.stop()

    // The v2-only worker fetches step-b v1 and leaves it, again and again, audited once.
    await eventually(async () => ((await taskRow(old.id, 'b')).attempt >= 5 ? true : undefined))
    const left = await audit(old.id, 'task_left')
    expect(left).toEqual([
      {
        task_key: 'b',
        data: {
          attempt: 3,
          reason: 'needs agent "step-b" version 1; this worker has version 2',
          startAfter: expect.any(String),
        },
      },
    ])
    expect(await taskRow(old.id, 'b')).toMatchObject({ status: 'queued', failures: 0, unserved: true })
    expect((await acme.getWorkflow(old.id)).status).toBe('running')

    // A run started after the deploy is v2 end to end (started through the v2 deployment).
    const v2acme = await v2only.tenant('acme')
    const fresh = await v2acme.startWorkflow('release', { change: 'new' })
    const freshView = await settled(v2only, 'acme', fresh.id)
    expect(freshView).toMatchObject({ status: 'completed', version: 2 })
    expect(freshView.tasks.map((t) => [t.key, t.agentVersion, t.status])).toEqual([
      ['a', 2, 'completed'],
      ['b', 2, 'completed'],
      ['notify', 2, 'completed'],
    ])
    expect(freshView.output).toEqual({ notify: { task: 'notify', agentVersion: 2 } })

    // Workers with both versions come up: the old run finishes on v1.
    openGate()
    const both = await deploy([stepA1, stepB1, stepA2, stepB2], [releaseV1, releaseV2, anyVersion])
    const bothWorker = await both.startWorker()
    const oldView = await settled(v1, 'acme', old.id)
    expect(oldView).toMatchObject({ status: 'completed', version: 1 })
    expect(oldView.tasks.map((t) => [t.key, t.agentVersion, t.status])).toEqual([
      ['a', 1, 'completed'],
      ['b', 1, 'completed'],
    ])
    expect(oldView.output).toEqual({
      b: { task: 'b', agentVersion: 1, from: { a: { task: 'a', agentVersion: 1 } } },
    })
    expect(await taskRow(old.id, 'b')).toMatchObject({ failures: 0, unserved: false })
    // Only the first leave is audited; the start names the version that ran.
    expect(await audit(old.id, 'task_left')).toHaveLength(1)
    expect((await audit(old.id, 'task_started')).at(-1)).toMatchObject({
      task_key: 'b',
      data: { agentVersion: 1 },
    })

    // The v2-only workers go too; a worker with both versions serves every run without leaving any.
    await v2Worker.stop()
    // A task naming its agent by id runs the worker's highest version; a pinned start runs v1.
    const bothAcme = await both.tenant('acme')
    const any = await bothAcme.startWorkflow('any-version')
    expect((await settled(both, 'acme', any.id)).tasks[0]).toMatchObject({
      agentVersion: null,
      result: { task: 'a', agentVersion: 2 },
    })
    const pinned = await bothAcme.startWorkflow('release', { change: 'pinned' }, { version: 1 })
    const pinnedView = await settled(both, 'acme', pinned.id)
    expect(pinnedView).toMatchObject({ status: 'completed', version: 1 })
    expect(pinnedView.tasks.map((t) => t.agentVersion)).toEqual([1, 1])
    expect(await audit(pinned.id, 'task_left')).toEqual([])
    await bothWorker.stop()
  })

  it('with no worker having the version, the task fails after AGENT_VERSION_WAIT_MS and its workflow with it', async () => {
    // Started on the deployment that knows v1, but only v2-only workers are left.
    const acme = await v1.tenant('acme')
    const orphan = await acme.startWorkflow('release', { change: 'orphan' })
    const v2only = await deploy([stepA2, stepB2], [releaseV2], { agentVersionWaitMs: 300 })
    const worker = await v2only.startWorker()
    const view = await settled(v1, 'acme', orphan.id)
    await worker.stop()

    const failure = {
      name: 'AgentVersionUnavailable',
      code: 'agent_version_unavailable',
      message: 'no worker had agent "step-a" version 1 for 300 ms',
    }
    expect(view.status).toBe('failed')
    expect(view.error).toMatchObject({ agent: 'step-a', error: failure })
    expect(view.tasks.map((t) => [t.key, t.status])).toEqual([
      ['a', 'failed'],
      ['b', 'skipped'],
    ])
    expect(view.tasks[0]?.error).toEqual(failure)
    expect(view.tasks[0]?.startedAt).toBeNull()
    // Left once (audited), then failed for good; never started.
    expect(await audit(orphan.id, 'task_left')).toHaveLength(1)
    expect(await audit(orphan.id, 'task_started')).toEqual([])
    expect((await audit(orphan.id, 'task_failed_attempt')).map((r) => r.data.error)).toEqual([failure])
    expect(await audit(orphan.id, 'task_failed')).toHaveLength(1)
    expect(await audit(orphan.id, 'workflow_failed')).toHaveLength(1)
    // The dead-letter queue records it, as any task failed for good.
    const dead = await queryOnce(
      db.url,
      `SELECT data FROM pgboss.job WHERE name = 'eq/dead-letter' AND data->>'w' = $1`,
      [orphan.id],
    )
    expect(dead.map((d) => d.data.error)).toEqual([failure])
    // The metrics count it as any task failed for good.
    const count = async (metric: { get(): Promise<{ values: { labels: object; value: number }[] }> }) =>
      (await metric.get()).values
        .filter((v) => (v.labels as { agent?: string }).agent === 'step-a' && v.value > 0)
        .map((v) => ({ labels: v.labels, value: v.value }))
    expect(await count(v2only.metrics.tasksFinished)).toEqual([
      { labels: { agent: 'step-a', outcome: 'failed' }, value: 1 },
    ])
    expect(await count(v2only.metrics.deadLettered)).toEqual([{ labels: { agent: 'step-a' }, value: 1 }])
  })
})

describe('registering versions', () => {
  it('keeps every version of a workflow type: the latest starts by default, a version can be pinned', async () => {
    const both = await deploy([stepA1, stepB1, stepA2, stepB2], [releaseV2, releaseV1])
    expect(both.workflow('release')).toBe(releaseV2)
    expect(both.workflow('release', 1)).toBe(releaseV1)
    expect(both.workflowVersions('release')).toEqual([1, 2])
    expect(both.workflowTypes).toEqual(['release'])
    expect(() => both.workflow('nope', 1)).toThrow(UnknownWorkflowTypeError)
  })

  it('refuses an unknown pinned version with a typed error, writing nothing', async () => {
    const acme = await v1.tenant('acme')
    const before = await queryOnce(db.url, 'SELECT count(*)::int AS n FROM equilateral.workflows')
    const refused = acme.startWorkflow('release', null, { version: 3 })
    await expect(refused).rejects.toBeInstanceOf(UnknownWorkflowVersionError)
    await expect(refused).rejects.toMatchObject({
      code: 'unknown_workflow_version',
      message: 'workflow type "release" has no version 3 (registered: 1)',
    })
    expect(await queryOnce(db.url, 'SELECT count(*)::int AS n FROM equilateral.workflows')).toEqual(before)
  })

  it('refuses two definitions of one (agent id, version) and of one (workflow, version)', async () => {
    const twin = defineAgent({ id: 'step-a', version: 1, handler: async () => null })
    await expect(
      createEngine({ connectionString: db.appUrl, agents: [stepA1, twin], log: quiet, supervise: false }),
    ).rejects.toThrow(new DefinitionError('agent "step-a" version 1 is registered twice', 'step-a'))
    await expect(v1.startWorker({ agents: [stepA1, twin] })).rejects.toBeInstanceOf(DefinitionError)

    const rewritten = defineWorkflow({ name: 'release', version: 1, tasks: [{ key: 'a', agent: stepA1 }] })
    expect(() => v1.registerWorkflow(rewritten)).toThrow('workflow "release" version 1 is registered twice')
    // The same definition again changes nothing.
    v1.registerWorkflow(releaseV1)
    expect(v1.workflow('release')).toBe(releaseV1)
  })

  it('refuses a workflow whose tasks need an agent version that is not registered', () => {
    const needsV2 = defineWorkflow({ name: 'needs-v2', tasks: [{ key: 'a', agent: stepA2 }] })
    expect(() => v1.registerWorkflow(needsV2)).toThrow(DefinitionError)
    expect(() => v1.registerWorkflow(needsV2)).toThrow(
      'workflow "needs-v2" version 1: task "a" uses agent "step-a" version 2, which is not registered (registered: 1)',
    )
    expect(() => v1.workflow('needs-v2')).toThrow(UnknownWorkflowTypeError)
  })
})
