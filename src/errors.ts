// The error vocabulary of the library. Each error has a stable `code` string that HTTP and CLI
// surfaces map to statuses and exit codes; `cause` is kept where there is one.

export class EquilateralError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = new.target.name
    this.code = code
  }
}

/** A workflow or agent definition is invalid (cycle, unknown agent, duplicate key, ...). */
export class DefinitionError extends EquilateralError {
  /** The task key (or agent id) the problem is about, when there is one. */
  readonly key: string | undefined
  constructor(message: string, key?: string) {
    super('invalid_definition', message)
    this.key = key
  }
}

/** A value given to the library (workflow input, task data, agent result) cannot be stored. */
export class InvalidInputError extends EquilateralError {
  /** JSON path of the offending value, e.g. `$.input.name`. */
  readonly path: string | undefined
  constructor(message: string, path?: string) {
    super('invalid_input', message)
    this.path = path
  }
}

export class UnknownWorkflowTypeError extends EquilateralError {
  constructor(type: string) {
    super('unknown_workflow_type', `unknown workflow type "${type}"`)
  }
}

/** A workflow type is registered, but not in the version asked for. */
export class UnknownWorkflowVersionError extends EquilateralError {
  constructor(type: string, version: unknown, known: readonly number[]) {
    super(
      'unknown_workflow_version',
      `workflow type "${type}" has no version ${String(version)} (registered: ${known.join(', ')})`,
    )
  }
}

/**
 * A task needs an agent version that no worker served within AGENT_VERSION_WAIT_MS: the task and
 * its workflow fail for good with this error.
 */
export class AgentVersionUnavailableError extends EquilateralError {
  constructor(agentId: string, version: number, waitedMs: number) {
    super(
      'agent_version_unavailable',
      `no worker had agent "${agentId}" version ${version} for ${waitedMs} ms`,
    )
    this.name = 'AgentVersionUnavailable'
  }
}

export class NotFoundError extends EquilateralError {
  constructor(what: string) {
    super('not_found', `${what} not found`)
  }
}

export type TenantErrorCode =
  | 'unknown_tenant'
  | 'tenant_suspended'
  | 'invalid_tenant_id'
  | 'invalid_tier'
  | 'tenant_exists'
  /** database-per-tenant: the tenant's database is still being created (create the tenant again). */
  | 'tenant_provisioning'
  /** database-per-tenant: a server name that TENANT_SERVERS does not list. */
  | 'unknown_server'
  /** database-per-tenant: the directory points at a database that is not this tenant's. */
  | 'tenant_database_mismatch'
  /** database-per-tenant: this process has MAX_TENANT_DATABASES open and none idle to close. */
  | 'too_many_databases'
  /** A move refused: the tenant is not suspended and drained, or the copy differs from the source. */
  | 'move_refused'
  /**
   * Tenant administration (create, suspend, resume, rotate key, set profile, move) on a connection
   * that is not the owner's: this process was given no MIGRATION_DATABASE_URL (the recommended setup
   * for web and worker); run `equilateral tenant ...` where the owner's URL is, as the release step.
   */
  | 'owner_required'

export class TenantError extends EquilateralError {
  declare readonly code: TenantErrorCode
  constructor(code: TenantErrorCode, message: string) {
    super(code, message)
  }
}

export class ConfigError extends EquilateralError {
  readonly problems: string[]
  constructor(problems: string[]) {
    super('invalid_config', `invalid configuration:\n  - ${problems.join('\n  - ')}`)
    this.problems = problems
  }
}

/**
 * The project's configuration file (`equilateral.config.ts`, see src/project.ts) or a module it
 * names cannot be used: not found, failing to load, or exporting no agent, workflow or schedule.
 * The message is one line naming the file and the module.
 */
export class ProjectConfigError extends EquilateralError {
  declare readonly code: 'invalid_project_config'
  constructor(message: string, options?: { cause?: unknown }) {
    super('invalid_project_config', message, options)
  }
}

/**
 * The database is not ready for this build: `not_migrated` (the engine's tables or pg-boss's schema
 * do not exist). The message names the command that fixes it.
 */
export class SetupError extends EquilateralError {
  declare readonly code: 'not_migrated'
  constructor(code: 'not_migrated', message: string) {
    super(code, message)
  }
}

/**
 * A stored payload could not be decrypted: `no_keys` (it is encrypted but no keys are configured),
 * `unknown_key` (its key is not in the key ring), `decryption_failed` (altered, copied from another
 * tenant or column, or different key material under its key id), `invalid_envelope` (malformed).
 * The message names the tenant, the column and the key id; never any data.
 */
export class EncryptionError extends EquilateralError {
  declare readonly code: EncryptionErrorCode
  constructor(code: EncryptionErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options)
  }
}

export type EncryptionErrorCode = 'no_keys' | 'unknown_key' | 'decryption_failed' | 'invalid_envelope'

/**
 * Thrown by an agent to fail its task without further retries (bad input that another attempt
 * cannot fix). Any other thrown value is retried per the task's retry policy.
 */
export class PermanentError extends EquilateralError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('permanent', message, options)
  }
}

/**
 * Thrown by `ctx.snooze()`: the agent asks to run again later. The attempt ends without counting a
 * failure; the task is queued again to start `delayMs` from now (by the database clock).
 */
export class Snooze extends EquilateralError {
  /** A delay from now (database clock) ... */
  readonly delayMs: number
  /** ... or a time (ISO 8601), whichever is given. */
  readonly until: string | null
  constructor(delay: { delayMs: number; until?: string | null }) {
    super('snooze', delay.until ? `snoozed until ${delay.until}` : `snoozed for ${delay.delayMs} ms`)
    this.delayMs = delay.delayMs
    this.until = delay.until ?? null
  }
}

