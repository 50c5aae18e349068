// The process logger: pino JSON. Payload contents are never logged by the engine (they may be
// personal data); ids are.
import { createRequire } from 'node:module'
import { pino, type Logger } from 'pino'

/**
 * JSON lines, or, with `pretty` (dev mode on a terminal), pino-pretty's colourised lines when the
 * package is installed (a devDependency: a production install has none and logs JSON).
 */
export function createLogger(
  level = process.env.LOG_LEVEL ?? 'info',
  options: { pretty?: boolean } = {},
): Logger {
  const base = { level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }
  if (options.pretty && prettyAvailable()) {
    return pino({
      ...base,
      transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } },
    })
  }
  return pino(base)
}

function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty')
    return true
  } catch {
    return false
  }
}
