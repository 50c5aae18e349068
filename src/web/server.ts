// Starting and stopping the HTTP server of a `web` (or `dev`) process.
import type { Engine } from '../engine.ts'
import { type AppOptions, buildApp } from './app.ts'

export interface WebServer {
  app: Awaited<ReturnType<typeof buildApp>>
  /** e.g. http://127.0.0.1:3000 */
  url: string
  port: number
  /** Stops accepting connections and waits for requests in flight. */
  close: () => Promise<void>
}

export async function startWeb(
  engine: Engine,
  options: AppOptions & { port?: number; host?: string } = {},
): Promise<WebServer> {
  const app = await buildApp(engine, options)
  const port = options.port ?? engine.config.port
  const host = options.host ?? engine.config.host
  await app.listen({ port, host })
  const address = app.server.address()
  const bound = typeof address === 'object' && address ? address.port : port
  const shown = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  return { app, url: `http://${shown}:${bound}`, port: bound, close: () => app.close() }
}
