// Read routes the web console needs beyond the workflow itself: one task's detail (its data and
// result decrypted for the key holder, its error, its attempts) and every task's attempts (the
// timeline), both derived from the audit trail; and the live event stream (src/web/live.ts). A
// tenant sees only its own: an id or key of another tenant is "not found".
import type { FastifyInstance, FastifyRequest, RawServerDefault } from 'fastify'
import type { Logger } from 'pino'
import type { Json } from '../core/json.ts'
import { requireUuid } from '../core/ids.ts'
import { withTenantTx } from '../db/tx.ts'
import type { Engine, TenantHandle } from '../engine.ts'
import { NotFoundError } from '../errors.ts'
import { LiveHub } from './live.ts'
import { problems } from './schemas.ts'

/** One attempt of a task, as the audit trail tells it. */
export interface Attempt {
  attempt: number
  /** When it was queued (a retry: when its backoff ends), or when it started waiting. */
  queuedAt: string | null
  startedAt: string | null
  endedAt: string | null
  /** completed, failed, lost, cancelled, skipped, waiting, running, queued */
  outcome: string
  worker: string | null
  error: Json
}

interface AuditRow {
  task_id: string | null
  action_type: string
  action_data: Record<string, Json> | null
  at: Date
}

const ENDS: Record<string, string> = {
  task_completed: 'completed',
  task_failed_attempt: 'failed',
  task_lost: 'lost',
  task_cancelled: 'cancelled',
  task_skipped: 'skipped',
  task_wait_timed_out: 'timed out',
}

/** Each task's attempts from its audit rows (in their order): one per attempt number. */
export function attemptsFrom(rows: readonly AuditRow[]): Map<string, Attempt[]> {
  const byTask = new Map<string, Map<number, Attempt>>()
  for (const r of rows) {
    if (!r.task_id) continue
    let attempts = byTask.get(r.task_id)
    if (!attempts) byTask.set(r.task_id, (attempts = new Map()))
    const data = r.action_data ?? {}
    const given = typeof data.attempt === 'number' ? data.attempt : null
    const n = given ?? Math.max(0, ...attempts.keys())
    const at = r.at.toISOString()
    const get = () => {
      let a = attempts.get(n)
      if (!a) {
        a = {
          attempt: n,
          queuedAt: null,
          startedAt: null,
          endedAt: null,
          outcome: 'queued',
          worker: null,
          error: null,
        }
        attempts.set(n, a)
      }
      return a
    }
    const action = r.action_type
    if (action === 'task_created') continue
    if (action === 'task_queued' || action === 'task_retry_queued') {
      const a = get()
      const delay = typeof data.delayMs === 'number' ? data.delayMs : 0
      a.queuedAt =
        typeof data.startAfter === 'string'
          ? new Date(data.startAfter).toISOString()
          : new Date(r.at.getTime() + delay).toISOString()
    } else if (action === 'task_started') {
      const a = get()
      a.startedAt = at
      a.outcome = 'running'
      a.worker = typeof data.worker === 'string' ? data.worker : null
    } else if (action === 'task_waiting') {
      const a = get()
      a.startedAt = at
      a.outcome = 'waiting'
    } else if (ENDS[action]) {
      // A skip or cancel of a task that never had an attempt is not an attempt.
      if (n === 0 && (action === 'task_skipped' || action === 'task_cancelled')) continue
      const a = get()
      a.endedAt = at
      a.outcome = ENDS[action]!
      if (data.error !== undefined) a.error = data.error
    }
  }
  return new Map(
    [...byTask].map(([task, attempts]) => [task, [...attempts.values()].filter((a) => a.attempt > 0)]),
  )
}

const attempt = {
  type: 'object',
  required: ['attempt', 'queuedAt', 'startedAt', 'endedAt', 'outcome'],
  properties: {
    attempt: { type: 'integer' },
    queuedAt: { type: ['string', 'null'], format: 'date-time' },
    startedAt: { type: ['string', 'null'], format: 'date-time' },
    endedAt: { type: ['string', 'null'], format: 'date-time' },
    outcome: { type: 'string' },
    worker: { type: ['string', 'null'] },
    error: {},
  },
} as const

const idParams = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', format: 'uuid' } },
} as const

const schemas = {
  taskDetail: {
    tags: ['workflows'],
    summary: 'One task of a workflow: its data, result and error (decrypted), and its attempts',
    security: [{ tenantKey: [] }],
    params: {
      type: 'object',
      required: ['id', 'key'],
      properties: { id: { type: 'string', format: 'uuid' }, key: { type: 'string', maxLength: 200 } },
    },
    response: {
      200: {
        description: 'the task',
        type: 'object',
        required: ['workflowId', 'task', 'attempts'],
        properties: {
          workflowId: { type: 'string', format: 'uuid' },
          task: {
            type: 'object',
            additionalProperties: true,
            description:
              'the task as in a Workflow (see Task), with `data`: what the workflow gave it (decrypted)',
          },
          attempts: { type: 'array', items: attempt },
        },
      },
      ...problems(400, 401, 403, 404),
    },
  },
  attempts: {
    tags: ['workflows'],
    summary: "Every task's attempts with their timings (a timeline), from the audit trail",
    security: [{ tenantKey: [] }],
    params: idParams,
    response: {
      200: {
        description: 'attempts by task',
        type: 'object',
        required: ['workflowId', 'tasks'],
        properties: {
          workflowId: { type: 'string', format: 'uuid' },
          tasks: {
            type: 'array',
            items: {
              type: 'object',
              required: ['taskId', 'key', 'attempts'],
              properties: {
                taskId: { type: 'string', format: 'uuid' },
                key: { type: 'string' },
                attempts: { type: 'array', items: attempt },
              },
            },
          },
        },
      },
      ...problems(400, 401, 403, 404),
    },
  },
  events: {
    tags: ['workflows'],
    summary: 'Server-sent events: the workflows of the tenant that change, as they change',
    description:
      'A `text/event-stream` (authenticate with the Authorization header; browsers read it with fetch()). Events: `ready` (read the state now: changes after it are sent), `progress` `{"workflows": [ids] | "*"}` (these workflows changed: read them again), `resync` (events may have been missed: read everything again). Send the last event id as `Last-Event-ID` when reconnecting to get what was missed. Fed by LISTEN/NOTIFY, not polling.',
    security: [{ tenantKey: [] }],
    response: {
      200: {
        description: 'the event stream',
        content: { 'text/event-stream': { schema: { type: 'string' } } },
      },
      ...problems(401, 403),
    },
  },
}

