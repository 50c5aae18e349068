CREATE TABLE "agent_audit_redactions" (
	"tenant_id" text NOT NULL,
	"row_id" bigint NOT NULL,
	"redaction" text NOT NULL,
	"data_hash" text,
	"by_role" text NOT NULL,
	"redacted_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "agent_audit_redactions_tenant_id_row_id_pk" PRIMARY KEY("tenant_id","row_id")
);
--> statement-breakpoint
ALTER TABLE "agent_audit_redactions" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
ALTER TABLE "agent_audit_seals" ADD COLUMN "newest_at" timestamp with time zone;--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "agent_audit_redactions" AS PERMISSIVE FOR ALL TO public USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));--> statement-breakpoint
-- Issue 20, V2: the audit trail's two exceptions to append-only, narrowed so that what they allow
-- is checked by `audit verify` (src/audit/seal.ts), and the sealer's INSERT checked so that a seal
-- row the application role forges can neither skip rows nor stop sealing (last_txid 2^63).
--
-- Redaction (equilateral.audit_redaction = 'on'): action_data may become exactly
-- {"$redacted": "<id>"} (one key, a string), once per row, and the trigger itself records it in
-- agent_audit_redactions (row, id, sha256 of the data replaced, role, time). Verify accepts data that
-- differs from its seal only in that form and with that record.
--
-- Purge (equilateral.audit_purge = 'on'): a seal may go from unpurged to purged (purged_at set, its
-- per-row arrays emptied, nothing else changed); at commit the purged blocks must be a prefix of the
-- tenant's chain and every deleted audit row must lie in it. Verify checks both, and the tenant's
-- audit retention, against newest_at, which the seal check below fills in.
--
-- These triggers bind every role but a superuser; the owner could drop them, which is why verify,
-- not the triggers, is what detects a rewrite.
--
-- Rows redacted before this migration get a record without a data hash (by_role 'before-0011'); the
-- owner is lifted out of row-level security for this transaction to write them.
ALTER TABLE agent_audit_log NO FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
INSERT INTO agent_audit_redactions (tenant_id, row_id, redaction, data_hash, by_role)
SELECT tenant_id, id, action_data ->> '$redacted', NULL, 'before-0011' FROM agent_audit_log
WHERE jsonb_typeof(action_data -> '$redacted') = 'string'
  AND action_data = jsonb_build_object('$redacted', action_data ->> '$redacted');
--> statement-breakpoint
ALTER TABLE agent_audit_log FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE agent_audit_redactions FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('GRANT SELECT ON %I.agent_audit_redactions TO equilateral_app', current_schema());
END
$$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_log' THEN
    IF current_setting('equilateral.audit_redaction', true) = 'on'
       AND COALESCE(jsonb_typeof(NEW.action_data -> '$redacted') = 'string'
         AND NEW.action_data = jsonb_build_object('$redacted', NEW.action_data ->> '$redacted'), false)
       AND NOT COALESCE(jsonb_typeof(OLD.action_data -> '$redacted') = 'string'
         AND OLD.action_data = jsonb_build_object('$redacted', OLD.action_data ->> '$redacted'), false)
       AND (to_jsonb(NEW) - 'action_data') = (to_jsonb(OLD) - 'action_data') THEN
      EXECUTE format('INSERT INTO %I.agent_audit_redactions (tenant_id, row_id, redaction, data_hash, by_role)
                      VALUES ($1, $2, $3, $4, $5)', TG_TABLE_SCHEMA)
        USING OLD.tenant_id, OLD.id, NEW.action_data ->> '$redacted',
          encode(sha256(convert_to(OLD.action_data::text, 'UTF8')), 'hex'), current_user::text;
      RETURN NEW;
    END IF;
  ELSIF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'agent_audit_seals' THEN
    IF current_setting('equilateral.audit_purge', true) = 'on'
       AND OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL
       AND NEW.row_ids = '{}' AND NEW.row_hashes = '{}' AND NEW.data_hashes = '{}'
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
--> statement-breakpoint
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON agent_audit_redactions
  FOR EACH ROW EXECUTE FUNCTION audit_append_only();
--> statement-breakpoint
CREATE TRIGGER append_only_truncate BEFORE TRUNCATE ON agent_audit_redactions
  FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
--> statement-breakpoint
-- At commit: a block marked purged has no unpurged block before it, and an audit row deleted lies
-- within the purged blocks (which, being a prefix, end at the last purged block's last row).
CREATE FUNCTION audit_purge_prefix() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  bad boolean;
BEGIN
  IF TG_TABLE_NAME = 'agent_audit_seals' THEN
    EXECUTE format('SELECT EXISTS (SELECT FROM %I.agent_audit_seals p
                    WHERE p.tenant_id = $1 AND p.block_no < $2 AND p.purged_at IS NULL)', TG_TABLE_SCHEMA)
      INTO bad USING NEW.tenant_id, NEW.block_no;
    IF bad THEN
      RAISE EXCEPTION 'agent_audit_seals: block % of tenant "%" purged while a block before it is not',
        NEW.block_no, NEW.tenant_id USING ERRCODE = 'insufficient_privilege';
    END IF;
  ELSE
    EXECUTE format('SELECT NOT EXISTS (SELECT FROM %I.agent_audit_seals s
                    WHERE s.tenant_id = $1 AND s.purged_at IS NOT NULL AND (s.last_txid, s.last_id) >= ($2, $3))',
                   TG_TABLE_SCHEMA)
      INTO bad USING OLD.tenant_id, OLD.txid, OLD.id;
    IF bad THEN
      RAISE EXCEPTION 'agent_audit_log: row % of tenant "%" deleted outside the purged blocks',
        OLD.id, OLD.tenant_id USING ERRCODE = 'insufficient_privilege';
    END IF;
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE CONSTRAINT TRIGGER purge_prefix AFTER UPDATE ON agent_audit_seals
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL) EXECUTE FUNCTION audit_purge_prefix();
--> statement-breakpoint
CREATE CONSTRAINT TRIGGER purge_within_blocks AFTER DELETE ON agent_audit_log
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_purge_prefix();
--> statement-breakpoint
-- A new seal must be the next block of the tenant's chain and seal exactly the rows after the last
-- block, up to its last row, all below the horizon (older than every running transaction), with
-- their data hashes; newest_at is filled in here. A forged seal can thus neither skip rows nor jump
-- ahead (last_txid 2^63 stopped sealing for good); one with wrong row hashes is named by verify.
CREATE FUNCTION audit_seal_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  p_block bigint;
  p_first bigint;
  p_count integer;
  p_txid bigint;
  p_id bigint;
  p_hash text;
  ids bigint[];
  hashes text[];
  newest timestamptz;
  last_txid bigint;
