#!/usr/bin/env python3
"""Structural checks of deploy/ and grafana/, called by deploy/check-deploy.sh.

Each subcommand prints what it checked and exits 1 on the first kind of mistake it finds
(all mistakes of that kind are listed). Needs PyYAML (installed by check-deploy.sh into its
tools environment); everything else is the standard library.

  check_deploy.py dockerfile [RUST_NEEDED]     Dockerfile facts (+ builder Rust >= RUST_NEEDED)
  check_deploy.py compose CONFIG.json          docker compose config --format json, asserted
  check_deploy.py kubernetes                   manifests: consistency, probes, secrets, budget
  check_deploy.py crds OUT.json                ServiceMonitor/PrometheusRule objects as JSON
  check_deploy.py prometheusrule --check|--write   deploy/kubernetes/prometheusrule.yaml
                                               generated from deploy/prometheus/rules
  check_deploy.py prometheusrule-rules OUT.yml the PrometheusRule's groups as a rules file
  check_deploy.py grafana                      dashboard JSON + provisioning
  check_deploy.py dashboard-rules OUT.yml      every panel expr as a recording rule (promtool)
  check_deploy.py secrets                      no secret values in the repo's deploy files
  check_deploy.py runbook                      every runbook anchor linked exists in RUNBOOK.md
"""

import glob
import importlib.util
import json
import os
import re
import sys

import yaml

sys.dont_write_bytecode = True  # importing check-dashboard-live.py must not leave __pycache__

DEPLOY = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(DEPLOY)
K8S = os.path.join(DEPLOY, "kubernetes")
RULES = os.path.join(DEPLOY, "prometheus", "rules", "likerate.rules.yml")
PROMETHEUSRULE = os.path.join(K8S, "prometheusrule.yaml")
DASHBOARD = os.path.join(REPO, "grafana", "dashboards", "likerate.json")
DATASOURCES = os.path.join(REPO, "grafana", "provisioning", "datasources")
DASH_PROVIDERS = os.path.join(REPO, "grafana", "provisioning", "dashboards")
RUNBOOK = os.path.join(DEPLOY, "RUNBOOK.md")

errors = []


def fail(msg):
    errors.append(msg)
    print(f"  ERROR {msg}")


def ok(msg):
    print(f"  ok    {msg}")


def check(cond, msg):
    (ok if cond else fail)(msg)
    return cond


def finish():
    if errors:
        print(f"  {len(errors)} problem(s)")
        sys.exit(1)


