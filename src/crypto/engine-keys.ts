// The engine's side of per-tenant data keys: the key ring it encrypts with (with its own cache of
// data keys when DATA_KEYS is on), and the operations `equilateral keys ...` runs: a tenant's
// data-key rotation (a new active key; `reencrypt` then moves the values) and KEK rotation (every
// data key re-wrapped under the provider's current KEK; no payload is rewritten).
import type pg from 'pg'
import type { Config } from '../config.ts'
import type { TenantScope } from '../db/tx.ts'
import { EncryptionError, TenantError } from '../errors.ts'
import type { TenantDirectory } from '../tenancy/tenants.ts'
import { DataKeys, type RewrapReport, rewrapTenantDataKeys, rotateTenantDataKey } from './data-keys.ts'
import type { KeyRing } from './keyring.ts'

/** The configured key ring, with a data-key cache of its own when a key provider is configured. */
export function keyRingOf(config: Readonly<Config>): KeyRing {
  if (!config.keyProvider) return config.encryption
  const dataKeys = new DataKeys(config.keyProvider, {
    maxEntries: config.dataKeyCacheEntries,
    ttlMs: config.dataKeyCacheTtlMs,
  })
  return config.encryption.withDataKeys(dataKeys)
}

export interface EngineKeys {
  /** A new active data key for the tenant; the old one is retired (still read). Returns the new key's id. */
  rotate(tenantId: string): Promise<{ tenant: string; key: string }>
  /** KEK rotation: every live data key (of every tenant, or one) re-wrapped under the current KEK. */
  rewrap(options?: { tenant?: string; onTenant?: (r: RewrapReport) => void }): Promise<RewrapReport[]>
}

interface EngineLike {
  keyRing: KeyRing
  tenants: TenantDirectory
}

export function engineKeys(engine: EngineLike, poolOf: (scope: TenantScope) => Promise<pg.Pool>): EngineKeys {
  const dataKeys = () => {
    const dk = engine.keyRing.dataKeys
    if (!dk)
      throw new EncryptionError('provider_config', 'per-tenant data keys are off (DATA_KEYS=per-tenant)')
    return dk
  }
  const scopes = async function* (tenant: string | undefined) {
    let n = 0
    for await (const scope of engine.tenants.all(tenant === undefined ? {} : { id: tenant })) {
      n++
      yield scope
    }
    if (tenant !== undefined && n === 0) throw new TenantError('unknown_tenant', `unknown tenant "${tenant}"`)
  }
  return {
    async rotate(tenantId) {
      const dk = dataKeys()
      for await (const scope of scopes(tenantId)) {
        return { tenant: tenantId, key: await rotateTenantDataKey(dk, await poolOf(scope), scope) }
      }
      throw new TenantError('unknown_tenant', `unknown tenant "${tenantId}"`)
    },
    async rewrap(options = {}) {
      const dk = dataKeys()
      const reports: RewrapReport[] = []
      for await (const scope of scopes(options.tenant)) {
        const r = await rewrapTenantDataKeys(dk, await poolOf(scope), scope)
        reports.push(r)
        options.onTenant?.(r)
      }
      return reports
    },
  }
}
