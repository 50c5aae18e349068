// Tenant administration (create, list, suspend, resume, move, rotate a key, set the compliance
// profile), on the owner's connection; the directory cache is invalidated after each change.
import type { Config } from '../config.ts'
import type { ComplianceProfile } from '../compliance/profile.ts'
import { TenantError } from '../errors.ts'
import { type MoveOptions, type MoveReport, moveTenant } from '../tenancy/move.ts'
import {
  type CreatedTenant,
  createTenant,
  listTenants,
  rotateApiKey,
  setComplianceProfile,
  setTenantStatus,
  type TenantDirectory,
  type TenantInfo,
  type TenantSpec,
} from '../tenancy/tenants.ts'
import type { Connections } from './connections.ts'

export class TenantAdmin {
  readonly #connections: Connections
  readonly #config: Readonly<Config>
  readonly #tenants: TenantDirectory

  constructor(connections: Connections, config: Readonly<Config>, tenants: TenantDirectory) {
    this.#connections = connections
    this.#config = config
    this.#tenants = tenants
  }

  /**
   * Runs a tenant administration call on the owner's connection. Tenant administration stays with
   * the owner, not the maintenance role: creating a tenant creates schemas or databases and migrates
   * them, and rotating a key or resuming a tenant hands the tenant to whoever asks. A process given
   * no owner URL (web and worker in the recommended setup) is refused by the database; that is
   * reported as `owner_required`, not as an internal error.
   */
  async asOwner<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (error) {
      if ((error as { code?: unknown }).code !== '42501') throw error
      throw new TenantError(
        'owner_required',
        'tenant administration needs the database owner: this process has no MIGRATION_DATABASE_URL ' +
          '(run `equilateral tenant ...` with it, as the release step does)',
      )
    }
  }

  /**
   * Creates a tenant (in schema-per-tenant mode with its schema, in database-per-tenant mode with
   * its database, created and migrated) and returns its API key, once. Workers start serving a new
   * tenant database within TENANT_REFRESH_MS.
   */
  async createTenant(spec: TenantSpec): Promise<CreatedTenant> {
    const created = await this.asOwner(() =>
      createTenant(this.#connections.admin, spec, this.#config.isolationMode, {
        servers: this.#connections.servers,
        prefix: this.#config.tenantDatabasePrefix,
        tenantContextSecret: this.#config.tenantContextSecret,
        tenantContextVerified: this.#config.tenantContextVerified,
      }),
    )
    // This process may have looked the tenant up before it existed.
    this.#tenants.invalidate(spec.id)
    return created
  }

  listTenants(): Promise<TenantInfo[]> {
    return listTenants(this.#connections.admin)
  }

  /**
   * A suspended tenant's API key and handles are refused and its queued tasks wait (workers leave
   * their jobs, the sweeper skips them) until it is resumed. Other processes notice within the
   * directory's cache time (5 s).
   */
  async suspendTenant(id: string): Promise<void> {
    await this.asOwner(() => setTenantStatus(this.#connections.admin, id, 'suspended'))
    this.#tenants.invalidate(id)
  }

  async resumeTenant(id: string): Promise<void> {
    await this.asOwner(() => setTenantStatus(this.#connections.admin, id, 'active'))
    this.#tenants.invalidate(id)
  }

  /**
   * database-per-tenant: switches a suspended, drained tenant's directory entry to a copy of its
   * database on another server, after checking the copy holds exactly what the source holds (see
   * docs/moving-tenants.md); `check` only reports. Never changes or drops the source.
   */
  async moveTenant(
    id: string,
    to: MoveOptions['to'],
    options: Pick<MoveOptions, 'force' | 'check'> = {},
  ): Promise<MoveReport> {
    try {
      return await moveTenant({
        controlOwner: this.#connections.admin,
        servers: this.#connections.servers,
        tenantId: id,
        to,
        ...options,
      })
    } finally {
      this.#tenants.invalidate(id)
    }
  }

  /** A new API key for the tenant; the old one stops working at once. */
  rotateApiKey(id: string): Promise<string> {
    return this.asOwner(() => rotateApiKey(this.#connections.admin, id))
  }

  /** Replaces a tenant's compliance profile (owner connection); returns it as stored. */
  setComplianceProfile(id: string, profile: ComplianceProfile): Promise<ComplianceProfile> {
    return this.asOwner(() =>
      setComplianceProfile(this.#connections.admin, id, profile, this.#connections.servers),
    )
  }
}
