// JSON Schemas of the HTTP API: Fastify validates requests and serialises responses with them, and
// @fastify/swagger turns the same objects into the OpenAPI document (openapi.json), so the document
// describes exactly what the server checks. Shared shapes are registered once by $id.
//
// Over 400 lines on purpose: every route's schemas sit beside the shared shapes they name by $id,
// so the whole contract of the API (what openapi.json is generated from) reads in one place.
import { TASK_STATUSES, WORKFLOW_STATUSES } from '../core/task-state.ts'

const json = { description: 'any JSON value' }
/** database-per-tenant: where a tenant's database is (null for a tenant in the control database). */
const tenantDatabase = {
  type: ['object', 'null'],
  required: ['server', 'name'],
  properties: { server: { type: 'string' }, name: { type: 'string' } },
} as const

const dateTime = { type: 'string', format: 'date-time' } as const
const nullableDateTime = { type: ['string', 'null'], format: 'date-time' } as const
const uuid = { type: 'string', format: 'uuid' } as const
const seconds = { type: ['number', 'null'], description: 'seconds; null without data' } as const

export const sharedSchemas = [
  {
    $id: 'Problem',
    type: 'object',
    description: 'RFC 9457 problem details; `code` is stable and meant for programs.',
    required: ['type', 'title', 'status', 'code'],
    properties: {
      type: { type: 'string' },
      title: { type: 'string' },
      status: { type: 'integer' },
      code: { type: 'string' },
      detail: { type: 'string' },
      instance: { type: 'string' },
      path: { type: 'string' },
    },
  },
  {
    $id: 'Task',
    type: 'object',
    required: ['id', 'key', 'agent', 'status', 'dependsOn', 'attempt', 'failures'],
    properties: {
      id: uuid,
      key: { type: 'string' },
      agent: { type: 'string' },
      agentVersion: {
        type: ['integer', 'null'],
        description: 'the agent version the run needs (null: any version, or a wait task)',
      },
      type: { type: 'string' },
      status: { type: 'string', enum: [...TASK_STATUSES] },
      dependsOn: { type: 'array', items: { type: 'string' } },
      attempt: { type: 'integer', description: 'attempts started so far' },
      failures: { type: 'integer' },
      result: json,
      error: json,
      queuedAt: nullableDateTime,
      startedAt: nullableDateTime,
      completedAt: nullableDateTime,
      wait: {
        type: 'object',
        description:
          'a wait task: the approval or event it waits for (deliver it to /approvals/{name} or /events), and its deadline once it waits (null without a timeout)',
        required: ['type', 'name', 'deadline'],
        properties: {
          type: { type: 'string', enum: ['approval', 'event'] },
          name: { type: 'string' },
          deadline: nullableDateTime,
        },
      },
      holdReason: {
        type: 'string',
        enum: ['budget_exhausted'],
        description: "a queued task held without a job: its tenant's hard budget is exhausted",
      },
    },
  },
  {
    $id: 'Workflow',
    type: 'object',
    required: ['id', 'type', 'version', 'status', 'correlationId', 'createdAt', 'tasks'],
    properties: {
      id: uuid,
      type: { type: 'string' },
      version: { type: 'integer' },
      status: { type: 'string', enum: [...WORKFLOW_STATUSES] },
      input: json,
      error: json,
      correlationId: { type: 'string' },
      createdAt: dateTime,
      completedAt: nullableDateTime,
      replayOf: {
        type: ['string', 'null'],
        format: 'uuid',
        description: 'a replay: the workflow it replays (POST /v1/workflows/{id}/replay); null otherwise',
      },
      output: {
        type: 'object',
        additionalProperties: true,
        description: 'results of the final tasks by key',
      },
      tasks: { type: 'array', items: { $ref: 'Task#' } },
    },
  },
  {
    $id: 'WorkflowSummary',
    type: 'object',
    required: ['id', 'type', 'version', 'status', 'correlationId', 'tasksRemaining', 'createdAt'],
    properties: {
      id: uuid,
      type: { type: 'string' },
      version: { type: 'integer' },
      status: { type: 'string', enum: [...WORKFLOW_STATUSES] },
      correlationId: { type: 'string' },
      tasksRemaining: { type: 'integer' },
      createdAt: dateTime,
      completedAt: nullableDateTime,
    },
  },
  {
    $id: 'AuditEntry',
    type: 'object',
    required: ['id', 'action', 'at'],
    properties: {
      id: { type: 'string', description: 'position in the tenant audit log (a bigint as a string)' },
      taskId: { type: ['string', 'null'] },
      agentId: { type: ['string', 'null'] },
      action: { type: 'string' },
      data: json,
      actor: { type: ['string', 'null'] },
      correlationId: { type: ['string', 'null'] },
      at: dateTime,
    },
  },
  {
    $id: 'DeliveryResult',
    type: 'object',
    description:
      "What a delivered event or approval decision did. 200: `consumed` (the waiting task took it: completed, or failed by a rejection) or `duplicate` (this eventId was delivered before; nothing changed, taskStatus is the task's status now). 202: `kept` (its task is not waiting yet and takes it when it does).",
    required: ['eventId', 'status', 'taskId', 'taskStatus'],
    properties: {
      eventId: { type: 'string' },
      status: { type: 'string', enum: ['consumed', 'kept', 'duplicate'] },
      taskId: { type: ['string', 'null'], description: 'the task it is (or was) for' },
      taskStatus: {
        type: ['string', 'null'],
        enum: [...TASK_STATUSES, null],
        description: "the task's status after the delivery",
      },
    },
  },
  {
    $id: 'Tenant',
    type: 'object',
    required: ['id', 'name', 'tier', 'status'],
    properties: {
      id: { type: 'string' },
      name: { type: 'string' },
      tier: { type: 'string' },
      status: {
        type: 'string',
        enum: ['active', 'suspended', 'provisioning'],
        description: 'provisioning: its database is being created; creating the tenant again finishes it',
      },
      schema: { type: ['string', 'null'] },
      database: tenantDatabase,
      complianceProfile: { type: 'object', additionalProperties: true },
      createdAt: dateTime,
    },
  },
  {
    $id: 'WorkflowTypeStats',
    type: 'object',
    required: ['type', 'executions', 'completed', 'failed', 'cancelled', 'running'],
    properties: {
      type: { type: 'string' },
      executions: { type: 'integer', description: 'workflows of this type started in the window' },
      completed: { type: 'integer' },
      failed: { type: 'integer' },
      cancelled: { type: 'integer' },
      running: { type: 'integer' },
      avgSeconds: seconds,
      p50Seconds: seconds,
      p95Seconds: seconds,
      p99Seconds: seconds,
    },
  },
  {
    $id: 'AgentStats',
    type: 'object',
    required: ['agent', 'completed', 'failed', 'retried'],
    properties: {
      agent: { type: 'string' },
      completed: { type: 'integer' },
      failed: { type: 'integer' },
      retried: { type: 'integer', description: "dispatches beyond each task's first" },
      avgSeconds: seconds,
      maxSeconds: seconds,
      avgQueueWaitSeconds: seconds,
    },
  },
  {
    $id: 'Readiness',
    type: 'object',
    required: ['ready', 'database', 'migrations'],
    properties: {
      ready: { type: 'boolean' },
      database: { type: 'string', enum: ['ok', 'unreachable'] },
      migrations: { type: 'string', enum: ['current', 'pending', 'unknown'] },
      detail: { type: 'string' },
    },
  },
] as const

