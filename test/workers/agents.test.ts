// The deploy-feature agents, called directly with a hand-built context: what the security reviewer
// finds and how it masks it, what the test runner reports and what its sandbox keeps out, and
// when the deployer refuses to deploy.
import { readFileSync } from 'node:fs'
import { pino } from 'pino'
import { describe, expect, it } from 'vitest'
import { type AgentContext, type AgentDefinition, type Json, PermanentError } from '../../src/index.ts'
import { deployer } from '../../workers/agents/deployer.ts'
import { type SecurityScanResult, securityReviewer } from '../../workers/agents/security-reviewer.ts'
import { runTests, type TestRunResult, testRunner } from '../../workers/agents/test-runner.ts'
import type { DeployFeatureInput } from '../../workers/workflows/deploy-feature.ts'

const example = (name: string) =>
  JSON.parse(readFileSync(new URL(`../../examples/${name}`, import.meta.url), 'utf8')) as DeployFeatureInput
const clean = example('deploy-feature.json')
const blocked = example('deploy-feature-blocked.json')

/** Runs an agent's handler once; `logs` collects what it logged (as pino JSON lines). */
async function run<TData, TResult extends Json>(
  agent: AgentDefinition<TData, TResult>,
  data: TData,
  extra: Partial<AgentContext<TData>> = {},
): Promise<{ result: TResult; logs: string }> {
  let logs = ''
  const ctx: AgentContext<TData> = {
    tenantId: 'acme',
    workflowId: 'wf-1',
    workflowType: 'deploy-feature',
    taskId: 'task-1',
    taskKey: 'k',
    taskType: agent.taskTypes[0] as string,
    attempt: 1,
    idempotencyKey: 'task-1:1',
    correlationId: 'corr-1',
    data,
    input: null,
    results: {},
    log: pino({ level: 'debug' }, { write: (line: string) => void (logs += line) }),
    signal: new AbortController().signal,
    heartbeat: async () => {},
    spawn: () => {},
    snooze: () => {
      throw new Error('not snoozing here')
    },
    agentVersion: agent.version,
    usage: () => {},
    ...extra,
  }
  const result = await agent.handler(ctx)
  return { result, logs }
}

const scan = async (source: string) => (await run(securityReviewer, { source })).result
const test = async (source: string, tests: DeployFeatureInput['tests']) =>
  (await run(testRunner, { source, tests })).result

