-- Readiness (`GET /readyz`) compares the migrations a process was built with against those applied:
-- the application role may read drizzle's record of the control migrations, nothing else there.
GRANT USAGE ON SCHEMA drizzle TO equilateral_app;
--> statement-breakpoint
GRANT SELECT ON drizzle.__equilateral_control_migrations TO equilateral_app;
