// `equilateral event`, `approve` and `reject` as child processes on a test database, with a real
// worker process: an event delivered before its task waits (kept, its generated id printed) and
// resent (a duplicate, one audit row), an approval that lets deploy-feature-approved deploy, a
// rejection that fails it with the reason, and the refusals as one line with exit code 2.
import { describe, expect, it } from 'vitest'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'
import { childEnv, cliProcesses, messages, type Result, until } from './run.ts'

const db = await createTestDatabase()
const { run, start } = cliProcesses(
  childEnv({ DATABASE_URL: db.url, MIGRATION_DATABASE_URL: db.url, LOG_LEVEL: 'warn' }),
  () => db.drop(),
)
const REGISTRY = 'test/fixtures/waits-registry.ts'

function json(result: Result): any {
  expect(result.code, result.stderr).toBe(0)
  return JSON.parse(result.stdout)
}

/** A refusal: exit code 2, one line on stderr, nothing on stdout. */
function refused(result: Result): string {
  expect(result.code, result.stderr).toBe(2)
  expect(result.stdout).toBe('')
  const lines = messages(result.stderr)
  expect(lines).toHaveLength(1)
  return lines[0]!
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

async function startWorkflow(type: string, input?: string): Promise<string> {
  const started = json(
    await run([
      'workflow',
      'start',
      type,
      '--tenant',
      'acme',
      '--registry',
      REGISTRY,
      ...(input ? ['--input', input] : []),
    ]),
  )
  return started.id
}

async function taskStatus(workflowId: string, key: string): Promise<string | undefined> {
  const [row] = await queryOnce(
    db.url,
    'SELECT status FROM equilateral.agent_coordination WHERE workflow_id = $1 AND task_key = $2',
    [workflowId, key],
  )
  return row?.status
}

const waiting = (workflowId: string, key: string) =>
  until(`task ${key} of ${workflowId} waiting`, async () =>
    (await taskStatus(workflowId, key)) === 'waiting' ? true : undefined,
  )

async function ended(workflowId: string): Promise<any> {
  await until(`workflow ${workflowId} ended`, async () => {
    const [row] = await queryOnce(db.url, 'SELECT status FROM equilateral.workflows WHERE id = $1', [
      workflowId,
    ])
    return row?.status === 'running' ? undefined : true
  })
  return json(await run(['workflow', 'status', workflowId, '--tenant', 'acme']))
}

const history = async (workflowId: string): Promise<any[]> =>
  json(await run(['workflow', 'history', workflowId, '--tenant', 'acme']))

const tenants = await Promise.all([run(['tenant', 'create', 'acme']), run(['tenant', 'create', 'globex'])])
for (const t of tenants) json(t)
// Started before any worker runs: their waits cannot be waiting yet.
const [scanId, approvedId, rejectedId] = await Promise.all([
  startWorkflow('quick-scan'),
  startWorkflow('deploy-feature-approved', '@examples/deploy-feature.json'),
  startWorkflow('deploy-feature-approved', '@examples/deploy-feature.json'),
])

describe('equilateral event', () => {
  it('keeps an early event under a generated id that it prints, and takes the same id again as a duplicate', async () => {
    const delivered = await run([
      'event',
      scanId,
      'scan.completed',
      '--tenant',
      'acme',
      '--payload',
      '{"findings":0}',
      '--actor',
      'scanner-webhook',
    ])
    const kept = json(delivered)
    expect(kept).toMatchObject({ status: 'kept', taskStatus: 'queued', taskId: expect.any(String) })
    expect(kept.eventId).toMatch(UUID)
    expect(messages(delivered.stderr)).toEqual([`event id: ${kept.eventId} (generated)`])

    const resent = await run([
      'event',
      scanId,
      'scan.completed',
      '--tenant',
      'acme',
      '--id',
      kept.eventId,
      '--payload',
      '{"findings":0}',
      '--actor',
      'scanner-webhook',
    ])
    // (The engine does not name the task of a duplicate of an event that is still kept.)
    expect(json(resent)).toMatchObject({ eventId: kept.eventId, status: 'duplicate' })
    expect(messages(resent.stderr)).toEqual([])

    // Other contents under the same id: refused, with the reason.
    expect(
      refused(
        await run([
          'event',
          scanId,
          'scan.completed',
          '--tenant',
          'acme',
          '--id',
          kept.eventId,
          '--payload',
          '{"findings":3}',
          '--actor',
          'scanner-webhook',
        ]),
      ),
    ).toBe(
      `equilateral: event id "${kept.eventId}" was already delivered to workflow ${scanId} with other contents`,
    )
  })

  it('a worker consumes the kept event; the audit trail has one row for it, with the actor', async () => {
    start(['worker', '--registry', REGISTRY]) // stopped at the end of the file
    const wf = await ended(scanId)
    expect(wf.status).toBe('completed')
    expect(wf.output).toEqual({ report: { saw: { scan: { findings: 0 } } } })
    const received = (await history(scanId)).filter((e) => e.action === 'event_received')
    expect(received).toEqual([
      expect.objectContaining({
        actor: 'scanner-webhook',
        data: expect.objectContaining({ name: 'scan.completed', consumed: false }),
      }),
    ])
  })
})

describe('equilateral approve and reject', () => {
  it('approve: the approval completes and the workflow deploys; the decision is audited with the approver', async () => {
    await waiting(approvedId, 'release')
    const decided = json(
      await run([
        'approve',
        approvedId,
        'release',
        '--tenant',
        'acme',
        '--approver',
        'release-manager@acme.test',
        '--comment',
        'scan and tests are clean',
      ]),
    )
    expect(decided).toMatchObject({
      eventId: 'release:release-manager@acme.test:approved',
      status: 'consumed',
      taskStatus: 'completed',
    })
    const wf = await ended(approvedId)
    expect(wf.status).toBe('completed')
    expect(wf.output.deploy).toMatchObject({ service: 'storefront-text', environment: 'staging' })
    expect(wf.tasks.find((t: any) => t.key === 'release').result).toEqual({
      approved: true,
      approver: 'release-manager@acme.test',
      comment: 'scan and tests are clean',
    })
    expect((await history(approvedId)).filter((e) => e.action === 'approval_decided')).toEqual([
      expect.objectContaining({
        actor: 'release-manager@acme.test',
        data: expect.objectContaining({ name: 'release', approved: true, consumed: true }),
      }),
    ])
  })

  it('reject: the workflow fails with the reason and never deploys', async () => {
    await waiting(rejectedId, 'release')
    const decided = json(
      await run([
        'reject',
        rejectedId,
        'release',
        '--tenant',
        'acme',
        '--approver',
        'cto',
        '--comment',
        'code freeze',
      ]),
    )
    expect(decided).toMatchObject({ status: 'consumed', taskStatus: 'failed' })
    const wf = await ended(rejectedId)
    expect(wf.status).toBe('failed')
    expect(wf.error).toMatchObject({
      error: { code: 'approval_rejected', message: 'approval "release" rejected by cto: code freeze' },
    })
    expect(wf.tasks.find((t: any) => t.key === 'deploy').status).toBe('skipped')
    expect((await history(rejectedId)).filter((e) => e.action === 'approval_decided')).toEqual([
      expect.objectContaining({ actor: 'cto', data: expect.objectContaining({ approved: false }) }),
    ])
  })

  it('refusals are one line with exit code 2 and write nothing', async () => {
    const before = await history(approvedId)
    const [late, otherTenant, unknownTenant, missingApprover, badPayload, badId] = await Promise.all([
      run(['approve', approvedId, 'release', '--tenant', 'acme', '--approver', 'ceo']),
      run(['reject', approvedId, 'release', '--tenant', 'globex', '--approver', 'cto']),
      run(['approve', approvedId, 'release', '--tenant', 'nobody', '--approver', 'cto']),
      run(['approve', approvedId, 'release', '--tenant', 'acme']),
      run(['event', scanId, 'scan.completed', '--tenant', 'acme', '--payload', '{findings']),
      run(['event', 'not-a-uuid', 'scan.completed', '--tenant', 'acme']),
    ])
    expect(refused(late)).toBe(`equilateral: workflow ${approvedId} is completed: it takes no more events`)
    // Another tenant's workflow is not found, exactly like one that does not exist.
    expect(refused(otherTenant)).toBe(`equilateral: workflow ${approvedId} not found`)
    expect(refused(unknownTenant)).toMatch(/^equilateral: unknown tenant "nobody"/)
    expect(missingApprover.code).toBe(2)
    expect(messages(missingApprover.stderr)[0]).toBe(
      "equilateral: required option '--approver <who>' not specified",
    )
    expect(refused(badPayload)).toMatch(/^equilateral: --payload is not valid JSON/)
    expect(refused(badId)).toMatch(/^equilateral: workflow id must be a UUID/)
    expect(await history(approvedId)).toEqual(before)
    const events = await queryOnce(
      db.url,
      'SELECT workflow_id FROM equilateral.workflow_events WHERE workflow_id = ANY($1::uuid[])',
      [[approvedId, rejectedId, scanId]],
    )
    // One per delivery that was taken: the scan event, the approval, the rejection.
    expect(events).toHaveLength(3)
  })
})

describe('workflow start --wait --timeout', () => {
  it('prints the workflow still running and exits 124 when the timeout passes first', async () => {
    const result = await run([
      'workflow',
      'start',
      'quick-scan',
      '--tenant',
      'globex',
      '--registry',
      REGISTRY,
      '--wait',
      '--timeout',
      '300ms',
    ])
    expect(result.code, result.stderr).toBe(124)
    const wf = JSON.parse(result.stdout)
    expect(wf).toMatchObject({ type: 'quick-scan', status: 'running' })
    // It was only the wait that stopped: the workflow goes on.
    const [row] = await queryOnce(db.url, 'SELECT status FROM equilateral.workflows WHERE id = $1', [wf.id])
    expect(row?.status).toBe('running')
  })
})
