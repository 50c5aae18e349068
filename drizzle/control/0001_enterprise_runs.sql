CREATE TABLE "equilateral"."enterprise_run_tenants" (
	"run_id" uuid NOT NULL,
	"tenant_id" text NOT NULL,
	"input" jsonb,
	"workflow_id" uuid,
	"status" text DEFAULT 'starting' NOT NULL,
	"error" jsonb,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "enterprise_run_tenants_run_id_tenant_id_pk" PRIMARY KEY("run_id","tenant_id")
);
--> statement-breakpoint
CREATE TABLE "equilateral"."enterprise_runs" (
	"id" uuid PRIMARY KEY NOT NULL,
	"workflow_type" text NOT NULL,
	"status" text DEFAULT 'running' NOT NULL,
	"summary" jsonb,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"completed_at" timestamp with time zone
);
--> statement-breakpoint
ALTER TABLE "equilateral"."enterprise_run_tenants" ADD CONSTRAINT "enterprise_run_tenants_run_id_enterprise_runs_id_fk" FOREIGN KEY ("run_id") REFERENCES "equilateral"."enterprise_runs"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "enterprise_run_tenants_tenant_idx" ON "equilateral"."enterprise_run_tenants" USING btree ("tenant_id");