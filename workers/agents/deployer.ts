// The deploy step of deploy-feature: a gate, then the release. It runs only after the security scan
// and the tests (its dependencies) completed, and refuses to deploy what they found wanting with a
// PermanentError, since running it again cannot change their results.
//
// The "deployment" is a release record; a real agent would call the platform here, passing
// ctx.idempotencyKey (the deployment id) so that a repeat of the same attempt is recognised.
//
// Inputs stay out of logs and errors: an error message is stored in plaintext (task and workflow
// errors, audit rows, pg-boss output) and logs leave the database, while inputs and results are
// encrypted at rest. So it logs ids and counts, and a blocked deploy names the failing test by its
// position, not by its name (which comes from the input).
import { createHash } from 'node:crypto'
import { defineAgent, PermanentError } from '../../src/index.ts'
import type { SecurityScanResult } from './security-reviewer.ts'
import type { TestRunResult } from './test-runner.ts'

export type ReleaseRecord = {
  deploymentId: string
  service: string
  version: string
  environment: string
  artifactSha256: string
  deployedAt: string
}

type DeployInput = { service: string; version: string; environment: string; source: string }

function readInput(input: unknown): DeployInput {
  const i = (input ?? {}) as Record<string, unknown>
  const missing = ['service', 'version', 'environment', 'source'].filter(
    (k) => typeof i[k] !== 'string' || i[k] === '',
  )
  if (missing.length > 0)
    throw new PermanentError(`cannot deploy: the workflow input has no ${missing.join(', ')}`)
  return i as DeployInput
}

/** Why the deploy must not go ahead, or undefined when both checks passed. */
export function deployBlocker(security: SecurityScanResult, tests: TestRunResult): string | undefined {
  const reasons: string[] = []
  if (!security.passed) {
    const { high, medium, low } = security.counts
    const first = security.findings.find((f) => f.severity === 'high')
    reasons.push(
      `security scan failed with ${high} high, ${medium} medium, ${low} low finding(s)` +
        (first ? ` (first: ${first.rule} at line ${first.line})` : ''),
    )
  }
  if (tests.failed > 0) {
    const first = tests.results.findIndex((r) => !r.ok)
    reasons.push(
      `${tests.failed} of ${tests.total} test(s) failed` + (first >= 0 ? ` (first: test ${first + 1})` : ''),
    )
  }
  return reasons.length > 0 ? `deploy blocked: ${reasons.join('; ')}` : undefined
}

export const deployer = defineAgent<null, ReleaseRecord>({
  id: 'deployer',
  taskTypes: ['deploy'],
  handler: async (ctx) => {
    const security = ctx.results['security'] as SecurityScanResult | undefined
    const tests = ctx.results['tests'] as TestRunResult | undefined
    if (!security || !tests) {
      throw new PermanentError(
        'cannot deploy: the task needs the results of tasks "security" and "tests" (dependsOn)',
      )
    }
    const blocked = deployBlocker(security, tests)
    if (blocked) throw new PermanentError(blocked)
    const input = readInput(ctx.input)
    ctx.signal.throwIfAborted()
    const release: ReleaseRecord = {
      deploymentId: ctx.idempotencyKey,
      service: input.service,
      version: input.version,
      environment: input.environment,
      artifactSha256: createHash('sha256').update(input.source).digest('hex'),
      deployedAt: new Date().toISOString(),
    }
    ctx.log.info({ deploymentId: release.deploymentId }, 'deployed')
    return release
  },
})
