// A workflow type's input schema (defineWorkflow({ input })): a Standard Schema validator (zod,
// valibot, arktype: anything with the `~standard` interface, https://standardschema.dev) or a JSON
// Schema object (hand-written, or from TypeBox), checked when a run starts. The first problem is
// reported as invalid_input with its JSON path (`$.input.user.email`), before anything is written.
// Standard Schema needs no runtime dependency: its interface is declared here, as its spec suggests.
import { createRequire } from 'node:module'
import type { Options, ValidateFunction } from 'ajv'
import { DefinitionError, InvalidInputError } from '../errors.ts'
import type { Json } from './json.ts'

/** The Standard Schema interface (v1), as https://standardschema.dev declares it. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': {
    readonly version: 1
    readonly vendor: string
    readonly validate: (
      value: unknown,
    ) => StandardSchemaResult<Output> | Promise<StandardSchemaResult<Output>>
    readonly types?: { readonly input: Input; readonly output: Output } | undefined
    /** Standard JSON Schema (zod 4.2+ and others): the schema as JSON Schema, for the OpenAPI document. */
    readonly jsonSchema?: { readonly input: (options: { target: string }) => Record<string, unknown> }
  }
}

export type StandardSchemaResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | { readonly issues: readonly StandardSchemaIssue[] }

export interface StandardSchemaIssue {
  readonly message: string
  readonly path?: readonly (PropertyKey | { readonly key: PropertyKey })[] | undefined
}

/** A JSON Schema object; TypeBox's schemas carry their static type as a phantom `static` member. */
export type JsonSchemaObject = { readonly [key: string]: unknown } & { readonly '~standard'?: never }

/** What `input` of defineWorkflow may be. */
export type InputSchema = StandardSchemaV1<any, any> | JsonSchemaObject

/** The type a caller passes to start a run of a workflow with this input schema (Json: unknown). */
export type SchemaInput<S> =
  S extends StandardSchemaV1<infer I, any> ? I : S extends { static: infer T } ? T : Json

/** The type the run's tasks see (the validated value: a Standard Schema may transform it). */
export type SchemaOutput<S> =
  S extends StandardSchemaV1<any, infer O> ? O : S extends { static: infer T } ? T : Json

/** A workflow type's input check, as defineWorkflow resolves it. */
export interface InputValidator<TStart = unknown, TInput = unknown> {
  readonly kind: 'standard-schema' | 'json-schema'
  /** `zod`, `valibot`, ... for a Standard Schema; `json-schema` otherwise. */
  readonly vendor: string
  /**
   * The input as JSON Schema for the OpenAPI document: the JSON Schema given, or what a Standard
   * Schema validator publishes of itself (null when it publishes nothing).
   */
  readonly jsonSchema: Record<string, unknown> | null
  /** The validated value, or InvalidInputError naming the path of the first problem. */
  validate(value: TStart): Promise<TInput>
}

export function isStandardSchema(value: unknown): value is StandardSchemaV1 {
  const s = (value as { '~standard'?: { validate?: unknown } } | null)?.['~standard']
  return typeof s === 'object' && s !== null && typeof s.validate === 'function'
}

/** Checks an `input` given to defineWorkflow and makes its validator; DefinitionError if it is neither kind. */
export function inputValidator(schema: unknown, workflow: string): InputValidator {
  if (isStandardSchema(schema)) return standardValidator(schema)
  if (schema !== null && typeof schema === 'object' && !Array.isArray(schema)) {
    return jsonSchemaValidator(schema as Record<string, unknown>, workflow)
  }
  if (typeof schema === 'boolean') return jsonSchemaValidator(schema, workflow)
  throw new DefinitionError(
    `workflow "${workflow}" input must be a Standard Schema validator (zod, valibot, arktype, ...) or a JSON Schema object`,
  )
}

