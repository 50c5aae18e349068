-- Applied with search_path set to the target schema. A read-only role for dashboards and analysts:
-- status, timing and counts of the tenant tables, under the same row-level security (it sees a
-- tenant's rows only in a transaction that sets app.tenant_id), never the payload columns (inputs,
-- task data, results, errors, audit data, event payloads, schedule inputs) nor what names people or
-- business keys (idempotency and subject keys, actors, event ids and match keys): column grants, so
-- `SELECT *` and any payload column are refused. Logins join it: CREATE ROLE grafana LOGIN PASSWORD
-- '...' IN ROLE equilateral_observer. Roles are cluster-wide; another database may create it first.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_observer') THEN
    CREATE ROLE equilateral_observer NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;
--> statement-breakpoint
DO $$
DECLARE
  s text := current_schema();
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT (tenant_id, id, type, version, status, correlation_id, tasks_remaining, created_at,
    updated_at, completed_at) ON %I.workflows TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT (tenant_id, id, workflow_id, task_key, agent_id, task_type, queue, status, dependencies,
    depends_on, dependents, deps_remaining, attempt, failures, max_attempts, backoff_ms, backoff_max_ms, timeout_ms,
    agent_version, unserved_since, wait_deadline, start_at, start_delay_ms, worker_id, created_at, queued_at,
    started_at, heartbeat_at, completed_at, updated_at) ON %I.agent_coordination TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT (tenant_id, id, workflow_id, task_id, agent_id, action_type, correlation_id, "timestamp",
    txid) ON %I.agent_audit_log TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT ON %I.agent_audit_seals, %I.agent_audit_redactions TO equilateral_observer', s, s);
  EXECUTE format('GRANT SELECT (tenant_id, id, agent_id, compliance_type, event_type, retention_until, created_at)
    ON %I.compliance_events TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT (tenant_id, id, workflow_id, kind, name, task_id, consumed_at, created_at)
    ON %I.workflow_events TO equilateral_observer', s);
  EXECUTE format('GRANT SELECT (tenant_id, id, workflow_type, cron, timezone, missed, enabled, last_slot, next_slot,
    created_at, updated_at) ON %I.workflow_schedules TO equilateral_observer', s);
  -- Which tenants there are (to scope a transaction to one), where the control tables are here.
  IF to_regclass('equilateral.tenants') IS NOT NULL THEN
    GRANT USAGE ON SCHEMA equilateral TO equilateral_observer;
    GRANT SELECT (id, name, tier, status, created_at, updated_at) ON equilateral.tenants TO equilateral_observer;
  END IF;
END
$$;