export type WaitErrorCode =
  /** The workflow has ended: nothing in it can take an event any more. */
  | 'workflow_not_running'
  /** No task of the workflow waits, or will wait, for this event or approval. */
  | 'no_such_wait'
  /** The approval names its approvers and this actor is not one of them. */
  | 'not_an_approver'
  /** The event id was used before for a different event. */
  | 'event_conflict'

/** An event or an approval decision that was refused; nothing was written. */
export class WaitError extends EquilateralError {
  declare readonly code: WaitErrorCode
  constructor(code: WaitErrorCode, message: string) {
    super(code, message)
  }
}

/** What `result()` rejects with when the awaited workflow failed: `error` is the workflow's failure. */
export class WorkflowFailedError extends EquilateralError {
  readonly workflowId: string
  /** The workflow's error as getWorkflow shows it: `{ task, agent, error: { name, message, code? } }`. */
  readonly error: unknown
  constructor(workflowId: string, error: unknown) {
    const inner = (error as { error?: { message?: unknown } } | null)?.error?.message
    super('workflow_failed', `workflow ${workflowId} failed${typeof inner === 'string' ? `: ${inner}` : ''}`)
    this.workflowId = workflowId
    this.error = error
  }
}

/** What `result()` rejects with when the awaited workflow was cancelled. */
export class WorkflowCancelledError extends EquilateralError {
  readonly workflowId: string
  readonly reason: string | null
  constructor(workflowId: string, reason: string | null) {
    super('workflow_cancelled', `workflow ${workflowId} was cancelled${reason ? `: ${reason}` : ''}`)
    this.workflowId = workflowId
    this.reason = reason
  }
}

/**
 * `result()` gave up waiting: `result_timeout` (its timeoutMs passed) or `result_aborted` (its
 * signal was aborted; `cause` is the signal's reason). The workflow is left as it is, still running.
 */
export class ResultWaitError extends EquilateralError {
  declare readonly code: 'result_timeout' | 'result_aborted'
  readonly workflowId: string
  constructor(
    code: 'result_timeout' | 'result_aborted',
    workflowId: string,
    message: string,
    cause?: unknown,
  ) {
    super(code, message, cause === undefined ? undefined : { cause })
    this.workflowId = workflowId
  }
}

export type OperationErrorCode =
  /** Retry asked of a workflow that is running or completed (only failed or cancelled ones run again). */
  | 'workflow_not_retryable'
  /** Replay from a task key the workflow does not have. */
  | 'unknown_task'
  /** A request key used before for another operation or another target. */
  | 'request_key_conflict'

/** An operator request on workflows (retry, replay, redrive) that was refused; nothing was written. */
export class OperationError extends EquilateralError {
  declare readonly code: OperationErrorCode
  /** The workflow's status when a retry was refused. */
  readonly status: string | undefined
  constructor(code: OperationErrorCode, message: string, status?: string) {
    super(code, message)
    this.status = status
  }
}

/** The task was cancelled, timed out or reassigned while the agent ran; its result is discarded. */
export class LeaseLostError extends EquilateralError {
  constructor(taskId: string, attempt: number) {
    super('lease_lost', `task ${taskId} attempt ${attempt} is no longer held by this worker`)
  }
}

/**
 * Whether a failure must not be retried. Decided by `code`, not `instanceof`, so an error from
 * another copy of this library (built and source side by side) is recognised too. A payload that
 * fails authentication or is malformed stays so; a missing key (`no_keys`, `unknown_key`) may be a
 * worker not yet given the new key ring during a rollout, so another attempt (elsewhere) may succeed.
 */
export function isPermanent(error: unknown): boolean {
  let code: unknown
  try {
    code = (error as { code?: unknown } | null)?.code
  } catch {
    return false // a thrown value whose properties cannot be read
  }
  return (
    code === 'permanent' ||
    code === 'invalid_input' ||
    code === 'invalid_definition' ||
    code === 'decryption_failed' ||
    code === 'invalid_envelope'
  )
}

/** Turns anything thrown into a JSON-safe error record (agents may throw non-Error values). */
export function serializeError(thrown: unknown): { name: string; message: string; code?: string } {
  // An agent can throw anything: a Proxy whose every trap throws, an object with no prototype, a
  // getter that throws, text PostgreSQL cannot store. None of it may escape as a second error.
  try {
    if (thrown instanceof Error) {
      const code = (thrown as { code?: unknown }).code
      return {
        name: storableText(String(thrown.name)),
        message: storableText(String(thrown.message)),
        ...(typeof code === 'string' ? { code: storableText(code) } : {}),
      }
    }
    return { name: 'NonErrorThrown', message: storableText(describeValue(thrown)) }
  } catch {
    return { name: 'NonErrorThrown', message: 'a value that cannot be read' }
  }
}

function describeValue(value: unknown): string {
  if (typeof value === 'string') return value
  try {
    const json = JSON.stringify(value)
    if (json !== undefined) return json
  } catch {
    // cyclic, a BigInt inside, a throwing toJSON: fall back to String()
  }
  try {
    return String(value)
  } catch {
    return Object.prototype.toString.call(value) // no prototype, or a throwing toString
  }
}

/** At most 4000 characters, with no NUL and no lone surrogate (PostgreSQL's jsonb refuses both). */
function storableText(text: string): string {
  return text.slice(0, 4000).replaceAll('\0', '\\u0000').toWellFormed()
}
