-- Issue 25, item 4: agent usage and budgets (src/usage/). Unqualified names: applied with
-- search_path set to the target schema (the shared `equilateral` schema, or a tenant's own).
CREATE TABLE "agent_usage" (
	"tenant_id" text NOT NULL,
	"task_id" uuid NOT NULL,
	"attempt" integer NOT NULL,
	"dimension" text NOT NULL,
	"workflow_id" uuid NOT NULL,
	"agent_id" text NOT NULL,
	"amount" bigint NOT NULL,
	"outcome" text NOT NULL,
	"recorded_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "agent_usage_tenant_id_task_id_attempt_dimension_pk" PRIMARY KEY("tenant_id","task_id","attempt","dimension")
);
--> statement-breakpoint
ALTER TABLE "agent_usage" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
CREATE TABLE "usage_budget_audit" (
	"tenant_id" text NOT NULL,
	"id" bigint GENERATED ALWAYS AS IDENTITY (sequence name "usage_budget_audit_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"dimension" text NOT NULL,
	"period" text NOT NULL,
	"action" text NOT NULL,
	"data" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"actor" text,
	"workflow_id" uuid,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_budget_audit_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
ALTER TABLE "usage_budget_audit" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
CREATE TABLE "usage_budgets" (
	"tenant_id" text NOT NULL,
	"dimension" text NOT NULL,
	"period" text NOT NULL,
	"budget" bigint NOT NULL,
	"hard" boolean NOT NULL,
	"period_start" timestamp with time zone NOT NULL,
	"exceeded_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "usage_budgets_tenant_id_dimension_period_pk" PRIMARY KEY("tenant_id","dimension","period")
);
--> statement-breakpoint
ALTER TABLE "usage_budgets" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "hold_reason" text;--> statement-breakpoint
CREATE INDEX "agent_usage_period_idx" ON "agent_usage" USING btree ("tenant_id","dimension","recorded_at","amount");--> statement-breakpoint
CREATE INDEX "agent_usage_workflow_idx" ON "agent_usage" USING btree ("tenant_id","workflow_id");--> statement-breakpoint
CREATE INDEX "agent_coordination_held_idx" ON "agent_coordination" USING btree ("tenant_id","id") WHERE "agent_coordination"."hold_reason" IS NOT NULL;--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "agent_usage" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "usage_budget_audit" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "usage_budgets" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));
--> statement-breakpoint
-- As for every tenant table: the policies bind the owner too (FORCE), and the application role gets
-- what the engine does with the rows. Usage and the budgets' audit are append-only for it.
ALTER TABLE agent_usage FORCE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE usage_budgets FORCE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE usage_budget_audit FORCE ROW LEVEL SECURITY;--> statement-breakpoint
DO $$
DECLARE
  s text := current_schema();
BEGIN
  EXECUTE format('GRANT SELECT, INSERT ON %I.agent_usage TO equilateral_app', s);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.usage_budgets TO equilateral_app', s);
  EXECUTE format('GRANT SELECT, INSERT ON %I.usage_budget_audit TO equilateral_app', s);
  -- The observer reads usage and budgets (amounts, no payloads) and which tasks are held.
  EXECUTE format('GRANT SELECT ON %I.agent_usage, %I.usage_budgets, %I.usage_budget_audit TO equilateral_observer', s, s, s);
  EXECUTE format('GRANT SELECT (hold_reason) ON %I.agent_coordination TO equilateral_observer', s);
END
$$;
--> statement-breakpoint
-- A budget reached: evaluated once per statement that records usage (a completion batch, a failed
-- attempt), in its transaction, for the dimensions it recorded. The sum is an index range scan
-- (agent_usage_period_idx) and sees this statement's rows and every committed one. The budget row
-- is updated only when it is reached (exceeded_at IS NULL: the guard a second transaction crossing
-- at the same moment re-checks once the first commits, so exactly one of them records the
-- crossing). Two transactions each below the budget alone but above it together are caught by the
-- next statement that records usage, or by the budget pass (src/usage/budgets.ts), whichever comes
-- first. Nothing is written when the tenant has no budget on the dimensions recorded.
CREATE FUNCTION usage_budget_check() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
  WITH a AS (
    SELECT tenant_id, dimension, min(workflow_id::text)::uuid AS workflow_id FROM added GROUP BY tenant_id, dimension
  ),
  reached AS (
    UPDATE usage_budgets b SET exceeded_at = now(), updated_at = now()
    FROM a
    WHERE b.tenant_id = a.tenant_id AND b.dimension = a.dimension AND b.exceeded_at IS NULL
      AND (SELECT coalesce(sum(u.amount), 0) FROM agent_usage u
           WHERE u.tenant_id = b.tenant_id AND u.dimension = b.dimension AND u.recorded_at >= b.period_start) >= b.budget
    RETURNING b.tenant_id, b.dimension, b.period, b.budget, b.hard, b.period_start, a.workflow_id
  )
  INSERT INTO usage_budget_audit (tenant_id, dimension, period, action, data, workflow_id)
  SELECT r.tenant_id, r.dimension, r.period, CASE WHEN r.hard THEN 'budget_exhausted' ELSE 'budget_exceeded' END,
    jsonb_build_object('budget', r.budget, 'hard', r.hard, 'periodStart', r.period_start,
      'used', (SELECT coalesce(sum(u.amount), 0) FROM agent_usage u
               WHERE u.tenant_id = r.tenant_id AND u.dimension = r.dimension AND u.recorded_at >= r.period_start)),
    r.workflow_id
  FROM reached r;
  RETURN NULL;
END
$f$;
--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION %I.usage_budget_check() SET search_path = %I, pg_temp',
    current_schema(), current_schema());
END
$$;
--> statement-breakpoint
CREATE TRIGGER usage_budget_check AFTER INSERT ON agent_usage
  REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION usage_budget_check();
--> statement-breakpoint
-- tenant_policies (0016) wrote the policies of a fixed list of tables. From here on it writes them
-- for every table of the schema with row-level security and a tenant_id column, so a table added by
-- a later migration (these three, and other migrations') is covered without editing a list, and
-- `equilateral migrate` switching TENANT_CONTEXT_VERIFIED rewrites them all.
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
SELECT equilateral.tenant_policies(current_schema());