BEGIN
  IF NEW.last_txid >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint THEN
    RAISE EXCEPTION 'agent_audit_seals: block % of tenant "%" seals past the horizon', NEW.block_no, NEW.tenant_id
      USING ERRCODE = 'check_violation';
  END IF;
  EXECUTE format('SELECT block_no, first_seq, row_count, last_txid, last_id, hash FROM %I.agent_audit_seals
                  WHERE tenant_id = $1 ORDER BY block_no DESC LIMIT 1', TG_TABLE_SCHEMA)
    INTO p_block, p_first, p_count, p_txid, p_id, p_hash USING NEW.tenant_id;
  IF NEW.block_no IS DISTINCT FROM COALESCE(p_block, 0) + 1
     OR NEW.first_seq IS DISTINCT FROM COALESCE(p_first + p_count, 1)
     OR NEW.prev_hash IS DISTINCT FROM COALESCE(p_hash, repeat('0', 64)) THEN
    RAISE EXCEPTION 'agent_audit_seals: block % of tenant "%" is not the next block of its chain', NEW.block_no, NEW.tenant_id
      USING ERRCODE = 'check_violation';
  END IF;
  EXECUTE format('SELECT array_agg(id ORDER BY txid, id),
                    array_agg(encode(sha256(convert_to(action_data::text, ''UTF8'')), ''hex'') ORDER BY txid, id),
                    max("timestamp"), max(txid)
                  FROM %I.agent_audit_log
                  WHERE tenant_id = $1 AND (txid, id) > ($2, $3) AND (txid, id) <= ($4, $5)', TG_TABLE_SCHEMA)
    INTO ids, hashes, newest, last_txid USING NEW.tenant_id, COALESCE(p_txid, 0), COALESCE(p_id, 0), NEW.last_txid, NEW.last_id;
  IF ids IS NULL OR ids[cardinality(ids)] IS DISTINCT FROM NEW.last_id OR last_txid IS DISTINCT FROM NEW.last_txid OR NEW.row_ids IS DISTINCT FROM ids
     OR NEW.data_hashes IS DISTINCT FROM hashes OR NEW.row_count IS DISTINCT FROM cardinality(ids)
     OR cardinality(NEW.row_hashes) IS DISTINCT FROM cardinality(ids) THEN
    RAISE EXCEPTION 'agent_audit_seals: block % of tenant "%" does not seal the rows after the last block', NEW.block_no, NEW.tenant_id
      USING ERRCODE = 'check_violation';
  END IF;
  NEW.newest_at := newest;
  RETURN NEW;
END
$$;
--> statement-breakpoint
CREATE TRIGGER seal_check BEFORE INSERT ON agent_audit_seals
  FOR EACH ROW EXECUTE FUNCTION audit_seal_check();
