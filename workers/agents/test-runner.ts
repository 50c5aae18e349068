// The run_tests step of deploy-feature: loads one JavaScript file (CommonJS `module.exports = {...}`
// or plain top-level functions) in a fresh node:vm context, calls the named functions with the given
// arguments and compares what they return with what is expected. Deterministic and offline.
//
// The context is made without contextifying any host object (vm.constants.DONT_CONTEXTIFY), so it
// holds only the language built-ins, an inert console, `module` and `exports`: no require, no
// process, no timers, no I/O. Nothing the host owns is handed in: data goes in as JSON text inside
// the script source and comes out as a string the harness builds, so the host never reads a
// property of a sandbox value (a getter or a Proxy trap would run there without a time limit).
// Code generation from strings is off, `import` is refused (the error Node gives a sandboxed
// import() belongs to the host realm, a way out), and the built-ins that schedule work outside the
// time limit (FinalizationRegistry, WeakRef, Atomics) are removed.
//
// node:vm is still not a security boundary: the code shares this process's heap, so a hostile file
// can exhaust memory. Run files you do not trust in a separate, resource-limited process.
import { performance } from 'node:perf_hooks'
import { setImmediate as yieldToEventLoop } from 'node:timers/promises'
import { isDeepStrictEqual } from 'node:util'
import vm from 'node:vm'
import { defineAgent, type Json, PermanentError } from '../../src/index.ts'

export type TestCase = { name: string; call: string; args?: Json[]; expect: Json }
export type TestRunData = { source: string; tests: TestCase[] }
export type TestResult = { name: string; ok: boolean; error?: string; actual?: Json }
export type TestRunResult = { total: number; passed: number; failed: number; results: TestResult[] }

