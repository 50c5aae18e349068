// The read-only web page of the `web` process, at /ui/: plain files from src/web/ui/ (no framework,
// no build step) that call the JSON API from the browser with the tenant's key. They are read once,
// here, and served with a strict Content-Security-Policy: scripts and styles from this origin only,
// no inline code, so the page cannot run anything a workflow's data might smuggle in.
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { extname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, RawServerDefault } from 'fastify'
import type { Logger } from 'pino'
import { packagePath } from '../paths.ts'
import { problem, sendProblem } from './problems.ts'

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
}

export const UI_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ')

interface Asset {
  body: Buffer
  type: string
  etag: string
}

/**
 * Where the page's files are: beside this module (src/web/ui/ when running the sources, or
 * dist/src/web/ui/ when the build was given a copy), else under the package root's src/web/ui/
 * (tsc does not copy non-TypeScript files into dist/).
 */
export function uiDirectory(): string | undefined {
  const candidates = [fileURLToPath(new URL('./ui/', import.meta.url)), packagePath('src', 'web', 'ui')]
  return candidates.find((dir) => existsSync(join(dir, 'index.html')))
}

function loadAssets(dir: string): Map<string, Asset> {
  const assets = new Map<string, Asset>()
  for (const name of readdirSync(dir)) {
    const type = CONTENT_TYPES[extname(name)]
    if (!type) continue
    const body = readFileSync(join(dir, name))
    const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`
    assets.set(name, { body, type, etag })
  }
  return assets
}

/** GET /ui/ (the page) and /ui/<file>; /ui redirects to /ui/ so relative asset URLs resolve. */
export function registerUi(app: FastifyInstance<RawServerDefault, any, any, Logger>): void {
  const dir = uiDirectory()
  if (!dir) {
    app.log.warn('the web page (/ui/) is not served: src/web/ui/ is not in the package')
    return
  }
  const assets = loadAssets(dir)
  const hide = { schema: { hide: true } }

  app.get('/ui', hide, async (_request, reply) => reply.redirect('/ui/', 301))
  app.get<{ Params: { file?: string } }>('/ui/:file', hide, async (request, reply) => {
    const asset = assets.get(request.params.file || 'index.html')
    if (!asset) return sendProblem(reply, problem('not_found', 'no such file', request.url))
    reply
      .header('content-security-policy', UI_CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      // Revalidated on every load (cheap, by ETag), so a deployment's new page is picked up at once.
      .header('cache-control', 'no-cache')
      .header('etag', asset.etag)
    if (request.headers['if-none-match'] === asset.etag) return reply.code(304).send()
    return reply.type(asset.type).send(asset.body)
  })
}
