-- The audit trail is append-only. The application role has no UPDATE, DELETE or TRUNCATE privilege
-- on it (checked before any trigger); these triggers refuse them to everyone else too, the owner
-- included, except two narrow, explicit operations run by the owner in their own transaction:
--   * GDPR redaction (SET LOCAL equilateral.audit_redaction = 'on'): only action_data may change, and
--     only to a {"$redacted": ...} marker; the seal keeps the data's hash, so the chain still verifies;
--   * retention purge (SET LOCAL equilateral.audit_purge = 'on'): rows may be deleted, and a seal may
--     be marked purged (only purged_at and the per-row arrays change; its hashes stay as the anchor).
ALTER TABLE agent_audit_seals FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('GRANT SELECT, INSERT ON %I.agent_audit_seals TO equilateral_app', current_schema());
END
$$;
--> statement-breakpoint
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_log'
     AND current_setting('equilateral.audit_redaction', true) = 'on'
     AND jsonb_typeof(NEW.action_data) = 'object' AND NEW.action_data ? '$redacted'
     AND (to_jsonb(NEW) - 'action_data') = (to_jsonb(OLD) - 'action_data') THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_seals'
     AND current_setting('equilateral.audit_purge', true) = 'on'
     AND (to_jsonb(NEW) - 'purged_at' - 'row_ids' - 'row_hashes' - 'data_hashes')
       = (to_jsonb(OLD) - 'purged_at' - 'row_ids' - 'row_hashes' - 'data_hashes') THEN
    RETURN NEW;
  END IF;
  IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'agent_audit_log'
     AND current_setting('equilateral.audit_purge', true) = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
--> statement-breakpoint
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON agent_audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
--> statement-breakpoint
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON agent_audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
--> statement-breakpoint
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON agent_audit_seals
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
--> statement-breakpoint
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON agent_audit_seals
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
