#!/usr/bin/env bash
# Creates the secrets of the compose stack (deploy/compose.yaml) as files with random values:
#   postgres_password        password of the PostgreSQL owner role `likerate`
#   likerate_database_url    postgres://likerate:<that password>@postgres:5432/likerate
#   grafana_db_password      password of the read-only role `grafana_reader` (Grafana's datasource)
#   grafana_admin_password   Grafana's `admin` login
#   likerate_export_token    bearer token of /api/feedback/export and /training-data
# Existing files are kept (run it as often as you like). They live outside any image and are
# git-ignored; compose mounts them at /run/secrets/<name>.
# Usage: deploy/compose/init-secrets.sh [DIR]   (default: deploy/compose/secrets, or
#        $LIKERATE_SECRETS_DIR, the variable compose.yaml reads)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${1:-${LIKERATE_SECRETS_DIR:-$here/secrets}}"
mkdir -p "$dir"
chmod 700 "$dir"

random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# write NAME VALUE: creates DIR/NAME unless it exists. Mode 0644: the containers read them
# as non-root users (postgres 999, grafana 472, likerate 10001); the 0700 directory keeps
# other local users out.
write() {
  local file="$dir/$1"
  if [[ -s "$file" ]]; then
    echo "kept    $file"
  else
    (umask 022 && printf '%s' "$2" >"$file")
    echo "created $file"
  fi
}

write postgres_password "$(random)"
write likerate_database_url \
  "postgres://likerate:$(cat "$dir/postgres_password")@postgres:5432/likerate?sslmode=disable"
write grafana_db_password "$(random)"
write grafana_admin_password "$(random)"
write likerate_export_token "$(random)"
echo "Grafana: http://127.0.0.1:3000 user admin, password in $dir/grafana_admin_password"
