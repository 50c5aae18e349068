// The verified tenant context (issue 20, item 3; drizzle/tenant/0016_verified_tenant_context.sql).
// Row-level security compares tenant_id with equilateral.current_tenant(), which names a tenant only
// in a transaction that equilateral.enter_tenant() scoped to it with the tenant's credential. The
// credential is derived from a per-database secret the application role cannot read; the engine
// holds that secret (TENANT_CONTEXT_SECRET, or read once through the owner's connection) and sends
// the credential as a bind parameter, so injected SQL can neither read it back nor forge it.
import { createHash } from 'node:crypto'
import type pg from 'pg'
import { EquilateralError } from '../errors.ts'

/** The transaction-local setting enter_tenant() puts the seal in (readable, worthless elsewhere). */
export const TENANT_SEAL_SETTING = 'equilateral.tenant_seal'

/** The secret cannot be had: the connection is not the owner's and none is configured. */
export class TenantContextError extends EquilateralError {
  declare readonly code: 'tenant_context_unavailable'
  constructor(message: string) {
    super('tenant_context_unavailable', message)
  }
}

/** mac(k, m) = sha256(k || sha256(k || m)), as equilateral.tenant_context_mac computes it. */
function mac(key: Buffer, message: string): Buffer {
  const inner = createHash('sha256').update(key).update(message, 'utf8').digest()
  return createHash('sha256').update(key).update(inner).digest()
}

/** The credential enter_tenant() accepts for `tenantId` in a database whose secret is `secret`. */
export function tenantCredential(secret: Buffer, tenantId: string): string {
  return mac(secret, `tenant:${tenantId}`).toString('hex')
}

/** TENANT_CONTEXT_SECRET as the bytes the database stores (its UTF-8 encoding). */
export function secretBytes(configured: string): Buffer {
  return Buffer.from(configured, 'utf8')
}

/**
 * Reads the database's secret through a connection that may (the owner's); otherwise throws a
 * TenantContextError that names the fix.
 */
export async function readTenantContextSecret(db: Pick<pg.ClientBase, 'query'>): Promise<Buffer> {
  try {
    const { rows } = await db.query<{ secret: Buffer }>('SELECT secret FROM equilateral.tenant_context_key')
    if (!rows[0])
      throw new TenantContextError('equilateral.tenant_context_key is empty: run `equilateral migrate`')
    return rows[0].secret
  } catch (error) {
    const code = (error as { code?: string }).code
    if (code === '42501') {
      throw new TenantContextError(
        "the tenant context secret is readable only by the tables' owner: set TENANT_CONTEXT_SECRET " +
          "(and run `equilateral migrate` with it), or give the engine the owner's connection " +
          '(MIGRATION_DATABASE_URL, or an owner DATABASE_URL)',
      )
    }
    if (code === '42P01') {
      throw new TenantContextError(
        'the database has no tenant context secret (tenant-table migration 0016): run `equilateral migrate`',
      )
    }
    throw error
  }
}

const sources = new WeakMap<pg.Pool, () => Promise<Buffer>>()
const secrets = new WeakMap<pg.Pool, Promise<Buffer>>()

/**
 * Tells transactions on `pool` where the secret of its database comes from (the engine registers
 * its run-time pools: they run as the application role, which cannot read it). Read at first use.
 */
export function provideTenantContextSecret(pool: pg.Pool, source: () => Promise<Buffer>): void {
  sources.set(pool, source)
  secrets.delete(pool)
}

/**
 * The secret of the database `pool` connects to: from the source registered for it, else read
 * through the pool itself (an owner's pool). Kept once had; a failure is not kept (the next
 * transaction asks again).
 */
export function tenantContextSecret(pool: pg.Pool): Promise<Buffer> {
  let secret = secrets.get(pool)
  if (!secret) {
    const source = sources.get(pool) ?? (() => readTenantContextSecret(pool))
    secret = source()
    secrets.set(pool, secret)
    secret.catch(() => {
      if (secrets.get(pool) === secret) secrets.delete(pool)
    })
  }
  return secret
}
