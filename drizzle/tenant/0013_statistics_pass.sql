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
--   never analyzed (neither ANALYZE nor autovacuum's) and at least 100 live rows, or
--   changed (rows inserted, updated, deleted) since its last analyze by at least 1,000 rows and a
--   fifth of its live rows: twice autovacuum's own share (a tenth), so on a database autovacuum
--   keeps up with this stays out of its way.
-- Nothing due costs one read of pg_stat_user_tables. src/flow/statistics.ts lists the schemas to
-- call with the smallest of these thresholds (STATISTICS_MIN_CHANGES = 100): keep them in step.
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
  hot constant text[] := ARRAY['agent_coordination', 'workflows'];
  r record;
BEGIN
  -- The cheap path: one read; nothing due, nothing else.
  IF NOT EXISTS (
    SELECT FROM pg_catalog.pg_stat_user_tables t
    WHERE t.schemaname = s AND t.relname = ANY (hot)
      AND ((t.last_analyze IS NULL AND t.last_autoanalyze IS NULL AND t.n_live_tup >= 100)
        OR t.n_mod_since_analyze >= greatest(1000, 0.2 * t.n_live_tup))
  ) THEN
    RETURN;
  END IF;
  -- One caller per schema at a time ('eqan' in the high half, the schema's oid in the low half);
  -- held to the end of the caller's transaction, the others return at once.
  IF NOT pg_catalog.pg_try_advisory_xact_lock((x'6571616e'::bigint << 32) | quote_ident(s)::regnamespace::oid::bigint) THEN
    RETURN;
  END IF;
  -- Read again, past this transaction's cached statistics: a caller that held the lock until just
  -- now has analyzed them (ANALYZE reports its counts at once, not at commit).
  PERFORM pg_catalog.pg_stat_clear_snapshot();
  FOR r IN
    SELECT t.relname::text AS relname, t.n_live_tup, t.n_mod_since_analyze,
      (t.last_analyze IS NULL AND t.last_autoanalyze IS NULL) AS never
    FROM pg_catalog.pg_stat_user_tables t
    WHERE t.schemaname = s AND t.relname = ANY (hot)
      AND ((t.last_analyze IS NULL AND t.last_autoanalyze IS NULL AND t.n_live_tup >= 100)
        OR t.n_mod_since_analyze >= greatest(1000, 0.2 * t.n_live_tup))
    ORDER BY t.relname
  LOOP
    BEGIN
      EXECUTE format('LOCK TABLE %I.%I IN SHARE UPDATE EXCLUSIVE MODE NOWAIT', s, r.relname);
      EXECUTE format('ANALYZE %I.%I', s, r.relname);
      table_name := r.relname;
      reason := CASE WHEN r.never THEN 'never analyzed' ELSE 'changed since its last analyze' END;
      live_rows := r.n_live_tup;
      changed_rows := r.n_mod_since_analyze;
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