describe('security reviewer', () => {
  const secrets = {
    aws: 'AKIAZ7QXWS3EXAMPLE12',
    password: 'hunter2-correct-horse',
    token: 'ghp_9f8e7d6c5b4a39281706',
    urlPassword: 's3cr3t-pw',
    keyBody: 'MIIEowIBAAKCAQEA7bq98s+5xyzSECRETBODYLINE0123456789',
  }
  const source = [
    `const id = '${secrets.aws}'`, // 1
    `const dbPassword = "${secrets.password}"`, // 2
    `const config = { apiToken: '${secrets.token}' }`, // 3
    'const key = `-----BEGIN RSA PRIVATE KEY-----', // 4
    secrets.keyBody, // 5
    '-----END RSA PRIVATE KEY-----`', // 6
    'const result = eval(userInput)', // 7
    "const fn = new Function('a', 'return a')", // 8
    'exec(`git checkout ${branch}`, done)', // 9
    'db.query(`SELECT * FROM users WHERE id = ${id}`)', // 10
    `db.query("DELETE FROM orders WHERE id = " + id)`, // 11
    "fetch('http://api.example.com/data')", // 12
    'https.request({ host, rejectUnauthorized: false })', // 13
    `const db = 'postgres://admin:${secrets.urlPassword}@db.internal/app'`, // 14
    "crypto.createHash('md5').update(x)", // 15
    'const n = Math.random()', // 16
    '  debugger', // 17
  ].join('\n')

  it('finds each pattern on its line with its severity', async () => {
    const result = await scan(source)
    const found = result.findings.map(({ rule, severity, line }) => ({ rule, severity, line }))
    expect(found).toEqual([
      { rule: 'aws-access-key-id', severity: 'high', line: 1 },
      { rule: 'hardcoded-secret', severity: 'high', line: 2 },
      { rule: 'hardcoded-secret', severity: 'high', line: 3 },
      { rule: 'private-key', severity: 'high', line: 4 },
      { rule: 'eval', severity: 'high', line: 7 },
      { rule: 'new-function', severity: 'high', line: 8 },
      { rule: 'command-injection', severity: 'high', line: 9 },
      { rule: 'sql-injection', severity: 'high', line: 10 },
      { rule: 'sql-injection', severity: 'high', line: 11 },
      { rule: 'insecure-http', severity: 'medium', line: 12 },
      { rule: 'tls-verification-disabled', severity: 'high', line: 13 },
      { rule: 'credentials-in-url', severity: 'high', line: 14 },
      { rule: 'weak-hash', severity: 'medium', line: 15 },
      { rule: 'insecure-random', severity: 'low', line: 16 },
      { rule: 'debugger-statement', severity: 'low', line: 17 },
    ])
    expect(result.counts).toEqual({ high: 11, medium: 2, low: 2 })
    expect(result.passed).toBe(false)
  })

  it('masks secrets in excerpts and never returns or logs them', async () => {
    const { result, logs } = await run(securityReviewer, { source, filename: 'src/config.js' })
    const excerpt = (line: number) => result.findings.find((f) => f.line === line)?.excerpt
    expect(excerpt(1)).toBe("const id = 'AKIA****************'")
    expect(excerpt(2)).toBe('const dbPassword = "***"')
    expect(excerpt(3)).toBe("const config = { apiToken: '***' }")
    expect(excerpt(4)).toBe('const key = `-----BEGIN RSA PRIVATE KEY-----***')
    expect(excerpt(14)).toBe("const db = 'postgres://admin:***@db.internal/app'")
    expect(excerpt(7)).toBe('const result = eval(userInput)')
    const everything = JSON.stringify(result) + logs
    for (const secret of Object.values(secrets)) expect(everything).not.toContain(secret)
    // Only counts are logged, never the source.
    expect(logs).toContain('"counts":{"high":11,"medium":2,"low":2}')
    expect(logs).not.toContain('userInput')
  })

  it('does not flag safe look-alikes', async () => {
    const result = await scan(
      [
        'const rows = await sql`SELECT * FROM users WHERE id = ${id}`',
        "if (password === 'x') deny()",
        'const tokenType = "Bearer"',
        'const password = process.env.DB_PASSWORD',
        'const authToken = `Bearer ${token}`',
        "fetch('http://localhost:3000/health')",
        "const ns = 'http://www.w3.org/2000/svg'",
        'const re = /x/.exec(text)',
        'model.evaluate(x)',
        "const message = 'Please update your profile, ' + name",
      ].join('\n'),
    )
    expect(result.findings).toEqual([])
    expect(result.passed).toBe(true)
  })

  it('passes the clean example and blocks the other one', async () => {
    expect(await scan(clean.source)).toEqual({
      findings: [],
      counts: { high: 0, medium: 0, low: 0 },
      passed: true,
    })
    const result = await scan(blocked.source)
    expect(result.passed).toBe(false)
    expect(result.findings.map((f) => [f.rule, f.line])).toEqual([
      ['aws-access-key-id', 4],
      ['eval', 21],
    ])
    expect(JSON.stringify(result)).not.toContain('AKIAIOSFODNN7EXAMPLE')
  })

  it('does not let a stray BEGIN line hide the rest of the file', async () => {
    const result = await scan(['// -----BEGIN PRIVATE KEY----- goes here', 'eval(code)'].join('\n'))
    expect(result.findings.map((f) => f.rule)).toEqual(['private-key', 'eval'])
  })

  it('stops when its signal is aborted', async () => {
    const controller = new AbortController()
    controller.abort(new Error('cancelled'))
    const long = Array.from({ length: 10_000 }, () => 'const x = 1').join('\n')
    await expect(run(securityReviewer, { source: long }, { signal: controller.signal })).rejects.toThrow(
      'cancelled',
    )
  })

  it('refuses data without a source, for good', async () => {
    await expect(run(securityReviewer, { filename: 'x.js' } as never)).rejects.toBeInstanceOf(PermanentError)
  })
})

