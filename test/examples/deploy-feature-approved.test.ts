// The approval-gated deploy-feature example, tested with the test kit the way a user would test
// their own workflows: approve -> deploys; reject -> fails with the approver's reason; nobody
// decides within the day -> fails, with a day of waiting passed in a moment by kit.advance().
import { readFileSync } from 'node:fs'
import { afterAll, describe, expect, it } from 'vitest'
import type { Json } from '../../src/index.ts'
import { createTestKit } from '../../src/testing.ts'
import { agents, workflows } from '../../workers/registry.ts'
import { createTestDatabase } from '../helpers/db.ts'

const input = JSON.parse(
  readFileSync(new URL('../../examples/deploy-feature.json', import.meta.url), 'utf8'),
) as Json

const db = await createTestDatabase()
const kit = await createTestKit({ databaseUrl: db.url, agents, workflows })
afterAll(async () => {
  await kit.close()
  await db.drop()
})

const HOUR = 3_600_000

describe('deploy-feature-approved', () => {
  it('deploys once the release manager approves', async () => {
    const { id } = await kit.start('deploy-feature-approved', input)
    // The scan and the tests ran; the deploy waits for the decision.
    const waiting = await kit.waitFor(id, { taskWaiting: 'release' })
    expect(waiting.tasks.find((t) => t.key === 'deploy')?.status).toBe('pending')

    const decided = await kit.approve(id, 'release', { approver: 'ana', comment: 'scan and tests are clean' })
    expect(decided).toMatchObject({ status: 'consumed', taskStatus: 'completed' })

    const wf = await kit.waitFor(id, { status: 'completed' })
    expect(wf.output['deploy']).toMatchObject({ service: 'storefront-text', environment: 'staging' })
    expect(wf.tasks.find((t) => t.key === 'release')?.result).toEqual({
      approved: true,
      approver: 'ana',
      comment: 'scan and tests are clean',
    })

    const audit = await kit.audit(id)
    audit.expectSequence([
      'workflow_started',
      'task_completed:security',
      'task_waiting:release',
      'approval_decided',
      'task_completed:release',
      'task_started:deploy',
      'task_completed:deploy',
      'workflow_completed',
    ])
    expect(audit.expectExactlyOnce('approval_decided')).toMatchObject({
      actor: 'ana',
      data: { name: 'release', approved: true },
    })
    expect(audit.count('task_completed', 'deploy')).toBe(1)
    await kit.verifyAuditChain()
  })

  it('fails with the approver’s reason on a rejection, and never deploys', async () => {
    const { id } = await kit.start('deploy-feature-approved', input)
    await kit.waitFor(id, { taskWaiting: 'release' })
    await kit.reject(id, 'release', { approver: 'cto', comment: 'code freeze' })

    const wf = await kit.waitFor(id, { status: 'failed' })
    expect(wf.error).toMatchObject({
      error: { code: 'approval_rejected', message: 'approval "release" rejected by cto: code freeze' },
    })
    expect(wf.tasks.find((t) => t.key === 'deploy')?.status).toBe('skipped')

    const audit = await kit.audit(id)
    audit.expectSequence([
      'approval_decided',
      'task_failed:release',
      'workflow_failed',
      'task_skipped:deploy',
    ])
    expect(audit.expectExactlyOnce('approval_decided').actor).toBe('cto')
    expect(audit.count('task_started', 'deploy')).toBe(0)
  })

  it('fails when nobody decides within the day: not a moment before', async () => {
    const { id } = await kit.start('deploy-feature-approved', input)
    await kit.waitFor(id, { taskWaiting: 'release' })
    const [timer] = await kit.pendingTimers(id)
    expect(timer).toMatchObject({ taskKey: 'release', kind: 'wait-timeout' })
    expect(timer?.dueInMs).toBeGreaterThan(23 * HOUR)
    expect(timer?.dueInMs).toBeLessThanOrEqual(24 * HOUR)

    // 23 hours on: still waiting, and a decision would still be taken.
    expect(await kit.advance(23 * HOUR)).toEqual({ fired: 0, pending: 1 })
    const meanwhile = await kit.get(id)
    expect(meanwhile.status).toBe('running')
    expect(meanwhile.tasks.find((t) => t.key === 'release')?.status).toBe('waiting')

    // The 24th hour: the approval times out and fails the workflow (its declared outcome).
    expect(await kit.advance(HOUR)).toEqual({ fired: 1, pending: 0 })
    const wf = await kit.waitFor(id, { status: 'failed' })
    expect(wf.error).toMatchObject({
      error: { name: 'WaitTimedOut', message: 'approval "release" got no decision within 86400000 ms' },
    })
    const audit = await kit.audit(id)
    audit.expectSequence(['task_waiting:release', 'task_wait_timed_out:release', 'workflow_failed'])
    expect(audit.count('approval_decided')).toBe(0)
    await expect(kit.approve(id, 'release')).rejects.toMatchObject({ code: 'workflow_not_running' })
  })
})
