// Errors as RFC 9457 problem details (application/problem+json). Every error the API returns has a
// stable `code` (the library's error code, or one of the HTTP layer's own below), a `title` for
// people and, where it helps, a `detail`; an unexpected error is logged and answered with a bare 500,
// never its message (it could name tables, keys or data). A database that cannot be reached (down,
// restarting, the connection dropped) is a 503 `database_unavailable` with Retry-After, for the
// client to retry (a start is safe to repeat with its idempotencyKey: a connection may drop after
// the commit).
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { isTransient } from '../flow/completer.ts'

export interface Problem {
  type: string
  title: string
  status: number
  code: string
  detail?: string
  instance?: string
  /** JSON path or request part the problem is about, when known. */
  path?: string
}

/** The library's error codes (src/errors.ts) and the HTTP layer's own, with their status and title. */
const STATUS: Record<string, [number, string]> = {
  invalid_request: [400, 'The request is malformed'],
  invalid_json: [400, 'The body is not valid JSON'],
  invalid_input: [422, 'The input cannot be accepted'],
  invalid_tenant_id: [422, 'The tenant id is not valid'],
  invalid_tier: [422, 'The tier is not valid'],
  unknown_workflow_type: [422, 'Unknown workflow type'],
  unauthorized: [401, 'Missing or invalid credentials'],
  tenant_suspended: [403, 'The tenant is suspended'],
  not_found: [404, 'Not found'],
  unknown_tenant: [404, 'Unknown tenant'],
  idempotency_conflict: [409, 'The idempotency key was used for another workflow type'],
  workflow_not_running: [409, 'The workflow has ended and takes no more events'],
  no_such_wait: [409, 'Nothing in the workflow waits, or will wait, for this'],
  event_conflict: [409, 'The event id was delivered before with other contents'],
  workflow_not_retryable: [409, 'Only a failed or cancelled workflow can be retried'],
  request_key_conflict: [409, 'The request key was used for another request'],
  unknown_task: [422, 'The workflow has no task with this key'],
  not_an_approver: [403, 'Not an approver of this approval'],
  tenant_exists: [409, 'The tenant exists already'],
  tenant_provisioning: [409, "The tenant's database is still being created"],
  move_refused: [409, 'The tenant cannot be moved as it is'],
  unknown_server: [422, 'Unknown database server'],
  tenant_database_mismatch: [503, "The tenant's database is not the one the directory names"],
  too_many_databases: [503, 'This process has as many tenant databases open as it may'],
  payload_too_large: [413, 'The body is too large'],
  headers_too_large: [431, 'The request headers are too large'],
  request_timeout: [408, 'The request took too long to arrive'],
  unsupported_media_type: [415, 'The body must be application/json'],
  admin_disabled: [503, 'The admin API is disabled'],
  owner_required: [503, "Tenant administration needs the database owner's connection"],
  unavailable: [503, 'The service is not ready'],
  database_unavailable: [503, 'The database is unavailable'],
  internal: [500, 'Internal error'],
}

/**
 * Fastify's clientErrorHandler: what Node.js refuses before there is a request (headers over its
 * limit, a request too slow, unparsable HTTP) is answered as problem+json on the raw socket.
 */
export function clientErrorHandler(error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const code =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? 'headers_too_large'
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'request_timeout'
        : 'invalid_request'
  const detail =
    code === 'headers_too_large'
      ? 'the request headers are over the server limit (16 KB by default): send less in them'
      : undefined
  const body = JSON.stringify(problem(code, detail))
  if (socket.writable) {
    const status = problem(code, undefined).status
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    )
  }
  socket.destroy(error)
}

export class HttpProblem extends Error {
  readonly code: string
  constructor(code: string, detail?: string) {
    super(detail ?? STATUS[code]?.[1] ?? code)
    this.code = code
  }
}

