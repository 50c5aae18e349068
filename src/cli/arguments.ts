// The commands' arguments and options: commander parsers that turn a bad value into a usage error
// (InvalidArgumentError), and JSON given inline or as @file.
import { readFile } from 'node:fs/promises'
import { InvalidArgumentError } from 'commander'
import type { ComplianceProfile } from '../compliance/profile.ts'
import { assertTenantId } from '../core/ids.ts'
import { InvalidInputError } from '../errors.ts'

/** JSON given inline or as @file; `what` names it in errors (`--input`). */
export async function parseJsonArgument(raw: string, what: string): Promise<unknown> {
  let text = raw
  if (raw.startsWith('@')) {
    try {
      text = await readFile(raw.slice(1), 'utf8')
    } catch (error) {
      throw new InvalidInputError(`${what}: cannot read ${raw.slice(1)}: ${(error as Error).message}`)
    }
  }
  try {
    return JSON.parse(text)
  } catch (error) {
    throw new InvalidInputError(`${what} is not valid JSON: ${(error as Error).message}`)
  }
}

export async function parseInput(raw: string | undefined): Promise<unknown> {
  return raw === undefined ? null : parseJsonArgument(raw, '--input')
}

/** A compliance profile given as JSON or @file.json (validated by the engine). */
export async function parseProfile(raw: string): Promise<ComplianceProfile> {
  return (await parseJsonArgument(raw, 'compliance profile')) as ComplianceProfile
}

export function port(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('must be a port number')
  return n
}

/** A duration: `30s`, `5m`, `500ms`, or seconds (`30`), as `?wait=` and timeout(1) read them. */
export function duration(value: string, option: string): number {
  const match = /^(\d+)(ms|s|m|h)?$/.exec(value.trim())
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match?.[2] ?? 's'] ?? 1000
  const ms = match ? Number(match[1]) * unit : NaN
  if (!(ms <= 2_147_483_647))
    throw new InvalidArgumentError(`${option} must be a duration like 30s, 5m or 500ms`)
  return ms
}

export function isoTime(value: string, option: string): Date {
  const at = new Date(value)
  if (Number.isNaN(at.getTime())) throw new InvalidArgumentError(`${option} must be an ISO 8601 time`)
  return at
}

export function tenantId(value: string): string {
  try {
    assertTenantId(value)
  } catch (error) {
    throw new InvalidArgumentError((error as Error).message)
  }
  return value
}

export function positiveInt(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer')
  return n
}
