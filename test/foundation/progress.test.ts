// The suite's own rules for waiting on workers: a wait gives up when what it watches stops moving,
// not at a fixed time from its start; and the files that keep worker processes busy run one at a
// time, after the others (vitest.config.ts).
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import config from '../../vitest.config.ts'
import { untilSettled } from '../helpers/progress.ts'

describe('untilSettled', () => {
  it('keeps waiting well past the stall window while the watched quantity moves', async () => {
    const started = performance.now()
    let polls = 0
    await untilSettled(
      'moving work',
      async () => {
        polls++
        return { done: performance.now() - started > 600, progress: polls, state: `${polls} polls` }
      },
      { stallMs: 100, everyMs: 10 },
    )
    expect(polls).toBeGreaterThan(10)
  })

  it('fails, saying what stalled and where it stood, once nothing moved for the stall window', async () => {
    let polls = 0
    const wait = untilSettled(
      'stuck work',
      async () => {
        polls++
        // It moves for a while, then stands still at 5.
        return { done: false, progress: Math.min(polls, 5), state: `${Math.min(polls, 5)} still running` }
      },
      { stallMs: 150, everyMs: 10 },
    )
    await expect(wait).rejects.toThrow('stuck work: nothing moved for 0.15 s (5 still running)')
    expect(polls).toBeGreaterThan(5)
  })

  it('counts a poll that throws as no progress, and gives up with its error', async () => {
    const wait = untilSettled(
      'a database that went away',
      async () => {
        throw new Error('connection refused')
      },
      { stallMs: 100, everyMs: 10 },
    )
    await expect(wait).rejects.toThrow(/a database that went away: nothing moved .*connection refused/)
  })
})

describe('vitest.config.ts', () => {
  const projects = (config.test?.projects ?? []) as { test: Record<string, any> }[]
  const heavy = projects.find((p) => p.test.name === 'heavy')?.test
  const main = projects.find((p) => p.test.name === 'main')?.test

  it('runs the chaos and process files one at a time, after the others, two crash points at once', () => {
    expect(heavy).toMatchObject({ maxWorkers: 1, maxConcurrency: 2 })
    expect(heavy?.sequence.groupOrder).toBeGreaterThan(main?.sequence?.groupOrder ?? 0)
    for (const file of [
      'test/chaos/chaos.test.ts',
      'test/chaos/failpoints.test.ts',
      'test/process/crash.test.ts',
    ]) {
      expect(heavy?.include.some((glob: string) => path.matchesGlob(file, glob))).toBe(true)
      expect(main?.exclude.some((glob: string) => path.matchesGlob(file, glob))).toBe(true)
    }
  })
})
