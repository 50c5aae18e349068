#!/usr/bin/env node
// Entry point of the `equilateral` command. In a checkout on a Node.js that strips TypeScript types
// (>= 22.18) it runs the sources directly, so `npm start` never runs a stale build; otherwise it runs
// the compiled output that `npm install` (the `prepare` script) builds into dist/.
import { existsSync } from 'node:fs'
import module from 'node:module'
import { fileURLToPath } from 'node:url'

const source = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url))
const built = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url))

// Caches compiled modules (and stripped TypeScript) on disk (Node >= 22.1): a later start of the
// same command skips compiling them (the first start after a deploy or an upgrade does not).
module.enableCompileCache?.()

if (process.features.typescript && existsSync(source)) {
  await import(source)
} else if (existsSync(built)) {
  await import(built)
} else {
  console.error('equilateral: no build found. Run `npm run build` (or use Node.js >= 22.18).')
  process.exit(1)
}
