// Control tables: one set per database, in the `equilateral` schema. They describe tenants, not
// tenant data; the tenant data tables are in ./tenant.ts.
import { sql } from 'drizzle-orm'
import { jsonb, pgSchema, text, timestamp } from 'drizzle-orm/pg-core'

export const controlSchema = pgSchema('equilateral')

export const tenants = controlSchema.table('tenants', {
  id: text('id').primaryKey(),
  name: text('name').notNull(),
  status: text('status', { enum: ['active', 'suspended'] })
    .notNull()
    .default('active'),
  /** Fairness tier: selects the per-tenant concurrency limit (see config `tenantConcurrency`). */
  tier: text('tier').notNull().default('standard'),
  /** Schema holding this tenant's tables in schema-per-tenant mode (`t_<hex>`, generated, never derived from the id). */
  schemaName: text('schema_name').unique(),
  /** SHA-256 of the tenant's API key; the key itself is never stored. */
  apiKeyHash: text('api_key_hash').unique(),
  /** Which compliance regimes apply and their retention periods. */
  complianceProfile: jsonb('compliance_profile')
    .notNull()
    .default(sql`'{}'::jsonb`),
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
})
