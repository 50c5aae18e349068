// The process logger: pino JSON. Payload contents are never logged by the engine (they may be
// personal data); ids are.
import { pino, type Logger } from 'pino'

export function createLogger(level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime })
}
