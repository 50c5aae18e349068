// Public API of equilateral-agents.
import type { Engine as EngineInstance } from './engine.ts'
import type * as WebApp from './web/app.ts'
import type * as WebServerModule from './web/server.ts'

export { createEngine, Engine, StartedWorkflow, TenantHandle } from './engine.ts'
export type {
  EngineOptions,
  ResultOptions,
  WorkflowView,
  TaskView,
  AuditEntry,
  Readiness,
  WorkflowFilter,
  WorkflowPage,
  WorkflowSummary,
} from './engine.ts'
export type {
  AdminStatsReport,
  AgentStats,
  StatsReport,
  StatsWindow,
  StatsWindowInput,
  TenantStatsSection,
  WorkflowTypeStats,
  WorkflowTypeTotals,
} from './analytics.ts'
export type { AppOptions } from './web/app.ts'
export type { WebServer } from './web/server.ts'
export { defineAgent, defineWorkflow } from './core/definition.ts'
export type {
  AgentContext,
  AgentDefinition,
  AgentHandler,
  ApprovalWait,
  EventWait,
  SpawnedTask,
  StartAfter,
  TaskSpec,
  WaitTimeout,
  WorkflowDefinition,
  WorkflowSpec,
} from './core/definition.ts'
export type {
  InputSchema,
  InputValidator,
  JsonSchemaObject,
  SchemaInput,
  SchemaOutput,
  StandardSchemaV1,
} from './core/input-schema.ts'
export type { ApprovalDecision, DeliveryResult, EventDelivery } from './flow/waits.ts'
export type { Json } from './core/json.ts'
export type { TaskStatus, WorkflowStatus } from './core/task-state.ts'
export { COMPLIANCE_REGIMES, parseComplianceProfile } from './compliance/profile.ts'
export type { ComplianceProfile, ComplianceRegime, RegimePolicy } from './compliance/profile.ts'
export type { PurgeOptions, PurgeReport } from './compliance/retention.ts'
export type { ErasureReport } from './compliance/erasure.ts'
export { clientDb } from './db/tx.ts'
export type { Db, TenantScope } from './db/tx.ts'
export { migrate } from './db/migrate.ts'
export { provisionDatabase } from './db/provision.ts'
export type { ProvisionedDatabase, ProvisionOptions } from './db/provision.ts'
export { defineConfig, defineSchedule } from './project.ts'
export type { EquilateralConfig, ScheduleDeclaration } from './project.ts'
export { loadConfig } from './config.ts'
export type { Config } from './config.ts'
export { isEnvelope, KeyRing } from './crypto/keyring.ts'
export type { Envelope, PayloadPurpose } from './crypto/keyring.ts'
export type { ReencryptOptions, ReencryptReport, TenantReencryptReport } from './crypto/reencrypt.ts'
export { IdempotencyConflictError } from './flow/start.ts'
export { MISSED_POLICIES } from './schedule/schedules.ts'
export type { MissedPolicy, ScheduleSpec, ScheduleView } from './schedule/schedules.ts'
export type {
  ScheduledStart,
  ScheduleProblem,
  ScheduleReport,
  ScheduleTickReport,
} from './schedule/scheduler.ts'
export type { StartOptions, StartResult } from './flow/start.ts'
export type { RetryResult } from './flow/retry.ts'
export type { ReplayOptions, ReplayResult } from './flow/replay.ts'
export type { OperatorRequest } from './flow/requests.ts'
export type {
  DeadLetter,
  DeadLetterFilter,
  DeadLetterPage,
  RedriveResult,
  RedriveSelection,
} from './flow/dead-letters.ts'
export * from './errors.ts'
export {
  ENTERPRISE_QUEUE,
  EnterpriseOrchestrator,
  EnterpriseRunConflictError,
  EnterpriseRunForgedError,
  EnterpriseTimeoutError,
} from './enterprise.ts'
export type {
  EnterpriseMemberSpec,
  EnterpriseMemberStatus,
  EnterpriseMemberView,
  EnterpriseOrchestratorOptions,
  EnterpriseRunStatus,
  EnterpriseRunView,
  EnterpriseStartOptions,
  EnterpriseStartResult,
  EnterpriseSummary,
  EnterpriseTenantResult,
} from './enterprise.ts'

// The HTTP server (fastify, its swagger plugin, the routes) is loaded when first used: a worker, or
// an agent registry that imports this package, does not load it.

/** The HTTP API as a Fastify instance (not listening): see src/web/app.ts. */
export async function buildApp(
  engine: EngineInstance,
  options: WebApp.AppOptions = {},
): ReturnType<typeof WebApp.buildApp> {
  return (await import('./web/app.ts')).buildApp(engine, options)
}

/** Builds the HTTP API and listens: see src/web/server.ts. */
export async function startWeb(
  engine: EngineInstance,
  options: Parameters<typeof WebServerModule.startWeb>[1] = {},
): Promise<WebServerModule.WebServer> {
  return (await import('./web/server.ts')).startWeb(engine, options)
}
