// Identifiers that come from outside (HTTP paths, CLI arguments): checked before they reach SQL, so a
// malformed id is a clear `invalid_input` instead of a PostgreSQL cast error.
import { InvalidInputError, TenantError } from '../errors.ts'

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export function isUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID.test(value)
}

/** Returns the id in lower case (as PostgreSQL prints a uuid), or throws `invalid_input`. */
export function requireUuid(value: unknown, what: string): string {
  if (!isUuid(value)) throw new InvalidInputError(`${what} must be a UUID (got ${JSON.stringify(value)})`)
  return value.toLowerCase()
}

const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/

export function assertTenantId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !TENANT_ID.test(id)) {
    throw new TenantError(
      'invalid_tenant_id',
      `tenant id ${JSON.stringify(String(id)).slice(0, 80)} must be 1-63 characters of letters, digits, '_' and '-', starting with a letter or digit`,
    )
  }
}
