-- Applied with search_path set to the target schema (the shared `equilateral` schema, or a tenant's
-- own). Issue 20, item 2: what the maintenance role (equilateral_maintenance, drizzle/control/0010)
-- may do in the tenant tables: exactly the retention purge and GDPR erasure, through the SECURITY
-- DEFINER functions below, each per tenant, bound by row-level security (they run as the tables'
-- owner, whom FORCE binds, in the caller's tenant transaction, and refuse any other tenant). The
-- role has no UPDATE, DELETE or TRUNCATE privilege on any table and no SELECT of any payload
-- column (inputs, data, results, errors, audit data, event payloads, subject keys): the functions
-- overwrite payloads without handing them out. Its only direct privilege here is INSERT of the
-- compliance events it records (as the application role may), under the same policies.
--
--   maintenance_purge: coordination data of workflows ended longer ago than a retention that may
--     not be shorter than the tenant's profile says, compliance events past their retention_until,
--     and the leading run of sealed audit blocks whose rows are all present and past the tenant's
--     audit retention (never one from the profile: a caller cannot shorten it);
--   maintenance_erase, maintenance_redact_audit, maintenance_erase_rest: GDPR erasure of a data
--     subject's or a whole tenant's workflows; payloads become {"$erased": true, "erasure": <id>} and
--     audit rows {"$redacted": "erasure <id>"}, built here from the erasure id, so a caller can write
--     nothing else; each redaction is recorded by the append-only trigger.
--
-- The audit switches (equilateral.audit_redaction, audit_purge, retention_purge) are set by the
-- functions' own SET clauses, so they hold inside a function only and are restored when it returns.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_maintenance') THEN
    CREATE ROLE equilateral_maintenance NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;
--> statement-breakpoint
DO $$
BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO equilateral_maintenance', current_schema());
  EXECUTE format('GRANT INSERT ON %I.compliance_events TO equilateral_maintenance', current_schema());
END
$$;
--> statement-breakpoint
-- The redaction record names the login that redacted: inside a SECURITY DEFINER function
-- current_user is the functions' owner, session_user the maintenance login that called it.
-- Otherwise as in 0011.
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
          encode(sha256(convert_to(OLD.action_data::text, 'UTF8')), 'hex'), session_user::text;
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
-- The purge's commit-time checks (0011: purged blocks are a prefix, deleted rows lie in them) run at
-- COMMIT, after the function that purged has returned, as the session's role: they read the seals
-- as the tables' owner instead (still under row-level security), so the maintenance role needs no
-- privilege on the seals. A trigger function cannot be called other than by its trigger.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION %I.audit_purge_prefix() SECURITY DEFINER SET search_path = %I, pg_temp',
    current_schema(), current_schema());
END
$$;
--> statement-breakpoint
-- The tenant a maintenance function was asked for must be the transaction's: the functions run as
-- the owner, whom row-level security binds to that tenant as well, so this only turns a mismatch
-- (nothing would be found) into an error.
CREATE FUNCTION maintenance_tenant(p_tenant text) RETURNS void LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_tenant IS NULL OR p_tenant IS DISTINCT FROM NULLIF(current_setting('app.tenant_id', true), '') THEN
    RAISE EXCEPTION 'maintenance: tenant "%" is not this transaction''s tenant', p_tenant
      USING ERRCODE = 'insufficient_privilege';
  END IF;
