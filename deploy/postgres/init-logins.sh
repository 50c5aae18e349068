#!/bin/sh
# Creates the logins web and worker run with, once, when the postgres container initialises its data
# directory (docker-entrypoint-initdb.d; an existing volume keeps what it has: run this by hand, or
# `docker compose down -v`). The owner (POSTGRES_USER) stays for the one-off `migrate` alone.
#   APP_DB_USER / APP_DB_PASSWORD: a member of equilateral_app (DATABASE_URL of web and worker)
#   MAINTENANCE_DB_USER / MAINTENANCE_DB_PASSWORD: a member of equilateral_maintenance
#     (MAINTENANCE_DATABASE_URL: retention purge, GDPR erasure)
# The NOLOGIN group roles are the migrations' (drizzle/control/0002, 0010); they are created here
# first, as the migrations would, so the logins can join them before the first migration has run.
set -eu
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v app_user="${APP_DB_USER:-equilateral_web}" -v app_password="${APP_DB_PASSWORD:?}" \
  -v maintenance_user="${MAINTENANCE_DB_USER:-equilateral_maint}" \
  -v maintenance_password="${MAINTENANCE_DB_PASSWORD:?}" <<'SQL'
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_app') AS create_app,
  NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'equilateral_maintenance') AS create_maintenance,
  NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_user') AS create_app_login,
  NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'maintenance_user') AS create_maintenance_login \gset
\if :create_app
CREATE ROLE equilateral_app NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\endif
\if :create_maintenance
CREATE ROLE equilateral_maintenance NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
\endif
\if :create_app_login
CREATE ROLE :"app_user" LOGIN;
\endif
\if :create_maintenance_login
CREATE ROLE :"maintenance_user" LOGIN;
\endif
ALTER ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'app_password';
ALTER ROLE :"maintenance_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'maintenance_password';
GRANT equilateral_app TO :"app_user";
GRANT equilateral_maintenance TO :"maintenance_user";
SQL
