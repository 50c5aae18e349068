CREATE TABLE "equilateral"."fleet_passes" (
	"pass" text PRIMARY KEY NOT NULL,
	"last_at" timestamp with time zone NOT NULL
);
--> statement-breakpoint
-- Any process of the fleet may take a pass, as the application role; the table holds no tenant data.
GRANT SELECT, INSERT, UPDATE ON equilateral.fleet_passes TO equilateral_app;
