#!/usr/bin/env bash
# Runs once, when the PostgreSQL data volume is first initialised (docker-entrypoint-initdb.d).
# Creates the read-only role Grafana's datasource logs in as: it can SELECT the tables that
# `likerate` (the owner role, which runs the migrations) creates, and nothing else.
set -euo pipefail
password="$(cat /run/secrets/grafana_db_password)"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$password" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE likerate TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE likerate IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