function standardValidator(schema: StandardSchemaV1): InputValidator {
  const std = schema['~standard']
  let jsonSchema: Record<string, unknown> | null = null
  try {
    jsonSchema = std.jsonSchema?.input({ target: 'draft-2020-12' }) ?? null
  } catch {
    jsonSchema = null // a validator that cannot express itself (a transform, a refinement) publishes nothing
  }
  return {
    kind: 'standard-schema',
    vendor: String(std.vendor),
    jsonSchema,
    async validate(value) {
      // Async validators (an async refinement) return a promise: awaited either way.
      const result = await std.validate(value)
      if (!result.issues) return result.value
      const first = result.issues[0]
      const path = `$.input${pathOf(first?.path ?? [])}`
      throw new InvalidInputError(`${path}: ${first?.message ?? 'is invalid'}`, path)
    },
  }
}

/**
 * JSON Schema with ajv (the validator Fastify itself uses, already in this package's tree), in the
 * draft the schema's `$schema` names (draft-07 when it names none; 2019-09 and 2020-12 too). Compiled
 * here, when the workflow is defined: an invalid schema fails at boot, not at the first start.
 */
function jsonSchemaValidator(schema: Record<string, unknown> | boolean, workflow: string): InputValidator {
  const dialect = typeof schema === 'object' && typeof schema.$schema === 'string' ? schema.$schema : ''
  const ajv = newAjv(dialect.includes('2020-12') ? '2020' : dialect.includes('2019-09') ? '2019' : 'ajv')
  let check: ValidateFunction
  try {
    // A copy without TypeBox's symbol keys (ajv ignores them anyway) and frozen against later edits.
    check = ajv.compile(typeof schema === 'object' ? structuredClone(plain(schema)) : schema)
  } catch (error) {
    throw new DefinitionError(`workflow "${workflow}" input schema is invalid: ${(error as Error).message}`)
  }
  const published = typeof schema === 'object' ? plain(schema) : schema ? {} : { not: {} }
  delete published.$schema
  return {
    kind: 'json-schema',
    vendor: 'json-schema',
    jsonSchema: published,
    async validate(value) {
      if (check(value)) return value
      const first = check.errors?.[0]
      const segments = (first?.instancePath ?? '')
        .split('/')
        .slice(1)
        .map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'))
      const missing = (first?.params as { missingProperty?: unknown } | undefined)?.missingProperty
      if (typeof missing === 'string') segments.push(missing)
      const path = `$.input${pathOf(segments.map((s) => (/^\d+$/.test(s) ? Number(s) : s)))}`
      throw new InvalidInputError(`${path}: ${first?.message ?? 'is invalid'}`, path)
    },
  }
}

// allErrors off: the first problem is what is reported, and ajv stops there. strict off: schemas
// carry annotations ajv does not know (`example`, vendor keys), which are not errors.
const AJV_OPTIONS: Options = { strict: false, allErrors: false, validateFormats: true }

// Loaded on first use (require is synchronous, as defineWorkflow is): a process whose workflows
// have no JSON Schema (every CLI command loads the registry) does not pay for ajv.
const require = createRequire(import.meta.url)
type AjvClass = new (options: Options) => import('ajv').default

function newAjv(dialect: 'ajv' | '2019' | '2020'): import('ajv').default {
  const module = dialect === 'ajv' ? 'ajv' : `ajv/dist/${dialect}.js`
  const Class = require(module) as AjvClass
  const ajv = new Class(AJV_OPTIONS)
  const addFormats = require('ajv-formats') as (ajv: import('ajv').default) => unknown
  addFormats(ajv)
  return ajv
}

/** A JSON copy of a schema: own string keys only (TypeBox's symbols dropped). */
function plain(schema: Record<string, unknown>): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>
}

/** `.user.email`, `[0]`, `["odd key"]`: the path notation of the library's invalid_input errors. */
function pathOf(path: readonly (PropertyKey | { readonly key: PropertyKey })[]): string {
  return path
    .map((p) => (typeof p === 'object' && p !== null ? p.key : p))
    .map((k) =>
      typeof k === 'number'
        ? `[${k}]`
        : typeof k === 'string' && /^[A-Za-z_$][\w$]*$/.test(k)
          ? `.${k}`
          : `[${JSON.stringify(String(k))}]`,
    )
    .join('')
}
