-- Applied with search_path set to the target schema (the shared `equilateral` schema, or a tenant's
-- own). Issue 20, item 3: a tenant context injected SQL cannot forge.
--
-- Until now the policies compared tenant_id with the setting app.tenant_id, which any SQL run as the
-- application role can change (set_config('app.tenant_id', 'other', true), even inside one
-- expression). Now they compare it with equilateral.current_tenant(), which returns the setting's
-- tenant only when the transaction also carries a seal for it that only enter_tenant() makes:
--
--   secret      32 random bytes per database, in equilateral.tenant_context_key, which only the
--               tables' owner can read (the application and observer roles have no grant on it).
--               Generated here; `equilateral migrate` replaces it with TENANT_CONTEXT_SECRET when
--               that is set, so processes without the owner's login can hold it.
--   credential  mac(secret, 'tenant:' || tenant), hex: what the engine sends (a bind parameter, so
--               pg_stat_activity and the statement text never carry it), computed from the secret
--               the engine holds (src/db/tenant-context.ts).
--   seal        mac(secret, 'seal:' || database || pid || transaction start (µs) || tenant), hex:
--               what enter_tenant() puts in equilateral.tenant_seal, transaction-locally. Reading it
--               gains nothing: it is valid only in the transaction that made it (another backend has
--               another pid; a later transaction of the same backend starts at another microsecond).
--   mac(k, m)   sha256(k || sha256(k || m)). Not HMAC (SQL has no XOR on bytea); the outer input has a
--               fixed length, so sha256's length extension does not apply.
--
-- The secret and functions exist once per database, in the shared schema; a tenant schema's
-- policies call them there (the shared schema is always migrated before any tenant schema).
DO $$
BEGIN
  IF current_schema() <> 'equilateral' THEN
    RETURN;
  END IF;
  -- verified: whether the policies compare with current_tenant() (TENANT_CONTEXT_VERIFIED=true at
  -- migrate time) or, the default, with app.tenant_id as before (cheaper, and forgeable by injected
  -- SQL: see docs/security.md). tenant_policies() below writes either.
  CREATE TABLE equilateral.tenant_context_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret bytea NOT NULL CHECK (length(secret) >= 32),
    verified boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  REVOKE ALL ON equilateral.tenant_context_key FROM PUBLIC;
  -- gen_random_uuid() draws from the server's strong random source (pg_strong_random).
  INSERT INTO equilateral.tenant_context_key (secret)
  VALUES (sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8')));

  -- The two helpers are plain SQL without a SET clause, so the planner inlines them into the
  -- callers below (whose search_path is pinned): a SET clause would stop that and, per call of
  -- current_tenant(), cost more than everything else it does (~50 µs instead of ~20 µs). Their
  -- names are qualified all the same.
  CREATE FUNCTION equilateral.tenant_context_mac(key bytea, message text) RETURNS bytea
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  AS $f$ SELECT pg_catalog.sha256(key OPERATOR(pg_catalog.||)
    pg_catalog.sha256(key OPERATOR(pg_catalog.||) pg_catalog.convert_to(message, 'UTF8'))) $f$;
  REVOKE ALL ON FUNCTION equilateral.tenant_context_mac(bytea, text) FROM PUBLIC;

  -- Whose transaction this is: the seal's message, bar the tenant.
  CREATE FUNCTION equilateral.tenant_context_binding() RETURNS text
  LANGUAGE sql STABLE PARALLEL RESTRICTED
  AS $f$ SELECT 'seal:' OPERATOR(pg_catalog.||) pg_catalog.current_database() OPERATOR(pg_catalog.||) ':'
    OPERATOR(pg_catalog.||) pg_catalog.pg_backend_pid()::text OPERATOR(pg_catalog.||) ':'
    OPERATOR(pg_catalog.||) (EXTRACT(epoch FROM pg_catalog.transaction_timestamp())
      OPERATOR(pg_catalog.*) 1000000)::bigint::text OPERATOR(pg_catalog.||) ':' $f$;
  REVOKE ALL ON FUNCTION equilateral.tenant_context_binding() FROM PUBLIC;

  -- Scopes the current transaction to `tenant` (app.tenant_id, and the seal) if `credential` is
  -- the tenant's; else raises 42501 and changes nothing. Returns the tenant.
  CREATE FUNCTION equilateral.enter_tenant(tenant text, credential text) RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER PARALLEL UNSAFE
  SET search_path = pg_catalog, pg_temp
  AS $f$
  DECLARE
    k bytea := (SELECT secret FROM equilateral.tenant_context_key);
  BEGIN
    -- Compared as hashes, so the time the comparison takes says nothing about the right credential.
    IF tenant IS NULL OR tenant = '' OR credential IS NULL
      OR sha256(convert_to(credential, 'UTF8'))
        <> sha256(convert_to(encode(equilateral.tenant_context_mac(k, 'tenant:' || tenant), 'hex'), 'UTF8')) THEN
      RAISE EXCEPTION 'tenant context refused: wrong credential for this database'
        USING ERRCODE = '42501',
          HINT = 'the engine''s tenant context secret differs from the database''s: run `equilateral migrate` with TENANT_CONTEXT_SECRET, or give the engine the owner''s connection';
    END IF;
    PERFORM set_config('app.tenant_id', tenant, true),
      set_config('equilateral.tenant_seal',
        encode(equilateral.tenant_context_mac(k, equilateral.tenant_context_binding() || tenant), 'hex'), true);
    RETURN tenant;
  END
  $f$;
  -- Every role may call it: the credential is what admits (the application role's engine, the
  -- maintenance role's retention and erasure passes, anyone given a credential); without one it
  -- refuses.
  REVOKE ALL ON FUNCTION equilateral.enter_tenant(text, text) FROM PUBLIC;
  GRANT EXECUTE ON FUNCTION equilateral.enter_tenant(text, text) TO PUBLIC;

  -- The tenant of the current transaction, verified: app.tenant_id when equilateral.tenant_seal is
  -- the seal enter_tenant() made for it in this very transaction, else NULL (no row matches, and
  -- WITH CHECK refuses every write). The policies call it as `(SELECT equilateral.current_tenant())`,
  -- an initPlan: once per statement (per table the statement reads), not per row.
  CREATE FUNCTION equilateral.current_tenant() RETURNS text
  LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED
  SET search_path = pg_catalog, pg_temp
  AS $f$
  DECLARE
    t text := NULLIF(current_setting('app.tenant_id', true), '');
    s text := current_setting('equilateral.tenant_seal', true);
  BEGIN
    IF t IS NULL OR s IS NULL OR s = '' THEN
      RETURN NULL;
    END IF;
    IF s = encode(equilateral.tenant_context_mac((SELECT secret FROM equilateral.tenant_context_key),
        equilateral.tenant_context_binding() || t), 'hex') THEN
      RETURN t;
    END IF;
    RETURN NULL;
  END
  $f$;
  REVOKE ALL ON FUNCTION equilateral.current_tenant() FROM PUBLIC;
  -- Every role a policy binds evaluates it (the observer's queries too); it reveals nothing.
  GRANT EXECUTE ON FUNCTION equilateral.current_tenant() TO PUBLIC;

  -- The policies of one schema's tenant tables, as equilateral.tenant_context_key.verified says:
  -- this migration writes them for each schema it is applied to, and `equilateral migrate` again for
  -- every schema when TENANT_CONTEXT_VERIFIED changes the flag. Owner only.
  CREATE FUNCTION equilateral.tenant_policies(s text) RETURNS void
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
      'agent_audit_seals', 'workflow_events', 'workflow_schedules', 'agent_audit_redactions'] LOOP
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
-- Every tenant table's policies (verified unless switched off; see tenant_policies above).
SELECT equilateral.tenant_policies(current_schema());
