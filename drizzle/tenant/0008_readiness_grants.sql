-- Applied with search_path set to the target schema. Readiness reads which tenant-table migrations
-- this schema has (the applier created the tracking table before applying anything).
DO $$
BEGIN
  EXECUTE format('GRANT SELECT ON %I.__tenant_migrations TO equilateral_app', current_schema());
END
$$;
