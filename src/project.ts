// A project's configuration file, `equilateral.config.ts` (or .mts, .mjs, .js): which modules hold
// its agents, workflows and schedules. Every `equilateral` command finds it by walking up from the
// working directory (or takes the file EQUILATERAL_CONFIG names) and loads those modules, so a
// worker, the web tier and `npm start` run the project's own definitions without `--registry`.
//
//   // equilateral.config.ts
//   import { defineConfig } from 'equilateral-agents'
//   export default defineConfig({ modules: ['./src/agents.ts', './src/workflows.ts'] })
//
// This module only declares: the loading is src/cli/config.ts, which only the command line uses.
import type { ScheduleSpec } from './schedule/schedules.ts'

export interface EquilateralConfig {
  /**
   * The modules to load, relative to the configuration file (or package names). From each, every
   * export that is an agent (`defineAgent`) or a workflow (`defineWorkflow`) is registered, and the
   * arrays exported as `agents`, `workflows` and `schedules` (see ScheduleDeclaration).
   */
  modules: readonly string[]
}

/**
 * A cron schedule the project declares for a tenant: `equilateral worker` and `dev` put it when they
 * start (putting the same schedule again keeps its next slot, see TenantHandle.putSchedule). A
 * tenant that does not exist yet is skipped with a warning.
 */
export interface ScheduleDeclaration extends ScheduleSpec {
  tenant: string
}

/** Types the configuration file's object (an identity function: the checks run when it is loaded). */
export function defineConfig(config: EquilateralConfig): EquilateralConfig {
  return config
}

/** Types a schedule declaration (an identity function: `putSchedule` checks it). */
export function defineSchedule(schedule: ScheduleDeclaration): ScheduleDeclaration {
  return schedule
}