export function problem(code: string, detail: string | undefined, instance?: string): Problem {
  const [status, title] = STATUS[code] ?? STATUS.internal!
  return {
    type: `https://equilateral-agents.dev/problems/${code}`,
    title,
    status,
    code: STATUS[code] ? code : 'internal',
    ...(detail ? { detail } : {}),
    ...(instance ? { instance } : {}),
  }
}

/** Fastify's own errors (body parsing, validation, limits) in the same vocabulary. */
function fromFastify(error: FastifyError): { code: string; detail: string; path?: string } | undefined {
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'invalid_json', detail: error.message }
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'payload_too_large', detail: error.message }
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'unsupported_media_type', detail: error.message }
    case 'FST_ERR_VALIDATION': {
      const path = validationPath(error)
      return { code: 'invalid_request', detail: validationDetail(error), ...(path ? { path } : {}) }
    }
  }
  // secure-json-parse refuses __proto__ and constructor.prototype keys with a SyntaxError.
  if (error instanceof SyntaxError) return { code: 'invalid_json', detail: error.message }
  if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
    return { code: 'invalid_request', detail: error.message }
  }
  return undefined
}

/** Names every offending field, including the unknown ones (ajv's message alone does not). */
function validationDetail(error: FastifyError): string {
  const part = error.validationContext ?? 'request'
  return (error.validation ?? [])
    .map((v) => {
      const extra = (v.params as { additionalProperty?: string }).additionalProperty
      return `${part}${v.instancePath.replaceAll('/', '.')} ${v.message ?? 'is invalid'}${extra ? `: "${extra}"` : ''}`
    })
    .join('; ')
}

/**
 * Where the first offending value is: a JSON path into the body (`$.approved`, `$.payload.x`, the
 * same paths the library's invalid_input errors name), or `querystring.limit`, `params.id`.
 */
function validationPath(error: FastifyError): string | undefined {
  const first = error.validation?.[0]
  if (!first) return undefined
  const params = first.params as { additionalProperty?: unknown; missingProperty?: unknown }
  const named = params.additionalProperty ?? params.missingProperty
  const segments = first.instancePath
    .split('/')
    .slice(1)
    .map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'))
  if (typeof named === 'string') segments.push(named)
  const part = error.validationContext ?? 'body'
  const path = segments
    .map((s) =>
      /^\d+$/.test(s) ? `[${s}]` : /^[A-Za-z_$][\w$]*$/.test(s) ? `.${s}` : `[${JSON.stringify(s)}]`,
    )
    .join('')
  return part === 'body' ? `$${path}` : `${part}${path}`
}

export function sendProblem(reply: FastifyReply, p: Problem): FastifyReply {
  if (p.status === 401) reply.header('www-authenticate', 'Bearer')
  return reply.code(p.status).type('application/problem+json').send(p)
}

/** Seconds a client is told to wait before retrying a request the database could not serve. */
const DATABASE_RETRY_AFTER_SECONDS = 5

export function errorHandler(error: FastifyError, request: FastifyRequest, reply: FastifyReply) {
  const code = (error as { code?: unknown }).code
  const known = typeof code === 'string' && STATUS[code] ? code : undefined
  const mapped = known ? { code: known, detail: error.message } : fromFastify(error)
  if (!mapped && isTransient(error)) {
    // A warning without the stack: every request fails the same way until the database is back.
    request.log.warn(
      { err: { message: error.message, ...(typeof code === 'string' ? { code } : {}) } },
      'database unavailable',
    )
    reply.header('retry-after', String(DATABASE_RETRY_AFTER_SECONDS))
    return sendProblem(
      reply,
      problem('database_unavailable', 'the database cannot be reached; retry later', request.url),
    )
  }
  if (!mapped) {
    request.log.error({ err: error }, 'request failed')
    return sendProblem(reply, problem('internal', undefined, request.url))
  }
  const p = problem(mapped.code, mapped.detail, request.url)
  const path = known ? (error as { path?: unknown }).path : (mapped as { path?: string }).path
  return sendProblem(reply, typeof path === 'string' ? { ...p, path } : p)
}
