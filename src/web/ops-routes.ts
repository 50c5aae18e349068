// Operating workflows over HTTP (issue 23): retry, replay, dead letters and redrive, for a tenant
// key. Thin: each route calls the tenant handle (src/flow/retry.ts, replay.ts, dead-letters.ts).
// Another tenant's workflow or task is "not found", like one that does not exist (the handle's
// transactions are scoped to the key's tenant: row-level security, or its own schema or database).
import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { TenantHandle } from '../engine.ts'
import { routes } from './schemas.ts'

interface OperatorBody {
  requestKey?: string
  actor?: string
}

export function registerOpsRoutes(
  app: FastifyInstance<any, any, any, any, any>,
  auth: { tenant: (request: FastifyRequest) => Promise<void> },
): void {
  const tenantOf = (request: FastifyRequest): TenantHandle => request.tenant as TenantHandle
  const operator = (request: FastifyRequest, body: OperatorBody | null | undefined) => ({
    actor: body?.actor ?? `api:${request.id}`,
    ...(body?.requestKey !== undefined ? { requestKey: body.requestKey } : {}),
  })

  app.post<{ Params: { id: string }; Body: OperatorBody | null }>(
    '/v1/workflows/:id/retry',
    { schema: routes.retryWorkflow, preHandler: auth.tenant },
    async (request) => tenantOf(request).retryWorkflow(request.params.id, operator(request, request.body)),
  )
  app.post<{ Params: { id: string }; Body: OperatorBody & { from: string } }>(
    '/v1/workflows/:id/replay',
    { schema: routes.replayWorkflow, preHandler: auth.tenant },
    async (request, reply) =>
      reply.code(201).send(
        await tenantOf(request).replayWorkflow(request.params.id, {
          from: request.body.from,
          ...operator(request, request.body),
        }),
      ),
  )
  app.get<{ Querystring: { agent?: string; limit?: number; cursor?: string } }>(
    '/v1/dead-letters',
    { schema: routes.listDeadLetters, preHandler: auth.tenant },
    async (request) => tenantOf(request).deadLetters(request.query),
  )
  app.post<{ Body: OperatorBody & { taskId?: string; agent?: string } }>(
    '/v1/dead-letters/redrive',
    { schema: routes.redriveDeadLetters, preHandler: auth.tenant },
    async (request) => {
      const { taskId, agent } = request.body
      const selection = taskId !== undefined ? { taskId } : { agent: agent as string }
      return tenantOf(request).redrive(selection, operator(request, request.body))
    },
  )
}
