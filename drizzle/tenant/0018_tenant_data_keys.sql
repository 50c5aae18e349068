-- Applied with search_path set to the target schema. Issue 25, items 1 and 3: per-tenant data keys
-- (envelope encryption, src/crypto/data-keys.ts). Each row is one data key of a tenant (subject_hash
-- '') or of a data subject (the SHA-256 of its subject key), stored only wrapped by a key-encryption
-- key (kek names it and its version); at most one active per tenant and subject. Rotation retires a
-- key (still read); crypto-erasure destroys it: the wrapped key is deleted, the row stays as the
-- record, and values under it read as erased.
CREATE TABLE "tenant_data_keys" (
	"tenant_id" text NOT NULL,
	"id" text NOT NULL,
	"subject_hash" text DEFAULT '' NOT NULL,
	"state" text NOT NULL,
	"kek" text,
	"wrapped" text,
	"erasure" uuid,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"rotated_at" timestamp with time zone,
	"destroyed_at" timestamp with time zone,
	CONSTRAINT "tenant_data_keys_tenant_id_id_pk" PRIMARY KEY("tenant_id","id"),
	CONSTRAINT "tenant_data_keys_state_check" CHECK ("tenant_data_keys"."state" IN ('active', 'retired', 'destroyed')),
	CONSTRAINT "tenant_data_keys_wrapped_check" CHECK (("tenant_data_keys"."state" = 'destroyed') = ("tenant_data_keys"."wrapped" IS NULL))
);
--> statement-breakpoint
ALTER TABLE "tenant_data_keys" ENABLE ROW LEVEL SECURITY;--> statement-breakpoint
CREATE UNIQUE INDEX "tenant_data_keys_active_idx" ON "tenant_data_keys" USING btree ("tenant_id","subject_hash") WHERE "tenant_data_keys"."state" = 'active';--> statement-breakpoint
CREATE POLICY "tenant_isolation" ON "tenant_data_keys" AS PERMISSIVE FOR ALL TO public USING (tenant_id = (SELECT equilateral.current_tenant())) WITH CHECK (tenant_id = (SELECT equilateral.current_tenant()));--> statement-breakpoint
ALTER TABLE tenant_data_keys FORCE ROW LEVEL SECURITY;--> statement-breakpoint
-- The application role creates, rotates and re-wraps keys; never deletes one. A destroyed key cannot
-- come back: its row keeps no wrapped key (the CHECK above) and a trigger refuses to change it.
DO $$
BEGIN
  EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %I.tenant_data_keys TO equilateral_app', current_schema());
END
$$;
--> statement-breakpoint
CREATE FUNCTION tenant_data_keys_destroyed_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.state = 'destroyed' THEN
    RAISE EXCEPTION 'data key % of tenant % was destroyed (erasure %): it cannot change', OLD.id, OLD.tenant_id, OLD.erasure
      USING ERRCODE = 'integrity_constraint_violation';
  END IF;
  RETURN NEW;
END
$$;
--> statement-breakpoint
CREATE TRIGGER tenant_data_keys_destroyed_stay BEFORE UPDATE ON tenant_data_keys
  FOR EACH ROW EXECUTE FUNCTION tenant_data_keys_destroyed_stay();
--> statement-breakpoint
-- Crypto-erasure for the maintenance role, which has no UPDATE privilege: destroys the subject's data
-- keys (p_subject_hash) or every data key of the tenant (NULL), recording the erasure id. Returns how
-- many were destroyed.
CREATE FUNCTION maintenance_destroy_data_keys(p_tenant text, p_erasure uuid, p_subject_hash text)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
  n integer;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_erasure IS NULL THEN
    RAISE EXCEPTION 'maintenance_destroy_data_keys: an erasure id is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE tenant_data_keys SET state = 'destroyed', kek = NULL, wrapped = NULL, erasure = p_erasure, destroyed_at = now()
  WHERE tenant_id = p_tenant AND (p_subject_hash IS NULL OR subject_hash = p_subject_hash) AND state <> 'destroyed';
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
--> statement-breakpoint
DO $$
DECLARE
  s constant text := current_schema();
BEGIN
  EXECUTE format('ALTER FUNCTION %I.maintenance_destroy_data_keys(text, uuid, text) SET search_path = %I, pg_temp', s, s);
  EXECUTE format('REVOKE ALL ON FUNCTION %I.maintenance_destroy_data_keys(text, uuid, text) FROM PUBLIC', s);
  EXECUTE format('GRANT EXECUTE ON FUNCTION %I.maintenance_destroy_data_keys(text, uuid, text) TO equilateral_maintenance', s);
END
$$;
--> statement-breakpoint
-- The policies of every tenant table, now with tenant_data_keys (as 0016 wrote them otherwise; a
-- table not there yet is skipped: a tenant schema created now runs 0016's call before 0018).
DO $$
BEGIN
  IF current_schema() <> 'equilateral' THEN
    RETURN;
  END IF;
  CREATE OR REPLACE FUNCTION equilateral.tenant_policies(s text) RETURNS void
  LANGUAGE plpgsql VOLATILE
  SET search_path = pg_catalog, pg_temp
  AS $f$
  DECLARE
    verified boolean := (SELECT k.verified FROM equilateral.tenant_context_key k);
    tenant text := CASE WHEN verified THEN '(SELECT equilateral.current_tenant())'
      ELSE 'NULLIF(current_setting(''app.tenant_id'', true), '''')' END;
    t text;
  BEGIN
    FOREACH t IN ARRAY ARRAY['workflows', 'agent_coordination', 'agent_audit_log', 'compliance_events',
      'agent_audit_seals', 'workflow_events', 'workflow_schedules', 'agent_audit_redactions',
      'tenant_data_keys'] LOOP
      -- A tenant schema migrated from scratch runs 0016's call before this table exists.
      CONTINUE WHEN pg_catalog.to_regclass(format('%I.%I', s, t)) IS NULL;
      EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %I.%I', s, t);
      EXECUTE format('CREATE POLICY tenant_isolation ON %I.%I AS PERMISSIVE FOR ALL TO public
        USING (tenant_id = %s) WITH CHECK (tenant_id = %s)', s, t, tenant, tenant);
      -- The observer role (0012) has no secret: it keeps reading (the columns its grants allow,
      -- never writing) the tenant its own app.tenant_id names, through a policy of its own that
      -- binds only members of equilateral_observer, never the app role.
      EXECUTE format('DROP POLICY IF EXISTS observer_tenant ON %I.%I', s, t);
      EXECUTE format('CREATE POLICY observer_tenant ON %I.%I AS PERMISSIVE FOR SELECT TO equilateral_observer
        USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), ''''))', s, t);
    END LOOP;
  END
  $f$;
  REVOKE ALL ON FUNCTION equilateral.tenant_policies(text) FROM PUBLIC;
END
$$;
--> statement-breakpoint
SELECT equilateral.tenant_policies(current_schema());
