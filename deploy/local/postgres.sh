#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with trust auth for user postgres:
# uses the running server if there is one, starts an existing Debian cluster otherwise,
# and installs Debian's postgresql and creates a cluster on a machine that has none.
# A cluster this script creates gets the settings docs/operations.md recommends for a
# write-heavy stream (conf.d/likerate.conf); an existing cluster is left as it is, and the
# script only says which of them differ.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# The recommended settings (docs/operations.md, "PostgreSQL settings"); shared_buffers is a
# quarter of the memory in whole GB (at least 128MB, at most 8GB), spelled as SHOW spells it.
recommended() {
  local mem_mb shared
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  shared=$((mem_mb / 4 / 1024)); [ "$shared" -gt 8 ] && shared=8
  if [ "$shared" -ge 1 ]; then echo "shared_buffers = ${shared}GB"; else echo "shared_buffers = 128MB"; fi
  echo "max_wal_size = 16GB"
  echo "min_wal_size = 2GB"
  echo "checkpoint_timeout = 15min"
  echo "checkpoint_completion_target = 0.9"
  echo "wal_compression = lz4"
}

# Says which recommended settings the running server has otherwise; changes nothing.
advise() {
  local differ=()
  while IFS=' =' read -r name value; do
    [ -n "$name" ] || continue
    have=$(psql -h 127.0.0.1 -p 5432 -U postgres -XAtc "SHOW $name" 2>/dev/null || true)
    [ -z "$have" ] || [ "$have" = "$value" ] || differ+=("$name = $value (has $have)")
  done < <(recommended | sed 's/ = /=/')
  if [ ${#differ[@]} -gt 0 ]; then
    say "this PostgreSQL is not tuned for a write-heavy stream; docs/operations.md recommends:"
    printf '      %s\n' "${differ[@]}" >&2
  fi
}

if command -v pg_isready >/dev/null && ready; then
  say "PostgreSQL is running on 127.0.0.1:5432"
  advise
  exit 0
fi
apt_install postgresql postgresql-client
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  say "creating PostgreSQL $version cluster 'main' with the recommended settings"
  pg_createcluster "$version" main --port 5432 >/dev/null
  { echo "# Written by likerate's deploy/local/postgres.sh when it created this cluster: the"
    echo "# settings docs/operations.md recommends for a write-heavy stream."
    recommended; } > "/etc/postgresql/$version/main/conf.d/likerate.conf"
fi
# The cluster on port 5432 (another may sort first), else the first one.
read -r version cluster _ < <(pg_lsclusters -h | awk '$3 == 5432 {print; found = 1; exit}
  END {if (!found) exit 1}' || pg_lsclusters -h | head -1)
conf=/etc/postgresql/$version/$cluster
# Local development only: trust on loopback, as the test machines are set up.
if ! grep -q "likerate: trust on loopback" "$conf/pg_hba.conf"; then
  { echo "# likerate: trust on loopback (local development)"
    echo "host all all 127.0.0.1/32 trust"
    echo "host all all ::1/128 trust"
    cat "$conf/pg_hba.conf"; } > "$conf/pg_hba.conf.new"
  mv "$conf/pg_hba.conf.new" "$conf/pg_hba.conf"
fi
say "starting PostgreSQL $version/$cluster"
pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start 2>/dev/null \
  || pg_ctlcluster "$version" "$cluster" restart
for _ in $(seq 1 50); do ready && break; sleep 0.2; done
ready || die "PostgreSQL did not start (see /var/log/postgresql/)"
say "PostgreSQL is running on 127.0.0.1:5432"
advise
