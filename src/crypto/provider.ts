// Key-encryption keys (KEKs): who holds them and how a data key is wrapped and unwrapped under them.
// The engine generates the data keys (random 32 bytes, src/crypto/data-keys.ts) and stores them
// only wrapped; a KeyProvider wraps and unwraps them, and never sees a payload.
//
//   local  (the default) KEKs derived (HKDF) from the keys of ENCRYPTION_KEYS, held by every process
//          as today; the active key's KEK wraps, any key's KEK unwraps.
//   vault  HashiCorp Vault's transit engine (/v1/transit/encrypt|decrypt|rewrap/<key>): the KEK never
//          leaves Vault; the processes hold a token. Spoken with node's fetch: no dependency.
//
// No key material in errors, logs or metrics: errors name the provider, the key name and the HTTP
// status, never a request or response body (they carry plaintext data keys), nor the token.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { EncryptionError } from '../errors.ts'
import type { KeyRing } from './keyring.ts'

export interface WrappedKey {
  /** The KEK (and its version) that wrapped it, as the provider names it: recorded beside the key. */
  kek: string
  /** Opaque to the engine; no secret without the KEK. */
  wrapped: string
}

export interface KeyProvider {
  /** 'local' or 'vault': for logs and `keys status`. */
  readonly name: string
  /** Wraps a data key; `context` (tenant and key id) is bound to the wrapping where the provider can. */
  wrap(dataKey: Buffer, context: string): Promise<WrappedKey>
  /** The data key a wrap() returned; EncryptionError `unwrap_failed` otherwise. */
  unwrap(key: WrappedKey, context: string): Promise<Buffer>
  /**
   * The key wrapped under the provider's current KEK (version), or null when it already is: what
   * KEK rotation does for every data key. Never a payload rewrite.
   */
  rewrap(key: WrappedKey, context: string): Promise<WrappedKey | null>
}

const LOCAL_INFO = 'equilateral/kek/v1'

/**
 * KEKs derived from the key ring's keys (never the payload keys themselves). The KEK id is the key
 * ring's key id: making another key active (ENCRYPTION_ACTIVE_KEY) and running `keys rewrap`
 * rotates the KEK; the old key can leave the ring once nothing is wrapped under it.
 */
export class LocalKeyProvider implements KeyProvider {
  readonly name = 'local'
  readonly #ring: KeyRing
  readonly #keks = new Map<string, Buffer>()

  constructor(ring: KeyRing) {
    if (!ring.enabled) {
      throw new EncryptionError('no_keys', 'per-tenant data keys need encryption keys (ENCRYPTION_KEYS)')
    }
    this.#ring = ring
  }

  #kek(id: string): Buffer {
    let kek = this.#keks.get(id)
    if (!kek) {
      const material = this.#ring.deriveKey(id, LOCAL_INFO)
      if (!material)
        throw new EncryptionError('unknown_key', `key-encryption key "${id}" is not in the key ring`)
      kek = material
      this.#keks.set(id, kek)
    }
    return kek
  }

  async wrap(dataKey: Buffer, context: string): Promise<WrappedKey> {
    const id = this.#ring.activeKeyId as string
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#kek(id), iv)
    cipher.setAAD(Buffer.from(context, 'utf8'))
    const ct = Buffer.concat([cipher.update(dataKey), cipher.final()])
    return { kek: id, wrapped: ['l1', b64u(iv), b64u(ct), b64u(cipher.getAuthTag())].join('.') }
  }

  async unwrap(key: WrappedKey, context: string): Promise<Buffer> {
    const [version, iv, ct, tag] = key.wrapped.split('.')
    if (version !== 'l1' || !iv || !ct || !tag) {
      throw new EncryptionError('unwrap_failed', `a data key wrapped under "${key.kek}" is malformed`)
    }
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#kek(key.kek), Buffer.from(iv, 'base64url'))
      decipher.setAAD(Buffer.from(context, 'utf8'))
      decipher.setAuthTag(Buffer.from(tag, 'base64url'))
      return Buffer.concat([decipher.update(Buffer.from(ct, 'base64url')), decipher.final()])
    } catch (error) {
      if (error instanceof EncryptionError) throw error
      throw new EncryptionError(
        'unwrap_failed',
        `a data key failed to unwrap under key-encryption key "${key.kek}" (altered, or another tenant's)`,
      )
    }
  }

  async rewrap(key: WrappedKey, context: string): Promise<WrappedKey | null> {
    if (key.kek === this.#ring.activeKeyId) return null
    return this.wrap(await this.unwrap(key, context), context)
  }

  toJSON(): { provider: string } {
    return { provider: this.name }
  }
}

export interface VaultTransitOptions {
  /** e.g. https://vault.internal:8200 (VAULT_ADDR). */
  address: string
  /** VAULT_TOKEN. Held privately, never logged. */
  token: string
  /** The transit key's name (VAULT_TRANSIT_KEY). */
  key: string
  /** The transit engine's mount (VAULT_TRANSIT_MOUNT, default "transit"). */
  mount?: string
  /** VAULT_NAMESPACE (Vault Enterprise), sent as X-Vault-Namespace. */
  namespace?: string
  /** Whether the transit key is derived (created with derived=true): context is sent with every call. */
  derived?: boolean
  /** Per request (default 10 s). */
  timeoutMs?: number
}

/** Vault's "vault:v<n>:..." ciphertext: the KEK is `<key>:v<n>`. */
const VAULT_CIPHERTEXT = /^vault:v(\d+):/

