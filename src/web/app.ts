// The HTTP API of the `web` process: Fastify with the engine's pino logger, JSON Schema validation of
// every request (src/web/schemas.ts), errors as problem+json (src/web/problems.ts). Routes are thin:
// authenticate, call the engine's tenant handle, shape the answer. A tenant sees only its own
// workflows; another tenant's id is "not found", like an id that does not exist, so ids do not leak.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto'
import swagger from '@fastify/swagger'
import Fastify, { type FastifyRequest } from 'fastify'
import { assertExactNumbers, type Json } from '../core/json.ts'
import type { WorkflowStatus } from '../core/task-state.ts'
import type { Engine, TenantHandle } from '../engine.ts'
import type { DeliveryResult } from '../flow/waits.ts'
import { registerOpsRoutes } from './ops-routes.ts'
import { clientErrorHandler, HttpProblem, errorHandler, problem, sendProblem } from './problems.ts'
import { routes, sharedSchemas } from './schemas.ts'
import { registerConsole } from './console.ts'
import { registerUi } from './ui.ts'
import { registerUsageRoutes } from './usage-routes.ts'

export interface AppOptions {
  /** Bearer token of the admin API; undefined disables it (503). Defaults to the engine's config. */
  adminToken?: string | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    tenant: TenantHandle | null
  }
}

/** A client-chosen request id is kept (and becomes the workflow's correlation id) if it is sane. */
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

