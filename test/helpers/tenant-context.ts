// The verified tenant context (drizzle/tenant/0016) for tests that act as the application role by
// hand: what the engine does, with the database's secret read as the owner.
import type pg from 'pg'
import { tenantCredential } from '../../src/tenancy/tenant-context.ts'
import { queryOnce } from './db.ts'

/** The database's tenant context secret, read with the owner's (or a superuser's) URL. */
export async function tenantSecret(ownerUrl: string): Promise<Buffer> {
  const [row] = await queryOnce<{ secret: Buffer }>(
    ownerUrl,
    'SELECT secret FROM equilateral.tenant_context_key',
  )
  return row!.secret
}

/** Scopes the client's current transaction to `tenant`, as the engine does (enter_tenant). */
export function enterTenant(client: pg.ClientBase, secret: Buffer, tenant: string): Promise<unknown> {
  return client.query('SELECT equilateral.enter_tenant($1, $2)', [tenant, tenantCredential(secret, tenant)])
}
