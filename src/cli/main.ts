// The `equilateral` command: the program (its name, version, global options and error output), the
// command groups it registers, and the exit. Every command resolves its database the same way:
// DATABASE_URL, or the project's embedded PostgreSQL (started if it is not running, reused if
// `npm start` runs it). Each command imports what it uses when it runs (`await import(...)` in its
// action): `--help` and `--version` load nothing but commander and src/cli's light modules, and a
// worker never loads the HTTP server or migrations (test/cli/lean.test.ts).
//
// A command lives in the file of its group (./commands/*.ts, each a `register(program)`); a new
// command is added there. A new group is a new file and one line in GROUPS below. `--help` lists
// the commands in the order they are registered.
import { readFileSync } from 'node:fs'
import { Command } from 'commander'
import { packagePath } from '../paths.ts'
import * as compliance from './commands/compliance.ts'
import * as operate from './commands/operate.ts'
import * as ops from './commands/ops.ts'
import * as processes from './commands/processes.ts'
import * as project from './commands/project.ts'
import * as tenants from './commands/tenants.ts'
import * as workflows from './commands/workflows.ts'
import { reportError } from './errors.ts'
import { useGlobalOptionsOf } from './shared.ts'

// Commander's own errors (unknown command or option, missing argument) go through outputError, as one
// `equilateral: ...` line and a hint; exitOverride turns its process.exit into a thrown CommanderError
// that the catch at the bottom maps to an exit code. Both are inherited by every command below.
let commanderPrinted = false
const program = new Command()
  .name('equilateral')
  .description('Durable, multi-tenant, database-orchestrated agent workflows on PostgreSQL')
  .configureOutput({
    outputError: (text, write) => {
      commanderPrinted = true
      write(text.replace(/^error: /, 'equilateral: '))
    },
  })
  .showHelpAfterError('(add --help for usage)')
  .exitOverride()
  .version(
    (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version,
    '-V, --version',
    'print the version',
  )
  .option('--json', 'print results as JSON (the default when stdout is not a terminal)')
  .option('--human', 'print results as tables and key/value lines (the default on a terminal)')
useGlobalOptionsOf(program)

const GROUPS: readonly { register(program: Command): void }[] = [
  processes, // migrate, worker, web
  project, // dev, init
  tenants, // tenant ...
  workflows, // workflow ..., schedule list, event, approve, reject
  operate, // workflow retry|replay, dead-letters list|redrive
  compliance, // audit ..., retention purge, erase
  ops, // openapi, stats, sweep, reencrypt
]
for (const group of GROUPS) group.register(program)

try {
  await program.parseAsync(process.argv)
} catch (error) {
  // Every command's failure ends here, also those thrown inside withEngine (after it closed the
  // engine and the database): one line and an exit code, see src/cli/errors.ts.
  const level = process.env.LOG_LEVEL
  process.exit(
    reportError(error, {
      write: (text) => process.stderr.write(text),
      alreadyPrinted: commanderPrinted,
      verbose: level === 'debug' || level === 'trace',
    }),
  )
}
