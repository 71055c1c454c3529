#!/usr/bin/env bash
# Installs Debian's Prometheus (with promtool) and Alertmanager (with amtool), without letting
# the packages start daemons of their own.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
apt_install prometheus prometheus-alertmanager
command -v promtool >/dev/null || die "promtool missing after install"
command -v amtool >/dev/null || die "amtool missing after install"
