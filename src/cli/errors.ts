// How the command line reports a failure: one line `equilateral: <message>` and an exit code, never
// a stack trace for an error the user can act on.
//   0  --help, --version
//   2  a usage error (commander) or a typed error of the library (EquilateralError: invalid input,
//      unknown tenant or workflow type, not found, invalid configuration, ...)
//   1  anything else (database unreachable, a file that cannot be read, a bug)
import { CommanderError } from 'commander'
import { EquilateralError } from '../errors.ts'

export const EXIT_USAGE = 2
export const EXIT_FAILURE = 1

// Errors that are bugs rather than situations: their stack is what someone needs to fix them.
const BUG = new Set(['TypeError', 'ReferenceError', 'RangeError', 'SyntaxError'])

export interface ReportOptions {
  write: (text: string) => void
  /** Commander already printed this error (through its outputError). */
  alreadyPrinted?: boolean
  /** Print the stack of every error (LOG_LEVEL=debug or trace). */
  verbose?: boolean
}

/** Writes the error's line (or lines) and returns the process's exit code. */
export function reportError(error: unknown, options: ReportOptions): number {
  const { write } = options
  if (error instanceof CommanderError) {
    if (error.exitCode === 0) return 0
    // Help shown for a command given without its subcommand: the help is the message.
    if (error.code === 'commander.help') return EXIT_USAGE
    if (!options.alreadyPrinted) write(`equilateral: ${error.message.replace(/^error: /, '')}\n`)
    return EXIT_USAGE
  }
  if (error instanceof EquilateralError) {
    write(`equilateral: ${error.message}\n`)
    if (options.verbose && error.stack) write(`${error.stack}\n`)
    return EXIT_USAGE
  }
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    // Node's connection errors to several addresses (AggregateError) have an empty message.
    const message = error.message || (typeof code === 'string' ? code : error.name)
    const bug = BUG.has(error.name) && typeof code !== 'string'
    write(`equilateral: ${message}\n`)
    if ((bug || options.verbose) && error.stack) write(`${error.stack}\n`)
    return EXIT_FAILURE
  }
  write(`equilateral: ${String(error)}\n`)
  return EXIT_FAILURE
}
