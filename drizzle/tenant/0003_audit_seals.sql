CREATE TABLE "agent_audit_seals" (
	"tenant_id" text NOT NULL,
	"block_no" bigint NOT NULL,
	"first_seq" bigint NOT NULL,
	"row_count" integer NOT NULL,
	"last_txid" bigint NOT NULL,
	"last_id" bigint NOT NULL,
	"row_ids" bigint[] NOT NULL,
	"row_hashes" text[] NOT NULL,
	"data_hashes" text[] NOT NULL,
	"prev_hash" text NOT NULL,
	"hash" text NOT NULL,
	"sealed_at" timestamp with time zone DEFAULT now() NOT NULL,
	"purged_at" timestamp with time zone,
	CONSTRAINT "agent_audit_seals_tenant_id_block_no_pk" PRIMARY KEY("tenant_id","block_no")
);
--> statement-breakpoint
ALTER TABLE "agent_audit_seals" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "agent_audit_log" ADD COLUMN "txid" bigint DEFAULT (pg_current_xact_id()::text)::bigint NOT NULL;--> statement-breakpoint
ALTER TABLE "workflows" ADD COLUMN "subject_key" text;--> statement-breakpoint
CREATE INDEX "agent_audit_log_seal_idx" ON "agent_audit_log" USING btree ("tenant_id","txid","id");--> statement-breakpoint
CREATE INDEX "workflows_subject_idx" ON "workflows" USING btree ("tenant_id","subject_key") WHERE "workflows"."subject_key" IS NOT NULL;--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "agent_audit_seals" AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));