// Slot arithmetic of cron schedules: which instants ("slots") a cron expression names in a time
// zone. Pure (no I/O, no clock): every function takes the instants it works from, so the scheduler
// can judge slots by the database clock. cron-parser does the calendar work (DST included: a local
// time that does not exist on the day the clocks go forward fires moved on by the gap, 02:30 at
// 03:30; an hourly or sub-hourly field fires in both copies of the hour that repeats when they go back).
import { CronExpressionParser, type CronExpression } from 'cron-parser'
import { InvalidInputError } from '../errors.ts'

/** A cron expression with the time zone it is read in (an IANA name such as `Europe/Paris`). */
export interface CronSpec {
  cron: string
  timezone: string
}

/** Most slots one call lists: every caller says how many it can afford, and no call loops for ever. */
export const MAX_SLOTS_PER_CALL = 10_000

const MAX_CRON_LENGTH = 200
/** cron-parser's `H` fields are random unless seeded: a schedule's slots must not depend on who parses it. */
const HASHED = /^H(?:$|[/(])/i
const FIELD = /^[0-9A-Za-z*?,/#-]+$/

/**
 * Checks a cron expression (5 fields, or 6 with seconds first) and a time zone, and returns them
 * trimmed. InvalidInputError naming the field (`$.cron`, `$.timezone`) when either is unusable,
 * including an expression that never fires.
 */
export function validateCron(cron: unknown, timezone: unknown): CronSpec {
  if (typeof cron !== 'string' || cron.trim().length === 0 || cron.length > MAX_CRON_LENGTH) {
    throw new InvalidInputError(
      `cron must be a cron expression of at most ${MAX_CRON_LENGTH} characters`,
      '$.cron',
    )
  }
  const fields = cron.trim().split(/\s+/)
  if (fields.length !== 5 && fields.length !== 6) {
    throw new InvalidInputError(
      `cron must have 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first); "${cron}" has ${fields.length}`,
      '$.cron',
    )
  }
  for (const field of fields) {
    if (!FIELD.test(field) || field.split(',').some((part) => HASHED.test(part))) {
      throw new InvalidInputError(`cron field "${field}" is not valid in "${cron}"`, '$.cron')
    }
  }
  const spec = { cron: fields.join(' '), timezone: validateTimezone(timezone) }
  // Parses, and finds a first slot: some expressions parse but name no date ("0 0 30 2 *").
  nextSlot(spec, new Date(0))
  return spec
}

function validateTimezone(timezone: unknown): string {
  if (typeof timezone !== 'string' || timezone.length === 0 || timezone.length > 64) {
    throw new InvalidInputError(
      'timezone must be an IANA time zone name such as "Europe/Paris"',
      '$.timezone',
    )
  }
  try {
    // The zone's canonical spelling ('utc' is 'UTC'): the same zone declared again keeps its slot.
    return new Intl.DateTimeFormat('en-US', { timeZone: timezone }).resolvedOptions().timeZone
  } catch {
    throw new InvalidInputError(
      `timezone "${timezone}" is not an IANA time zone name (such as "UTC" or "America/New_York")`,
      '$.timezone',
    )
  }
}

function parse(spec: CronSpec, currentDate: Date): CronExpression {
  try {
    return CronExpressionParser.parse(spec.cron, { tz: spec.timezone, currentDate })
  } catch (error) {
    throw new InvalidInputError(`cron "${spec.cron}" is not valid: ${(error as Error).message}`, '$.cron')
  }
}

/** Calls cron-parser's iterator; its "no date found" errors become InvalidInputError. */
function step(expression: CronExpression, direction: 'next' | 'prev', spec: CronSpec): Date | null {
  try {
    return expression[direction]().toDate()
  } catch (error) {
    const message = (error as Error).message
    // Before the epoch, or past cron-parser's search bound (a date no calendar has).
    if (direction === 'prev') return null
    throw new InvalidInputError(
      `cron "${spec.cron}" in ${spec.timezone} names no date after the one asked for (${message})`,
      '$.cron',
    )
  }
}

/** The first slot strictly after `after`. */
export function nextSlot(spec: CronSpec, after: Date): Date {
  return step(parse(spec, after), 'next', spec) as Date
}

/** The latest slot at or before `atOrBefore`, or null when there is none. */
export function latestSlot(spec: CronSpec, atOrBefore: Date): Date | null {
  // cron-parser's prev() is strictly before its current date, which it reads to the millisecond.
  return step(parse(spec, new Date(atOrBefore.getTime() + 1)), 'prev', spec)
}

/**
 * The slots from `from` to `upTo` (both included), earliest first, at most `limit` of them: a
 * caller that gets `limit` slots back knows there may be more, and never pays for more than it asked.
 */
export function slotsBetween(spec: CronSpec, from: Date, upTo: Date, limit: number): Date[] {
  if (!Number.isInteger(limit) || limit < 0 || limit > MAX_SLOTS_PER_CALL) {
    throw new RangeError(`limit must be an integer from 0 to ${MAX_SLOTS_PER_CALL} (got ${limit})`)
  }
  const slots: Date[] = []
  if (limit === 0 || from > upTo) return slots
  const expression = parse(spec, new Date(from.getTime() - 1))
  while (slots.length < limit) {
    const slot = step(expression, 'next', spec) as Date
    if (slot > upTo) break
    slots.push(slot)
  }
  return slots
}
