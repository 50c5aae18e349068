import { defineConfig } from 'drizzle-kit'

// Tenant data tables: applied to the shared `equilateral` schema, and to every tenant schema in
// schema-per-tenant mode. The SQL is unqualified so the search_path picks the target schema.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema/tenant.ts',
  out: './drizzle/tenant',
})
