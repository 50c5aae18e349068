// A worker's Prometheus endpoint: GET /metrics on METRICS_PORT, nothing else. Workers serve no
// HTTP otherwise, so this is a bare node:http listener rather than the web app. A port already in
// use (a second worker on the same host) is a warning, not a reason to stop working: that worker
// serves no metrics until it is restarted with a METRICS_PORT of its own.
import type { Logger } from 'pino'
import type { Metrics } from './metrics.ts'

// Not `import http from 'node:http'`: an ES import of node:http reads every export, and one of them
// loads Node's bundled fetch (undici): ~40 ms of CPU and ~14 MB at every worker start.
const http = process.getBuiltinModule('node:http')

export interface MetricsServer {
  port: number
  close: () => Promise<void>
}

export async function startMetricsServer(
  metrics: Metrics,
  options: { port: number; host?: string; log?: Logger },
): Promise<MetricsServer | undefined> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try GET /metrics\n')
      return
    }
    metrics.expose().then(
      ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
      (error: unknown) => {
        options.log?.warn({ err: error }, 'metrics collection failed')
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed\n')
      },
    )
  })
  const host = options.host ?? '0.0.0.0'
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(options.port, host, () => resolve())
    })
  } catch (error) {
    if ((error as { code?: string }).code !== 'EADDRINUSE') throw error
    options.log?.warn(
      { port: options.port, host },
      `metrics port ${options.port} is in use (another worker on this host?): this process serves no /metrics and goes on working; give each worker on a host its own METRICS_PORT, or 0 for none`,
    )
    return undefined
  }
  const address = server.address()
  return {
    port: typeof address === 'object' && address ? address.port : options.port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
