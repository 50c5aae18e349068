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
import type { Json } from '../core/json.ts'
import { ConfigError, EncryptionError, InvalidInputError } from '../errors.ts'

/** The column a payload belongs to; part of the associated data. */
export type PayloadPurpose =
  'workflow.input' | 'task.data' | 'task.result' | 'event.payload' | 'enterprise.output'

export interface Envelope {
  $eq: 1
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

  /** Keys by id (32 bytes each) and the active key's id; throws ConfigError listing every problem. */
  constructor(keys: ReadonlyMap<string, Uint8Array>, active: string | undefined) {
    const problems: string[] = []
    for (const [id, bytes] of keys) {
      if (!KEY_ID.test(id)) problems.push(`encryption key id "${id}" must be 1-64 of A-Z a-z 0-9 _ . -`)
      if (bytes.length !== 32) problems.push(`encryption key "${id}" must be 32 bytes (got ${bytes.length})`)
    }
    if (active !== undefined && !keys.has(active)) {
      problems.push(`the active encryption key "${active}" is not in the key ring`)
    }
    if (active === undefined && keys.size > 0) problems.push('a key ring with keys needs an active key')
    if (problems.length > 0) throw new ConfigError(problems)
    this.#keys = new Map([...keys].map(([id, bytes]) => [id, createSecretKey(bytes)]))
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
  encrypt(tenantId: string, purpose: PayloadPurpose, value: Json, path = '$'): Json {
    if (isEnvelope(value)) {
      throw new InvalidInputError(
        `${path} is an object with exactly the keys $eq, k, iv, ct and tag, which is reserved for encrypted values`,
        path,
      )
    }
    const id = this.#active
    if (id === undefined || value === null) return value
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.#keys.get(id) as KeyObject, iv)
    cipher.setAAD(Buffer.from(`${tenantId}:${purpose}`, 'utf8'))
    const ct = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()])
    const envelope: Envelope = {
      $eq: 1,
      k: id,
      iv: iv.toString('base64'),
      ct: ct.toString('base64'),
      tag: cipher.getAuthTag().toString('base64'),
    }
    return envelope as unknown as Json
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
    if (value.$eq !== 1 || typeof k !== 'string' || typeof iv !== 'string' || typeof ct !== 'string') {
      throw new EncryptionError('invalid_envelope', `${what} is a malformed or unsupported encrypted value`)
    }
    const key = this.#keys.get(k)
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
      decipher.setAAD(Buffer.from(`${tenantId}:${purpose}`, 'utf8'))
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
  needsReencryption(value: Json): boolean {
    if (this.#active === undefined || value === null) return false
    return !isEnvelope(value) || value.k !== this.#active
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
