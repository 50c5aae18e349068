// deploy-feature-approved: deploy-feature with a human in the loop. The scan and the tests run side
// by side as before; then a release manager approves (or rejects) before the deploy runs.
//
//   security (security_scan) ──┐
//                              ├──> release (approval) ──> deploy (deploy)
//   tests (run_tests) ─────────┘
//
// A rejection fails the workflow with the approver's reason; no decision within a day fails it too.
import { defineWorkflow } from '../../src/index.ts'
import { deployer } from '../agents/deployer.ts'
import { securityReviewer } from '../agents/security-reviewer.ts'
import { testRunner } from '../agents/test-runner.ts'
import type { DeployFeatureInput } from './deploy-feature.ts'

export const deployFeatureApproved = defineWorkflow<DeployFeatureInput>({
  name: 'deploy-feature-approved',
  version: 1,
  tasks: [
    {
      key: 'security',
      agent: securityReviewer,
      type: 'security_scan',
      data: (i) => ({ source: i.source, ...(i.filename !== undefined ? { filename: i.filename } : {}) }),
    },
    {
      key: 'tests',
      agent: testRunner,
      type: 'run_tests',
      data: (i) => ({ source: i.source, tests: i.tests }),
    },
    // Decided with `POST /v1/workflows/:id/approvals/release`, `equilateral approve`, or
    // tenant.decide(id, { name: 'release', ... }); approvers see the scan and test results first.
    {
      key: 'release',
      approval: { timeoutMs: 24 * 3600_000, onTimeout: 'fail' },
      dependsOn: ['security', 'tests'],
    },
    {
      key: 'deploy',
      agent: deployer,
      type: 'deploy',
      dependsOn: ['security', 'tests', 'release'],
      maxAttempts: 3,
    },
  ],
})
