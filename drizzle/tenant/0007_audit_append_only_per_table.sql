-- The append-only guard of 0004, with each table's conditions in a branch of its own. PL/pgSQL
-- prepares a condition as one expression, resolving every field it names: the redaction condition
-- names NEW.action_data, which agent_audit_seals does not have, so on that table any UPDATE failed
-- with `record "new" has no field "action_data"`, the retention purge's marking of a block purged
-- included. Same rules as before: redaction may change only agent_audit_log.action_data, to a
-- {"$redacted": ...} marker; the purge may delete audit rows and mark a seal purged (purged_at and
-- the per-row arrays only); everything else, TRUNCATE included, is refused to everyone.
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_log' THEN
    IF current_setting('equilateral.audit_redaction', true) = 'on'
       AND jsonb_typeof(NEW.action_data) = 'object' AND NEW.action_data ? '$redacted'
       AND (to_jsonb(NEW) - 'action_data') = (to_jsonb(OLD) - 'action_data') THEN
      RETURN NEW;
    END IF;
  ELSIF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_seals' THEN
    IF current_setting('equilateral.audit_purge', true) = 'on'
       AND (to_jsonb(NEW) - 'purged_at' - 'row_ids' - 'row_hashes' - 'data_hashes')
         = (to_jsonb(OLD) - 'purged_at' - 'row_ids' - 'row_hashes' - 'data_hashes') THEN
      RETURN NEW;
    END IF;
  ELSIF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'agent_audit_log' THEN
    IF current_setting('equilateral.audit_purge', true) = 'on' THEN
      RETURN OLD;
    END IF;
  END IF;
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;
