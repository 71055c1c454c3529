#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with trust auth for user postgres:
# uses the running server if there is one, starts an existing Debian cluster otherwise,
# and installs Debian's postgresql and creates a cluster on a machine that has none.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if command -v pg_isready >/dev/null && ready; then
  say "PostgreSQL is running on 127.0.0.1:5432"
  exit 0
fi
apt_install postgresql postgresql-client
if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  say "creating PostgreSQL $version cluster 'main'"
  pg_createcluster "$version" main --port 5432 >/dev/null
fi
read -r version cluster _ < <(pg_lsclusters -h | head -1)
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
