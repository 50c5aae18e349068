// deploy-feature: scan the source and run its tests side by side, then deploy if both passed.
//
//   security (security_scan) ──┐
//                              ├──> deploy (deploy)
//   tests (run_tests) ─────────┘
import { defineWorkflow, type Json } from '../../src/index.ts'
import { deployer } from '../agents/deployer.ts'
import { securityReviewer } from '../agents/security-reviewer.ts'
import { testRunner } from '../agents/test-runner.ts'

export type DeployFeatureInput = {
  service: string
  version: string
  environment: string
  /** The JavaScript file to review, test and ship. */
  source: string
  filename?: string
  tests: { name: string; call: string; args?: Json[]; expect: Json }[]
}

export const deployFeature = defineWorkflow<DeployFeatureInput>({
  name: 'deploy-feature',
  version: 1,
  tasks: [
    {
      key: 'security',
      agent: securityReviewer,
      type: 'security_scan',
      // Json has no undefined, so an absent filename is left out rather than set to undefined.
      data: (i) => ({ source: i.source, ...(i.filename !== undefined ? { filename: i.filename } : {}) }),
    },
    {
      key: 'tests',
      agent: testRunner,
      type: 'run_tests',
      data: (i) => ({ source: i.source, tests: i.tests }),
    },
    // The deploy is the one step with an outside effect: it retries a transient failure, while a
    // blocked deploy (PermanentError) fails at once.
    { key: 'deploy', agent: deployer, type: 'deploy', dependsOn: ['security', 'tests'], maxAttempts: 3 },
  ],
})
