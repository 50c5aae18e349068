// A tenant's compliance profile: which regimes apply (GDPR, SOX, HIPAA) and how long their compliance
// events are kept, and how long coordination data and audit rows are kept. Stored as given in
// equilateral.tenants.compliance_profile (jsonb), which the compliance-event trigger reads through
// equilateral.compliance_regimes (drizzle/control/0003_compliance_regimes.sql); validated here, once,
// when it is set, so what is stored is always something that function understands.
import { COMPLIANCE_TYPES } from '../db/schema/values.ts'
import { InvalidInputError } from '../errors.ts'

export type ComplianceRegime = (typeof COMPLIANCE_TYPES)[number]
export const COMPLIANCE_REGIMES: readonly ComplianceRegime[] = COMPLIANCE_TYPES

export interface RegimePolicy {
  /** Days each compliance event of this regime is kept (its retention_until), 1 to 36500. */
  retentionDays: number
}

export interface ComplianceProfile {
  GDPR?: RegimePolicy
  SOX?: RegimePolicy
  HIPAA?: RegimePolicy
  /**
   * Days a workflow and its tasks are kept after the workflow ended; then the retention purge
   * deletes them. Absent: kept until erased.
   */
  dataRetentionDays?: number
  /**
   * Days audit rows are kept; the purge deletes whole sealed blocks whose rows are all older.
   * Absent: the longest retention of the regimes that apply; with no regime, kept. It may not be
   * shorter than a regime's retention (a SOX audit trail cannot go before its SOX events).
   */
  auditRetentionDays?: number
}

const MAX_DAYS = 36500
const KEYS = new Set<string>([...COMPLIANCE_REGIMES, 'dataRetentionDays', 'auditRetentionDays'])

function days(value: unknown, path: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_DAYS) {
    throw new InvalidInputError(`${path} must be a whole number of days from 1 to ${MAX_DAYS}`, path)
  }
  return value
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * Validates a profile (e.g. `{ GDPR: { retentionDays: 30 }, SOX: { retentionDays: 2555 } }`) and
 * returns a normalised copy holding only known keys. Refuses anything else with an
 * InvalidInputError naming the path, before anything is written.
 */
export function parseComplianceProfile(value: unknown, path = '$.complianceProfile'): ComplianceProfile {
  if (!isObject(value)) throw new InvalidInputError(`${path} must be an object`, path)
  for (const key of Object.keys(value)) {
    if (!KEYS.has(key)) {
      throw new InvalidInputError(
        `${path} has unknown key ${JSON.stringify(key).slice(0, 40)}; known: ${[...KEYS].join(', ')}`,
        `${path}.${key}`,
      )
    }
  }
  const profile: ComplianceProfile = {}
  for (const regime of COMPLIANCE_REGIMES) {
    const policy = value[regime]
    if (policy === undefined) continue
    if (!isObject(policy))
      throw new InvalidInputError(`${path}.${regime} must be an object`, `${path}.${regime}`)
    for (const key of Object.keys(policy)) {
      if (key !== 'retentionDays') {
        throw new InvalidInputError(
          `${path}.${regime} has unknown key ${JSON.stringify(key).slice(0, 40)}`,
          `${path}.${regime}.${key}`,
        )
      }
    }
    profile[regime] = { retentionDays: days(policy.retentionDays, `${path}.${regime}.retentionDays`) }
  }
  if (value.dataRetentionDays !== undefined) {
    profile.dataRetentionDays = days(value.dataRetentionDays, `${path}.dataRetentionDays`)
  }
  if (value.auditRetentionDays !== undefined) {
    const audit = days(value.auditRetentionDays, `${path}.auditRetentionDays`)
    const longest = longestRegimeRetention(profile)
    if (longest !== undefined && audit < longest) {
      throw new InvalidInputError(
        `${path}.auditRetentionDays (${audit}) is shorter than a regime's retention (${longest} days)`,
        `${path}.auditRetentionDays`,
      )
    }
    profile.auditRetentionDays = audit
  }
  return profile
}

/** The regimes that apply, in a fixed order. */
export function regimesOf(profile: ComplianceProfile): ComplianceRegime[] {
  return COMPLIANCE_REGIMES.filter((r) => profile[r] !== undefined)
}

function longestRegimeRetention(profile: ComplianceProfile): number | undefined {
  const all = regimesOf(profile).map((r) => profile[r]!.retentionDays)
  return all.length > 0 ? Math.max(...all) : undefined
}

/** Days audit rows are kept, or undefined: never purged. */
export function auditRetentionDays(profile: ComplianceProfile): number | undefined {
  return profile.auditRetentionDays ?? longestRegimeRetention(profile)
}
