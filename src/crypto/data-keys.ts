// Per-tenant (and per-subject) data keys: envelope encryption.
//
//   KEK (KeyProvider: local key ring, or Vault transit)
//    └─ wraps ─ data key (32 random bytes, made by the engine), stored wrapped in tenant_data_keys,
//               one active per tenant and per subject key; rotation retires it (kept for reading)
//        └─ encrypts ─ payload values (AES-256-GCM, envelope {"$eq": 2, "k": <data key id>, ...})
//
// Unwrapped keys live in this process's memory only: a cache bounded in entries (least recently
// used goes first) and in lifetime (an entry older than ttlMs is reloaded by the next ensure, so a
// key destroyed or rotated by another process is seen within that time). The hot path asks for a
// tenant's key with ensureActive(): a Map lookup when cached, no round trip.
//
// A destroyed key (crypto-erasure) keeps its row, without the wrapped key: values under it read as
// an {"$erased": true, "erasure": <id>} marker. Nothing here logs; errors name tenants and key ids.
import { createHash, createSecretKey, type KeyObject, randomBytes } from 'node:crypto'
import type pg from 'pg'
import type { Json } from '../core/json.ts'
import { type Db, type TenantScope, withTenantTx } from '../db/tx.ts'
import { EncryptionError } from '../errors.ts'
import type { KeyProvider } from './provider.ts'

/** Where keys are read and created: a pool (a transaction of their own) or the caller's transaction. */
export type KeySource = pg.Pool | Db

function inTx<T>(where: KeySource, scope: TenantScope, fn: (db: Db) => Promise<T>): Promise<T> {
  return 'executeSql' in where ? fn(where) : withTenantTx(where, scope, fn)
}

export interface DataKeyOptions {
  /** Unwrapped keys kept in memory at most (default 10 000). */
  maxEntries?: number
  /** How long an unwrapped key is used before it is reloaded (default 60 s). */
  ttlMs?: number
}

export interface DataKeyEntry {
  tenant: string
  id: string
  /** '' for the tenant's keys, else the SHA-256 (hex) of the subject key. */
  subject: string
  state: 'active' | 'retired' | 'destroyed' | 'absent'
  /** Absent once destroyed (and for ids the tenant does not have). */
  key?: KeyObject
  erasure?: string | null
  loadedAt: number
}

/** SQL the rows are read with (tenant-scoped: RLS keeps every tenant to its own keys). */
const COLUMNS = 'id, subject_hash, state, kek, wrapped, erasure'

/** Hash of a subject key as stored (the subject key itself is not kept beside its key). */
export function subjectHash(subject: string | undefined | null): string {
  return subject ? createHash('sha256').update(subject, 'utf8').digest('hex') : ''
}

const newKeyId = () => `d${randomBytes(15).toString('base64url')}`

/** Binds a wrapped key to its tenant and id: a wrapped key copied to another tenant's row fails. */
export const wrapContext = (tenant: string, id: string) => `equilateral:${tenant}:${id}`

export class DataKeys {
  readonly provider: KeyProvider
  readonly #max: number
  readonly #ttl: number
  /** `${tenant}\0${id}` -> entry, in least-recently-used order. */
  readonly #byId = new Map<string, DataKeyEntry>()
  /** `${tenant}\0${subject hash}` -> the active key's id. */
  readonly #active = new Map<string, string>()
  /** Unwraps in flight, so concurrent misses share one load. */
  readonly #loading = new Map<string, Promise<void>>()
  #now: () => number = () => performance.now()

  constructor(provider: KeyProvider, options: DataKeyOptions = {}) {
    this.provider = provider
    this.#max = Math.max(16, options.maxEntries ?? 10_000)
    this.#ttl = options.ttlMs ?? 60_000
  }

  /** Entries cached (for tests and `keys status`): ids and states only. */
  get size(): number {
    return this.#byId.size
  }

  /** The cached entry for a data key id (sync; refreshes its recency). */
  get(tenant: string, id: string): DataKeyEntry | undefined {
    const k = `${tenant}\0${id}`
    const e = this.#byId.get(k)
    if (e) {
      this.#byId.delete(k)
      this.#byId.set(k, e)
    }
    return e
  }

  /** The cached active key for the tenant (subject '' ) or a subject (its hash). */
  active(tenant: string, subject = ''): DataKeyEntry | undefined {
    const id = this.#active.get(`${tenant}\0${subject}`)
    const e = id === undefined ? undefined : this.get(tenant, id)
    return e?.state === 'active' ? e : undefined
  }

