// Slot arithmetic of cron schedules: local times in IANA time zones across DST changes, seconds
// fields, bounded listings, and expressions refused with the field they are about.
import { describe, expect, it } from 'vitest'
import { InvalidInputError } from '../../src/index.ts'
import { latestSlot, nextSlot, slotsBetween, validateCron } from '../../src/schedule/cron.ts'

const iso = (dates: Date[]) => dates.map((d) => d.toISOString())
const ny = (cron: string) => ({ cron, timezone: 'America/New_York' })

describe('cron slots', () => {
  it('reads 9:00 in New York as 14:00Z in winter and 13:00Z in summer, across both DST changes', () => {
    const spring = slotsBetween(
      ny('0 9 * * *'),
      new Date('2024-03-08T00:00:00Z'),
      new Date('2024-03-12T00:00:00Z'),
      10,
    )
    // Clocks went forward on Sunday 2024-03-10 at 02:00.
    expect(iso(spring)).toEqual([
      '2024-03-08T14:00:00.000Z',
      '2024-03-09T14:00:00.000Z',
      '2024-03-10T13:00:00.000Z',
      '2024-03-11T13:00:00.000Z',
    ])
    // Clocks went back on Sunday 2024-11-03 at 02:00.
    const autumn = slotsBetween(
      ny('0 9 * * *'),
      new Date('2024-11-02T00:00:00Z'),
      new Date('2024-11-04T23:59:59Z'),
      10,
    )
    expect(iso(autumn)).toEqual([
      '2024-11-02T13:00:00.000Z',
      '2024-11-03T14:00:00.000Z',
      '2024-11-04T14:00:00.000Z',
    ])
  })

  it('fires once on the day a local time does not exist or happens twice', () => {
    // 02:30 does not exist on 2024-03-10 in New York: the slot moves on by the gap, to 03:30 EDT.
    expect(
      iso(
        slotsBetween(
          ny('30 2 * * *'),
          new Date('2024-03-10T00:00:00Z'),
          new Date('2024-03-11T00:00:00Z'),
          10,
        ),
      ),
    ).toEqual(['2024-03-10T07:30:00.000Z'])
    // 01:30 happens twice on 2024-11-03: a daily schedule still fires once.
    expect(
      iso(
        slotsBetween(
          ny('30 1 * * *'),
          new Date('2024-11-03T00:00:00Z'),
          new Date('2024-11-04T00:00:00Z'),
          10,
        ),
      ),
    ).toEqual(['2024-11-03T05:30:00.000Z'])
    // Every 30 minutes keeps firing every 30 real minutes through the repeated hour.
    expect(
      iso(
        slotsBetween(
          ny('*/30 * * * *'),
          new Date('2024-11-03T05:00:00Z'),
          new Date('2024-11-03T07:00:00Z'),
          10,
        ),
      ),
    ).toEqual([
      '2024-11-03T05:00:00.000Z',
      '2024-11-03T05:30:00.000Z',
      '2024-11-03T06:00:00.000Z',
      '2024-11-03T06:30:00.000Z',
      '2024-11-03T07:00:00.000Z',
    ])
  })

  it('takes a seconds field, includes both ends of a range, and stops at the limit asked for', () => {
    const everySecond = { cron: '* * * * * *', timezone: 'UTC' }
    const from = new Date('2024-01-01T00:00:05Z')
    expect(iso(slotsBetween(everySecond, from, new Date('2024-01-01T00:00:08Z'), 100))).toEqual([
      '2024-01-01T00:00:05.000Z',
      '2024-01-01T00:00:06.000Z',
      '2024-01-01T00:00:07.000Z',
      '2024-01-01T00:00:08.000Z',
    ])
    // A year of per-second slots: the caller gets what it asked for, not 31 million dates.
    expect(slotsBetween(everySecond, from, new Date('2025-01-01T00:00:00Z'), 3)).toHaveLength(3)
    expect(() => slotsBetween(everySecond, from, from, 1_000_000)).toThrow(RangeError)
    expect(nextSlot(everySecond, from).toISOString()).toBe('2024-01-01T00:00:06.000Z')
    expect(latestSlot(everySecond, from)?.toISOString()).toBe('2024-01-01T00:00:05.000Z')
    expect(latestSlot(everySecond, new Date('2024-01-01T00:00:05.999Z'))?.toISOString()).toBe(
      '2024-01-01T00:00:05.000Z',
    )
    expect(
      latestSlot({ cron: '0 9 * * MON', timezone: 'Europe/Paris' }, new Date('2024-07-03T12:00:00Z')),
    ).toEqual(new Date('2024-07-01T07:00:00Z'))
  })

  it('spells a time zone the canonical way, so the same zone declared again is the same schedule', () => {
    expect(validateCron('0 3 * * *', 'america/new_york').timezone).toBe('America/New_York')
    expect(validateCron('0 3 * * *', 'utc').timezone).toBe('UTC')
    expect(validateCron('0 3 * * *', 'US/Eastern').timezone).toBe('America/New_York')
  })

  it('refuses bad expressions and time zones with the field they are about', () => {
    const refused = (cron: unknown, timezone: unknown) => {
      try {
        validateCron(cron, timezone)
      } catch (error) {
        expect(error).toBeInstanceOf(InvalidInputError)
        return (error as InvalidInputError).path
      }
      throw new Error(`"${String(cron)}" in "${String(timezone)}" was accepted`)
    }
    for (const cron of [
      '',
      '61 * * * *',
      'not a cron at all',
      '* * * * * * *',
      '@daily',
      'H * * * *',
      '0 0 30 2 *',
      42,
    ]) {
      expect(refused(cron, 'UTC')).toBe('$.cron')
    }
    for (const timezone of ['Mars/Olympus_Mons', '', 'x'.repeat(65), null]) {
      expect(refused('0 9 * * *', timezone)).toBe('$.timezone')
    }
    expect(validateCron('  0   9 * *  MON-FRI ', 'Asia/Tokyo')).toEqual({
      cron: '0 9 * * MON-FRI',
      timezone: 'Asia/Tokyo',
    })
    expect(validateCron('*/10 * * * * THU', 'UTC').cron).toBe('*/10 * * * * THU')
  })
})
