// An engine on a fresh test database, with quiet logs and fast timers, torn down after the file.
import { type Logger, pino } from 'pino'
import { afterAll } from 'vitest'
import type { Config } from '../../src/config.ts'
import type { AgentDefinition, WorkflowDefinition } from '../../src/core/definition.ts'
import { createEngine, type Engine } from '../../src/engine.ts'
import type { FetchedJob } from '../../src/flow/claim.ts'
import { queueName, type TaskJobData } from '../../src/queue/boss.ts'
import { TEST_ENGINE_CONFIG } from '../../src/testing.ts'
import { createTestDatabase, pgContext, type TestDatabase } from './db.ts'
import { untilSettled } from './progress.ts'

export interface TestEngine {
  engine: Engine
  db: TestDatabase
}

export async function testEngine(options: {
  agents: readonly AgentDefinition<any, any>[]
  workflows: readonly WorkflowDefinition<any>[]
  config?: Partial<Config>
  /** Default: silent (or TEST_LOG_LEVEL). */
  log?: Logger
  /** The run-time URL the engine gets, from the database's application login URL (a pooler's). */
  runtimeUrl?: (appUrl: string) => string
}): Promise<TestEngine> {
  const db = await createTestDatabase()
  const engine = await createEngine({
    connectionString: options.runtimeUrl ? options.runtimeUrl(db.appUrl) : db.appUrl,
    adminConnectionString: db.url,
    agents: options.agents,
    workflows: options.workflows,
    log: options.log ?? pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
    supervise: false,
    config: {
      ...TEST_ENGINE_CONFIG,
      // database-per-tenant: tenant databases are named like the run's own, so teardown drops them.
      tenantDatabasePrefix: tenantDatabasePrefix(),
      ...options.config,
    },
  })
  afterAll(async () => {
    await engine.close()
    await db.drop()
  })
  return { engine, db }
}

/** Polls until `check` returns a value (not undefined) or the time runs out. */
export async function eventually<T>(
  check: () => T | undefined | Promise<T | undefined>,
  timeoutMs = 20_000,
  everyMs = 25,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`)
    await new Promise((r) => setTimeout(r, everyMs))
  }
}

/**
 * Waits until the workflow reaches a terminal status and returns its view; fails when none of its
 * tasks has moved (status or attempt) for `stallMs`, however long the workflow has run.
 */
export async function settled(engine: Engine, tenantId: string, workflowId: string, stallMs = 20_000) {
  const tenant = await engine.tenant(tenantId)
  let view: Awaited<ReturnType<typeof tenant.getWorkflow>> | undefined
  await untilSettled(
    `workflow ${workflowId} to end`,
    async () => {
      const wf = await tenant.getWorkflow(workflowId)
      view = wf
      return {
        done: wf.status !== 'running',
        progress: wf.tasks.map((t) => [t.key, t.status, t.attempt]),
        state: `tasks ${wf.tasks.map((t) => `${t.key} ${t.status}`).join(', ')}`,
      }
    },
    { stallMs, everyMs: 25 },
  )
  return view as NonNullable<typeof view>
}

/** database-per-tenant in tests: tenant database names start with the run's prefix (dropped at teardown). */
export function tenantDatabasePrefix(): string {
  return `${pgContext().prefix}t_`
}

/**
 * Fetches the next job of `agentId`'s queue by hand, as a worker's fetch would, for a test that
 * then claims or completes its task itself (no worker serves the agent): the FetchedJob the claim
 * and completion take.
 */
export async function fetchJob(engine: Engine, agentId: string, workflowId: string): Promise<FetchedJob> {
  const queue = queueName(agentId)
  const [job] = await engine.boss.fetch<TaskJobData>(queue)
  if (!job) throw new Error(`no job in ${queue}`)
  return {
    queue,
    jobId: job.id,
    retryCount: job.retryCount,
    taskId: job.data.k,
    workflowId,
    attempt: job.data.a,
  }
}
