// Encryption at rest of payloads (workflow input, task data, task result): AES-256-GCM under a key
// ring read from the environment. Pure node:crypto, no I/O; values are encrypted where they are
// written and decrypted only where they are used (the worker's claim, the API's reads).
//
// A stored value is either plain JSON or an envelope, a JSON object with exactly the keys
//   { "$eq": 1, "k": <key id>, "iv": <base64, 12 bytes>, "ct": <base64>, "tag": <base64, 16 bytes> }
// and nothing else. That shape is reserved: a workflow input, task data or result whose top level has
// exactly these five keys is refused at write time (with or without keys), so a stored value is
// never ambiguous. The associated data is `<tenant id>:<purpose>` (tenant ids cannot contain ':'), so a
// ciphertext copied into another tenant's row, or into another column, fails to decrypt instead of
// yielding another tenant's data. JSON null is stored as it is: it has no content to hide.
//
// With per-tenant data keys (withDataKeys, src/crypto/data-keys.ts) the envelope has the same five
// keys with "$eq": 2 and "k" the id of a tenant's (or subject's) data key, and the associated data
// `<tenant id>:<purpose>:<data key id>`; version 1 envelopes (the key ring's keys) still read. The
// data keys must be loaded before the synchronous encrypt/decrypt: prepare() and prepareFor() do it
// (a Map lookup once cached).
// Size (over 400 lines): the fleet keys and the per-tenant data keys share one ciphertext format
// and its associated data; in one file a change to how values are sealed cannot drift from how
// they are opened.
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createSecretKey,
  hkdfSync,
  type KeyObject,
  randomBytes,
  timingSafeEqual,
} from 'node:crypto'
import { inspect } from 'node:util'
import type pg from 'pg'
import type { Json } from '../core/json.ts'
import type { TenantScope } from '../db/tx.ts'
import { ConfigError, EncryptionError, InvalidInputError } from '../errors.ts'
import { type DataKeys, erasedMarker, type KeySource, subjectHash } from './data-keys.ts'

/** The column a payload belongs to; part of the associated data. */
export type PayloadPurpose =
  'workflow.input' | 'task.data' | 'task.result' | 'event.payload' | 'enterprise.output'

export interface Envelope {
  /** 1: under a key of the ring; 2: under a tenant's data key. */
  $eq: 1 | 2
  /** Id of the key it was encrypted under. */
  k: string
  iv: string
  ct: string
  tag: string
}

const ENVELOPE_KEYS = new Set(['$eq', 'k', 'iv', 'ct', 'tag'])
const KEY_ID = /^[A-Za-z0-9_.-]{1,64}$/
const BASE64 = /^(?:[A-Za-z0-9+/]{43}=?|[A-Za-z0-9_-]{43}=?)$/
const IV_BYTES = 12
const TAG_BYTES = 16

/** Whether a stored value is an envelope: an object with exactly the keys $eq, k, iv, ct and tag. */
export function isEnvelope(value: unknown): value is Envelope {
  if (typeof value !== 'object' || value === null || Array.isArray(value) || !Object.hasOwn(value, '$eq')) {
    return false
  }
  const keys = Object.keys(value)
  return keys.length === ENVELOPE_KEYS.size && keys.every((k) => ENVELOPE_KEYS.has(k))
}

/**
 * The keys payloads are encrypted under: any number of keys by id, for decryption, and one active
 * key, for encryption. Without keys it stores and reads plain JSON (and refuses to read envelopes).
 * Key material is held in KeyObjects and never serialised: JSON and inspect show the ids only.
 */
export class KeyRing {
  /** No keys: payloads are stored unencrypted. */
  static readonly none = new KeyRing(new Map(), undefined)

  readonly #keys: ReadonlyMap<string, KeyObject>
  readonly #active: string | undefined
  /** Signing keys, derived (HKDF) from each encryption key on first use. */
  readonly #macKeys = new Map<string, Buffer>()
  /** Per-tenant data keys, when on (withDataKeys). */
  #dataKeys: DataKeys | undefined

