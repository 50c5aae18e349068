-- Issue 23, item 1: retry, replay and redrive (src/flow/retry.ts, replay.ts, dead-letters.ts).
-- workflows.replay_of links a replay to the workflow it replays; workflow_requests keeps each
-- operator request's answer by its request key (idempotency); agent_coordination_failed_idx lists
-- the dead letters (tasks failed for good) newest first. Unqualified names: applied with
-- search_path set to the target schema.
CREATE TABLE "workflow_requests" (
	"tenant_id" text NOT NULL,
	"request_key" text NOT NULL,
	"operation" text NOT NULL,
	"target" text NOT NULL,
	"result" jsonb NOT NULL,
	"actor" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "workflow_requests_tenant_id_request_key_pk" PRIMARY KEY("tenant_id","request_key")
);
--> statement-breakpoint
ALTER TABLE "workflow_requests" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "workflows" ADD COLUMN "replay_of" uuid;--> statement-breakpoint
CREATE INDEX "agent_coordination_failed_idx" ON "agent_coordination" USING btree ("tenant_id","completed_at" DESC NULLS LAST,"id" DESC NULLS LAST) WHERE "agent_coordination"."status" = 'failed';--> statement-breakpoint
CREATE INDEX "workflows_replay_of_idx" ON "workflows" USING btree ("tenant_id","replay_of") WHERE "workflows"."replay_of" IS NOT NULL;--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "workflow_requests" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));--> statement-breakpoint
-- As for every tenant table: the policies bind the owner too (FORCE), and the application role gets
-- what the engine does with the rows (requests are written once and read, never changed by it).
ALTER TABLE workflow_requests FORCE ROW LEVEL SECURITY;--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('GRANT SELECT, INSERT ON %I.workflow_requests TO equilateral_app', current_schema());
  EXECUTE format('GRANT SELECT (tenant_id, operation, target, created_at) ON %I.workflow_requests TO equilateral_observer',
    current_schema());
END
$$;
--> statement-breakpoint
-- tenant_policies (0016) wrote the policies of a fixed list of tables, which workflow_requests is
-- not on: from here on it writes them for every table of the schema with row-level security and a
-- tenant_id column (the same function as budgets' migration writes, whichever lands first), so
-- `equilateral migrate` switching TENANT_CONTEXT_VERIFIED rewrites this table's policy too.
DO $$
BEGIN
  IF current_schema() <> 'equilateral' THEN
    RETURN;
  END IF;
  CREATE OR REPLACE FUNCTION equilateral.tenant_policies(s text) RETURNS void
  LANGUAGE plpgsql VOLATILE
  SET search_path = pg_catalog, pg_temp
  AS $f$
  DECLARE
    verified boolean := (SELECT k.verified FROM equilateral.tenant_context_key k);
    tenant text := CASE WHEN verified THEN '(SELECT equilateral.current_tenant())'
      ELSE 'NULLIF(current_setting(''app.tenant_id'', true), '''')' END;
    t text;
  BEGIN
    FOR t IN
      SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = s AND c.relkind = 'r' AND c.relrowsecurity
        AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
      ORDER BY c.relname
    LOOP
      EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I.%I', s, t);
      EXECUTE format('CREATE POLICY tenant_isolation ON %I.%I AS PERMISSIVE FOR ALL TO public
        USING (tenant_id = %s) WITH CHECK (tenant_id = %s)', s, t, tenant, tenant);
      EXECUTE format('DROP POLICY IF EXISTS observer_tenant ON %I.%I', s, t);
      EXECUTE format('CREATE POLICY observer_tenant ON %I.%I AS PERMISSIVE FOR SELECT TO equilateral_observer
        USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), ''''))', s, t);
    END LOOP;
  END
  $f$;
  REVOKE ALL ON FUNCTION equilateral.tenant_policies(text) FROM PUBLIC;
END
$$;
--> statement-breakpoint
-- This schema's policies as the flag says (the one above was written verified).
SELECT equilateral.tenant_policies(current_schema());
