import { defineConfig } from 'drizzle-kit'

// Control tables (tenants): applied once per database.
export default defineConfig({
  dialect: 'postgresql',
  schema: './src/db/schema/control.ts',
  out: './drizzle/control',
})