/**
 * HashiCorp Vault transit: the KEK is the transit key, held by Vault. wrap = /encrypt, unwrap =
 * /decrypt, rewrap = /rewrap (after `vault write -f transit/keys/<key>/rotate`: the data key stays,
 * only its wrapping changes; then min_decryption_version retires the old version).
 */
export class VaultTransitProvider implements KeyProvider {
  readonly name = 'vault'
  readonly #o: Required<Omit<VaultTransitOptions, 'namespace'>> & { namespace?: string }

  constructor(options: VaultTransitOptions) {
    const problems: string[] = []
    if (!/^https?:\/\/[^\s]+$/.test(options.address ?? '')) problems.push('VAULT_ADDR must be an http(s) URL')
    if (!options.token) problems.push('VAULT_TOKEN is required for the vault key provider')
    if (!/^[A-Za-z0-9_.-]{1,128}$/.test(options.key ?? ''))
      problems.push('VAULT_TRANSIT_KEY must name a transit key')
    if (problems.length > 0) throw new EncryptionError('provider_config', problems.join('; '))
    this.#o = {
      mount: 'transit',
      derived: false,
      timeoutMs: 10_000,
      ...options,
      address: options.address.replace(/\/+$/, ''),
    }
  }

  async #call(
    op: 'encrypt' | 'decrypt' | 'rewrap',
    body: Record<string, string>,
  ): Promise<Record<string, string>> {
    const { address, mount, key, token, namespace, timeoutMs } = this.#o
    const url = `${address}/v1/${mount}/${op}/${encodeURIComponent(key)}`
    let response: Response
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'x-vault-token': token,
          ...(namespace ? { 'x-vault-namespace': namespace } : {}),
        },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      })
    } catch (error) {
      // The cause (a network error) names the host, never the body: kept out all the same.
      throw new EncryptionError(
        'provider_unavailable',
        `vault transit ${op} with key "${key}" failed: ${(error as Error).name === 'TimeoutError' ? 'timed out' : 'unreachable'}`,
      )
    }
    if (!response.ok) {
      await response.body?.cancel()
      throw new EncryptionError(
        response.status >= 500 || response.status === 429 ? 'provider_unavailable' : 'unwrap_failed',
        `vault transit ${op} with key "${key}" answered HTTP ${response.status}`,
      )
    }
    const json = (await response.json().catch(() => null)) as { data?: Record<string, string> } | null
    if (!json?.data) {
      throw new EncryptionError(
        'provider_unavailable',
        `vault transit ${op} with key "${key}" answered no data`,
      )
    }
    return json.data
  }

  #context(context: string): Record<string, string> {
    return this.#o.derived ? { context: Buffer.from(context, 'utf8').toString('base64') } : {}
  }

  #kekOf(ciphertext: string): string {
    const m = VAULT_CIPHERTEXT.exec(ciphertext)
    if (!m)
      throw new EncryptionError(
        'unwrap_failed',
        `vault transit key "${this.#o.key}" answered an unexpected ciphertext`,
      )
    return `${this.#o.key}:v${m[1]}`
  }

  async wrap(dataKey: Buffer, context: string): Promise<WrappedKey> {
    const data = await this.#call('encrypt', {
      plaintext: dataKey.toString('base64'),
      ...this.#context(context),
    })
    const ciphertext = String(data.ciphertext ?? '')
    return { kek: this.#kekOf(ciphertext), wrapped: ciphertext }
  }

  async unwrap(key: WrappedKey, context: string): Promise<Buffer> {
    const data = await this.#call('decrypt', { ciphertext: key.wrapped, ...this.#context(context) })
    const plain = Buffer.from(String(data.plaintext ?? ''), 'base64')
    if (plain.length !== 32) {
      throw new EncryptionError(
        'unwrap_failed',
        `vault transit key "${this.#o.key}" unwrapped no 32-byte data key`,
      )
    }
    return plain
  }

  async rewrap(key: WrappedKey, context: string): Promise<WrappedKey | null> {
    const data = await this.#call('rewrap', { ciphertext: key.wrapped, ...this.#context(context) })
    const ciphertext = String(data.ciphertext ?? '')
    const kek = this.#kekOf(ciphertext)
    return kek === key.kek ? null : { kek, wrapped: ciphertext }
  }

  toJSON(): { provider: string; address: string; key: string } {
    return { provider: this.name, address: this.#o.address, key: this.#o.key }
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `VaultTransitProvider ${JSON.stringify(this.toJSON())}`
  }
}

function b64u(b: Buffer): string {
  return b.toString('base64url')
}

/** The provider KEY_PROVIDER names (default local), from the environment's VAULT_* settings. */
export function providerFromEnv(env: NodeJS.ProcessEnv, ring: KeyRing): KeyProvider {
  const name = (env.KEY_PROVIDER ?? 'local').trim() || 'local'
  if (name === 'local') return new LocalKeyProvider(ring)
  if (name === 'vault') {
    return new VaultTransitProvider({
      address: env.VAULT_ADDR ?? '',
      token: env.VAULT_TOKEN ?? '',
      key: env.VAULT_TRANSIT_KEY ?? '',
      ...(env.VAULT_TRANSIT_MOUNT ? { mount: env.VAULT_TRANSIT_MOUNT } : {}),
      ...(env.VAULT_NAMESPACE ? { namespace: env.VAULT_NAMESPACE } : {}),
      derived: env.VAULT_TRANSIT_DERIVED === 'true',
    })
  }
  throw new EncryptionError('provider_config', `KEY_PROVIDER must be local or vault (got "${name}")`)
}