END
$$;
--> statement-breakpoint
CREATE FUNCTION maintenance_purge(p_tenant text, p_data_days integer, p_audit_days integer, p_limit integer)
RETURNS TABLE (purged_workflows integer, purged_tasks integer, purged_audit_rows integer,
  purged_audit_blocks integer, purged_events integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET equilateral.audit_purge = 'on' SET equilateral.retention_purge = 'on' AS $$
DECLARE
  profile jsonb;
  data_days numeric;
  audit_days numeric;
  events_deleted integer;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
    RAISE EXCEPTION 'maintenance_purge: batch size % is not from 1 to 100000', p_limit
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- The profile's retentions, read as tolerantly as equilateral.compliance_regimes reads it; a
  -- caller may keep things longer (a profile it cannot parse: not at all), never shorter.
  SELECT CASE WHEN jsonb_typeof(t.compliance_profile) = 'object' THEN t.compliance_profile ELSE '{}' END
  INTO profile FROM equilateral.tenants t WHERE t.id = p_tenant;
  data_days := CASE WHEN jsonb_typeof(profile -> 'dataRetentionDays') = 'number'
    THEN (profile ->> 'dataRetentionDays')::numeric END;
  audit_days := COALESCE(
    CASE WHEN jsonb_typeof(profile -> 'auditRetentionDays') = 'number' THEN (profile ->> 'auditRetentionDays')::numeric END,
    (SELECT max((r.value ->> 'retentionDays')::numeric) FROM jsonb_each(profile) r
     WHERE r.key IN ('GDPR', 'SOX', 'HIPAA') AND jsonb_typeof(r.value -> 'retentionDays') = 'number'));
  IF p_data_days IS NOT NULL AND (data_days IS NULL OR p_data_days < data_days) THEN
    RAISE EXCEPTION 'maintenance_purge: tenant "%" keeps coordination data %, not % days', p_tenant,
      COALESCE(data_days || ' days', 'until erased'), p_data_days USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_audit_days IS NOT NULL AND (audit_days IS NULL OR p_audit_days < audit_days) THEN
    RAISE EXCEPTION 'maintenance_purge: tenant "%" keeps audit rows %, not % days', p_tenant,
      COALESCE(audit_days || ' days', 'for good'), p_audit_days USING ERRCODE = 'insufficient_privilege';
  END IF;
  purged_workflows := 0;
  purged_tasks := 0;
  purged_audit_rows := 0;
  purged_audit_blocks := 0;
  -- Ended workflows older than the cutoff, oldest first, with their tasks and their events.
  -- created_at < cutoff is implied by completed_at < cutoff and lets the (tenant_id, created_at)
  -- index find them.
  IF p_data_days IS NOT NULL THEN
    WITH w AS (
      SELECT x.id FROM workflows x
      WHERE x.tenant_id = p_tenant AND x.created_at < now() - make_interval(days => p_data_days)
        AND x.completed_at < now() - make_interval(days => p_data_days) AND x.status <> 'running'
      ORDER BY x.created_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    ),
    t AS (DELETE FROM agent_coordination c USING w WHERE c.tenant_id = p_tenant AND c.workflow_id = w.id RETURNING 1),
    ev AS (DELETE FROM workflow_events e USING w WHERE e.tenant_id = p_tenant AND e.workflow_id = w.id RETURNING 1),
    d AS (DELETE FROM workflows x USING w WHERE x.tenant_id = p_tenant AND x.id = w.id RETURNING 1)
    SELECT (SELECT count(*) FROM d)::int, (SELECT count(*) FROM t)::int, (SELECT count(*) FROM ev)::int
    INTO purged_workflows, purged_tasks, events_deleted;
  END IF;
  WITH e AS (
    SELECT c.id FROM compliance_events c WHERE c.tenant_id = p_tenant AND c.retention_until < now()
    ORDER BY c.retention_until LIMIT p_limit FOR UPDATE SKIP LOCKED
  ),
  d AS (DELETE FROM compliance_events c USING e WHERE c.tenant_id = p_tenant AND c.id = e.id RETURNING 1)
  SELECT count(*)::int INTO purged_events FROM d;
  -- The leading run of unpurged blocks whose rows are all present and all older than the cutoff. A
  -- block with a row missing is left alone: marking it purged would hide that from verify.
  IF p_audit_days IS NOT NULL THEN
    WITH b AS (
      SELECT s.block_no, s.row_ids FROM agent_audit_seals s
      WHERE s.tenant_id = p_tenant AND s.purged_at IS NULL ORDER BY s.block_no LIMIT p_limit FOR UPDATE
    ),
    age AS (
      SELECT b.block_no, b.row_ids, a.present, a.newest
      FROM b CROSS JOIN LATERAL (
        SELECT count(*) AS present, max(l."timestamp") AS newest
        FROM agent_audit_log l WHERE l.tenant_id = p_tenant AND l.id = ANY (b.row_ids)
      ) a
    ),
    expired AS (
      SELECT g.block_no, g.row_ids FROM age g
      WHERE NOT EXISTS (
        SELECT FROM age h WHERE h.block_no <= g.block_no
          AND (h.present <> cardinality(h.row_ids) OR h.newest >= now() - make_interval(days => p_audit_days)))
    ),
    del AS (
      DELETE FROM agent_audit_log l USING expired e WHERE l.tenant_id = p_tenant AND l.id = ANY (e.row_ids) RETURNING 1
    ),
    sealed AS (
      UPDATE agent_audit_seals s SET purged_at = now(), row_ids = '{}', row_hashes = '{}', data_hashes = '{}'
      FROM expired e WHERE s.tenant_id = p_tenant AND s.block_no = e.block_no RETURNING 1
    )
    SELECT (SELECT count(*) FROM del)::int, (SELECT count(*) FROM sealed)::int
    INTO purged_audit_rows, purged_audit_blocks;
  END IF;
  RETURN NEXT;
END
$$;
--> statement-breakpoint
-- One batch of an erasure: the workflows of the subject (p_subject), or of the whole tenant after
-- p_after (p_subject NULL), that are not running, p_limit at most, locked, in id order: their
-- payloads, their tasks', their delivered events', their enterprise members' (and the members' part
-- of their runs' summaries) and their dead-lettered jobs' errors get the erasure's marker, their
-- subject key is cleared, their audit rows are redacted. Returns the workflows' ids and the counts.
CREATE FUNCTION maintenance_erase(p_tenant text, p_erasure uuid, p_subject text, p_after uuid, p_limit integer)
RETURNS TABLE (ids text[], tasks integer, audit integer, inbox integer, members integer, runs integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET equilateral.audit_redaction = 'on' AS $$
DECLARE
  erased constant jsonb := jsonb_build_object('$erased', true, 'erasure', p_erasure::text);
  redacted constant text := 'erasure ' || p_erasure::text;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_erasure IS NULL OR p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
    RAISE EXCEPTION 'maintenance_erase: an erasure id and a batch size from 1 to 100000 are required'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN QUERY
  WITH w AS (
    SELECT x.id FROM workflows x
    WHERE x.tenant_id = p_tenant AND x.status <> 'running'
      AND CASE WHEN p_subject IS NULL THEN x.id > COALESCE(p_after, '00000000-0000-0000-0000-000000000000')
        ELSE x.subject_key = p_subject END
    ORDER BY x.id LIMIT p_limit FOR UPDATE
  ),
  wf AS (
    UPDATE workflows x SET input = CASE WHEN x.input IS NULL THEN NULL ELSE erased END,
      error = CASE WHEN x.error IS NULL THEN NULL ELSE erased END, subject_key = NULL, updated_at = now()
    FROM w WHERE x.tenant_id = p_tenant AND x.id = w.id
    RETURNING x.id
  ),
  t AS (
    UPDATE agent_coordination c SET data = CASE WHEN c.data IS NULL THEN NULL ELSE erased END,
      result = CASE WHEN c.result IS NULL THEN NULL ELSE erased END,
      error = CASE WHEN c.error IS NULL THEN NULL ELSE erased END, updated_at = now()
    FROM w WHERE c.tenant_id = p_tenant AND c.workflow_id = w.id
    RETURNING 1
  ),
  a AS (
    UPDATE agent_audit_log l SET action_data = jsonb_build_object('$redacted', redacted)
    FROM w WHERE l.tenant_id = p_tenant AND l.workflow_id = w.id
      AND l.action_data IS DISTINCT FROM jsonb_build_object('$redacted', l.action_data ->> '$redacted')
    RETURNING 1
  ),
  ev AS (
    UPDATE workflow_events e SET payload = CASE WHEN e.payload IS NULL THEN NULL ELSE erased END
    FROM w WHERE e.tenant_id = p_tenant AND e.workflow_id = w.id
    RETURNING 1
  ),
  m AS (
    UPDATE equilateral.enterprise_run_tenants m SET input = CASE WHEN m.input IS NULL THEN NULL ELSE erased END,
      error = CASE WHEN m.error IS NULL THEN NULL ELSE erased END, updated_at = now()
    FROM w WHERE m.tenant_id = p_tenant AND m.workflow_id = w.id
    RETURNING m.run_id
  ),
  r AS (
    UPDATE equilateral.enterprise_runs r
    SET summary = jsonb_set(r.summary, ARRAY['tenants', p_tenant],
      ((r.summary #> ARRAY['tenants', p_tenant]) - 'output' - 'error') || jsonb_build_object('$erased', true))
    WHERE r.id IN (SELECT run_id FROM m) AND jsonb_typeof(r.summary #> ARRAY['tenants', p_tenant]) = 'object'
    RETURNING 1
  )
  SELECT array(SELECT wf.id::text FROM wf ORDER BY wf.id), (SELECT count(*) FROM t)::int,
    (SELECT count(*) FROM a)::int, (SELECT count(*) FROM ev)::int, (SELECT count(*) FROM m)::int,
    (SELECT count(*) FROM r)::int;
END
$$;
--> statement-breakpoint
-- Dead-lettered jobs carry the failed task's error (pg-boss keeps them for its retention period):
-- those of the given workflows (NULL: all of the tenant's) get the erasure's marker instead.
-- 'eq/dead-letter' is DEAD_LETTER_QUEUE (src/queue/boss.ts), pgboss the BOSS_SCHEMA (src/db/names.ts).
CREATE FUNCTION maintenance_erase_dead_letters(p_tenant text, p_erasure uuid, p_workflows text[])
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
  n integer;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_erasure IS NULL THEN
    RAISE EXCEPTION 'maintenance_erase_dead_letters: an erasure id is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE pgboss.job SET data = (data - 'error')
    || jsonb_build_object('error', jsonb_build_object('$erased', true, 'erasure', p_erasure::text))
  WHERE name = 'eq/dead-letter' AND data ->> 't' = p_tenant
    AND (p_workflows IS NULL OR data ->> 'w' = ANY (p_workflows)) AND data ? 'error';
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END
$$;
--> statement-breakpoint
-- A whole tenant's erasure, after its workflows: its audit rows by id (those of workflows purged
-- earlier have no workflow row left), p_limit after p_after, redacted unless they already are.
CREATE FUNCTION maintenance_redact_audit(p_tenant text, p_erasure uuid, p_after bigint, p_limit integer)
RETURNS TABLE (last text, seen integer, n integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET equilateral.audit_redaction = 'on' AS $$
DECLARE
  redacted constant text := 'erasure ' || p_erasure::text;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_erasure IS NULL OR p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
    RAISE EXCEPTION 'maintenance_redact_audit: an erasure id and a batch size from 1 to 100000 are required'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN QUERY
  WITH a AS (
    SELECT l.id FROM agent_audit_log l WHERE l.tenant_id = p_tenant AND l.id > COALESCE(p_after, 0)
    ORDER BY l.id LIMIT p_limit
  ),
  u AS (
    UPDATE agent_audit_log x SET action_data = jsonb_build_object('$redacted', redacted)
    FROM a WHERE x.tenant_id = p_tenant AND x.id = a.id
      AND x.action_data IS DISTINCT FROM jsonb_build_object('$redacted', x.action_data ->> '$redacted')
    RETURNING 1
  )
  SELECT (SELECT max(a.id) FROM a)::text, (SELECT count(*) FROM a)::int, (SELECT count(*) FROM u)::int;
END
$$;
--> statement-breakpoint
-- A whole tenant's erasure, at the end: its enterprise members without a workflow (rejected) and its
-- part of every enterprise run's summary.
CREATE FUNCTION maintenance_erase_rest(p_tenant text, p_erasure uuid)
RETURNS integer LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
  erased constant jsonb := jsonb_build_object('$erased', true, 'erasure', p_erasure::text);
  n integer;
BEGIN
  PERFORM maintenance_tenant(p_tenant);
  IF p_erasure IS NULL THEN
    RAISE EXCEPTION 'maintenance_erase_rest: an erasure id is required' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  WITH changed AS (
    UPDATE equilateral.enterprise_run_tenants m SET input = CASE WHEN m.input IS NULL THEN NULL ELSE erased END,
      error = CASE WHEN m.error IS NULL THEN NULL ELSE erased END, updated_at = now()
    WHERE m.tenant_id = p_tenant AND m.workflow_id IS NULL
    RETURNING 1
  ),
  r AS (
    UPDATE equilateral.enterprise_runs r
    SET summary = jsonb_set(r.summary, ARRAY['tenants', p_tenant],
      ((r.summary #> ARRAY['tenants', p_tenant]) - 'output' - 'error') || jsonb_build_object('$erased', true))
    WHERE jsonb_typeof(r.summary #> ARRAY['tenants', p_tenant]) = 'object'
      AND NOT ((r.summary #> ARRAY['tenants', p_tenant]) ? '$erased')
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM changed)::int INTO n FROM (SELECT count(*) FROM r) x;
  RETURN n;
END
$$;
--> statement-breakpoint
-- SECURITY DEFINER best practice: a search_path only the owner can write to, pg_temp last (so a
-- caller's temporary table cannot stand in for one of ours); EXECUTE for the maintenance role only.
DO $$
DECLARE
  s constant text := current_schema();
  f text;
BEGIN
  FOREACH f IN ARRAY ARRAY['maintenance_tenant(text)',
    'maintenance_purge(text, integer, integer, integer)',
    'maintenance_erase(text, uuid, text, uuid, integer)',
    'maintenance_erase_dead_letters(text, uuid, text[])',
    'maintenance_redact_audit(text, uuid, bigint, integer)',
    'maintenance_erase_rest(text, uuid)'] LOOP
    EXECUTE format('ALTER FUNCTION %I.%s SET search_path = %I, pg_temp', s, f, s);
    EXECUTE format('REVOKE ALL ON FUNCTION %I.%s FROM PUBLIC', s, f);
    IF f <> 'maintenance_tenant(text)' THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %I.%s TO equilateral_maintenance', s, f);
    END IF;
  END LOOP;
END
$$;