export const problems = (...statuses: number[]) =>
  Object.fromEntries(statuses.map((s) => [s, { $ref: 'Problem#', description: 'problem details' }]))

const idParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { ...uuid, description: 'workflow id' } },
} as const

/** Names and ids of events and approvals: what the engine accepts (1-200 characters). */
const shortText = (description: string) =>
  ({ type: 'string', minLength: 1, maxLength: 200, description }) as const

const deliveryResponses = {
  200: { $ref: 'DeliveryResult#', description: 'consumed, or a duplicate of an earlier delivery' },
  202: { $ref: 'DeliveryResult#', description: 'kept until its task waits' },
  ...problems(400, 401, 403, 404, 409, 413, 415, 422),
} as const

const deliveryErrors =
  ' Errors: 404 `not_found` (no such workflow for this tenant), 409 `workflow_not_running` (it has ended), 409 `no_such_wait` (no task of it waits, or will wait, for this: a wrong name or key, or the wait was resolved already), 409 `event_conflict` (the eventId was used for different contents), 400 `invalid_request` (the body does not match the schema; `path` names the field), 422 `invalid_input` (a value the database cannot store, or a payload over the payload limit).'

const tenantParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', maxLength: 63 } },
} as const

const startResult = {
  type: 'object',
  required: ['id', 'status', 'created'],
  properties: {
    id: uuid,
    status: { type: 'string', enum: [...WORKFLOW_STATUSES] },
    created: { type: 'boolean' },
  },
} as const

