-- Agent analytics (src/analytics.ts) reads the tasks that completed or failed in a time window:
-- (tenant_id, completed_at) leads, and every other column the query reads follows, so the window is
-- one index-only range scan. The index it replaces, (tenant_id, agent_id, completed_at), served no
-- query and made a window scan every finished task of the tenant, then visit its heap rows.
-- Unqualified names: applied with search_path set to the target schema (shared or per-tenant).
DROP INDEX "agent_coordination_completed_idx";--> statement-breakpoint
CREATE INDEX "agent_coordination_finished_idx" ON "agent_coordination" USING btree ("tenant_id","completed_at","agent_id","status","attempt","queued_at","started_at") WHERE "agent_coordination"."status" IN ('completed', 'failed');