/** Time the code under test may run in all, module load and every test together. */
export const RUN_TIMEOUT_MS = 1000
const MAX_ACTUAL_BYTES = 4096
const MAX_MESSAGE = 500
/** Strings longer than this coming out of the sandbox are not read. */
const MAX_OUTPUT = 1024 * 1024
const FILENAME = 'source.js'
const HARNESS_NAME = '__equilateralTest'
/** `add`, `utils.slugify`, `module.exports`: dotted identifiers only, as they are put in script text. */
const CALL_PATH = /^[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*$/
const IMPORT_KEYWORD = /(?<![\w$.])import(?![\w$])/

// Runs inside the context before the code under test, capturing the built-ins it relies on. Its
// completion value is the one function the host calls directly (stash, a bare assignment).
const HARNESS = `'use strict';
var module = { exports: {} };
var exports = module.exports;
delete globalThis.FinalizationRegistry;
delete globalThis.WeakRef;
delete globalThis.Atomics;
delete globalThis.SharedArrayBuffer;
delete globalThis.WebAssembly;
(function () {
  var stringify = JSON.stringify, parse = JSON.parse, StringOf = String, isArray = Array.isArray;
  var getPrototypeOf = Object.getPrototypeOf, keys = Object.keys, defineProperty = Object.defineProperty;
  var freeze = Object.freeze, apply = Reflect.apply, isFinite = Number.isFinite, ObjectProto = Object.prototype;
  var stashed, outcome;
  function describe(e) {
    try {
      if (e !== null && typeof e === 'object' && typeof e.message === 'string') {
        return (typeof e.name === 'string' && e.name ? e.name : 'Error') + ': ' + e.message;
      }
      return 'threw ' + (typeof e === 'string' ? stringify(e) : StringOf(e));
    } catch (_) {
      return 'threw a value that cannot be described';
    }
  }
  function NotJson(message) { this.message = message; }
  // A plain-data copy of a JSON value, or NotJson naming the first part that is not JSON.
  function toJson(v, path, depth, seen) {
    switch (typeof v) {
      case 'string': case 'boolean': return v;
      case 'number':
        if (isFinite(v)) return v;
        throw new NotJson(path + ' is ' + StringOf(v));
      case 'object': {
        if (v === null) return null;
        if (depth > 64) throw new NotJson(path + ' is nested deeper than 64 levels');
        for (var s = 0; s < seen.length; s++) if (seen[s] === v) throw new NotJson(path + ' is a circular reference');
        seen[seen.length] = v;
        var out;
        if (isArray(v)) {
          out = [];
          for (var i = 0; i < v.length; i++) out[i] = toJson(v[i], path + '[' + i + ']', depth + 1, seen);
        } else {
          var proto = getPrototypeOf(v);
          if (proto !== ObjectProto && proto !== null) {
            var name = proto && proto.constructor && typeof proto.constructor.name === 'string' ? proto.constructor.name : 'non-plain';
            throw new NotJson(path + ' is a ' + name + ' object');
          }
          out = {};
          var ks = keys(v);
          for (var k = 0; k < ks.length; k++) {
            var x = v[ks[k]];
            if (x === undefined) continue;
            defineProperty(out, ks[k], { value: toJson(x, path + '.' + ks[k], depth + 1, seen), enumerable: true, writable: true, configurable: true });
          }
        }
        seen.length--;
        return out;
      }
      default:
        throw new NotJson(path + ' is ' + (v === undefined ? 'undefined' : 'a ' + typeof v));
    }
  }
  function settle(ok, v) {
    if (!ok) { outcome = { error: describe(v) }; return; }
    try {
      outcome = { value: toJson(v, '$', 0, []) };
    } catch (e) {
      outcome = { error: e instanceof NotJson ? 'the result is not JSON: ' + e.message : describe(e) };
    }
  }
  function resolve(path, root) {
    var parts = path.split('.');
    var m = module, exp = m !== null && typeof m === 'object' ? m.exports : undefined;
    var self, target;
    if (exp !== null && (typeof exp === 'object' || typeof exp === 'function') && parts[0] in exp) target = exp[parts[0]];
    else {
      try {
        target = root();
      } catch (e) {
        return { missing: e instanceof ReferenceError ? path + ' is not defined (export it, or declare it at top level)' : describe(e) };
      }
    }
    for (var i = 1; i < parts.length; i++) {
      if (target === null || target === undefined) return { missing: parts.slice(0, i).join('.') + ' is ' + target };
      self = target;
      target = target[parts[i]];
    }
    return { self: self, target: target };
  }
  var api = {
    run: function (path, root, argsJson) {
      outcome = { pending: true };
      try {
        var found = resolve(path, root);
        if (found.missing) { outcome = { error: found.missing }; return; }
        if (typeof found.target !== 'function') { outcome = { error: path + ' is not a function' }; return; }
        var value = apply(found.target, found.self, parse(argsJson));
        if (value !== null && (typeof value === 'object' || typeof value === 'function') && typeof value.then === 'function') {
          value.then(function (v) { settle(true, v); }, function (e) { settle(false, e); });
        } else {
          settle(true, value);
        }
      } catch (e) {
        outcome = { error: describe(e) };
      }
    },
    // Called in a script of its own, after the promise jobs of run() have been drained.
    collect: function () {
      var o = outcome;
      outcome = undefined;
      if (!o || o.pending) return stringify({ error: 'returned a promise that did not settle (the sandbox has no timers or I/O)' });
      return stringify(o);
    },
    describeStashed: function () {
      var e = stashed;
      stashed = undefined;
      return describe(e);
    },
  };
  defineProperty(globalThis, '${HARNESS_NAME}', { value: freeze(api), writable: false, enumerable: false, configurable: false });
  return function stash(v) { stashed = v; };
})();`

type Outcome = { value: Json } | { error: string }

interface Sandbox {
  /** Runs a script under what is left of the time budget; returns its string value or a description of what it threw. */
  evaluate(script: vm.Script): { ok: true; value: string | undefined } | { ok: false; error: string }
  remainingMs(): number
}

function createSandbox(budgetMs: number): Sandbox {
  const context = vm.createContext(vm.constants.DONT_CONTEXTIFY, {
    name: 'test-runner sandbox',
    codeGeneration: { strings: false, wasm: false },
    microtaskMode: 'afterEvaluate',
  })
  const stash = vm.runInContext(HARNESS, context) as (value: unknown) => void
  const describeStashed = new vm.Script(`${HARNESS_NAME}.describeStashed()`)
  let usedMs = 0
  const remainingMs = () => budgetMs - usedMs
  const timed = (script: vm.Script): unknown => {
    const started = performance.now()
    try {
      return script.runInContext(context, { timeout: Math.max(1, Math.ceil(remainingMs())) })
    } finally {
      usedMs += performance.now() - started
    }
  }
  return {
    remainingMs,
    evaluate(script) {
      try {
        const value = timed(script)
        // typeof reads no property: a sandbox value is only ever used when it is a string.
        return {
          ok: true,
          value: typeof value === 'string' && value.length <= MAX_OUTPUT ? value : undefined,
        }
      } catch (thrown) {
        // The thrown value may be the sandbox's (a Proxy, an object with getters): the host does not
        // touch it, the harness describes it under the time limit.
        stash(thrown)
        try {
          const text = remainingMs() > 0 ? timed(describeStashed) : undefined
          if (typeof text === 'string') return { ok: false, error: text.slice(0, MAX_MESSAGE) }
        } catch {
          stash(undefined)
        }
        return { ok: false, error: `the code ran out of its ${budgetMs} ms time budget` }
      }
    },
  }
}

/** `SyntaxError: Unexpected token '}' (source.js:3)` from a compile error of the file. */
function compileError(error: unknown): string {
  if (!(error instanceof Error)) return String(error)
  const line = /^source\.js:(\d+)/.exec(error.stack ?? '')?.[1]
  return `${error.name}: ${error.message}${line ? ` (${FILENAME}:${line})` : ''}`
}

/** Makes a string safe to store in jsonb (no NUL, no lone surrogates) and short. */
function clean(s: string): string {
  const t = s.replaceAll('\u0000', '\\0').toWellFormed()
  return t.length > MAX_MESSAGE ? `${t.slice(0, MAX_MESSAGE)}…` : t
}

function preview(value: Json): string {
  const text = JSON.stringify(value)
  return text.length > 120 ? `${text.slice(0, 120)}…` : text
}

function validate(data: unknown): TestRunData {
  const bad = (why: string) => new PermanentError(`run_tests data is invalid: ${why}`)
  if (data === null || typeof data !== 'object') throw bad('expected { source, tests }')
  const { source, tests } = data as Record<string, unknown>
  if (typeof source !== 'string') throw bad('source must be a string')
  if (!Array.isArray(tests)) throw bad('tests must be an array')
  tests.forEach((t: unknown, i) => {
    if (t === null || typeof t !== 'object') throw bad(`tests[${i}] is not an object`)
    const { name, call, args } = t as Record<string, unknown>
    if (typeof name !== 'string') throw bad(`tests[${i}].name must be a string`)
    if (typeof call !== 'string') throw bad(`tests[${i}].call must be a string`)
    if (args !== undefined && !Array.isArray(args)) throw bad(`tests[${i}].args must be an array`)
    if (!('expect' in t)) throw bad(`tests[${i}] has no expect`)
  })
  return { source, tests: tests as TestCase[] }
}

function summarise(results: TestResult[]): TestRunResult {
  const passed = results.filter((r) => r.ok).length
  return { total: results.length, passed, failed: results.length - passed, results }
}

function runOne(sandbox: Sandbox, test: TestCase): TestResult {
  const fail = (error: string, actual?: Json): TestResult => ({
    name: test.name,
    ok: false,
    error: clean(error),
    ...(actual !== undefined ? { actual } : {}),
  })
  if (!CALL_PATH.test(test.call))
    return fail(`call ${JSON.stringify(test.call)} must be a name such as add or utils.add`)
  if (sandbox.remainingMs() <= 0)
    return fail(`not run: the ${RUN_TIMEOUT_MS} ms time budget of the file is spent`)
  const root = test.call.split('.')[0] as string
  let script: vm.Script
  try {
    // CALL_PATH admits identifiers and dots only, so `root` cannot inject code into this text.
    const argsJson = JSON.stringify(JSON.stringify(test.args ?? []))
    script = new vm.Script(
      `${HARNESS_NAME}.run(${JSON.stringify(test.call)}, function () { return ${root} }, ${argsJson})`,
    )
  } catch (error) {
    return fail(`call ${JSON.stringify(test.call)} cannot be used: ${compileError(error)}`)
  }
  const ran = sandbox.evaluate(script)
  if (!ran.ok) return fail(ran.error)
  const collected = sandbox.evaluate(new vm.Script(`${HARNESS_NAME}.collect()`))
  if (!collected.ok) return fail(collected.error)
  if (collected.value === undefined) return fail('the sandbox returned no outcome')
  const outcome = JSON.parse(collected.value) as Outcome
  if ('error' in outcome) return fail(String(outcome.error))
  const actual = outcome.value
  if (isDeepStrictEqual(actual, test.expect)) return { name: test.name, ok: true }
  const text = JSON.stringify(actual)
  // Shown only when small and storable as it is (jsonb refuses NUL and lone surrogates).
  const showable = text.length <= MAX_ACTUAL_BYTES && !/\\u0000|\\ud[89a-f][0-9a-f]{2}/i.test(text)
  return fail(
    `expected ${preview(test.expect)}, got ${showable ? preview(actual) : `a value of ${text.length} bytes`}`,
    showable ? actual : undefined,
  )
}

/** Loads `source` in a sandbox and runs each test; a failing or throwing test is a result, not an error. */
export async function runTests(
  data: TestRunData,
  options: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<TestRunResult> {
  const budgetMs = options.timeoutMs ?? RUN_TIMEOUT_MS
  const allFail = (error: string) =>
    summarise(data.tests.map((t) => ({ name: t.name, ok: false, error: clean(error) })))
  let script: vm.Script
  try {
    script = new vm.Script(data.source, { filename: FILENAME })
  } catch (error) {
    return allFail(`the source does not compile: ${compileError(error)}`)
  }
  if (IMPORT_KEYWORD.test(data.source))
    return allFail('the source uses import, which the test sandbox does not allow')
  const sandbox = createSandbox(budgetMs)
  const loaded = sandbox.evaluate(script)
  if (!loaded.ok) return allFail(`the source failed to load: ${loaded.error}`)
  const results: TestResult[] = []
  for (const test of data.tests) {
    // Each test runs synchronously: between two, let the worker's timers (heartbeats, the task
    // timeout) run and stop if the task was aborted.
    options.signal?.throwIfAborted()
    await yieldToEventLoop()
    results.push(runOne(sandbox, test))
  }
  return summarise(results)
}

export const testRunner = defineAgent<TestRunData, TestRunResult>({
  id: 'test-runner',
  taskTypes: ['run_tests'],
  handler: async (ctx) => {
    const result = await runTests(validate(ctx.data), { signal: ctx.signal })
    ctx.log.info({ total: result.total, passed: result.passed, failed: result.failed }, 'tests finished')
    return result
  },
})