describe('test runner', () => {
  it('passes the example tests', async () => {
    const result = await test(clean.source, clean.tests)
    expect(result).toEqual({
      total: 3,
      passed: 3,
      failed: 0,
      results: clean.tests.map((t) => ({ name: t.name, ok: true })),
    })
  })

  it('reports wrong results and throwing tests as failed tests', async () => {
    const source = `
      function add(a, b) { return a - b }
      function boom() { throw new TypeError('no such thing') }
      function list() { return [1, { a: 'b' }] }
      module.exports = { add, boom, list }`
    const result = await test(source, [
      { name: 'add', call: 'add', args: [2, 3], expect: 5 },
      { name: 'boom', call: 'boom', expect: null },
      { name: 'list', call: 'list', expect: [1, { a: 'b' }] },
      { name: 'missing', call: 'nope', expect: 1 },
    ])
    expect(result).toMatchObject({ total: 4, passed: 1, failed: 3 })
    expect(result.results).toEqual([
      { name: 'add', ok: false, error: 'expected 5, got -1', actual: -1 },
      { name: 'boom', ok: false, error: 'TypeError: no such thing' },
      { name: 'list', ok: true },
      { name: 'missing', ok: false, error: 'nope is not defined (export it, or declare it at top level)' },
    ])
  })

  it('finds plain top-level functions, nested exports and async results', async () => {
    const source = `
      'use strict'
      function twice(x) { return 2 * x }
      const square = (x) => x * x
      async function later(x) { await null; return { x } }
      exports.utils = { shout(s) { return s.toUpperCase() + this.mark }, mark: '!' }`
    const result = await test(source, [
      { name: 'declaration', call: 'twice', args: [4], expect: 8 },
      { name: 'const', call: 'square', args: [5], expect: 25 },
      { name: 'async', call: 'later', args: [1], expect: { x: 1 } },
      { name: 'method', call: 'utils.shout', args: ['hi'], expect: 'HI!' },
    ])
    expect(result.results.filter((r) => !r.ok)).toEqual([])
  })

  it('fails a result JSON cannot represent instead of comparing it loosely', async () => {
    const result = await test(
      'function f() { return { a: [1, undefined] } }; function g() { return new Map() }',
      [
        { name: 'undefined', call: 'f', expect: { a: [1, null] } },
        { name: 'map', call: 'g', expect: {} },
      ],
    )
    expect(result.results.map((r) => r.error)).toEqual([
      'the result is not JSON: $.a[1] is undefined',
      'the result is not JSON: $ is a Map object',
    ])
  })

  it('reports a source that does not compile as every test failed, with the compile error', async () => {
    const result = await test('function add(a, b) {\n  return a +\n}\n', clean.tests)
    expect(result).toMatchObject({ total: 3, passed: 0, failed: 3 })
    for (const r of result.results) {
      expect(r.ok).toBe(false)
      expect(r.error).toMatch(/^the source does not compile: SyntaxError: .+ \(source\.js:3\)$/)
    }
  })

  it('reports a source that throws while loading as every test failed', async () => {
    const result = await test("throw new Error('bad module')", clean.tests)
    expect(result.results.map((r) => r.error)).toEqual(
      clean.tests.map(() => 'the source failed to load: Error: bad module'),
    )
  })

  it('keeps process, require and the host out of reach of the code under test', async () => {
    const source = `
      function exit() { process.exit(1) }
      function readFs() { return require('fs').readFileSync('/etc/passwd', 'utf8') }
      function escape() { return this.constructor.constructor('return process')().pid }
      function viaEval() { return eval('1 + 1') }
      function viaFunction() { return new Function('return 1')() }
      function globals() { return [typeof setTimeout, typeof FinalizationRegistry, typeof Atomics, typeof console] }`
    const result = await test(source, [
      { name: 'exit', call: 'exit', expect: null },
      { name: 'fs', call: 'readFs', expect: null },
      { name: 'escape', call: 'escape', expect: null },
      { name: 'eval', call: 'viaEval', expect: 2 },
      { name: 'Function', call: 'viaFunction', expect: 1 },
      { name: 'globals', call: 'globals', expect: ['undefined', 'undefined', 'undefined', 'object'] },
    ])
    expect(result.results).toEqual([
      { name: 'exit', ok: false, error: 'ReferenceError: process is not defined' },
      { name: 'fs', ok: false, error: 'ReferenceError: require is not defined' },
      {
        name: 'escape',
        ok: false,
        error: expect.stringMatching(/^EvalError: Code generation from strings disallowed/),
      },
      { name: 'eval', ok: false, error: expect.stringMatching(/^EvalError/) },
      { name: 'Function', ok: false, error: expect.stringMatching(/^EvalError/) },
      { name: 'globals', ok: true },
    ])
    expect(process.exitCode ?? 0).toBe(0)
  })

  it('refuses import(), whose error would come from the host realm', async () => {
    const result = await test("function load() { return import('node:fs') }", [
      { name: 'fs', call: 'load', expect: null },
    ])
    expect(result.results[0]?.error).toBe('the source uses import, which the test sandbox does not allow')
  })

  it('stops an infinite loop with the timeout, and reports the tests it had no time for', async () => {
    const started = performance.now()
    const result = await test('function spin() { for (;;) {} }\nfunction one() { return 1 }', [
      { name: 'first', call: 'one', expect: 1 },
      { name: 'spin', call: 'spin', expect: null },
      { name: 'after', call: 'one', expect: 1 },
    ])
    expect(performance.now() - started).toBeLessThan(3000)
    expect(result.results).toEqual([
      { name: 'first', ok: true },
      { name: 'spin', ok: false, error: expect.stringMatching(/timed out|time budget/) },
      { name: 'after', ok: false, error: 'not run: the 1000 ms time budget of the file is spent' },
    ])
  })

  it('does not run a thrown value in the host (a getter that never returns)', async () => {
    const started = performance.now()
    const result = await runTests(
      {
        source: 'function f() { throw { get message() { for (;;) {} } } }',
        tests: [{ name: 'f', call: 'f', expect: null }],
      },
      { timeoutMs: 200 },
    )
    expect(performance.now() - started).toBeLessThan(2000)
    expect(result.results[0]).toMatchObject({
      ok: false,
      error: expect.stringMatching(/timed out|time budget/),
    })
  })

  it('refuses malformed data, for good', async () => {
    await expect(
      run(testRunner, { source: 'x', tests: [{ name: 'a', call: 'f' }] } as never),
    ).rejects.toBeInstanceOf(PermanentError)
  })
})

