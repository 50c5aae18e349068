-- database-per-tenant: where a tenant's tables and queues live when they are in a database of its
-- own (a TENANT_SERVERS name and a database on it). Both null: the tenant is in this database, in the
-- shared schema or a schema of its own. One database holds one tenant, and an entry is whole or empty.
ALTER TABLE "equilateral"."tenants" ADD COLUMN "database_server" text;--> statement-breakpoint
ALTER TABLE "equilateral"."tenants" ADD COLUMN "database_name" text;--> statement-breakpoint
ALTER TABLE "equilateral"."tenants" ADD CONSTRAINT "tenants_database_unique" UNIQUE("database_server","database_name");--> statement-breakpoint
ALTER TABLE "equilateral"."tenants" ADD CONSTRAINT "tenants_database_whole" CHECK (("equilateral"."tenants"."database_server" IS NULL) = ("equilateral"."tenants"."database_name" IS NULL));