  #fresh(e: DataKeyEntry | undefined): boolean {
    return e !== undefined && this.#now() - e.loadedAt < this.#ttl
  }

  /**
   * Makes sure the keys of the tenant (its active and retired ones, and destroyed ones' records),
   * or of a subject, are cached, reading them in the caller's transaction or one of their own; never
   * creates one (a key made in a transaction that rolls back would be cached all the same).
   */
  async loadActive(source: KeySource, scope: TenantScope, subject?: string | null): Promise<void> {
    const hash = subjectHash(subject)
    if (this.#fresh(this.active(scope.tenantId, hash))) return
    await this.#once(`l\0${scope.tenantId}\0${hash}`, () => this.#loadSubject(source, scope, hash))
  }

  /**
   * Makes sure the active key of the tenant (or of the subject) is cached, creating it when there
   * is none (in a transaction of its own); returns its id. Cached and fresh: no I/O.
   */
  async ensureActive(pool: pg.Pool, scope: TenantScope, subject?: string | null): Promise<string> {
    const tenant = scope.tenantId
    const hash = subjectHash(subject)
    const cached = this.active(tenant, hash)
    if (this.#fresh(cached)) return (cached as DataKeyEntry).id
    // Concurrent misses (a burst of starts) share one load, and one creation when there is no key.
    await this.#once(`a\0${tenant}\0${hash}`, async () => {
      await this.#loadSubject(pool, scope, hash)
      if (this.active(tenant, hash)) return
      // None yet: generate and wrap one outside any transaction (the provider may be remote), then
      // insert it unless another process got there first; either way, read back the one that won.
      const id = newKeyId()
      const wrapped = await this.provider.wrap(randomBytes(32), wrapContext(tenant, id))
      await inTx(pool, scope, (db) =>
        db.executeSql(
          `INSERT INTO tenant_data_keys (tenant_id, id, subject_hash, state, kek, wrapped)
           VALUES ($1, $2, $3, 'active', $4, $5)
           ON CONFLICT (tenant_id, subject_hash) WHERE state = 'active' DO NOTHING`,
          [tenant, id, hash, wrapped.kek, wrapped.wrapped],
        ),
      )
      await this.#loadSubject(pool, scope, hash)
    })
    const e = this.active(tenant, hash)
    if (!e) throw new EncryptionError('key_not_loaded', `tenant "${tenant}" has no active data key`)
    return e.id
  }

  /** Loads the given key ids of the tenant that are not cached (or stale). */
  async ensureIds(pool: KeySource, scope: TenantScope, ids: Iterable<string>): Promise<void> {
    const tenant = scope.tenantId
    const missing = [...new Set(ids)].filter((id) => !this.#fresh(this.get(tenant, id)))
    if (missing.length === 0) return
    await this.#once(`i\0${tenant}\0${missing.sort().join(',')}`, async () => {
      const rows = await inTx(pool, scope, async (db) => {
        const r = await db.executeSql(
          `SELECT ${COLUMNS} FROM tenant_data_keys WHERE tenant_id = $1 AND id = ANY($2::text[])`,
          [tenant, missing],
        )
        return r.rows
      })
      await this.#store(tenant, rows)
      // Ids the tenant does not have (a value copied from another tenant): remembered as absent.
      const now = this.#now()
      for (const id of missing) {
        if (!rows.some((r) => r.id === id))
          this.#put({ tenant, id, subject: '', state: 'absent', loadedAt: now })
      }
    })
  }

  /** Forgets every cached key of the tenant (after a rotation or erasure in this process). */
  forget(tenant: string): void {
    for (const [k, e] of this.#byId) if (e.tenant === tenant) this.#byId.delete(k)
    for (const k of this.#active.keys()) if (k.startsWith(`${tenant}\0`)) this.#active.delete(k)
  }

  async #once(key: string, load: () => Promise<void>): Promise<void> {
    let p = this.#loading.get(key)
    if (!p) {
      p = load().finally(() => this.#loading.delete(key))
      this.#loading.set(key, p)
    }
    return p
  }

  /** Loads the subject's keys (hash ''): the tenant's own keys, active and retired, and destroyed. */
  async #loadSubject(pool: KeySource, scope: TenantScope, hash: string): Promise<void> {
    const rows = await inTx(pool, scope, async (db) => {
      const r = await db.executeSql(
        `SELECT ${COLUMNS} FROM tenant_data_keys WHERE tenant_id = $1 AND subject_hash = $2`,
        [scope.tenantId, hash],
      )
      return r.rows
    })
    this.#active.delete(`${scope.tenantId}\0${hash}`)
    await this.#store(scope.tenantId, rows)
  }

  async #store(tenant: string, rows: any[]): Promise<void> {
    const now = this.#now()
    const entries = await Promise.all(
      rows.map(async (r): Promise<DataKeyEntry> => {
        const base = { tenant, id: r.id as string, subject: r.subject_hash as string, loadedAt: now }
        if (r.state === 'destroyed' || r.wrapped === null) {
          return { ...base, state: 'destroyed', erasure: r.erasure ?? null }
        }
        const plain = await this.provider.unwrap(
          { kek: r.kek, wrapped: r.wrapped },
          wrapContext(tenant, r.id),
        )
        const key = createSecretKey(plain)
        plain.fill(0)
        return { ...base, state: r.state, key }
      }),
    )
    for (const e of entries) {
      this.#put(e)
      if (e.state === 'active') this.#active.set(`${tenant}\0${e.subject}`, e.id)
    }
  }

  #put(e: DataKeyEntry): void {
    const k = `${e.tenant}\0${e.id}`
    this.#byId.delete(k)
    this.#byId.set(k, e)
    while (this.#byId.size > this.#max) {
      const oldest = this.#byId.keys().next().value as string
      this.#byId.delete(oldest)
    }
  }

  toJSON(): { provider: unknown; cached: number } {
    return { provider: this.provider, cached: this.#byId.size }
  }
}

