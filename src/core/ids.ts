// Identifiers that come from outside (HTTP paths, CLI arguments): checked before they reach SQL, so a
// malformed id is a clear `invalid_input` instead of a PostgreSQL cast error.
import { InvalidInputError } from '../errors.ts'

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value)
}

/** Returns the id in lower case (as PostgreSQL prints a uuid), or throws `invalid_input`. */
export function requireUuid(value: unknown, what: string): string {
  if (!isUuid(value)) throw new InvalidInputError(`${what} must be a UUID (got ${JSON.stringify(value)})`)
  return value.toLowerCase()
}
