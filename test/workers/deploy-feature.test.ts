// deploy-feature end to end on a real database, with the example inputs: a clean change is
// scanned, tested and deployed; a change with a committed key and an eval() is refused, once.
import { readFileSync } from 'node:fs'
import { describe, expect, it } from 'vitest'
import type { Json } from '../../src/index.ts'
import { agents, workflows } from '../../workers/registry.ts'
import { settled, testEngine } from '../helpers/engine.ts'

const example = (name: string) =>
  JSON.parse(readFileSync(new URL(`../../examples/${name}`, import.meta.url), 'utf8')) as Json

const { engine } = await testEngine({ agents, workflows })
await engine.createTenant({ id: 'acme' })
await engine.startWorker()

describe('deploy-feature', () => {
  it('scans, tests and deploys a clean change', async () => {
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow('deploy-feature', example('deploy-feature.json'))
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('completed')
    const byKey = Object.fromEntries(wf.tasks.map((t) => [t.key, t]))
    expect(byKey['security']?.result).toMatchObject({ passed: true, counts: { high: 0, medium: 0, low: 0 } })
    expect(byKey['tests']?.result).toMatchObject({ total: 3, passed: 3, failed: 0 })
    const deploy = byKey['deploy']
    expect(deploy).toMatchObject({ status: 'completed', attempt: 1, failures: 0 })
    expect(wf.output).toEqual({
      deploy: {
        deploymentId: `${deploy?.id}:1`,
        service: 'storefront-text',
        version: '1.4.0',
        environment: 'staging',
        artifactSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
        deployedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
      },
    })
  })

  it('refuses to deploy a change with a committed key and an eval(), without retrying', async () => {
    const acme = await engine.tenant('acme')
    const { id } = await acme.startWorkflow('deploy-feature', example('deploy-feature-blocked.json'))
    const wf = await settled(engine, 'acme', id)
    expect(wf.status).toBe('failed')
    const byKey = Object.fromEntries(wf.tasks.map((t) => [t.key, t]))
    expect(byKey['security']).toMatchObject({
      status: 'completed',
      result: { passed: false, counts: { high: 2 } },
    })
    expect(byKey['tests']).toMatchObject({ status: 'completed', result: { passed: 3, failed: 0 } })
    // maxAttempts is 3, but a PermanentError fails the task on its first attempt.
    expect(byKey['deploy']).toMatchObject({ status: 'failed', attempt: 1, failures: 1 })
    expect(byKey['deploy']?.error).toEqual({
      name: 'PermanentError',
      code: 'permanent',
      message:
        'deploy blocked: security scan failed with 2 high, 0 medium, 0 low finding(s) (first: aws-access-key-id at line 4)',
    })
    const history = await acme.history(id)
    expect(
      history.filter((h) => h.action === 'task_started' && h.taskId === byKey['deploy']?.id),
    ).toHaveLength(1)
    expect(history.some((h) => h.action === 'task_retry_queued')).toBe(false)
    // The committed key is in the input, but not in anything the agents wrote.
    const written = JSON.stringify([wf.tasks.map((t) => [t.result, t.error]), history.map((h) => h.data)])
    expect(written).not.toContain('AKIAIOSFODNN7EXAMPLE')
  })
})
