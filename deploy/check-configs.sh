#!/usr/bin/env bash
# Checks the Prometheus and Alertmanager configuration in deploy/:
#   - promtool check rules   deploy/prometheus/rules/*.yml
#   - promtool test rules    deploy/prometheus/tests/*.test.yml
#   - promtool check config  deploy/prometheus/prometheus.yml and prometheus.compose.yml
#     (+ the two may differ only in comments and target addresses)
#   - amtool check-config    deploy/alertmanager/alertmanager.yml
#     (+ amtool config routes test: pages, tickets and the rest reach the right receiver)
# Runs every check, prints a summary, exits 1 if any failed. Needs no network or server.
# Usage: deploy/check-configs.sh   (from any directory)
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prom_dir="$deploy_dir/prometheus"
am_config="$deploy_dir/alertmanager/alertmanager.yml"

missing=()
for tool in promtool amtool; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "check-configs: ${missing[*]} not found on PATH." >&2
  echo "check-configs: install them with: apt-get install prometheus prometheus-alertmanager" >&2
  echo "check-configs: (or put the promtool/amtool binaries of a Prometheus/Alertmanager release on PATH)" >&2
  exit 1
fi

. "$(dirname "${BASH_SOURCE[0]}")/checks-lib.sh"

shopt -s nullglob
rule_files=("$prom_dir"/rules/*.yml)
test_files=("$prom_dir"/tests/*.test.yml)
shopt -u nullglob
if ((${#rule_files[@]} == 0 || ${#test_files[@]} == 0)); then
  echo "check-configs: no rule files or no rule tests under $prom_dir" >&2
  exit 1
fi

run "promtool check rules" promtool check rules "${rule_files[@]}"
run "promtool test rules" promtool test rules "${test_files[@]}"
run "promtool check config (local)" promtool check config "$prom_dir/prometheus.yml"
run "promtool check config (compose)" promtool check config "$prom_dir/prometheus.compose.yml"

# The compose variant must stay the local file with other addresses. Its likerate job finds
# the compose replicas by DNS (dns_sd_configs, name likerate, port 8080) where the local file
# has the static target 127.0.0.1:8080: both blocks normalize to the same line.
normalize() {
  sed -e '/^[[:space:]]*#/d' \
      -e 's/127\.0\.0\.1:8080/likerate:8080/g' \
      -e 's/127\.0\.0\.1:9093/alertmanager:9093/g' "$1" |
    sed -e "/^    static_configs:\$/{N;s/\n      - targets: \['likerate:8080'\]\$/ LIKERATE_TARGETS/;}" \
        -e "/^    dns_sd_configs:\$/{N;N;N;s/\n      - names: \['likerate'\]\n        type: A\n        port: 8080\$/ LIKERATE_TARGETS/;}" \
        -e 's/^    \(static\|dns_sd\)_configs: LIKERATE_TARGETS$/    likerate targets/'
}
same_but_targets() {
  diff -u <(normalize "$prom_dir/prometheus.yml") <(normalize "$prom_dir/prometheus.compose.yml") &&
    echo "  identical apart from comments and target addresses"
}
run "prometheus.yml and prometheus.compose.yml differ only in targets" same_but_targets

run "amtool check-config" amtool check-config "$am_config"

# expect_route RECEIVER LABEL=VALUE...: the alert with these labels goes to RECEIVER.
expect_route() {
  local want="$1" got
  shift
  got="$(amtool config routes test --config.file="$am_config" "$@" 2>/dev/null)" || true
  if [[ "$got" == "$want" ]]; then
    echo "  $* -> $got"
  else
    echo "  $* -> '$got', expected '$want'" >&2
    return 1
  fi
}
routes() {
  expect_route likerate-page alertname=FeedbackLikeRateLow service=likerate severity=page subject=_all &&
    expect_route likerate-page alertname=FeedbackLikeRateLow service=likerate severity=page subject=Math model=m1 source=prometheus &&
    expect_route likerate-page alertname=FeedbackLikeRateBudgetBurnFast service=likerate severity=page subject=_all source=prometheus &&
    expect_route likerate-ticket alertname=FeedbackLikeRateBudgetBurnSlow service=likerate severity=ticket subject=_all source=prometheus &&
    expect_route likerate-watchdog alertname=Watchdog service=likerate severity=none source=prometheus &&
    expect_route likerate-page alertname=LikerateNoCommits service=likerate severity=page source=prometheus &&
    expect_route likerate-default alertname=Other
}
run "amtool config routes test" routes

if ((${#failures[@]})); then
  echo "check-configs: ${#failures[@]} check(s) FAILED:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "check-configs: all checks passed"
