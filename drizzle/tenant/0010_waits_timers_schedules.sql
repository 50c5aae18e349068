-- Issue 11: wait tasks (approvals, events) and their inbox, durable timers, cron schedules, and
-- the agent version a run needs. Unqualified names: applied with search_path set to the target schema.
CREATE TABLE "workflow_events" (
	"tenant_id" text NOT NULL,
	"id" bigint GENERATED ALWAYS AS IDENTITY (sequence name "workflow_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"workflow_id" uuid NOT NULL,
	"event_id" text NOT NULL,
	"kind" text NOT NULL,
	"name" text NOT NULL,
	"match_key" text,
	"payload" jsonb,
	"actor" text,
	"task_id" uuid,
	"consumed_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "workflow_events_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
ALTER TABLE "workflow_events" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
CREATE TABLE "workflow_schedules" (
	"tenant_id" text NOT NULL,
	"id" text NOT NULL,
	"workflow_type" text NOT NULL,
	"cron" text NOT NULL,
	"timezone" text NOT NULL,
	"input" jsonb,
	"missed" text NOT NULL,
	"enabled" boolean DEFAULT true NOT NULL,
	"last_slot" timestamp with time zone,
	"next_slot" timestamp with time zone NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "workflow_schedules_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
ALTER TABLE "workflow_schedules" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "agent_version" integer;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "unserved_since" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "wait" jsonb;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "wait_deadline" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "start_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "agent_coordination" ADD COLUMN "start_delay_ms" integer;--> statement-breakpoint
CREATE UNIQUE INDEX "workflow_events_event_id_idx" ON "workflow_events" USING btree ("tenant_id","workflow_id","event_id");--> statement-breakpoint
CREATE INDEX "workflow_events_unconsumed_idx" ON "workflow_events" USING btree ("tenant_id","workflow_id","name") WHERE "workflow_events"."consumed_at" IS NULL;--> statement-breakpoint
CREATE INDEX "workflow_schedules_due_idx" ON "workflow_schedules" USING btree ("tenant_id","next_slot");--> statement-breakpoint
CREATE INDEX "agent_coordination_waiting_idx" ON "agent_coordination" USING btree ("tenant_id","wait_deadline") WHERE "agent_coordination"."status" = 'waiting';--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "workflow_events" AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "workflow_schedules" AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));--> statement-breakpoint
-- Applied with search_path set to the target schema. As for the other tenant tables: the policies
-- bind the owner too, and the application role gets what the engine does with the rows (events
-- are inserted and consumed, never deleted by it: retention and erasure run as the owner).
ALTER TABLE workflow_events FORCE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE workflow_schedules FORCE ROW LEVEL SECURITY;--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.workflow_events TO equilateral_app', current_schema());
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.workflow_schedules TO equilateral_app', current_schema());
END
$$;
