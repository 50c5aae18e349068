// Tenants: creation (returns an API key once; only its hash is stored) and resolution of a tenant
// id or key to the transaction scope the engine runs its statements in.
import { createHash, randomBytes } from 'node:crypto'
import type pg from 'pg'
import { APP_SCHEMA } from './db/names.ts'
import type { TenantScope } from './db/tx.ts'
import { EquilateralError, TenantError } from './errors.ts'

const TENANT_ID = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/

export function assertTenantId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !TENANT_ID.test(id)) {
    throw new TenantError(
      'invalid_tenant_id',
      `tenant id ${JSON.stringify(String(id)).slice(0, 80)} must be 1-63 characters of letters, digits, '_' and '-', starting with a letter or digit`,
    )
  }
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex')
}

export interface CreatedTenant {
  id: string
  name: string
  tier: string
  /** Shown once; only its SHA-256 is stored. */
  apiKey: string
}

export async function createTenant(
  pool: pg.Pool,
  spec: { id: string; name?: string; tier?: string },
): Promise<CreatedTenant> {
  assertTenantId(spec.id)
  const apiKey = `eqk_${randomBytes(32).toString('base64url')}`
  const name = spec.name ?? spec.id
  const tier = spec.tier ?? 'standard'
  const { rowCount } = await pool.query(
    `INSERT INTO ${APP_SCHEMA}.tenants (id, name, tier, api_key_hash) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
    [spec.id, name, tier, hashApiKey(apiKey)],
  )
  if (rowCount === 0) throw new EquilateralError('tenant_exists', `tenant "${spec.id}" already exists`)
  return { id: spec.id, name, tier, apiKey }
}

/** Resolves tenants to scopes, with a short cache so a hot worker does not ask for every batch. */
export class TenantDirectory {
  readonly #pool: pg.Pool
  readonly #ttlMs: number
  readonly #cache = new Map<string, { scope: TenantScope | null; at: number }>()

  constructor(pool: pg.Pool, ttlMs = 5000) {
    this.#pool = pool
    this.#ttlMs = ttlMs
  }

  /** Active tenants among `ids`, by id. Unknown and suspended tenants are absent. */
  async scopeOf(ids: string[]): Promise<Map<string, TenantScope>> {
    const now = Date.now()
    const result = new Map<string, TenantScope>()
    const missing: string[] = []
    for (const id of ids) {
      const hit = this.#cache.get(id)
      if (hit && now - hit.at < this.#ttlMs) {
        if (hit.scope) result.set(id, hit.scope)
      } else missing.push(id)
    }
    if (missing.length > 0) {
      const { rows } = await this.#pool.query(
        `SELECT id, tier, status, schema_name FROM ${APP_SCHEMA}.tenants WHERE id = ANY($1::text[])`,
        [missing],
      )
      const found = new Map(rows.map((r) => [r.id as string, r]))
      for (const id of missing) {
        const r = found.get(id)
        const scope: TenantScope | null =
          r && r.status === 'active'
            ? { tenantId: id, tier: r.tier, searchPath: r.schema_name ?? APP_SCHEMA }
            : null
        this.#cache.set(id, { scope, at: now })
        if (scope) result.set(id, scope)
      }
    }
    return result
  }

  /** The scope of one active tenant, or a typed error saying why there is none. */
  async require(id: string): Promise<TenantScope> {
    assertTenantId(id)
    const scope = (await this.scopeOf([id])).get(id)
    if (scope) return scope
    const { rows } = await this.#pool.query(`SELECT status FROM ${APP_SCHEMA}.tenants WHERE id = $1`, [id])
    if (rows[0]) throw new TenantError('tenant_suspended', `tenant "${id}" is suspended`)
    throw new TenantError('unknown_tenant', `unknown tenant "${id}"`)
  }

  /** The tenant an API key belongs to. */
  async byApiKey(key: string): Promise<TenantScope> {
    const { rows } = await this.#pool.query(`SELECT id FROM ${APP_SCHEMA}.tenants WHERE api_key_hash = $1`, [
      hashApiKey(key),
    ])
    if (!rows[0]) throw new TenantError('unknown_tenant', 'unknown API key')
    return this.require(rows[0].id)
  }
}