export async function buildApp(engine: Engine, options: AppOptions = {}) {
  const adminToken = 'adminToken' in options ? options.adminToken : engine.config.adminToken
  const app = Fastify({
    loggerInstance: engine.log,
    // The largest payload the engine accepts, plus room for the envelope around it.
    bodyLimit: engine.config.maxPayloadBytes + 64 * 1024,
    // Room for an approval name of 200 characters in the path, percent-encoded (the schema limits it).
    routerOptions: { maxParamLength: 2400 },
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers['x-request-id']
      return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID()
    },
    // Unknown body fields are refused (a mistyped idempotencyKey must not be silently dropped).
    ajv: { customOptions: { removeAdditional: false } },
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // A malformed URL (a broken %-escape) or an overlong path parameter is answered by Fastify
    // itself, in plain JSON and past the hooks: answer it as problem+json like any bad request.
    frameworkErrors: (error, request, reply) => {
      reply.header('x-request-id', request.id)
      void errorHandler(error, request, reply)
    },
    // Errors Node.js answers before Fastify has a request (headers over 16 KB: 431; a request too
    // slow: 408; unparsable HTTP: 400): problem+json too, not Fastify's own JSON.
    clientErrorHandler: clientErrorHandler,
  })
  app.decorateRequest('tenant', null)
  // Bodies are JSON only: anything else is a 415, not a string that fails validation.
  app.removeContentTypeParser('text/plain')
  // Fastify's JSON parser (which refuses __proto__ and constructor.prototype), then the numbers:
  // one that a JavaScript number cannot hold exactly (a 40-digit integer, 1e-400) is refused
  // (invalid_input, naming its path) rather than stored as another value.
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = typeof body === 'string' ? body : body.toString('utf8')
    void parseJson(request, text, (error: Error | null, value?: unknown) => {
      if (error) return done(error, undefined)
      try {
        assertExactNumbers(text)
      } catch (refused) {
        return done(refused as Error, undefined)
      }
      done(null, value)
    })
  })
  for (const schema of sharedSchemas) app.addSchema(schema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'equilateral-agents',
        version: '1',
        description:
          'Start and follow durable multi-agent workflows. Authenticate with `Authorization: Bearer <tenant API key>`; the admin API takes the ADMIN_TOKEN instead. Errors are application/problem+json with a stable `code`.',
      },
      components: {
        securitySchemes: {
          tenantKey: { type: 'http', scheme: 'bearer', description: "the tenant's API key" },
          adminToken: { type: 'http', scheme: 'bearer', description: 'the ADMIN_TOKEN of the web process' },
        },
      },
    },
    refResolver: {
      buildLocalReference: (json, _base, _fragment, i) =>
        typeof json.$id === 'string' ? json.$id : `def-${i}`,
    },
    transformObject: (document) =>
      withWorkflowInputs(engine, (document as { openapiObject: Record<string, any> }).openapiObject),
  })

  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, problem('not_found', `no route ${request.method} ${request.url}`, request.url)),
  )
  app.addHook('onSend', async (request, reply) => {
    reply.header('x-request-id', request.id)
  })

  const tenantAuth = async (request: FastifyRequest) => {
    const key = bearerToken(request)
    if (!key)
      throw new HttpProblem('unauthorized', 'send the tenant API key as `Authorization: Bearer <key>`')
    try {
      request.tenant = await engine.tenantByApiKey(key)
    } catch (error) {
      if ((error as { code?: string }).code === 'unknown_tenant') {
        throw new HttpProblem('unauthorized', 'the API key is not valid')
      }
      throw error
    }
  }
  const adminAuth = async (request: FastifyRequest) => {
    if (!adminToken) throw new HttpProblem('admin_disabled', 'set ADMIN_TOKEN to enable the admin API')
    const token = bearerToken(request)
    if (!token || !sameSecret(token, adminToken)) {
      throw new HttpProblem('unauthorized', 'send the admin token as `Authorization: Bearer <ADMIN_TOKEN>`')
    }
  }
  const tenantOf = (request: FastifyRequest): TenantHandle => request.tenant!
  // Long-polls in flight: on shutdown each is answered at once with the workflow as it is (close()
  // waits for requests in flight, and a platform's stop timeout is often shorter than a wait).
  const longPolls = new Set<AbortController>()
  let shuttingDown = false
  app.addHook('preClose', async () => {
    shuttingDown = true
    for (const poll of longPolls) poll.abort(new Error('the server is shutting down'))
  })

  // --- workflows (tenant API key) -------------------------------------------------------------
  app.post<{ Body: { type: string; input?: Json; idempotencyKey?: string; subjectKey?: string } }>(
    '/v1/workflows',
    { schema: routes.startWorkflow, preHandler: tenantAuth },
    async (request, reply) => {
      const { type, input, idempotencyKey, subjectKey } = request.body
      const started = await tenantOf(request).startWorkflow(type, input ?? null, {
        correlationId: request.id,
        ...(idempotencyKey ? { idempotencyKey } : {}),
        ...(subjectKey ? { subjectKey } : {}),
      })
      reply.header('location', `/v1/workflows/${started.id}`)
      return reply.code(started.created ? 201 : 200).send(started)
    },
  )
  app.get<{
    Querystring: {
      status?: WorkflowStatus
      type?: string
      limit?: number
      cursor?: string
      id?: string
      correlationId?: string
      idempotencyKey?: string
      since?: string
      until?: string
    }
  }>('/v1/workflows', { schema: routes.listWorkflows, preHandler: tenantAuth }, async (request) =>
    tenantOf(request).listWorkflows(request.query),
  )
  app.get<{ Params: { id: string }; Querystring: { wait?: string } }>(
    '/v1/workflows/:id',
    { schema: routes.getWorkflow, preHandler: tenantAuth },
    async (request, reply) => {
      const waitMs = request.query.wait === undefined ? 0 : parseWait(request.query.wait)
      if (waitMs === 0) return tenantOf(request).getWorkflow(request.params.id)
      // A long-poll: answered when the workflow ends or at the bound, whichever comes first. A
      // client that goes away stops the wait (its place among the result waiters is freed).
      const gone = new AbortController()
      const onClose = () => gone.abort(new Error('the client disconnected'))
      reply.raw.once('close', onClose)
      longPolls.add(gone)
      try {
        const workflow = await tenantOf(request).getWorkflow(request.params.id, {
          waitMs,
          signal: gone.signal,
        })
        // Its keep-alive connection would hold the server's close until it times out.
        if (shuttingDown) reply.header('connection', 'close')
        return workflow
      } finally {
        longPolls.delete(gone)
        reply.raw.off('close', onClose)
      }
    },
  )
  app.get<{ Params: { id: string } }>(
    '/v1/workflows/:id/audit',
    { schema: routes.workflowAudit, preHandler: tenantAuth },
    async (request) => ({
      workflowId: request.params.id,
      entries: await tenantOf(request).history(request.params.id),
    }),
  )
  app.post<{ Params: { id: string }; Body: { reason?: string } | null }>(
    '/v1/workflows/:id/cancel',
    { schema: routes.cancelWorkflow, preHandler: tenantAuth },
    async (request) =>
      tenantOf(request).cancelWorkflow(request.params.id, {
        reason: request.body?.reason ?? 'cancelled through the API',
        actor: `api:${request.id}`,
      }),
  )

  registerOpsRoutes(app, { tenant: tenantAuth })

  // The console's task detail, attempts and live event stream (src/web/console.ts).
  registerConsole(app, engine, tenantAuth, tenantOf)

  // --- events and approvals (tenant API key) -------------------------------------------------
  // 200 when the delivery took effect (consumed) or had already been made (duplicate), 202 when it
  // is kept for a task that does not wait yet: a webhook that retries sees a 2xx either way.
  const deliveryStatus = (result: DeliveryResult) => (result.status === 'kept' ? 202 : 200)
  app.post<{
    Params: { id: string }
    Body: { eventId: string; name: string; key?: string; payload?: Json; actor?: string }
  }>(
    '/v1/workflows/:id/events',
    { schema: routes.sendEvent, preHandler: tenantAuth },
    async (request, reply) => {
      const { eventId, name, key, payload, actor } = request.body
      const result = await tenantOf(request).sendEvent(request.params.id, {
        eventId,
        name,
        ...(key !== undefined ? { key } : {}),
        ...(payload !== undefined ? { payload } : {}),
        // Stable when absent: a retried delivery must match the first one to be a duplicate.
        actor: actor ?? 'api',
      })
      return reply.code(deliveryStatus(result)).send(result)
    },
  )
  app.post<{
    Params: { id: string; name: string }
    Body: { approved: boolean; approver: string; comment?: string; eventId?: string }
  }>(
    '/v1/workflows/:id/approvals/:name',
    { schema: routes.decideApproval, preHandler: tenantAuth },
    async (request, reply) => {
      const { approved, approver, comment, eventId } = request.body
      const result = await tenantOf(request).decide(request.params.id, {
        name: request.params.name,
        approved,
        approver,
        ...(comment !== undefined ? { comment } : {}),
        ...(eventId !== undefined ? { eventId } : {}),
      })
      return reply.code(deliveryStatus(result)).send(result)
    },
  )

  // --- tenants (admin token) ------------------------------------------------------------------
  app.post<{ Body: { id: string; name?: string; tier?: string; complianceProfile?: never } }>(
    '/v1/admin/tenants',
    { schema: routes.createTenant, preHandler: adminAuth },
    async (request, reply) => reply.code(201).send(await engine.createTenant(request.body)),
  )
  app.get('/v1/admin/tenants', { schema: routes.listTenants, preHandler: adminAuth }, async () => ({
    tenants: await engine.listTenants(),
  }))
  app.post<{ Params: { id: string } }>(
    '/v1/admin/tenants/:id/suspend',
    { schema: routes.suspendTenant, preHandler: adminAuth },
    async (request) => {
      await engine.suspendTenant(request.params.id)
      return { id: request.params.id, status: 'suspended' }
    },
  )
  app.post<{ Params: { id: string } }>(
    '/v1/admin/tenants/:id/resume',
    { schema: routes.resumeTenant, preHandler: adminAuth },
    async (request) => {
      await engine.resumeTenant(request.params.id)
      return { id: request.params.id, status: 'active' }
    },
  )
  app.post<{ Params: { id: string } }>(
    '/v1/admin/tenants/:id/rotate-key',
    { schema: routes.rotateKey, preHandler: adminAuth },
    async (request) => ({ id: request.params.id, apiKey: await engine.rotateApiKey(request.params.id) }),
  )

  // --- analytics (tenant key: that tenant; admin token: every tenant) --------------------------
  app.get<{ Querystring: { since?: string; until?: string } }>(
    '/v1/stats',
    { schema: routes.stats },
    async (request) => {
      const window = {
        ...(request.query.since ? { since: new Date(request.query.since) } : {}),
        ...(request.query.until ? { until: new Date(request.query.until) } : {}),
      }
      const token = bearerToken(request)
      if (adminToken && token && sameSecret(token, adminToken)) return engine.stats(window)
      await tenantAuth(request)
      return tenantOf(request).stats(window)
    },
  )

  registerUsageRoutes(app, engine, { tenant: tenantAuth, admin: adminAuth })

  // --- operations -------------------------------------------------------------------------------
  // Probes come every few seconds: their requests are logged only when they fail (warn and up).
  app.get('/healthz', { schema: routes.healthz, logLevel: 'warn' }, async () => ({ status: 'ok' }))
  app.get('/readyz', { schema: routes.readyz, logLevel: 'warn' }, async (_request, reply) => {
    const readiness = await engine.readiness()
    return reply.code(readiness.ready ? 200 : 503).send(readiness)
  })
  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    const { contentType, body } = await engine.metrics.expose()
    return reply.type(contentType).send(body)
  })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
  // A person who opens the server's address in a browser lands on the page.
  app.get('/', { schema: { hide: true } }, async (_request, reply) => reply.redirect('/ui/'))
  registerUi(app)

  return app
}