/**
 * A new active data key for the tenant (its current one retired: still read, no longer written):
 * the first step of a data-key rotation, whose second is re-encrypting what is under the retired
 * key (reencrypt). Returns the new key's id.
 */
export async function rotateTenantDataKey(
  dataKeys: DataKeys,
  pool: pg.Pool,
  scope: TenantScope,
): Promise<string> {
  const tenant = scope.tenantId
  const id = newKeyId()
  const wrapped = await dataKeys.provider.wrap(randomBytes(32), wrapContext(tenant, id))
  await withTenantTx(pool, scope, async (db) => {
    await db.executeSql(
      `UPDATE tenant_data_keys SET state = 'retired', rotated_at = now()
       WHERE tenant_id = $1 AND subject_hash = '' AND state = 'active'`,
      [tenant],
    )
    await db.executeSql(
      `INSERT INTO tenant_data_keys (tenant_id, id, subject_hash, state, kek, wrapped) VALUES ($1, $2, '', 'active', $3, $4)`,
      [tenant, id, wrapped.kek, wrapped.wrapped],
    )
  })
  dataKeys.forget(tenant)
  return id
}

export interface RewrapReport {
  tenant: string
  /** Data keys now wrapped under the provider's current KEK. */
  rewrapped: number
  /** Already under it. */
  current: number
}

/**
 * KEK rotation: every live data key of the tenant wrapped again under the provider's current KEK
 * (version). The data keys, and so every stored payload, stay as they are. Resumable: a key already
 * under the current KEK is left alone; each key is updated only if its wrapping did not change since
 * it was read.
 */
export async function rewrapTenantDataKeys(
  dataKeys: DataKeys,
  pool: pg.Pool,
  scope: TenantScope,
): Promise<RewrapReport> {
  const tenant = scope.tenantId
  const report: RewrapReport = { tenant, rewrapped: 0, current: 0 }
  const rows = await withTenantTx(pool, scope, async (db) => {
    const r = await db.executeSql(
      `SELECT id, kek, wrapped FROM tenant_data_keys WHERE tenant_id = $1 AND wrapped IS NOT NULL ORDER BY id`,
      [tenant],
    )
    return r.rows
  })
  for (const r of rows) {
    const next = await dataKeys.provider.rewrap({ kek: r.kek, wrapped: r.wrapped }, wrapContext(tenant, r.id))
    if (next === null) {
      report.current++
      continue
    }
    const n = await withTenantTx(pool, scope, async (db) => {
      const u = await db.executeSql(
        `UPDATE tenant_data_keys SET kek = $3, wrapped = $4 WHERE tenant_id = $1 AND id = $2 AND wrapped = $5`,
        [tenant, r.id, next.kek, next.wrapped, r.wrapped],
      )
      return (u as { rowCount?: number | null }).rowCount ?? 0
    })
    report.rewrapped += n
  }
  return report
}

/** The marker a value under a destroyed key reads as (the same shape as a row erasure's). */
export interface ErasedValue {
  $erased: true
  erasure: string | null
}

export function erasedMarker(erasure: string | null | undefined): Json {
  return { $erased: true, erasure: erasure ?? null } satisfies ErasedValue
}
