// A retry racing the failure that ends its workflow. Two transactions, interleaved by hand: one
// puts task X back in the queue for another attempt (its agent failed, or its worker was lost),
// the other fails sibling Y for good and with it the workflow. Whichever goes first, X must not be
// left queued in a failed workflow, where nothing would ever claim it or end it.
import { describe, expect, it } from 'vitest'
import { defineAgent, defineWorkflow } from '../../src/index.ts'
import { withTenantTx } from '../../src/db/tx.ts'
import { type AttemptFailure, failAttemptTx } from '../../src/flow/fail.ts'
import { requeueTasksTx } from '../../src/flow/requeue.ts'
import { queryOnce } from '../helpers/db.ts'
import { testEngine } from '../helpers/engine.ts'

const idle = defineAgent({ id: 'idle', handler: async () => null })
const pair = defineWorkflow({
  name: 'pair',
  tasks: [
    { key: 'x', agent: idle, maxAttempts: 3 },
    { key: 'y', agent: idle, maxAttempts: 1 },
  ],
})

const { engine, db } = await testEngine({ agents: [idle], workflows: [pair] })
await engine.createTenant({ id: 'acme' })
const acme = await engine.tenant('acme')
const scope = await engine.tenants.require('acme')
const store = await engine.storeOf(scope)

/** A workflow whose two tasks are running (as if claimed), and their failures as a worker would send them. */
async function running(): Promise<{ workflowId: string; x: AttemptFailure; y: AttemptFailure }> {
  const { id } = await acme.startWorkflow('pair', null)
  const rows = await queryOnce(
    db.url,
    `UPDATE equilateral.agent_coordination SET status = 'running', started_at = now(), heartbeat_at = now()
     WHERE workflow_id = $1 RETURNING id, task_key, queue, attempt, failures, max_attempts`,
    [id],
  )
  const failure = (key: string, permanent: boolean): AttemptFailure => {
    const r = rows.find((t) => t.task_key === key) as Record<string, any>
    return {
      taskId: r.id,
      workflowId: id,
      queue: r.queue,
      agentId: 'idle',
      attempt: r.attempt,
      failures: r.failures,
      maxAttempts: r.max_attempts,
      backoffMs: 10,
      backoffMaxMs: 10,
      timeoutMs: 60_000,
      error: { name: 'Error', message: permanent ? 'for good' : 'once more' },
      permanent,
    }
  }
  return { workflowId: id, x: failure('x', false), y: failure('y', true) }
}

async function statuses(workflowId: string): Promise<Record<string, string>> {
  const [wf] = await queryOnce(db.url, 'SELECT status FROM equilateral.workflows WHERE id = $1', [workflowId])
  const tasks = await queryOnce(
    db.url,
    'SELECT task_key, status FROM equilateral.agent_coordination WHERE workflow_id = $1 ORDER BY task_key',
    [workflowId],
  )
  return { workflow: wf?.status, ...Object.fromEntries(tasks.map((t) => [t.task_key, t.status])) }
}

/** Runs `first` in a transaction held open until `second` (in its own) has started, then commits both. */
async function interleave(first: (tx: any) => Promise<unknown>, second: (tx: any) => Promise<unknown>) {
  let release!: () => void
  const held = new Promise<void>((r) => (release = r))
  let firstDone!: () => void
  const firstWritten = new Promise<void>((r) => (firstDone = r))
  const one = withTenantTx(store.pool, scope, async (tx) => {
    await first(tx)
    firstDone()
    await held
  })
  await firstWritten
  const two = withTenantTx(store.pool, scope, second)
  // Give the second transaction time to run as far as it can (it may wait on the first's locks).
  await new Promise((r) => setTimeout(r, 300))
  release()
  await Promise.all([one, two])
}

describe('a retry racing the failure of its workflow', () => {
  it('is skipped when the retry was written first', async () => {
    const { workflowId, x, y } = await running()
    await interleave(
      (tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, x),
      (tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, y),
    )
    expect(await statuses(workflowId)).toEqual({ workflow: 'failed', x: 'skipped', y: 'failed' })
  })

  it('fails for good when the workflow failed first', async () => {
    const { workflowId, x, y } = await running()
    await interleave(
      (tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, y),
      (tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, x),
    )
    expect(await statuses(workflowId)).toEqual({ workflow: 'failed', x: 'failed', y: 'failed' })
  })

  it('is skipped when a release put it back in the queue first, and not requeued after the failure', async () => {
    const release = (x: AttemptFailure) => (tx: any) =>
      requeueTasksTx(
        { db: tx, boss: store.boss, scope },
        [{ taskId: x.taskId, attempt: x.attempt, status: 'running', reason: 'shutdown' }],
        'task_released',
      )
    const a = await running()
    await interleave(release(a.x), (tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, a.y))
    expect(await statuses(a.workflowId)).toEqual({ workflow: 'failed', x: 'skipped', y: 'failed' })

    const b = await running()
    await interleave((tx) => failAttemptTx({ db: tx, boss: store.boss, scope }, b.y), release(b.x))
    expect(await statuses(b.workflowId)).toEqual({ workflow: 'failed', x: 'running', y: 'failed' })
  })
})
