// The README's library example, whole: two agents, a workflow, an engine on a real PostgreSQL
// (DATABASE_URL, or an embedded one started here), migrations, a tenant, a worker, one workflow
// started and its result awaited and printed. Run it with `npm install && npm start` in this folder
// (Node.js >= 22.18 runs TypeScript as it is); test/process/quickstart.test.ts runs it in CI.
import {
  createEngine,
  defineAgent,
  defineWorkflow,
  PermanentError,
  provisionDatabase,
  type Engine,
  type TenantHandle,
  type WorkflowView,
} from 'equilateral-agents'

const reviewer = defineAgent<{ source: string }>({
  id: 'security-reviewer',
  taskTypes: ['security_scan'],
  handler: async (ctx) => {
    ctx.log.info('scanning') // child logger bound to tenant, workflow, task, attempt, correlation ids
    return { findings: ctx.data.source.includes('eval(') ? ['eval'] : [] }
  },
})
const deployer = defineAgent({
  id: 'deployer',
  handler: async (ctx) => {
    const review = ctx.results.security as { findings: string[] } | undefined // results of the tasks this one depends on
    if (!review) throw new PermanentError('no review') // never retried
    if (review.findings.length > 0) throw new PermanentError(`refused: ${review.findings.join(', ')}`)
    // `<task id>:<attempt>`: give it to your own side effects, an attempt can run again after a crash
    return { deployed: true, idempotencyKey: ctx.idempotencyKey }
  },
})
const deployFeature = defineWorkflow<{ source: string }>({
  name: 'deploy-feature',
  version: 1,
  tasks: [
    { key: 'security', agent: reviewer, data: (input) => ({ source: input.source }) },
    { key: 'deploy', agent: deployer, dependsOn: ['security'], maxAttempts: 5, timeoutMs: 60_000 },
  ],
})

// DATABASE_URL, or an embedded PostgreSQL (its data in EQUILATERAL_DATA_DIR, kept across runs).
const db = await provisionDatabase()
// migrate: true migrates the database first (a single-process app; a fleet runs `equilateral migrate`).
const engine = await createEngine({
  connectionString: db.url,
  agents: [reviewer, deployer],
  workflows: [deployFeature],
  migrate: true,
})
try {
  const acme = await tenant(engine, 'acme')
  await engine.startWorker() // in worker processes; here, in this one
  // The same idempotency key returns the same workflow: run this file twice, one workflow.
  const { id } = await acme.startWorkflow(
    'deploy-feature',
    { source: 'export const x = 1' },
    { idempotencyKey: 'order-42' },
  )
  const done = await workflowResult(acme, id)
  console.log(`deploy-feature ${done.status}: ${JSON.stringify(done.output)}`)
} finally {
  await engine.close()
  await db.stop()
}

/** The tenant's handle, creating the tenant on the first run (its API key is printed once). */
async function tenant(engine: Engine, id: string): Promise<TenantHandle> {
  try {
    const created = await engine.createTenant({ id })
    console.log(`tenant ${id} created; its API key (shown once): ${created.apiKey}`)
  } catch (error) {
    if ((error as { code?: string }).code !== 'tenant_exists') throw error
  }
  return engine.tenant(id)
}

/**
 * Waits for the workflow to end: its view when it completed, an Error with its failure otherwise.
 * It reads the workflow every 100 ms; an awaited result woken by the database (`acme.result(id)`)
 * is on its way and will replace this helper.
 */
async function workflowResult(acme: TenantHandle, id: string): Promise<WorkflowView> {
  for (;;) {
    const wf = await acme.getWorkflow(id)
    if (wf.status === 'completed') return wf
    if (wf.status !== 'running') throw new Error(`workflow ${id} ${wf.status}: ${JSON.stringify(wf.error)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
