// How the command line reports a failure: the exit code of each kind of error, one line for what a
// user can act on, and a stack only for bugs or when asked for (LOG_LEVEL=debug).
import { CommanderError } from 'commander'
import { describe, expect, it } from 'vitest'
import { reportError } from '../../src/cli/errors.ts'
import { ConfigError, InvalidInputError, TenantError } from '../../src/errors.ts'

function report(error: unknown, options: { alreadyPrinted?: boolean; verbose?: boolean } = {}) {
  let out = ''
  const code = reportError(error, { write: (text) => (out += text), ...options })
  return { code, out }
}

describe('reportError', () => {
  it('typed errors of the library: their message, exit code 2', () => {
    expect(report(new InvalidInputError('workflow id must be a UUID (got "x")'))).toEqual({
      code: 2,
      out: 'equilateral: workflow id must be a UUID (got "x")\n',
    })
    expect(report(new TenantError('unknown_tenant', 'unknown tenant "nobody"')).out).toBe(
      'equilateral: unknown tenant "nobody"\n',
    )
    expect(report(new ConfigError(['PORT must be an integer', 'LOG_LEVEL must be one of ...']))).toEqual({
      code: 2,
      out: 'equilateral: invalid configuration:\n  - PORT must be an integer\n  - LOG_LEVEL must be one of ...\n',
    })
  })

  it('commander: help and version exit 0; usage errors exit 2, printed once', () => {
    expect(report(new CommanderError(0, 'commander.helpDisplayed', '(outputHelp)'))).toEqual({
      code: 0,
      out: '',
    })
    expect(report(new CommanderError(1, 'commander.help', '(outputHelp)'))).toEqual({ code: 2, out: '' })
    const unknown = new CommanderError(1, 'commander.unknownCommand', "error: unknown command 'x'")
    expect(report(unknown, { alreadyPrinted: true })).toEqual({ code: 2, out: '' })
    expect(report(unknown)).toEqual({ code: 2, out: "equilateral: unknown command 'x'\n" })
  })

  it('system and database errors: one line, exit code 1', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' })
    expect(report(refused)).toEqual({ code: 1, out: 'equilateral: connect ECONNREFUSED 127.0.0.1:5432\n' })
    // Node reports a refused connection to several addresses as an AggregateError without a message.
    const aggregate = Object.assign(new AggregateError([], ''), { code: 'ECONNREFUSED' })
    expect(report(aggregate).out).toBe('equilateral: ECONNREFUSED\n')
  })

  it('bugs keep their stack; other errors show it with verbose only', () => {
    const bug = report(new TypeError("Cannot read properties of undefined (reading 'id')"))
    expect(bug.code).toBe(1)
    expect(bug.out).toMatch(/^equilateral: Cannot read properties .*\nTypeError: .*\n\s+at /)
    const plain = new Error('embedded PostgreSQL failed to start')
    expect(report(plain).out).toBe('equilateral: embedded PostgreSQL failed to start\n')
    expect(report(plain, { verbose: true }).out).toMatch(/\n\s+at /)
    expect(report('thrown string')).toEqual({ code: 1, out: 'equilateral: thrown string\n' })
  })
})
