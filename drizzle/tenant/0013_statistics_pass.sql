-- Applied with search_path set to the target schema (the shared `equilateral` schema, or a tenant's
-- own). The statistics pass: gives the tables the hot statements (src/flow/claim.ts CLAIM,
-- complete.ts COMPLETE, start.ts START) read by tenant their planner statistics as soon as they hold
-- enough rows to matter, instead of at autovacuum's first visit (autovacuum_naptime, a minute by
-- default, and later on a server with many databases). Without statistics the planner takes
-- `tenant_id = $1` for ~1 row and scans the tenant's whole index range with the rest as a filter.
--
-- The engine's worker processes call it every STATISTICS_INTERVAL_MS (src/flow/statistics.ts). The
-- application role owns nothing and so cannot ANALYZE: SECURITY DEFINER, run as the tables' owner,
-- EXECUTE granted to the application role alone. It takes no arguments, so a caller cannot make it
-- analyze more than the rules below, and at most one caller per schema analyzes at a time.
--
-- Due, per table (agent_coordination, workflows; the audit and compliance tables are only written
-- by the hot statements):
--   never analyzed (neither ANALYZE nor autovacuum's) and holding at least 100 live rows or 4 pages
--   (~100 tasks without payloads). The page count is read from the table itself: the row counters
--   of pg_stat_user_tables lag behind the writes (a session reports them at most once a second,
--   and up to 10 s late once it idles), and are zero after a crash or a restore; or
--   changed (rows inserted, updated, deleted) since its last analyze by at least 1,000 rows and a
--   fifth of its live rows: twice autovacuum's own share (a tenth), so on a database autovacuum
--   keeps up with this stays out of its way.
-- Nothing due costs one read of pg_stat_user_tables (and the size of a table never analyzed).
-- src/flow/statistics.ts lists the schemas to call with the smallest change count that can make a
-- table due (STATISTICS_MIN_CHANGES = 100), or, when a worker starts on a database, every schema
-- with a table never analyzed: keep them in step.
--
-- A table another session holds a conflicting lock on (autovacuum, VACUUM, a migration) is passed
-- over (LOCK ... NOWAIT), never waited for; the hot statements' row locks do not conflict with
-- ANALYZE's. Returns what it analyzed, for the engine's debug log.
CREATE FUNCTION analyze_hot_tables()
RETURNS TABLE (table_name text, reason text, live_rows bigint, changed_rows bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $$
DECLARE
  -- Pinned below (search_path = this schema, pg_temp): the schema the function was created in.
  s constant text := current_schema();
  due jsonb;
  t jsonb;
BEGIN
  FOR attempt IN 1..2 LOOP
    SELECT jsonb_agg(jsonb_build_object('table', st.relname, 'live', st.n_live_tup,
        'changed', st.n_mod_since_analyze, 'never', st.last_analyze IS NULL AND st.last_autoanalyze IS NULL)
      ORDER BY st.relname)
    INTO due
    FROM pg_catalog.pg_stat_user_tables st
    WHERE st.schemaname = s AND st.relname IN ('agent_coordination', 'workflows')
      AND ((st.last_analyze IS NULL AND st.last_autoanalyze IS NULL
          AND (st.n_live_tup >= 100
            OR pg_catalog.pg_relation_size(st.relid) >= 4 * pg_catalog.current_setting('block_size')::bigint))
        OR st.n_mod_since_analyze >= greatest(1000, 0.2 * st.n_live_tup));
    -- Nothing due: that one read was all.
    IF due IS NULL THEN
      RETURN;
    END IF;
    EXIT WHEN attempt = 2;
    -- One caller per schema at a time ('eqan' in the high half, the schema's oid in the low half),
    -- held to the end of the caller's transaction; the others return at once.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(
        (x'6571616e'::bigint << 32) | pg_catalog.quote_ident(s)::regnamespace::oid::bigint) THEN
      RETURN;
    END IF;
    -- Read again, past this transaction's cached statistics: a caller that held the lock until
    -- just now has analyzed them (ANALYZE reports to the statistics at once, not at commit).
    PERFORM pg_catalog.pg_stat_clear_snapshot();
  END LOOP;
  FOR t IN SELECT * FROM jsonb_array_elements(due) LOOP
    BEGIN
      EXECUTE format('LOCK TABLE %I.%I IN SHARE UPDATE EXCLUSIVE MODE NOWAIT', s, t->>'table');
      EXECUTE format('ANALYZE %I.%I', s, t->>'table');
      table_name := t->>'table';
      reason := CASE WHEN (t->>'never')::boolean THEN 'never analyzed' ELSE 'changed since its last analyze' END;
      live_rows := (t->>'live')::bigint;
      changed_rows := (t->>'changed')::bigint;
      RETURN NEXT;
    EXCEPTION WHEN lock_not_available THEN
      NULL; -- someone else is on it (autovacuum, VACUUM, DDL): the next pass looks again
    END;
  END LOOP;
END
$$;
--> statement-breakpoint
-- SECURITY DEFINER best practice: a search_path only the owner can write to, pg_temp last (so a
-- caller's temporary table cannot stand in for one of ours). The schema's name is only known here.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION %I.analyze_hot_tables() SET search_path = %I, pg_temp',
    current_schema(), current_schema());
END
$$;
--> statement-breakpoint
REVOKE ALL ON FUNCTION analyze_hot_tables() FROM PUBLIC;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION analyze_hot_tables() TO equilateral_app;
