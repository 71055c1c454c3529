# Shared by the local scripts: logging and where local state lives.
# shellcheck shell=bash
STATE_DIR="${LIKERATE_STATE_DIR:-$HOME/.local/state/likerate}"
mkdir -p "$STATE_DIR"
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
apt_install() {
  # Installs Debian packages that are missing; apt-get update once per run.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ -z "${LIKERATE_APT_UPDATED:-}" ]; then $sudo apt-get update -qq; export LIKERATE_APT_UPDATED=1; fi
  # Packages must not start their own daemons on the ports the tests use.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
}
