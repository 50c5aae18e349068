-- Which compliance regimes apply to a tenant, and until when an event written now must be kept:
-- read from the tenant's compliance profile ({"GDPR": {"retentionDays": 30}, "SOX": {...}, ...},
-- validated by the engine when it is set). One definition for the compliance-event trigger on
-- agent_coordination and for the events the engine writes itself (purge, deletion).
--
-- Tolerant by design, because the trigger runs on every task write: a profile edited by hand into
-- something malformed never makes a task write fail. A regime whose retention is not a number of
-- days from 1 to 36500 gets retention_until NULL (kept until someone decides), never a shorter one.
-- LANGUAGE sql, STABLE, no SET: the planner inlines it into the statement that calls it.
CREATE FUNCTION equilateral.compliance_regimes(tenant_id text)
RETURNS TABLE (regime text, retention_until timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT p.key,
    CASE WHEN jsonb_typeof(p.value -> 'retentionDays') = 'number' THEN
      CASE WHEN (p.value ->> 'retentionDays')::numeric BETWEEN 1 AND 36500
        THEN now() + (p.value ->> 'retentionDays')::numeric * interval '1 day'
      END
    END
  FROM equilateral.tenants t,
    jsonb_each(CASE WHEN jsonb_typeof(t.compliance_profile) = 'object' THEN t.compliance_profile ELSE '{}' END) p
  WHERE t.id = $1 AND p.key IN ('GDPR', 'SOX', 'HIPAA') AND jsonb_typeof(p.value) = 'object'
$$;
--> statement-breakpoint
GRANT EXECUTE ON FUNCTION equilateral.compliance_regimes(text) TO equilateral_app;
