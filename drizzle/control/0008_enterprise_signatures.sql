-- Enterprise runs and members carry an HMAC (under a key derived from ENCRYPTION_KEYS, which the
-- database never sees) over what the caller of start() asked for: rows the application role writes by
-- hand, which it still may, are refused by consolidation instead of starting or reading workflows.
ALTER TABLE "equilateral"."enterprise_run_tenants" ADD COLUMN "mac" text;--> statement-breakpoint
ALTER TABLE "equilateral"."enterprise_runs" ADD COLUMN "mac" text;