describe('deployer', () => {
  const input = { service: 'shop', version: '2.0.0', environment: 'staging', source: clean.source }
  const security: SecurityScanResult = { findings: [], counts: { high: 0, medium: 1, low: 0 }, passed: true }
  const tests: TestRunResult = { total: 1, passed: 1, failed: 0, results: [{ name: 't', ok: true }] }

  it('deploys when the scan and the tests passed, keyed by the idempotency key', async () => {
    const { result } = await run(deployer, null, { input, results: { security, tests } })
    expect(result).toEqual({
      deploymentId: 'task-1:1',
      service: 'shop',
      version: '2.0.0',
      environment: 'staging',
      artifactSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      deployedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    })
  })

  it('refuses, for good, when the scan or the tests failed', async () => {
    const failedScan: SecurityScanResult = {
      findings: [{ rule: 'eval', severity: 'high', line: 7, excerpt: 'eval(x)' }],
      counts: { high: 1, medium: 0, low: 2 },
      passed: false,
    }
    const failedTests: TestRunResult = {
      total: 2,
      passed: 1,
      failed: 1,
      results: [
        { name: 'fine', ok: true },
        { name: 'broken', ok: false, error: 'x' },
      ],
    }
    const attempt = run(deployer, null, { input, results: { security: failedScan, tests: failedTests } })
    await expect(attempt).rejects.toBeInstanceOf(PermanentError)
    await expect(attempt).rejects.toThrow(
      'deploy blocked: security scan failed with 1 high, 0 medium, 2 low finding(s) (first: eval at line 7); 1 of 2 test(s) failed (first: test 2)',
    )
  })

  it('keeps its input out of its logs and its errors (stored in plaintext), but not out of its result', async () => {
    const secret = { service: 'svc-3f9a', version: 'v-77c1', environment: 'env-b2d0', source: clean.source }
    const { result, logs } = await run(deployer, null, { input: secret, results: { security, tests } })
    expect(logs).toContain('"msg":"deployed"')
    for (const value of ['svc-3f9a', 'v-77c1', 'env-b2d0']) expect(logs).not.toContain(value)
    expect(result).toMatchObject({ service: 'svc-3f9a', version: 'v-77c1', environment: 'env-b2d0' })
    const named: TestRunResult = {
      total: 1,
      passed: 0,
      failed: 1,
      results: [{ name: 'customer acme-9c4e checkout', ok: false, error: 'x' }],
    }
    const error = await run(deployer, null, { input: secret, results: { security, tests: named } }).catch(
      (e: unknown) => e as Error,
    )
    expect(error).toBeInstanceOf(PermanentError)
    expect((error as Error).message).toBe('deploy blocked: 1 of 1 test(s) failed (first: test 1)')
  })

  it('refuses, for good, without its dependencies or its input', async () => {
    await expect(run(deployer, null, { input })).rejects.toBeInstanceOf(PermanentError)
    await expect(
      run(deployer, null, { input: { service: 'x' }, results: { security, tests } }),
    ).rejects.toThrow('the workflow input has no version, environment, source')
  })
})
