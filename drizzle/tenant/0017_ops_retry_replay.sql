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
CREATE POLICY "tenant_isolation" ON "workflow_requests" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));