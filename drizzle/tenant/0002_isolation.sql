-- Applied with search_path set to the target schema (the shared `equilateral` schema, or a tenant's
-- own), so current_schema() is the schema being migrated.
--
-- FORCE: the policies bind the tables' owner as well; only a superuser or a BYPASSRLS role (which
-- the application never is) can see across tenants.
ALTER TABLE workflows FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE agent_coordination FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE agent_audit_log FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE compliance_events FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
-- The application role: ordinary DML on the coordination tables; the audit trail and compliance
-- events are append-only for it (INSERT and SELECT, never UPDATE, DELETE or TRUNCATE).
DO $$
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO equilateral_app', current_schema());
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.workflows, %I.agent_coordination TO equilateral_app',
    current_schema(), current_schema());
  EXECUTE format('GRANT SELECT, INSERT ON %I.agent_audit_log, %I.compliance_events TO equilateral_app',
    current_schema(), current_schema());
END
$$;