def rel(path):
    return os.path.relpath(path, REPO)


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def duration_seconds(text):
    """'20s', '1m30s', '45' -> seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        if m.start() != pos:
            raise ValueError(f"bad duration {text!r}")
        pos = m.end()
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if pos != len(text) or not text:
        raise ValueError(f"bad duration {text!r}")
    return total


# --------------------------------------------------------------------------------------------
def cmd_dockerfile(rust_needed=None):
    path = os.path.join(DEPLOY, "Dockerfile")
    text = open(path, encoding="utf-8").read()
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, f"multi-stage build ({len(froms)} FROM)")
    check(any(re.search(r"COPY\s+Cargo\.toml\s+Cargo\.lock", l) for l in lines)
          and text.index("Cargo.lock") < text.index("COPY src"),
          "dependency layer: Cargo.toml/Cargo.lock copied and built before src/")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("root", "0"), f"runs as non-root user ({users[-1:]})")
    check(any(l.upper().startswith("HEALTHCHECK") for l in lines) and "/healthz" in text, "HEALTHCHECK on /healthz")
    ep = [l for l in lines if l.upper().startswith("ENTRYPOINT")]
    cmd = [l for l in lines if l.upper().startswith("CMD ")]
    check(bool(ep) and "likerate" in ep[-1] and bool(cmd) and '"run"' in cmd[-1], "entry point `likerate run`")
    check("LIKERATE_HTTP_ADDR=0.0.0.0:8080" in text, "listens on 0.0.0.0:8080 in the container")
    check(not re.search(r"(?i)(PASSWORD|TOKEN|SECRET)\s*=", " ".join(l for l in lines if l.upper().startswith(("ENV", "ARG")))),
          "no secret in ENV/ARG")
    ignore = os.path.join(DEPLOY, "Dockerfile.dockerignore")
    check(os.path.exists(ignore) and open(ignore).read().lstrip().startswith(("*", "# ")) and "*\n" in open(ignore).read(),
          "deploy/Dockerfile.dockerignore excludes everything but the sources (target/ stays out)")
    m = re.search(r"ARG RUST_VERSION=(\d+)\.(\d+)", text)
    if check(bool(m), "builder Rust version pinned (ARG RUST_VERSION)") and rust_needed:
        have = (int(m.group(1)), int(m.group(2)))
        need = tuple(int(x) for x in rust_needed.split(".")[:2])
        check(have >= need, f"builder Rust {have[0]}.{have[1]} >= {rust_needed}, the newest rust-version in Cargo.lock")
    finish()


# --------------------------------------------------------------------------------------------
SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|DATABASE_URL|API_KEY)$", re.I)


def cmd_compose(config_json):
    cfg = json.load(open(config_json, encoding="utf-8"))
    services = cfg.get("services", {})
    for name in ("kafka", "kafka-init", "postgres", "likerate", "producer", "prometheus", "alertmanager", "grafana"):
        check(name in services, f"service {name}")
    lr = services.get("likerate", {})
    replicas = (lr.get("deploy") or {}).get("replicas")
    check(replicas is not None and replicas >= 2, f"likerate runs {replicas} replicas (>= 2)")
    env = lr.get("environment") or {}
    check(env.get("LIKERATE_KAFKA_GROUP"), "likerate replicas share one consumer group")
    check(env.get("LIKERATE_HTTP_ADDR", "").startswith("0.0.0.0:"), "likerate listens on 0.0.0.0 in its container")
    grace = duration_seconds(str(lr.get("stop_grace_period", "10s")))
    drain = duration_seconds(env.get("LIKERATE_DRAIN_TIMEOUT", "20s"))
    check(grace >= drain + 10, f"stop_grace_period {grace:.0f}s >= drain {drain:.0f}s + 10s")
    kinit = json.dumps(services.get("kafka-init", {}))
    check("--partitions" in kinit and "feedback-events" in kinit, "kafka-init creates feedback-events with partitions")
    check("KRaft" in open(os.path.join(DEPLOY, "compose.yaml")).read() and
          "controller" in str((services.get("kafka", {}).get("environment") or {}).get("KAFKA_PROCESS_ROLES", "")),
          "Kafka in KRaft mode")
    check((services.get("kafka", {}).get("image") or "").startswith("apache/kafka:"), "official Apache Kafka image")
    prod = services.get("producer", {})
    check("produce" in (prod.get("command") or []), "demo producer runs `likerate produce`")
    prom = json.dumps(services.get("prometheus", {}))
    check("prometheus.compose.yml" in prom and "/deploy/prometheus" in prom, "Prometheus uses deploy/prometheus (rules included)")
    check("alertmanager.yml" in json.dumps(services.get("alertmanager", {})), "Alertmanager uses deploy/alertmanager")
    graf = json.dumps(services.get("grafana", {}))
    check("/grafana/provisioning" in graf and "/grafana/dashboards" in graf, "Grafana mounts grafana/provisioning and grafana/dashboards")
    # Dashboards provider path = where compose mounts grafana/dashboards.
    provider_paths = [p.get("options", {}).get("path") for f in glob.glob(os.path.join(DASH_PROVIDERS, "*.y*ml"))
                      for d in load_yaml_docs(f) for p in d.get("providers", [])]
    mounts = [v.get("target") for v in services.get("grafana", {}).get("volumes", [])
              if str(v.get("source", "")).endswith("/grafana/dashboards")]
    check(bool(provider_paths) and all(p in mounts for p in provider_paths),
          f"Grafana dashboard provider path {provider_paths} is where grafana/dashboards is mounted {mounts}")
    bad_images, bad_ports, plain = [], [], []
    for name, s in services.items():
        img = s.get("image", "")
        if not re.search(r":[\w][\w.-]*$", img) or img.endswith(":latest"):
            bad_images.append(f"{name}={img or '?'}")
        for p in s.get("ports") or []:
            if p.get("host_ip") != "127.0.0.1":
                bad_ports.append(f"{name}:{p.get('published')}")
        for k, v in (s.get("environment") or {}).items():
            if SECRET_ENV.search(k) and v not in (None, ""):
                plain.append(f"{name}.{k}")
    check(not bad_images, f"every image pinned to a tag, none :latest {bad_images or ''}")
    check(not bad_ports, f"every published port bound to 127.0.0.1 {bad_ports or ''}")
    check(not plain, f"no secret in plain environment variables (use *_FILE + secrets) {plain or ''}")
    secrets = cfg.get("secrets", {})
    check(secrets and all("file" in s for s in secrets.values()), f"{len(secrets)} secrets, all from files")
    finish()


# --------------------------------------------------------------------------------------------
def k8s_docs():
    docs = {}
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        for d in load_yaml_docs(path):
            docs.setdefault(os.path.basename(path), []).append(d)
    return docs


def by_kind(docs, kind):
    return [d for ds in docs.values() for d in ds if d.get("kind") == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def cmd_kubernetes():
    docs = k8s_docs()
    kust = docs.get("kustomization.yaml", [{}])[0]
    listed = kust.get("resources", [])
    files = sorted(f for f in docs if f != "kustomization.yaml")
    missing = [r for r in listed if r not in docs]
    check(not missing, f"kustomization resources exist {missing or ''}")
    unlisted = [f for f in files if f not in listed and f != "secret.example.yaml"]
    check(not unlisted, f"every manifest is in kustomization.yaml {unlisted or ''}")
    check("secret.example.yaml" not in listed, "secret.example.yaml is NOT applied by kustomization")
    check(not any(d.get("kind") == "Secret" for r in listed for d in docs.get(r, [])),
          "no Secret object among the applied manifests (secrets by reference only)")

    dep = by_kind(docs, "Deployment")
    if not check(len(dep) == 1, "one Deployment"):
        finish()
    dep = dep[0]
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    check(matches(spec["selector"]["matchLabels"], pod_labels), "Deployment selector matches its pod labels")
    check(spec.get("replicas", 1) >= 2, f"{spec.get('replicas')} replicas")
    c = pod["containers"][0]
    cm_names = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    env_cm = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    check(all(n in cm_names for n in env_cm) and env_cm, f"envFrom ConfigMap {env_cm} defined")
    settings = {}
    for n in env_cm:
        settings.update(cm_names[n].get("data", {}))
    for e in c.get("env", []):
        if "value" in e:
            settings[e["name"]] = e["value"]
    check(settings.get("LIKERATE_KAFKA_GROUP"), "replicas share one consumer group (LIKERATE_KAFKA_GROUP)")
    check(settings.get("LIKERATE_HTTP_ADDR", "").startswith("0.0.0.0:"), "listens on 0.0.0.0 in the pod")
    drain = duration_seconds(settings.get("LIKERATE_DRAIN_TIMEOUT", "20s"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    prestop = 0
    cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    if len(cmd) == 2 and cmd[0] == "sleep":
        prestop = float(cmd[1])
    check(grace >= prestop + drain + 10,
          f"terminationGracePeriodSeconds {grace} >= preStop {prestop:.0f}s + drain {drain:.0f}s + 10s")
    probes = {k: (c.get(k) or {}).get("httpGet", {}).get("path") for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    check(probes["readinessProbe"] == "/readyz", f"readiness probe on /readyz ({probes['readinessProbe']})")
    check(probes["livenessProbe"] == "/healthz", f"liveness probe on /healthz ({probes['livenessProbe']})")
    res = c.get("resources", {})
    want = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
    check(res == want, f"resources {res}")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") and sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem"),
          "non-root, no privilege escalation, read-only root filesystem")
    # Secrets: only by reference (secretKeyRef / secret volumes), never literal values.
    literal = [e["name"] for e in c.get("env", []) if "value" in e and SECRET_ENV.search(e["name"])]
    literal += [k for n in env_cm for k in cm_names[n].get("data", {}) if SECRET_ENV.search(k)]
    check(not literal, f"no secret as a literal value {literal or ''}")
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    vols = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    examples = {d["metadata"]["name"]: d for d in docs.get("secret.example.yaml", [])}
    check(refs | vols and (refs | vols) <= set(examples), f"referenced Secrets {sorted(refs | vols)} all shown in secret.example.yaml")
    env_names = {e["name"] for e in c.get("env", [])}
    for need in ("LIKERATE_DATABASE_URL_FILE", "LIKERATE_EXPORT_TOKEN_FILE", "LIKERATE_KAFKA_OPTION_SASL_PASSWORD"):
        check(need in env_names, f"{need} set from a Secret")
    check(settings.get("LIKERATE_KAFKA_OPTION_SECURITY_PROTOCOL") == "sasl_ssl", "Kafka over SASL_SSL")
    db_url = (examples.get("likerate-db", {}).get("stringData") or {}).get("database-url", "")
    check("sslmode=verify-full" in db_url and "sslrootcert=" in db_url, "PostgreSQL example with sslmode=verify-full")
    port_names = {p["name"] for p in c.get("ports", [])}
    for svc in by_kind(docs, "Service"):
        check(matches(svc["spec"]["selector"], pod_labels), f"Service {svc['metadata']['name']} selects the pods")
        check(all(p.get("targetPort") in port_names | {p.get('port')} for p in svc["spec"]["ports"]), "Service targetPort exists")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        check(matches(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PodDisruptionBudget selects the pods")
        check(pdb["spec"].get("maxUnavailable", 0) or pdb["spec"].get("minAvailable", 0) < spec["replicas"],
              "PodDisruptionBudget lets one pod go")
    check(bool(by_kind(docs, "PodDisruptionBudget")), "PodDisruptionBudget present")
    sa = pod.get("serviceAccountName")
    check(sa in {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}, f"ServiceAccount {sa} defined")
    svcs = by_kind(docs, "Service")
    for sm in by_kind(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        target = [s for s in svcs if matches(sel, s["metadata"].get("labels", {}))]
        check(bool(target), "ServiceMonitor selects the Service")
        names = {p.get("name") for s in target for p in s["spec"]["ports"]}
        check(all(e.get("port") in names and e.get("path") == "/metrics" for e in sm["spec"]["endpoints"]),
              "ServiceMonitor endpoints: a named Service port, /metrics")
    check(bool(by_kind(docs, "ServiceMonitor")) and bool(by_kind(docs, "PrometheusRule")), "ServiceMonitor and PrometheusRule present")
    finish()


def cmd_crds(out):
    objs = [d for ds in k8s_docs().values() for d in ds if d.get("apiVersion", "").startswith("monitoring.coreos.com/")]
    json.dump(objs, open(out, "w"))
    print(f"  {len(objs)} prometheus-operator objects: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objs))


# --------------------------------------------------------------------------------------------
PR_HEADER = """\
# GENERATED from deploy/prometheus/rules/likerate.rules.yml by
#   deploy/check-deploy.sh --update
# Do not edit: change the rules file (and deploy/prometheus/tests), then regenerate.
# deploy/check-deploy.sh fails when the two differ.
# prometheus-operator users get the same recording and alerting rules as deploy/prometheus/.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: likerate
  labels:
    app.kubernetes.io/name: likerate
    # Match your Prometheus' ruleSelector (kube-prometheus-stack: release: <its release name>).
    role: alert-rules
