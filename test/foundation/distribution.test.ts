// The condition for distributing the tenant tables by tenant on Citus (or another distributed
// PostgreSQL that shards by a column): every primary key, unique index and foreign key of a tenant
// table leads with tenant_id, so that each is enforceable inside one shard, and every foreign key
// between tenant tables stays within a tenant (co-located). Read from the catalog of a migrated
// database, not from the TypeScript schema, so an index added by hand in a migration counts too.
// docs/distributed-postgres.md says what this does and does not show.
import { getTableName, is } from 'drizzle-orm'
import { PgTable } from 'drizzle-orm/pg-core'
import { afterAll, describe, expect, it } from 'vitest'
import * as tenantSchema from '../../src/db/schema/tenant.ts'
import { createTestDatabase, queryOnce } from '../helpers/db.ts'

/**
 * Tables outside the tenant migrations that still carry a tenant_id. Each with the reason it need
 * not be distributed by tenant.
 */
const CONTROL_TABLES_WITH_TENANT_ID: Record<string, string> = {
  enterprise_run_tenants:
    'control plane (drizzle/control): the members of one enterprise run, keyed by run; one row per ' +
    'tenant and run, read by the consolidation, never joined with tenant tables by the hot path: a ' +
    'Citus reference or coordinator-local table, like the other control tables',
}

/**
 * Constraints of tenant tables that do not lead with tenant_id, each with its reason. Empty: none.
 * (A unique index on, say, an idempotency key alone could not be enforced across shards.)
 */
const EXCEPTIONS: Record<string, string> = {}

const db = await createTestDatabase()
afterAll(() => db.drop())

const tenantTables = (Object.values(tenantSchema) as unknown[])
  .filter((t): t is PgTable => is(t, PgTable))
  .map((t) => getTableName(t))
  .sort()

interface Key {
  table: string
  kind: 'primary key' | 'unique index' | 'foreign key'
  name: string
  columns: string[]
  /** Foreign keys: the referenced table, and the referenced columns. */
  references?: string
  referencedColumns?: string[]
}

async function keys(): Promise<Key[]> {
  return queryOnce<Key>(
    db.url,
    `WITH t AS (
       SELECT c.oid, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'equilateral' AND c.relkind IN ('r', 'p') AND c.relname = ANY($1)
     )
     SELECT t.relname AS "table", CASE WHEN x.indisprimary THEN 'primary key' ELSE 'unique index' END AS kind,
       x.indexrelid::regclass::text AS name,
       ARRAY(SELECT coalesce(a.attname::text, '(expression)') FROM unnest(x.indkey) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord) AS columns,
       NULL AS "references", NULL::text[] AS "referencedColumns"
     FROM t JOIN pg_index x ON x.indrelid = t.oid AND x.indisunique
     UNION ALL
     SELECT t.relname, 'foreign key', con.conname,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum ORDER BY k.ord),
       con.confrelid::regclass::text,
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum ORDER BY k.ord)
     FROM t JOIN pg_constraint con ON con.conrelid = t.oid AND con.contype = 'f'
     ORDER BY 1, 2, 3`,
    [tenantTables],
  )
}

describe('tenant tables are distributable by tenant_id', () => {
  it('gives every tenant table a tenant_id and a primary key', async () => {
    expect(tenantTables.length).toBeGreaterThan(5)
    const rows = await queryOnce<{ table: string; tenant_id: boolean; pk: boolean }>(
      db.url,
      `SELECT c.relname AS table,
         EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS tenant_id,
         EXISTS (SELECT FROM pg_index x WHERE x.indrelid = c.oid AND x.indisprimary) AS pk
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = 'equilateral' AND c.relname = ANY($1) ORDER BY 1`,
      [tenantTables],
    )
    expect(rows.map((r) => r.table)).toEqual(tenantTables)
    expect(rows.filter((r) => !r.tenant_id || !r.pk)).toEqual([])
  })

  it('leads every primary key, unique index and foreign key of a tenant table with tenant_id', async () => {
    const found = await keys()
    expect(found.filter((k) => k.kind === 'primary key').length).toBe(tenantTables.length)
    const offending = found
      .filter((k) => k.columns[0] !== 'tenant_id')
      .filter((k) => !(k.name in EXCEPTIONS))
      .map((k) => `${k.table}: ${k.kind} ${k.name} (${k.columns.join(', ')})`)
    expect(offending).toEqual([])
  })

  it('keeps every foreign key between tenant tables inside one tenant (co-located shards)', async () => {
    const foreign = (await keys()).filter((k) => k.kind === 'foreign key')
    const crossing = foreign
      .filter(
        (k) =>
          !tenantTables.includes((k.references ?? '').replace(/^equilateral\./, '')) ||
          k.referencedColumns?.[0] !== 'tenant_id',
      )
      .filter((k) => !(k.name in EXCEPTIONS))
      .map((k) => `${k.table}.${k.name} -> ${k.references}(${k.referencedColumns?.join(', ')})`)
    expect(crossing).toEqual([])
  })

  it('has no other table with a tenant_id than the tenant tables and the justified control tables', async () => {
    const rows = await queryOnce<{ table: string }>(
      db.url,
      `SELECT DISTINCT c.relname AS table FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
       WHERE n.nspname = 'equilateral' AND c.relkind IN ('r', 'p') AND NOT (c.relname = ANY($1)) ORDER BY 1`,
      [tenantTables],
    )
    expect(rows.map((r) => r.table)).toEqual(Object.keys(CONTROL_TABLES_WITH_TENANT_ID).sort())
  })
})
