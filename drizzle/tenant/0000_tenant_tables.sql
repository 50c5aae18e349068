CREATE TABLE "agent_audit_log" (
	"tenant_id" text NOT NULL,
	"id" bigint GENERATED ALWAYS AS IDENTITY (sequence name "agent_audit_log_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"workflow_id" uuid NOT NULL,
	"task_id" uuid,
	"agent_id" text,
	"action_type" text NOT NULL,
	"action_data" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"actor" text,
	"correlation_id" text,
	"timestamp" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "agent_audit_log_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
CREATE TABLE "compliance_events" (
	"tenant_id" text NOT NULL,
	"id" bigint GENERATED ALWAYS AS IDENTITY (sequence name "compliance_events_id_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"agent_id" text NOT NULL,
	"compliance_type" text NOT NULL,
	"event_type" text NOT NULL,
	"event_data" jsonb NOT NULL,
	"retention_until" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "compliance_events_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
CREATE TABLE "agent_coordination" (
	"tenant_id" text NOT NULL,
	"id" uuid NOT NULL,
	"workflow_id" uuid NOT NULL,
	"task_key" text NOT NULL,
	"agent_id" text NOT NULL,
	"task_type" text NOT NULL,
	"queue" text NOT NULL,
	"data" jsonb,
	"status" text NOT NULL,
	"dependencies" text[] DEFAULT '{}'::text[] NOT NULL,
	"depends_on" uuid[] DEFAULT '{}'::uuid[] NOT NULL,
	"dependents" uuid[] DEFAULT '{}'::uuid[] NOT NULL,
	"deps_remaining" integer NOT NULL,
	"attempt" integer DEFAULT 0 NOT NULL,
	"failures" integer DEFAULT 0 NOT NULL,
	"max_attempts" integer NOT NULL,
	"backoff_ms" integer NOT NULL,
	"backoff_max_ms" integer NOT NULL,
	"timeout_ms" integer NOT NULL,
	"job_id" uuid,
	"result" jsonb,
	"error" jsonb,
	"worker_id" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"queued_at" timestamp with time zone,
	"started_at" timestamp with time zone,
	"heartbeat_at" timestamp with time zone,
	"completed_at" timestamp with time zone,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "agent_coordination_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
CREATE TABLE "workflows" (
	"tenant_id" text NOT NULL,
	"id" uuid NOT NULL,
	"type" text NOT NULL,
	"version" integer NOT NULL,
	"status" text NOT NULL,
	"input" jsonb,
	"error" jsonb,
	"idempotency_key" text,
	"correlation_id" text NOT NULL,
	"tasks_remaining" integer NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"completed_at" timestamp with time zone,
	CONSTRAINT "workflows_tenant_id_id_pk" PRIMARY KEY("tenant_id","id")
);
--> statement-breakpoint
CREATE INDEX "agent_audit_log_workflow_idx" ON "agent_audit_log" USING btree ("tenant_id","workflow_id","id");--> statement-breakpoint
CREATE INDEX "agent_audit_log_temporal_idx" ON "agent_audit_log" USING btree ("tenant_id","timestamp");--> statement-breakpoint
CREATE INDEX "compliance_events_retention_idx" ON "compliance_events" USING btree ("tenant_id","retention_until");--> statement-breakpoint
CREATE UNIQUE INDEX "agent_coordination_task_key_idx" ON "agent_coordination" USING btree ("tenant_id","workflow_id","task_key");--> statement-breakpoint
CREATE INDEX "agent_coordination_inflight_idx" ON "agent_coordination" USING btree ("tenant_id","id") WHERE "agent_coordination"."status" IN ('queued', 'running');--> statement-breakpoint
CREATE INDEX "agent_coordination_orphan_idx" ON "agent_coordination" USING btree ("tenant_id","id") WHERE "agent_coordination"."status" = 'pending' AND "agent_coordination"."deps_remaining" = 0;--> statement-breakpoint
CREATE INDEX "agent_coordination_completed_idx" ON "agent_coordination" USING btree ("tenant_id","agent_id","completed_at") WHERE "agent_coordination"."completed_at" IS NOT NULL;--> statement-breakpoint
CREATE UNIQUE INDEX "workflows_idempotency_key_idx" ON "workflows" USING btree ("tenant_id","idempotency_key") WHERE "workflows"."idempotency_key" IS NOT NULL;--> statement-breakpoint
CREATE INDEX "workflows_recent_idx" ON "workflows" USING btree ("tenant_id","created_at" DESC NULLS LAST,"id" DESC NULLS LAST);--> statement-breakpoint
CREATE INDEX "workflows_type_status_idx" ON "workflows" USING btree ("tenant_id","type","status","created_at");