spec:
"""


def generate_prometheusrule():
    lines = open(RULES, encoding="utf-8").read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("groups:"))
    body = ["  " + l if l.strip() else "" for l in lines[start:]]
    while body and not body[-1]:
        body.pop()
    return PR_HEADER + "\n".join(body) + "\n"


def cmd_prometheusrule(mode):
    text = generate_prometheusrule()
    if mode == "--write":
        open(PROMETHEUSRULE, "w", encoding="utf-8").write(text)
        print(f"  wrote {rel(PROMETHEUSRULE)}")
        return
    current = open(PROMETHEUSRULE, encoding="utf-8").read() if os.path.exists(PROMETHEUSRULE) else ""
    if not check(current == text, f"{rel(PROMETHEUSRULE)} is generated from {rel(RULES)} (else run deploy/check-deploy.sh --update)"):
        import difflib
        sys.stdout.writelines(list(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                        "committed", "generated"))[:40])
    rules = yaml.safe_load(open(RULES, encoding="utf-8"))
    pr = yaml.safe_load(current or "{}") or {}
    check((pr.get("spec") or {}).get("groups") == rules.get("groups"),
          f"PrometheusRule spec.groups == {rel(RULES)} groups ({len(rules.get('groups', []))} groups, "
          f"{sum(len(g['rules']) for g in rules.get('groups', []))} rules)")
    finish()


def cmd_prometheusrule_rules(out):
    pr = yaml.safe_load(open(PROMETHEUSRULE, encoding="utf-8"))
    yaml.safe_dump({"groups": pr["spec"]["groups"]}, open(out, "w"), sort_keys=False)
    print(f"  extracted {len(pr['spec']['groups'])} groups from {rel(PROMETHEUSRULE)}")


# --------------------------------------------------------------------------------------------
def live_module():
    spec = importlib.util.spec_from_file_location("check_dashboard_live", os.path.join(DEPLOY, "check-dashboard-live.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def provisioned_datasources():
    out = {}
    for f in sorted(glob.glob(os.path.join(DATASOURCES, "*.y*ml"))):
        for d in load_yaml_docs(f):
            for ds in d.get("datasources", []):
                out[ds.get("uid")] = ds
    return out


def cmd_grafana():
    live = live_module()
    dash = json.load(open(DASHBOARD, encoding="utf-8"))
    check(dash.get("uid") == "likerate", f"stable dashboard uid {dash.get('uid')!r} (alerts link /d/likerate)")
    check(bool(dash.get("title")), "title set")
    check("id" not in dash or dash["id"] is None, "no instance-specific numeric dashboard id")
    panels = list(live.iter_panels(dash.get("panels")))
    ids = [p.get("id") for p in panels]
    dup = sorted({i for i in ids if ids.count(i) > 1 or i is None}, key=str)
    check(not dup, f"{len(ids)} panels, unique ids {dup or ''}")
    grid = [(p.get("id"), p.get("gridPos")) for p in panels]
    check(all(g and all(k in g for k in ("h", "w", "x", "y")) and g["x"] + g["w"] <= 24 for _, g in grid),
          "every panel has a gridPos inside the 24-column grid")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    check({"subject", "model"} <= set(variables), f"template variables subject and model ({sorted(variables)})")
    for n in ("subject", "model"):
        v = variables.get(n, {})
        check(v.get("includeAll") and v.get("multi"), f"${n}: multi-value with All")
    # Datasources: every uid referenced is provisioned, with the same type.
    dss = provisioned_datasources()
    refs = []

    def walk(node, where):
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") and not str(ds["uid"]).startswith("-- "):
                refs.append((where, ds))
            elif isinstance(ds, str) and not ds.startswith("-- "):
                refs.append((where, {"uid": ds}))
            for k, v in node.items():
                walk(v, where if k != "panels" else where)
        elif isinstance(node, list):
            for x in node:
                walk(x, where)

    for p in panels:
        walk({k: v for k, v in p.items() if k != "panels"}, f"panel {p.get('id')}")
    for name, v in variables.items():
        walk(v, f"variable ${name}")
    bad = [f"{w}: {d}" for w, d in refs
           if d.get("uid") not in dss or (d.get("type") and d.get("type") != dss[d["uid"]].get("type"))]
    check(refs and not bad, f"{len(refs)} datasource references, all to provisioned uids {sorted(dss)} {bad or ''}")
    unref = [uid for uid in dss if uid not in {d.get("uid") for _, d in refs}]
    check(not unref, f"every provisioned datasource is used {unref or ''}")
    for uid, ds in dss.items():
        sj = ds.get("secureJsonData") or {}
        plain = [k for k, v in sj.items() if not re.fullmatch(r"\$__(file|env)\{[^}]+\}", str(v))]
        check(not plain and "password" not in ds and "basicAuthPassword" not in ds,
              f"datasource {uid}: secrets only from files/environment {plain or ''}")
    # Targets.
    tg = live.targets(dash)
    kinds = {k for _, _, k in tg}
    check(tg and kinds <= {"prometheus", "sql"}, f"{len(tg)} targets, kinds {sorted(kinds)}")
    empty = [f"{p.get('id')}/{t.get('refId')}" for p, t, k in tg if not (t.get("expr") or t.get("rawSql") or "").strip()]
    check(not empty, f"no empty query {empty or ''}")
    refids = [(p.get("id"), t.get("refId")) for p, t, _ in tg]
    check(len(set(refids)) == len(refids), "refIds unique within each panel")
    no_ds = [p.get("id") for p in panels if p.get("type") != "row" and not p.get("datasource")]
    check(not no_ds, f"every panel names its datasource {no_ds or ''}")
    exprs = " ".join(t.get("expr", "") for _, t, _ in tg)
    for metric in ("likerate_like_ratio", "likerate_model_like_ratio", "likerate_votes_total", "likerate_alert_firing",
                   "likerate_window_votes", "likerate_events_total", "likerate_consumer_lag_messages",
                   "likerate_batch_write_seconds_bucket", "likerate_dead_letters_total", "likerate_db_retries_total",
                   "likerate_dislike_pattern_z"):
        check(metric in exprs, f"a panel shows {metric}")
    thr = [p for p in panels if "likerate_like_ratio" in json.dumps(p.get("targets"))
           and p.get("type") == "timeseries"
           and (p["fieldConfig"]["defaults"].get("custom", {}).get("thresholdsStyle", {}).get("mode", "off") != "off")
           and any(s.get("value") == 0.85 for s in p["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []))]
    check(bool(thr), "the 85% threshold is drawn on the like-rate chart")
    sql = [t.get("rawSql", "") for _, t, k in tg if k == "sql"]
    check(any("feedback_rollup" in s and "grain = 'd'" in s and "like_pct" in s for s in sql),
          "daily-stats table from feedback_rollup (grain 'd') with like_pct")
    # Every variable used is defined; every substitution works.
    for p, t, k in tg:
        try:
            text = t.get("expr") or t.get("rawSql") or ""
            out = live.substitute(text, live.variable_values(dash, {}), k, "1m")
            if k == "sql":
                live.sql_macros(out)
        except ValueError as e:
            fail(f"panel {p.get('id')} {t.get('refId')}: {e}")
    finish()


def cmd_dashboard_rules(out):
    live = live_module()
    dash = json.load(open(DASHBOARD, encoding="utf-8"))
    variables = live.variable_values(dash, {})
    rules = []
    for p, t, k in live.targets(dash):
        if k != "prometheus":
            continue
        expr = live.substitute(t["expr"], variables, "prometheus", "1m")
        rules.append({"record": f"dashboard:panel_{p['id']}_{t['refId']}", "expr": expr})
    for name, v in ((v["name"], v) for v in dash["templating"]["list"] if v.get("type") == "query"):
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = live.LABEL_VALUES_RE.match(q)
        if m and m.group(1):
            rules.append({"record": f"dashboard:variable_{name}", "expr": m.group(1)})
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(out, "w"), sort_keys=False)
    print(f"  {len(rules)} PromQL expressions of {rel(DASHBOARD)} written as recording rules")


# --------------------------------------------------------------------------------------------
PLACEHOLDER = re.compile(r"REPLACE_ME|<[^>]+>|\$\{[^}]+\}|\$__(file|env)\{")


def cmd_secrets():
    # 1. The example Secrets hold placeholders only.
    for d in load_yaml_docs(os.path.join(K8S, "secret.example.yaml")):
        for k, v in {**(d.get("stringData") or {}), **(d.get("data") or {})}.items():
            check(bool(PLACEHOLDER.search(str(v))), f"secret.example.yaml {d['metadata']['name']}.{k} is a placeholder")
    # 2. No credentials in URLs, no password/token values in the deploy files.
    files = [f for pat in ("deploy/**/*", "grafana/**/*") for f in glob.glob(os.path.join(REPO, pat), recursive=True)
             if os.path.isfile(f) and "/compose/secrets/" not in f and not f.endswith((".md", ".py", ".pyc"))]
    url_cred = re.compile(r"\b(postgres(?:ql)?|kafka|amqp|https?)://([^:/@\s'\"]+):([^@\s'\"]+)@")
    kv = re.compile(r"^\s*(?:-\s+)?([\w.-]*(?:password|passwd|secret|token|api_key|routing_key)[\w.-]*)\s*[:=]\s*(.*)$", re.I)
    found = []
    for f in files:
        for n, line in enumerate(open(f, encoding="utf-8", errors="replace"), 1):
            if line.lstrip().startswith("#"):
                continue
            for m in url_cred.finditer(line):
                if not PLACEHOLDER.search(m.group(3)):
                    found.append(f"{rel(f)}:{n}: credentials in a URL")
            m = kv.match(line)
            if not m:
                continue
            key, val = m.group(1), re.sub(r"\s+#.*$", "", m.group(2)).strip().strip("'\"")
            if not val or PLACEHOLDER.search(val) or val.startswith(("/", "$", "{{")) or val in ("true", "false"):
                continue
            pure_password = re.fullmatch(r"(?i)[\w.-]*(password|passwd)", key)
            random_looking = len(val) >= 8 and re.search(r"\d", val) and re.search(r"[A-Za-z]", val) and " " not in val
            if pure_password or random_looking:
                found.append(f"{rel(f)}:{n}: looks like a secret value: {line.strip()[:80]}")
    check(not found, f"no secret values in {len(files)} files under deploy/ and grafana/" + ("\n        " + "\n        ".join(found) if found else ""))
    # 3. The compose secrets directory is git-ignored.
    gi = os.path.join(DEPLOY, "compose", "secrets", ".gitignore")
    check(os.path.exists(gi) and "*" in open(gi).read().split(), "deploy/compose/secrets/ is git-ignored")
    finish()


# --------------------------------------------------------------------------------------------
def github_anchor(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def cmd_runbook():
    text = open(RUNBOOK, encoding="utf-8").read()
    anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}
    sources = [RULES, PROMETHEUSRULE, os.path.join(DEPLOY, "compose.yaml"), *glob.glob(os.path.join(K8S, "*.yaml"))]
    links = set()
    for f in sources:
        for m in re.finditer(r"RUNBOOK\.md#([\w-]+)", open(f, encoding="utf-8").read()):
            links.add((rel(f), m.group(1)))
    missing = sorted(f"{f}#{a}" for f, a in links if a not in anchors)
    check(links and not missing, f"{len(links)} runbook links, every anchor is a heading of deploy/RUNBOOK.md {missing or ''}")
    for a in ("feedbacklikeratelow", "feedbacklikeratebudgetburn"):
        check(a in anchors, f"RUNBOOK.md has #{a}")
    for topic in ("annotation", "silence", "scale", "export"):
        check(topic in text.lower(), f"RUNBOOK.md covers '{topic}'")
    finish()


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    fn = {
        "dockerfile": cmd_dockerfile, "compose": cmd_compose, "kubernetes": cmd_kubernetes, "crds": cmd_crds,
        "prometheusrule": cmd_prometheusrule, "prometheusrule-rules": cmd_prometheusrule_rules,
        "grafana": cmd_grafana, "dashboard-rules": cmd_dashboard_rules, "secrets": cmd_secrets, "runbook": cmd_runbook,
    }.get(cmd)
    if fn is None:
        print(f"unknown subcommand {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    fn(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