/** The longest long-poll `GET /v1/workflows/:id?wait=` holds a request (under common proxy timeouts). */
export const MAX_WAIT_MS = 60_000

/** `?wait=30s`, `?wait=500ms`, `?wait=30` (seconds); the schema checked the shape. */
function parseWait(raw: string): number {
  const match = /^(\d+)(ms|s)?$/.exec(raw)
  const ms = match ? Number(match[1]) * (match[2] === 'ms' ? 1 : 1000) : NaN
  if (!(ms <= MAX_WAIT_MS)) {
    throw Object.assign(
      new HttpProblem('invalid_request', `wait must be at most ${MAX_WAIT_MS / 1000}s (got ${raw})`),
      { path: 'querystring.wait' },
    )
  }
  return ms
}

/**
 * The OpenAPI document with what this process knows of its workflow types: when some have an input
 * schema, the start request is one of a shape per type (`StartWorkflow.<type>`, its `input` the
 * type's schema), or the general shape for the types without one.
 */
function withWorkflowInputs(engine: Engine, doc: Record<string, any>): Record<string, any> {
  const typed = engine.workflowTypes
    .map((type) => engine.workflow(type))
    .filter((def) => def.input !== null)
    .sort((a, b) => (a.name < b.name ? -1 : 1))
  const body = doc.paths?.['/v1/workflows']?.post?.requestBody?.content?.['application/json']
  if (typed.length === 0 || !body?.schema) return doc
  const general = body.schema as { properties: Record<string, any> }
  const variants: Record<string, unknown>[] = []
  for (const def of typed) {
    const name = `StartWorkflow.${def.name}`
    const input = def.input!
    doc.components.schemas[name] = {
      ...general,
      description: `Starts a "${def.name}" workflow (version ${def.version}); its input is checked against this schema${input.jsonSchema ? '' : ` (a ${input.vendor} validator that publishes no JSON Schema)`}, and a refusal is a 422 invalid_input naming the path of the first problem.`,
      properties: {
        ...general.properties,
        type: { type: 'string', const: def.name },
        input: input.jsonSchema ?? {
          description: `the workflow input, checked by a ${input.vendor} validator`,
        },
      },
    }
    variants.push({ $ref: `#/components/schemas/${name}` })
  }
  const untyped = engine.workflowTypes.filter((t) => engine.workflow(t).input === null)
  if (untyped.length > 0) {
    variants.push({
      ...general,
      properties: { ...general.properties, type: { ...general.properties.type, enum: untyped.sort() } },
    })
  }
  body.schema = { oneOf: variants }
  return doc
}

function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  const match = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
  return match?.[1]
}

/** Compares secrets in constant time (over their digests, so lengths do not leak either). */
function sameSecret(given: string, expected: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest()
  return timingSafeEqual(digest(given), digest(expected))
}