type App = FastifyInstance<RawServerDefault, any, any, Logger>

export function registerConsole(
  app: App,
  engine: Engine,
  tenantAuth: (request: FastifyRequest) => Promise<void>,
  tenantOf: (request: FastifyRequest) => TenantHandle,
): LiveHub {
  const tx = async <T>(tenant: TenantHandle, fn: Parameters<typeof withTenantTx<T>>[2]) => {
    const { pool } = await engine.storeOf(tenant.scope)
    return withTenantTx(pool, tenant.scope, fn)
  }
  const auditOf = async (tenant: TenantHandle, workflowId: string, taskId: string | null) =>
    tx(tenant, async (db) => {
      const { rows } = await db.executeSql(
        `SELECT task_id, action_type, action_data, timestamp AS at FROM agent_audit_log
         WHERE tenant_id = $1 AND workflow_id = $2 AND task_id IS NOT NULL AND ($3::uuid IS NULL OR task_id = $3)
         ORDER BY id`,
        [tenant.id, workflowId, taskId],
      )
      return rows as AuditRow[]
    })

  app.get<{ Params: { id: string; key: string } }>(
    '/v1/workflows/:id/tasks/:key',
    { schema: schemas.taskDetail, preHandler: tenantAuth },
    async (request) => {
      const tenant = tenantOf(request)
      const { id, key } = request.params
      requireUuid(id, 'workflow id')
      const ring = engine.keyRing
      const row = await tx(tenant, async (db) => {
        const { rows } = await db.executeSql(
          `SELECT id, task_key, agent_id, agent_version, task_type, status, dependencies, attempt, failures, data,
             result, error, queued_at, started_at, completed_at, wait->>'type' AS wait_type,
             wait->>'name' AS wait_name, wait_deadline
           FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2 AND task_key = $3`,
          [tenant.id, id, key],
        )
        return rows[0]
      })
      if (!row) throw new NotFoundError(`task ${key} of workflow ${id}`)
      const audit = await auditOf(tenant, id, row.id)
      return {
        workflowId: id,
        task: {
          id: row.id,
          key: row.task_key,
          agent: row.agent_id,
          agentVersion: row.agent_version,
          type: row.task_type,
          status: row.status,
          dependsOn: row.dependencies,
          attempt: row.attempt,
          failures: row.failures,
          data: ring.decrypt(tenant.id, 'task.data', row.data),
          result: ring.decrypt(tenant.id, 'task.result', row.result),
          error: row.error,
          queuedAt: row.queued_at,
          startedAt: row.started_at,
          completedAt: row.completed_at,
          ...(row.wait_type
            ? { wait: { type: row.wait_type, name: row.wait_name, deadline: row.wait_deadline ?? null } }
            : {}),
        },
        attempts: attemptsFrom(audit).get(row.id) ?? [],
      }
    },
  )

  app.get<{ Params: { id: string } }>(
    '/v1/workflows/:id/attempts',
    { schema: schemas.attempts, preHandler: tenantAuth },
    async (request) => {
      const tenant = tenantOf(request)
      const { id } = request.params
      requireUuid(id, 'workflow id')
      const tasks = await tx(tenant, async (db) => {
        const { rows } = await db.executeSql(
          'SELECT id, task_key FROM agent_coordination WHERE tenant_id = $1 AND workflow_id = $2 ORDER BY created_at, task_key',
          [tenant.id, id],
        )
        return rows as { id: string; task_key: string }[]
      })
      if (tasks.length === 0) await tenant.getWorkflow(id) // NotFoundError for an unknown workflow
      const attempts = attemptsFrom(await auditOf(tenant, id, null))
      return {
        workflowId: id,
        tasks: tasks.map((t) => ({ taskId: t.id, key: t.task_key, attempts: attempts.get(t.id) ?? [] })),
      }
    },
  )

  const hub = new LiveHub(engine)
  app.addHook('preClose', async () => hub.close())
  app.get('/v1/events', { schema: schemas.events, preHandler: tenantAuth }, async (request, reply) => {
    const last = request.headers['last-event-id']
    reply.hijack()
    reply.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-accel-buffering': 'no',
      'x-request-id': request.id,
    })
    try {
      await hub.open(tenantOf(request), reply.raw, typeof last === 'string' ? last : undefined)
    } catch (error) {
      request.log.warn({ err: { message: (error as Error).message } }, 'event stream failed to open')
      reply.raw.end(`event: error\ndata: ${JSON.stringify({ message: 'the stream could not start' })}\n\n`)
    }
  })
  return hub
}
