-- The role the application (web, worker) runs as. It owns nothing, cannot bypass row-level security
-- and cannot log in: processes either log in as a role that is a member of it, or are switched to it
-- at connection time (DATABASE_ROLE, default equilateral_app). Roles are cluster-wide, so another
-- database on the same server may have created it already, possibly at this very moment.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_app') THEN
    CREATE ROLE equilateral_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;
--> statement-breakpoint
-- Control tables: tenants are read (credentials, scopes, suspension) but only changed through the
-- admin connection, so a compromised application connection cannot re-activate or take over a tenant.
GRANT USAGE ON SCHEMA equilateral TO equilateral_app;
--> statement-breakpoint
GRANT SELECT ON equilateral.tenants TO equilateral_app;
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE ON equilateral.enterprise_runs, equilateral.enterprise_run_tenants TO equilateral_app;