const tenantStatus = {
  type: 'object',
  properties: { id: { type: 'string' }, status: { type: 'string' } },
} as const

/** A tenant's figures in a stats report (the tenant's own, a section of the admin's, the totals). */
const statsFigures = {
  workflows: { type: 'array', items: { $ref: 'WorkflowTypeStats#' } },
  agents: { type: 'array', items: { $ref: 'AgentStats#' } },
  usage: {
    type: 'array',
    description: 'what agents reported spending (ctx.usage) with the attempts that ended in the window',
    items: {
      type: 'object',
      required: ['agent', 'dimension', 'amount'],
      properties: { agent: { type: 'string' }, dimension: { type: 'string' }, amount: { type: 'number' } },
    },
  },
} as const

const bearer = [{ tenantKey: [] }]
const admin = [{ adminToken: [] }]

export const routes = {
  startWorkflow: {
    tags: ['workflows'],
    summary: 'Start a workflow',
    description:
      'Starts a workflow of a registered type for the tenant of the API key. With an idempotencyKey, a repeated request returns the workflow the first one started (200 instead of 201).',
    security: bearer,
    body: {
      type: 'object',
      required: ['type'],
      additionalProperties: false,
      properties: {
        type: { type: 'string', minLength: 1, maxLength: 200, description: 'registered workflow type' },
        input: { ...json, description: 'the workflow input (any JSON, default null)' },
        idempotencyKey: { type: 'string', minLength: 1, maxLength: 255 },
        subjectKey: {
          type: 'string',
          minLength: 1,
          maxLength: 255,
          description: 'the data subject the workflow is about, for GDPR erasure',
        },
      },
    },
    response: {
      201: { description: 'started', ...startResult },
      200: {
        description: 'the workflow an earlier request with the same idempotencyKey started',
        ...startResult,
      },
      ...problems(400, 401, 403, 409, 413, 415, 422),
    },
  },
  listWorkflows: {
    tags: ['workflows'],
    summary: "List the tenant's workflows, newest first",
    description:
      'Filters combine: status, type, a creation window (since, until), and look-ups by id, correlationId or idempotencyKey (each an index probe).',
    security: bearer,
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: {
        status: { type: 'string', enum: [...WORKFLOW_STATUSES] },
        type: { type: 'string', minLength: 1, maxLength: 200 },
        limit: { type: 'integer', minimum: 1, maximum: 200, default: 50 },
        cursor: { type: 'string', maxLength: 512, description: 'nextCursor of the previous page' },
        id: { ...uuid, description: 'the workflow with this id (a page of one, or none)' },
        correlationId: { type: 'string', minLength: 1, maxLength: 255 },
        idempotencyKey: { type: 'string', minLength: 1, maxLength: 255 },
        since: { ...dateTime, description: 'created at or after this instant' },
        until: { ...dateTime, description: 'created before this instant' },
      },
    },
    response: {
      200: {
        description: 'a page of workflows',
        type: 'object',
        required: ['workflows', 'nextCursor'],
        properties: {
          workflows: { type: 'array', items: { $ref: 'WorkflowSummary#' } },
          nextCursor: { type: ['string', 'null'] },
        },
      },
      ...problems(400, 401, 403, 422),
    },
  },
  getWorkflow: {
    tags: ['workflows'],
    summary: 'A workflow with its tasks (state, attempts, results or errors, timings)',
    description:
      'With `wait` (a long-poll), the answer comes when the workflow ends (completed, failed or cancelled) or once `wait` has passed, whichever is first: the workflow as it is then, still `running` at the bound. At most 60s. The server is woken by the end itself, not by polling; a client that disconnects frees its wait.',
    security: bearer,
    params: idParams,
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: {
        wait: {
          type: 'string',
          pattern: '^[0-9]{1,6}(ms|s)?$',
          description:
            'wait up to this long for the workflow to end: `30s`, `500ms`, or seconds (`30`); at most 60s',
        },
      },
    },
    response: { 200: { $ref: 'Workflow#', description: 'the workflow' }, ...problems(400, 401, 403, 404) },
  },
  workflowAudit: {
    tags: ['workflows'],
    summary: "A workflow's audit trail, in the order it was written",
    security: bearer,
    params: idParams,
    response: {
      200: {
        description: 'the audit trail',
        type: 'object',
        required: ['workflowId', 'entries'],
        properties: { workflowId: uuid, entries: { type: 'array', items: { $ref: 'AuditEntry#' } } },
      },
      ...problems(400, 401, 403, 404),
    },
  },
  cancelWorkflow: {
    tags: ['workflows'],
    summary: 'Cancel a running workflow',
    description: 'Idempotent: cancelling an ended workflow returns its status with cancelled=false.',
    security: bearer,
    params: idParams,
    body: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: { reason: { type: 'string', maxLength: 1000 } },
    },
    response: {
      200: {
        description: 'the outcome',
        type: 'object',
        required: ['cancelled', 'status', 'tasksCancelled'],
        properties: {
          cancelled: { type: 'boolean' },
          status: { type: 'string', enum: [...WORKFLOW_STATUSES] },
          tasksCancelled: { type: 'integer' },
        },
      },
      ...problems(400, 401, 403, 404, 415),
    },
  },
  retryWorkflow: {
    tags: ['workflows'],
    summary: 'Run a failed or cancelled workflow again from where it stopped',
    description:
      "Every task that did not complete (failed, skipped, cancelled) gets a new attempt with a fresh attempt budget; completed tasks keep their results and do not run again; the workflow is `running` again. One transaction, with the audit rows `workflow_retried` and `task_retried` (actor: `actor`, default `api:<request id>`). With a `requestKey`, a repeated request answers the first one's result and retries nothing. Errors: 404 `not_found` (no such workflow for this tenant), 409 `workflow_not_retryable` (it is running or completed), 409 `request_key_conflict` (the key was used for another request).",
    security: bearer,
    params: idParams,
    body: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: {
        requestKey: shortText('makes the request idempotent: the same key answers the same result'),
        actor: shortText('who asks, for the audit trail (default `api:<request id>`)'),
      },
    },
    response: {
      200: {
        description: 'retried (or, with a requestKey used before, what that request answered)',
        type: 'object',
        required: ['id', 'status', 'previousStatus', 'tasksRetried', 'tasksQueued'],
        properties: {
          id: uuid,
          status: { type: 'string', enum: ['running'] },
          previousStatus: { type: 'string', enum: ['failed', 'cancelled'] },
          tasksRetried: { type: 'integer', description: 'tasks given a new attempt' },
          tasksQueued: { type: 'integer', description: 'of those, the ones queued at once' },
        },
      },
      ...problems(400, 401, 403, 404, 409, 415, 422),
    },
  },
  replayWorkflow: {
    tags: ['workflows'],
    summary: 'Replay a workflow from one of its tasks, as a new workflow',
    description:
      'Starts a new workflow of the same type and version, linked to this one (`replayOf`), with the same input: the task `from` and everything downstream of it run again; the other tasks that completed here are recorded as completed with their results (audit `task_reused`) and do not run. The original gets a `workflow_replayed` audit row. With a `requestKey`, a repeated request answers the same new workflow. Errors: 404 `not_found`, 422 `unknown_task` (the workflow has no task `from`), 409 `request_key_conflict`.',
    security: bearer,
    params: idParams,
    body: {
      type: 'object',
      required: ['from'],
      additionalProperties: false,
      properties: {
        from: shortText('the key of the task to run again, with everything downstream of it'),
        requestKey: shortText('makes the request idempotent: the same key answers the same workflow'),
        actor: shortText('who asks, for the audit trail (default `api:<request id>`)'),
      },
    },
    response: {
      201: {
        description: 'the new workflow (running)',
        type: 'object',
        required: ['id', 'status', 'replayOf', 'from', 'type', 'version', 'rerun', 'reused'],
        properties: {
          id: uuid,
          status: { type: 'string', enum: ['running'] },
          replayOf: uuid,
          from: { type: 'string' },
          type: { type: 'string' },
          version: { type: 'integer' },
          rerun: {
            type: 'array',
            items: { type: 'string' },
            description: 'keys of the tasks that run again',
          },
          reused: {
            type: 'array',
            items: { type: 'string' },
            description: 'keys of the tasks whose original results are reused',
          },
        },
      },
      ...problems(400, 401, 403, 404, 409, 415, 422),
    },
  },
  listDeadLetters: {
    tags: ['dead letters'],
    summary: "The tenant's dead letters: tasks that failed for good, newest first",
    description:
      'A task is a dead letter while it is `failed` (its attempts used up, or a permanent error), a rejected approval excepted. Redriving it (POST /v1/dead-letters/redrive) or retrying its workflow takes it off the list.',
    security: bearer,
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: {
        agent: { type: 'string', minLength: 1, maxLength: 200, description: "only this agent's" },
        limit: { type: 'integer', minimum: 1, maximum: 200, default: 50 },
        cursor: { type: 'string', maxLength: 512, description: 'nextCursor of the previous page' },
      },
    },
    response: {
      200: {
        description: 'a page of dead letters',
        type: 'object',
        required: ['deadLetters', 'nextCursor'],
        properties: {
          deadLetters: {
            type: 'array',
            items: {
              type: 'object',
              required: [
                'taskId',
                'workflowId',
                'workflowType',
                'taskKey',
                'agent',
                'attempt',
                'failures',
                'failedAt',
              ],
              properties: {
                taskId: uuid,
                workflowId: uuid,
                workflowType: { type: 'string' },
                taskKey: { type: 'string' },
                agent: { type: 'string' },
                attempt: { type: 'integer', description: 'the attempt that failed for good' },
                failures: { type: 'integer' },
                error: json,
                failedAt: dateTime,
              },
            },
          },
          nextCursor: { type: ['string', 'null'] },
        },
      },
      ...problems(400, 401, 403, 422),
    },
  },
  redriveDeadLetters: {
    tags: ['dead letters'],
    summary: 'Run one dead letter, or an agent’s dead letters, again',
    description:
      "Each dead letter runs again once: its workflow is retried (as POST /v1/workflows/{id}/retry does), with a `dead_letter_redriven` audit row per task; a redriven task is no longer a dead letter, so redriving again finds nothing. `taskId`: that one (404 `not_found` when the tenant has no such dead letter); `agent`: up to 200 of that agent's (`more` says whether others remain). With a `requestKey`, a repeated request answers the same result.",
    security: bearer,
    body: {
      type: 'object',
      additionalProperties: false,
      oneOf: [{ required: ['taskId'] }, { required: ['agent'] }],
      properties: {
        taskId: { ...uuid, description: 'the dead letter (a task id)' },
        agent: shortText('all the dead letters of this agent'),
        requestKey: shortText('makes the request idempotent: the same key answers the same result'),
        actor: shortText('who asks, for the audit trail (default `api:<request id>`)'),
      },
    },
    response: {
      200: {
        description: 'what was redriven',
        type: 'object',
        required: ['redriven', 'workflowsRetried', 'more'],
        properties: {
          redriven: {
            type: 'array',
            items: {
              type: 'object',
              required: ['taskId', 'workflowId'],
              properties: { taskId: uuid, workflowId: uuid },
            },
          },
          workflowsRetried: { type: 'integer' },
          more: { type: 'boolean', description: 'more dead letters of the agent remain: redrive again' },
        },
      },
      ...problems(400, 401, 403, 404, 409, 415, 422),
    },
  },
  sendEvent: {
    tags: ['workflows'],
    summary: 'Deliver an external event to a workflow',
    description:
      'The task waiting for the event (by name, and by key for waits declared with `match`) completes with the payload, and its dependents are dispatched, in one transaction with the audit row `event_received` (its actor is `actor`, default `api`). An event that arrives before its task waits is kept (202) and consumed when the task starts waiting. Idempotent on `eventId`: delivering the same event again answers 200 `duplicate` and writes nothing, so a webhook may retry freely.' +
      deliveryErrors,
    security: bearer,
    params: idParams,
    body: {
      type: 'object',
      required: ['eventId', 'name'],
      additionalProperties: false,
      properties: {
        eventId: shortText("the sender's id for this event: delivering it again changes nothing"),
        name: shortText('the event name the workflow waits for, e.g. scan.completed'),
        key: shortText('the match key, for waits declared with `match`'),
        payload: { ...json, description: "the waiting task's result (any JSON within MAX_PAYLOAD_BYTES)" },
        actor: shortText('who delivers it, for the audit trail (default `api`)'),
      },
    },
    response: deliveryResponses,
  },
  decideApproval: {
    tags: ['workflows'],
    summary: "Record an approver's decision on a workflow's approval",
    description:
      "Approved: the approval task completes with `{ approved, approver, comment }` and the workflow goes on. Rejected: the workflow fails with the approver's comment as the reason. Written in one transaction with the audit row `approval_decided` (its actor is the approver). The API key authenticates the tenant, not the person: `approver` is recorded as given, and must be one of the approvers the approval names when it names them (403 `not_an_approver` otherwise). A decision made before the approval waits is kept (202) like an early event. Idempotent on `eventId` (default `<name>:<approver>:approved|rejected`): the same decision again answers 200 `duplicate`." +
      deliveryErrors,
    security: bearer,
    params: {
      type: 'object',
      required: ['id', 'name'],
      properties: {
        id: { ...uuid, description: 'workflow id' },
        name: shortText("the approval's name (by default its task's key)"),
      },
    },
    body: {
      type: 'object',
      required: ['approved', 'approver'],
      additionalProperties: false,
      properties: {
        approved: { type: 'boolean' },
        approver: shortText('who decides'),
        comment: {
          type: 'string',
          maxLength: 2000,
          description: 'the reason; a rejection fails the workflow with it',
        },
        eventId: shortText('idempotency id (default `<name>:<approver>:approved|rejected`)'),
      },
    },
    response: deliveryResponses,
  },
  createTenant: {
    tags: ['admin'],
    summary: 'Create a tenant; its API key is in the response, once',
    security: admin,
    body: {
      type: 'object',
      required: ['id'],
      additionalProperties: false,
      properties: {
        id: { type: 'string', minLength: 1, maxLength: 63 },
        name: { type: 'string', minLength: 1, maxLength: 200 },
        tier: { type: 'string', minLength: 1, maxLength: 32 },
        complianceProfile: {
          type: 'object',
          description: 'see docs/audit-and-compliance.md#compliance-events-retention-erasure',
        },
        server: {
          type: 'string',
          minLength: 1,
          maxLength: 32,
          description:
            'database-per-tenant: the TENANT_SERVERS server for its database (default: the one with the fewest tenants)',
        },
      },
    },
    response: {
      201: {
        description: 'created',
        type: 'object',
        required: ['id', 'name', 'tier', 'apiKey'],
        properties: {
          id: { type: 'string' },
          name: { type: 'string' },
          tier: { type: 'string' },
          schema: { type: ['string', 'null'] },
          database: tenantDatabase,
          apiKey: { type: 'string' },
        },
      },
      ...problems(400, 401, 409, 413, 415, 422, 503),
    },
  },
  listTenants: {
    tags: ['admin'],
    summary: 'List tenants',
    security: admin,
    response: {
      200: {
        description: 'every tenant',
        type: 'object',
        required: ['tenants'],
        properties: { tenants: { type: 'array', items: { $ref: 'Tenant#' } } },
      },
      ...problems(401, 503),
    },
  },
  suspendTenant: {
    tags: ['admin'],
    summary: 'Suspend a tenant: its key is refused and its queued work waits',
    security: admin,
    params: tenantParams,
    response: {
      200: { description: 'suspended', ...tenantStatus },
      ...problems(401, 404, 503),
    },
  },
  resumeTenant: {
    tags: ['admin'],
    summary: 'Resume a suspended tenant',
    security: admin,
    params: tenantParams,
    response: {
      200: { description: 'active again', ...tenantStatus },
      ...problems(401, 404, 503),
    },
  },
  rotateKey: {
    tags: ['admin'],
    summary: 'Issue a new API key; the old one stops working at once',
    security: admin,
    params: tenantParams,
    response: {
      200: {
        description: 'the new key (shown once)',
        type: 'object',
        required: ['id', 'apiKey'],
        properties: { id: { type: 'string' }, apiKey: { type: 'string' } },
      },
      ...problems(401, 404, 503),
    },
  },
  stats: {
    tags: ['analytics'],
    summary: 'Workflow and agent performance over a window',
    description:
      "With a tenant key: that tenant's report (percentiles included). With the admin token: a section per tenant with activity, and all-tenant totals of counts, averages and maxima. The window defaults to the last 24 hours; since is inclusive, until exclusive.",
    security: [...bearer, ...admin],
    querystring: {
      type: 'object',
      additionalProperties: false,
      properties: {
        since: { type: 'string', format: 'date-time' },
        until: { type: 'string', format: 'date-time' },
      },
    },
    response: {
      200: {
        description: "the tenant's report, or the admin report (tenants and totals)",
        type: 'object',
        required: ['window'],
        properties: {
          window: {
            type: 'object',
            required: ['since', 'until'],
            properties: { since: dateTime, until: dateTime },
          },
          ...statsFigures,
          tenants: {
            type: 'array',
            items: {
              type: 'object',
              required: ['tenantId', 'workflows', 'agents'],
              properties: { tenantId: { type: 'string' }, ...statsFigures },
            },
          },
          totals: {
            type: 'object',
            properties: statsFigures,
          },
        },
      },
      ...problems(400, 401, 403, 422),
    },
  },
  healthz: {
    tags: ['operations'],
    summary: 'The process is up',
    response: {
      200: { description: 'up', type: 'object', properties: { status: { type: 'string' } } },
    },
  },
  readyz: {
    tags: ['operations'],
    summary: 'The database answers and has every migration this build ships',
    response: {
      200: { $ref: 'Readiness#', description: 'ready' },
      503: { $ref: 'Readiness#', description: 'not ready' },
    },
  },
} as const
