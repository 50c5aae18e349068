-- Issue 20, item 2: the role GDPR erasure (with its audit redaction) and the retention purge run
-- as, so that web and worker need no owner login. Like equilateral_app it cannot log in, owns
-- nothing and cannot bypass row-level security; a login joins it (CREATE ROLE maint LOGIN PASSWORD
-- '...' IN ROLE equilateral_maintenance) and is given as MAINTENANCE_DATABASE_URL. It holds no
-- UPDATE, DELETE or TRUNCATE privilege on any table: every change it makes goes through the
-- SECURITY DEFINER functions of drizzle/tenant/0015 and the one below, which do exactly the
-- maintenance operations and nothing else. Roles are cluster-wide; another database may create it
-- first, possibly at this very moment.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_maintenance') THEN
    CREATE ROLE equilateral_maintenance NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;
--> statement-breakpoint
-- The tenant list the purge walks and erasure looks a tenant up in (where its data is, its profile);
-- not the API key hashes. compliance_regimes: the regimes of the compliance events it records.
GRANT USAGE ON SCHEMA equilateral TO equilateral_maintenance;
--> statement-breakpoint
GRANT SELECT (id, status, tier, schema_name, database_server, database_name, compliance_profile)
  ON equilateral.tenants TO equilateral_maintenance;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION equilateral.compliance_regimes(text) TO equilateral_maintenance;
--> statement-breakpoint
-- database-per-tenant: a tenant's enterprise members live in the control database, apart from its
-- own rows. Erasure replaces their input and error (of the given workflows, or all of the tenant's)
-- with the erasure's marker and takes the tenant's output and error out of their runs' summaries;
-- the marker is built here from the erasure id, so a caller cannot write anything else.
CREATE FUNCTION equilateral.maintenance_erase_members(p_tenant text, p_erasure uuid, p_workflows uuid[])
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
  erased constant jsonb := jsonb_build_object('$erased', true, 'erasure', p_erasure::text);
  n integer;
BEGIN
  IF p_tenant IS NULL OR p_erasure IS NULL THEN
    RAISE EXCEPTION 'maintenance_erase_members: tenant and erasure id are required'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WITH members AS (
    UPDATE equilateral.enterprise_run_tenants m
    SET input = CASE WHEN m.input IS NULL THEN NULL ELSE erased END,
      error = CASE WHEN m.error IS NULL THEN NULL ELSE erased END, updated_at = now()
    WHERE m.tenant_id = p_tenant AND (p_workflows IS NULL OR m.workflow_id = ANY (p_workflows))
    RETURNING m.run_id
  ),
  runs AS (
    UPDATE equilateral.enterprise_runs r
    SET summary = jsonb_set(r.summary, ARRAY['tenants', p_tenant],
      ((r.summary #> ARRAY['tenants', p_tenant]) - 'output' - 'error') || jsonb_build_object('$erased', true))
    WHERE r.id IN (SELECT run_id FROM members) AND jsonb_typeof(r.summary #> ARRAY['tenants', p_tenant]) = 'object'
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM members)::int INTO n FROM (SELECT count(*) FROM runs) x;
  RETURN n;
END
$$;
--> statement-breakpoint
ALTER FUNCTION equilateral.maintenance_erase_members(text, uuid, uuid[]) SET search_path = equilateral, pg_temp;
--> statement-breakpoint
REVOKE ALL ON FUNCTION equilateral.maintenance_erase_members(text, uuid, uuid[]) FROM PUBLIC;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION equilateral.maintenance_erase_members(text, uuid, uuid[]) TO equilateral_maintenance;