  /** Keys by id (32 bytes each) and the active key's id; throws ConfigError listing every problem. */
  constructor(keys: ReadonlyMap<string, Uint8Array | KeyObject>, active: string | undefined) {
    const problems: string[] = []
    for (const [id, bytes] of keys) {
      const size = bytes instanceof Uint8Array ? bytes.length : bytes.symmetricKeySize
      if (!KEY_ID.test(id)) problems.push(`encryption key id "${id}" must be 1-64 of A-Z a-z 0-9 _ . -`)
      if (size !== 32) problems.push(`encryption key "${id}" must be 32 bytes (got ${size})`)
    }
    if (active !== undefined && !keys.has(active)) {
      problems.push(`the active encryption key "${active}" is not in the key ring`)
    }
    if (active === undefined && keys.size > 0) problems.push('a key ring with keys needs an active key')
    if (problems.length > 0) throw new ConfigError(problems)
    this.#keys = new Map(
      [...keys].map(([id, bytes]) => [id, bytes instanceof Uint8Array ? createSecretKey(bytes) : bytes]),
    )
    this.#active = active
  }

  /** A ring from base64 keys by id; the active key defaults to the only key. */
  static of(keys: Record<string, string>, active?: string): KeyRing {
    const entries = Object.entries(keys).map(([id, b64]) => `${id}:${b64}`)
    const problems: string[] = []
    const ring = parseKeyRing(entries.join(','), active, problems)
    if (problems.length > 0) throw new ConfigError(problems)
    return ring
  }

  /** A new random key, base64 (for ENCRYPTION_KEYS). */
  static generateKey(): string {
    return randomBytes(32).toString('base64')
  }

  /**
   * The same keys, with payloads encrypted under per-tenant data keys (read: either version). One
   * per engine: the data keys' cache is keyed by tenant id, which is unique within one fleet.
   */
  withDataKeys(dataKeys: DataKeys): KeyRing {
    const ring = new KeyRing(this.#keys, this.#active)
    ring.#dataKeys = dataKeys
    return ring
  }

  /** The per-tenant data keys, when on. */
  get dataKeys(): DataKeys | undefined {
    return this.#dataKeys
  }

  /**
   * Loads (creating it when needed) the active data key of the tenant, or of the subject: call it
   * before encrypt(); returns the id to pass it (undefined without data keys). Cached: no I/O.
   */
  async prepare(pool: pg.Pool, scope: TenantScope, subject?: string | null): Promise<string | undefined> {
    if (!this.#dataKeys) return undefined
    return this.#dataKeys.ensureActive(pool, scope, subject)
  }

  /** Loads the data keys the values' envelopes name (and the tenant's active key): call it before decrypt(). */
  async prepareFor(pool: KeySource, scope: TenantScope, values: Iterable<unknown>): Promise<void> {
    const dk = this.#dataKeys
    if (!dk) return
    const ids: string[] = []
    for (const v of values) if (isEnvelope(v) && v.$eq === 2 && typeof v.k === 'string') ids.push(v.k)
    await dk.loadActive(pool, scope)
    if (ids.length > 0) await dk.ensureIds(pool, scope, ids)
  }

  /** Key material derived (HKDF, `info`) from the ring's key `id`, or undefined when it has no such key. */
  deriveKey(id: string, info: string): Buffer | undefined {
    const key = this.#keys.get(id)
    return key ? Buffer.from(hkdfSync('sha256', key, '', info, 32)) : undefined
  }

  /** Whether payloads are encrypted (there is an active key). */
  get enabled(): boolean {
    return this.#active !== undefined
  }

  get activeKeyId(): string | undefined {
    return this.#active
  }

  get keyIds(): string[] {
    return [...this.#keys.keys()]
  }

  /**
   * The value to store: an envelope under the active key, or the value itself without keys (or when
   * it is null). Refuses, with InvalidInputError at `path`, a value of the reserved envelope shape.
   * The size limit (MAX_PAYLOAD_BYTES) is checked on the plain value before this.
   */
  encrypt(tenantId: string, purpose: PayloadPurpose, value: Json, path = '$', keyId?: string): Json {
    if (isEnvelope(value)) {
      throw new InvalidInputError(
        `${path} is an object with exactly the keys $eq, k, iv, ct and tag, which is reserved for encrypted values`,
        path,
      )
    }
    const id = this.#active
    if (id === undefined || value === null) return value
    // Enterprise outputs are kept in the control database's run summaries, beside no tenant's data
    // keys: always under the ring's keys (the row erasure covers them).
    const data = purpose === 'enterprise.output' ? undefined : this.#sealingKey(tenantId, keyId)
    const k = data ? data.id : id
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', data ? data.key : (this.#keys.get(id) as KeyObject), iv)
    cipher.setAAD(Buffer.from(data ? `${tenantId}:${purpose}:${k}` : `${tenantId}:${purpose}`, 'utf8'))
    const ct = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()])
    const envelope: Envelope = {
      $eq: data ? 2 : 1,
      k,
      iv: iv.toString('base64'),
      ct: ct.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
    }
    return envelope as unknown as Json
  }

  /**
   * The data key to encrypt with: the active key of the subject `keyId` belongs to (a value written
   * for a task is sealed under its workflow's subject key), else the tenant's active key; undefined
   * without data keys, or when prepare() was not called for the tenant (then a version 1 envelope
   * under the ring's active key is written: readable, re-encrypted by `reencrypt`).
   */
  #sealingKey(tenantId: string, keyId: string | undefined): { id: string; key: KeyObject } | undefined {
    const dk = this.#dataKeys
    if (!dk) return undefined
    const named = keyId === undefined ? undefined : dk.get(tenantId, keyId)
    const e = (named && dk.active(tenantId, named.subject)) ?? dk.active(tenantId)
    return e?.key ? { id: e.id, key: e.key } : undefined
  }

  /**
   * Refuses (EncryptionError decryption_failed) a value under another data subject's key than the
   * workflow's: a ciphertext copied from one subject's workflow into another's (or into one without
   * a subject) does not decrypt there. Values under the tenant's own keys pass (written before the
   * subject had a key, or re-encrypted).
   */
  checkSubject(tenantId: string, value: Json, subjectKey: string | null | undefined): void {
    const subject = this.subjectOf(tenantId, value)
    if (subject === undefined || subject === '' || subject === subjectHash(subjectKey)) return
    throw new EncryptionError(
      'decryption_failed',
      `a value of tenant "${tenantId}" is under another data subject's key than its workflow's`,
    )
  }

  /** The subject hash ('' for the tenant's own keys) of a version 2 envelope's data key, if loaded. */
  subjectOf(tenantId: string, value: Json): string | undefined {
    if (!isEnvelope(value) || value.$eq !== 2) return undefined
    const e = this.#dataKeys?.get(tenantId, value.k)
    return e && e.state !== 'absent' ? e.subject : undefined
  }

  /**
   * The plain value of a stored one: an envelope is decrypted, anything else (rows written without
   * keys) is returned as it is. Throws EncryptionError, never returns garbage: `no_keys` (envelope
   * but no keys configured), `unknown_key` (its key is not in the ring), `decryption_failed`
   * (altered, another tenant's or another column's value, or different key material under that id),
   * `invalid_envelope` (malformed).
   */
  decrypt(tenantId: string, purpose: PayloadPurpose, value: Json): Json {
    if (!isEnvelope(value)) return value
    const what = `${purpose} of tenant "${tenantId}"`
    const { k, iv, ct, tag } = value
    if (
      (value.$eq !== 1 && value.$eq !== 2) ||
      typeof k !== 'string' ||
      typeof iv !== 'string' ||
      typeof ct !== 'string'
    ) {
      throw new EncryptionError('invalid_envelope', `${what} is a malformed or unsupported encrypted value`)
    }
    let key: KeyObject | undefined
    let aad = `${tenantId}:${purpose}`
    if (value.$eq === 2) {
      const dk = this.#dataKeys
      const e = dk?.get(tenantId, k)
      if (!dk) {
        throw new EncryptionError(
          'unknown_key',
          `${what} is encrypted under data key "${k}" but per-tenant data keys are off (DATA_KEYS)`,
        )
      }
      if (!e) throw new EncryptionError('key_not_loaded', `${what} names data key "${k}", not loaded yet`)
      // Crypto-erased: the typed marker a row erasure leaves, instead of an error.
      if (e.state === 'destroyed') return erasedMarker(e.erasure)
      if (e.state === 'absent' || !e.key) {
        throw new EncryptionError(
          'decryption_failed',
          `${what} names data key "${k}", which the tenant does not have (another tenant's value?)`,
        )
      }
      key = e.key
      aad = `${tenantId}:${purpose}:${k}`
    } else {
      key = this.#keys.get(k)
    }
    if (!key) {
      throw this.#keys.size === 0
        ? new EncryptionError(
            'no_keys',
            `${what} is encrypted (key "${k}") but no encryption keys are configured (ENCRYPTION_KEYS)`,
          )
        : new EncryptionError(
            'unknown_key',
            `${what} is encrypted under key "${k}", which is not in the key ring (${this.keyIds.join(', ')})`,
          )
    }
    const ivBytes = Buffer.from(iv, 'base64')
    const tagBytes = Buffer.from(typeof tag === 'string' ? tag : '', 'base64')
    if (ivBytes.length !== IV_BYTES || tagBytes.length !== TAG_BYTES) {
      throw new EncryptionError('invalid_envelope', `${what} has a malformed iv or tag`)
    }
    let plain: string
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, ivBytes)
      decipher.setAAD(Buffer.from(aad, 'utf8'))
      decipher.setAuthTag(tagBytes)
      plain = Buffer.concat([decipher.update(Buffer.from(ct, 'base64')), decipher.final()]).toString('utf8')
    } catch (error) {
      throw new EncryptionError(
        'decryption_failed',
        `${what} failed to decrypt with key "${k}": it was altered, belongs to another tenant or column, or the key differs from the one it was encrypted with`,
        { cause: error },
      )
    }
    try {
      return JSON.parse(plain) as Json
    } catch (error) {
      throw new EncryptionError('invalid_envelope', `${what} decrypted to something that is not JSON`, {
        cause: error,
      })
    }
  }

  /**
   * `<key id>.<HMAC-SHA256, base64url>` of `data` for `purpose`, under a key derived from the active
   * key (never the encryption key itself), or null without keys. For records the database stores but
   * must not be able to forge: the database never sees the key.
   */
  sign(purpose: string, data: string): string | null {
    const id = this.#active
    if (id === undefined) return null
    return `${id}.${this.#mac(id, purpose, data).toString('base64url')}`
  }

  /**
   * Whether `signature` is what sign() gave for this purpose and data under a key in the ring.
   * Without any keys there is no secret to sign with, and every record is accepted (null or not).
   */
  verify(purpose: string, data: string, signature: string | null): boolean {
    if (this.#keys.size === 0) return true
    if (typeof signature !== 'string') return false
    const dot = signature.lastIndexOf('.')
    const id = signature.slice(0, dot)
    if (dot < 1 || !this.#keys.has(id)) return false
    const given = Buffer.from(signature.slice(dot + 1), 'base64url')
    const expected = this.#mac(id, purpose, data)
    return given.length === expected.length && timingSafeEqual(given, expected)
  }

  #mac(id: string, purpose: string, data: string): Buffer {
    let key = this.#macKeys.get(id)
    if (!key) {
      const derived = hkdfSync('sha256', this.#keys.get(id) as KeyObject, '', 'equilateral/mac/v1', 32)
      key = Buffer.from(derived)
      this.#macKeys.set(id, key)
    }
    return createHmac('sha256', key).update(`${purpose}\n`, 'utf8').update(data, 'utf8').digest()
  }

  /** Whether a stored value should be rewritten under the active key (plain, or under another key). */
  needsReencryption(value: Json, tenantId?: string): boolean {
    if (this.#active === undefined || value === null) return false
    if (!isEnvelope(value)) return true
    const dk = this.#dataKeys
    if (!dk || tenantId === undefined) return value.k !== this.#active
    if (value.$eq !== 2) return true
    // Under a retired data key: moves to the active one. Destroyed (erased) values stay as they are.
    return dk.get(tenantId, value.k)?.state === 'retired'
  }

  toJSON(): { activeKey: string | null; keys: string[] } {
    return { activeKey: this.#active ?? null, keys: this.keyIds }
  }

  [inspect.custom](): string {
    return `KeyRing ${JSON.stringify(this.toJSON())}`
  }
}

/**
 * Parses ENCRYPTION_KEYS (`id:base64,id:base64`, 32-byte keys) and ENCRYPTION_ACTIVE_KEY (defaults
 * to the only key), pushing every problem onto `problems`; returns KeyRing.none when there are any.
 */
export function parseKeyRing(
  keys: string | undefined,
  active: string | undefined,
  problems: string[],
): KeyRing {
  const activeId = active?.trim() || undefined
  const spec = keys?.trim() ?? ''
  if (spec === '') {
    if (activeId) problems.push('ENCRYPTION_ACTIVE_KEY is set but ENCRYPTION_KEYS is empty')
    return KeyRing.none
  }
  const before = problems.length
  const bytes = new Map<string, Uint8Array>()
  const named = new Set<string>()
  for (const [i, part] of spec.split(',').entries()) {
    const entry = part.trim()
    const colon = entry.indexOf(':')
    const id = entry.slice(0, Math.max(colon, 0))
    const b64 = entry.slice(colon + 1).trim()
    // Problems name the entry by position or id: a key (or a key pasted without its id) is never echoed.
    if (colon < 0 || !KEY_ID.test(id)) {
      problems.push(
        `ENCRYPTION_KEYS entry ${i + 1} must be <id>:<base64 key>, the id 1-64 of A-Z a-z 0-9 _ . -`,
      )
      continue
    }
    if (named.has(id)) {
      problems.push(`ENCRYPTION_KEYS names key "${id}" twice`)
      continue
    }
    named.add(id)
    if (!BASE64.test(b64))
      problems.push(`ENCRYPTION_KEYS key "${id}" must be 32 bytes in base64 (44 characters)`)
    else bytes.set(id, Buffer.from(b64, /[-_]/.test(b64) ? 'base64url' : 'base64'))
  }
  const chosen = activeId ?? (named.size === 1 ? [...named][0] : undefined)
  if (chosen === undefined) {
    problems.push('ENCRYPTION_ACTIVE_KEY must name the key to encrypt with when ENCRYPTION_KEYS has several')
  } else if (!named.has(chosen)) {
    problems.push(
      `ENCRYPTION_ACTIVE_KEY is not one of the key ids of ENCRYPTION_KEYS (${[...named].join(', ')})`,
    )
  }
  if (problems.length > before) return KeyRing.none
  return new KeyRing(bytes, chosen)
}
