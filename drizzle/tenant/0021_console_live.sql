-- Issue 23, items 4-5: the web console finds workflows by correlation id (an index, so the lookup
-- stays one index probe however many workflows the tenant has), and follows them live.
-- console_watchers: one row per tenant that a console is watching now (written by the web process
-- that holds an event stream open, with an expiry it pushes forward while the stream lasts). The
-- statements that change a task's state notify the progress channel only while such a row exists,
-- so a tenant nobody watches pays one index probe per transaction and sends nothing.
-- Unqualified names: applied with search_path set to the target schema.
CREATE TABLE "console_watchers" (
	"tenant_id" text NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	CONSTRAINT "console_watchers_pkey" PRIMARY KEY("tenant_id")
);
--> statement-breakpoint
ALTER TABLE "console_watchers" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "console_watchers" FORCE ROW LEVEL SECURITY;--> statement-breakpoint
CREATE INDEX "workflows_correlation_idx" ON "workflows" USING btree ("tenant_id","correlation_id");--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "console_watchers" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));--> statement-breakpoint
-- The application role writes and reads its tenant's row; the observer role has no use for it.
DO $$
BEGIN
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.console_watchers TO equilateral_app', current_schema());
END
$$;
--> statement-breakpoint
-- The policy as TENANT_CONTEXT_VERIFIED says (as tenant_policies() writes it for the other tables):
-- the verified comparison above, or app.tenant_id when the database is not verified.
DO $$
BEGIN
  IF NOT (SELECT k.verified FROM equilateral.tenant_context_key k) THEN
    EXECUTE format('DROP POLICY tenant_isolation ON %I.console_watchers', current_schema());
    EXECUTE format('CREATE POLICY tenant_isolation ON %I.console_watchers AS PERMISSIVE FOR ALL TO public
      USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), ''''))
      WITH CHECK (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), ''''))', current_schema());
  END IF;
END
$$;
