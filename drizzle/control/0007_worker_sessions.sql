CREATE TABLE "equilateral"."worker_sessions" (
	"worker_id" text PRIMARY KEY NOT NULL,
	"lock_id" integer NOT NULL,
	"host" text NOT NULL,
	"pid" integer NOT NULL,
	"registered_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
-- Workers register and unregister themselves, and the liveness pass removes dead workers' rows, as the
-- application role; the table holds no tenant data (see "Worker liveness" in the README for what a
-- connection of that role can and cannot do with it).
GRANT SELECT, INSERT, UPDATE, DELETE ON equilateral.worker_sessions TO equilateral_app;
