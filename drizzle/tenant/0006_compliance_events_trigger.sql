-- Compliance events, written by the database in the transaction of every change to a task row, so
-- no code path (engine, sweeper, an owner's manual fix) can change coordination state without them,
-- and a rolled-back change leaves none. Which regimes apply and how long each event is kept come
-- from the tenant's compliance profile (equilateral.compliance_regimes): one event per changed row
-- and applicable regime; none at all for a tenant without a profile.
--
-- Statement-level AFTER triggers with transition tables: one call and one INSERT ... SELECT per
-- statement, whatever the number of rows (a completion batch, a cancellation of 1,000 tasks),
-- reading the tenants table once. PostgreSQL allows transition tables only on single-event
-- triggers, hence three triggers on one function. Updates that leave the status as it was
-- (heartbeats every few seconds, dependency counters, erasure of payloads) write nothing.
-- event_data holds ids and statuses only, never payloads.
--
-- SECURITY INVOKER: the events are written with the privileges and the row-level security of whoever
-- changed the task (the application role may INSERT compliance events of its own tenant). The
-- search_path is pinned to the schema this migration runs in, so the events land beside the tasks
-- whatever the caller's search_path.
--
-- The retention purge (owner only) deletes coordination data in bulk and records one `purge` event
-- with its counts instead of one `task_deleted` per task: it sets equilateral.retention_purge, which
-- is honoured only for a role that owns the table (the application role owns nothing, so setting
-- it cannot make its deletes go unrecorded).
CREATE FUNCTION compliance_task_events() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data, retention_until)
    SELECT n.tenant_id, n.agent_id, r.regime, 'task_created',
      jsonb_build_object('task', n.id, 'workflow', n.workflow_id, 'agent', n.agent_id, 'to', n.status),
      r.retention_until
    FROM (SELECT DISTINCT tenant_id FROM new_rows) k
      CROSS JOIN LATERAL equilateral.compliance_regimes(k.tenant_id) r
      JOIN new_rows n ON n.tenant_id = k.tenant_id;
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data, retention_until)
    SELECT n.tenant_id, n.agent_id, r.regime, 'task_' || n.status,
      jsonb_build_object('task', n.id, 'workflow', n.workflow_id, 'agent', n.agent_id, 'from', o.status,
        'to', n.status),
      r.retention_until
    FROM (SELECT DISTINCT tenant_id FROM new_rows) k
      CROSS JOIN LATERAL equilateral.compliance_regimes(k.tenant_id) r
      JOIN new_rows n ON n.tenant_id = k.tenant_id
      JOIN old_rows o ON o.tenant_id = n.tenant_id AND o.id = n.id
    WHERE n.status IS DISTINCT FROM o.status;
  ELSIF TG_OP = 'DELETE' THEN
    IF current_setting('equilateral.retention_purge', true) = 'on'
       AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
      RETURN NULL;
    END IF;
    INSERT INTO compliance_events (tenant_id, agent_id, compliance_type, event_type, event_data, retention_until)
    SELECT o.tenant_id, o.agent_id, r.regime, 'task_deleted',
      jsonb_build_object('task', o.id, 'workflow', o.workflow_id, 'agent', o.agent_id, 'from', o.status),
      r.retention_until
    FROM (SELECT DISTINCT tenant_id FROM old_rows) k
      CROSS JOIN LATERAL equilateral.compliance_regimes(k.tenant_id) r
      JOIN old_rows o ON o.tenant_id = k.tenant_id;
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER compliance_insert AFTER INSERT ON agent_coordination
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION compliance_task_events();
--> statement-breakpoint
CREATE TRIGGER compliance_update AFTER UPDATE ON agent_coordination
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION compliance_task_events();
--> statement-breakpoint
CREATE TRIGGER compliance_delete AFTER DELETE ON agent_coordination
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION compliance_task_events();
