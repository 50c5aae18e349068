import { availableParallelism } from 'node:os'
import { defineConfig } from 'vitest/config'

// Options every test file runs with. Test files run in parallel, each against a database of its own.
const common = { testTimeout: 60_000, hookTimeout: 120_000, pool: 'forks' as const }
// Files of the main project run two at a time at least. Vitest's default (one less than the
// cores) ran them one at a time on a 2-core machine, where most of a file's time is spent waiting
// on PostgreSQL or on a process it started: measured on one, the main project took 404 s with one
// worker, 236 s with two and 208 s with three (more CPU contention for little gain).
const mainWorkers = Math.max(2, availableParallelism() - 1)

// The files that keep real worker processes booting and working (several at a time, killed and
// replaced again and again) or restart PostgreSQL. Side by side they would starve each other of
// CPU on a small machine: they run after the other files (sequence.groupOrder), one file at a
// time, and at most two concurrent tests of a file at once (the crash points). Their waits fail
// when the work stops moving (test/helpers/progress.ts), not at a fixed deadline; their timeouts
// (at most 10 min a test, 5 min a crash point) only bound a run that moves without end, and add
// up to well under CI's 90 minutes.
const heavy = ['test/chaos/**/*.test.ts', 'test/process/**/*.test.ts']
// The pure rules (src/core: sweep decisions, retries, planning, definitions, the state machine), in
// milliseconds and without a database: `npx vitest run --project unit` answers in seconds.
const unit = ['test/unit/**/*.test.ts']
// The database server is set up once for the run (test/setup/global.ts provides it), for the
// projects that need one: not for the unit project.
const database = { globalSetup: ['test/setup/global.ts'] }

export default defineConfig({
  test: {
    projects: [
      // An explicit group order: vitest would otherwise run a default-order project that gets one
      // worker (a 2-core machine) last, after the heavy files.
      {
        test: {
          ...common,
          ...database,
          name: 'main',
          include: ['test/**/*.test.ts'],
          exclude: [...heavy, ...unit],
          maxWorkers: mainWorkers,
          sequence: { groupOrder: 1 },
        },
      },
      {
        test: {
          ...common,
          ...database,
          name: 'heavy',
          include: heavy,
          maxWorkers: 1,
          maxConcurrency: 2,
          sequence: { groupOrder: 2 },
        },
      },
      {
        // Beside the main files, in their group (vitest wants one maxWorkers per group).
        test: {
          ...common,
          name: 'unit',
          include: unit,
          testTimeout: 10_000,
          maxWorkers: mainWorkers,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
})
