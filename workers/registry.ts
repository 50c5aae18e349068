// Every agent and workflow type this project runs, registered by hand: adding one is an edit here
// that a reviewer sees, and a worker runs exactly what is listed (no directory scanning).
import { deployer } from './agents/deployer.ts'
import { securityReviewer } from './agents/security-reviewer.ts'
import { testRunner } from './agents/test-runner.ts'
import { deployFeature } from './workflows/deploy-feature.ts'
import { deployFeatureApproved } from './workflows/deploy-feature-approved.ts'

export const agents = [securityReviewer, testRunner, deployer]

export const workflows = [deployFeature, deployFeatureApproved]
