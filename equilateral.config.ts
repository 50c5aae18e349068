// This repository's configuration file: the modules whose agents, workflows and schedules every
// `equilateral` command runs (worker, web, `npm start`, the Procfile's processes). `--registry`
// overrides it for one command; EQUILATERAL_CONFIG names another file. See src/project.ts.
// (A type-only import: loading this file loads nothing else. A project installed from the
// package writes `import { defineConfig } from 'equilateral-agents'`, see `equilateral init`.)
import type { EquilateralConfig } from './src/project.ts'

export default {
  modules: ['./workers/registry.ts'],
} satisfies EquilateralConfig
