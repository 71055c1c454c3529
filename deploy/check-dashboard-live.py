#!/usr/bin/env python3
"""Proves the Grafana dashboard against a running stack (issue 5, item 5).

Every Prometheus target of grafana/dashboards/likerate.json (and every label_values() template
variable) is sent to Prometheus's HTTP API after Grafana's variables and macros are substituted;
each must answer without error and with data (a target of a metric in MAY_BE_EMPTY, whose
absence is a valid state, passes without data). Every PostgreSQL target runs through psql and
must succeed (and, with --require-rows, return rows).

Environment:
  PROMETHEUS_URL   e.g. http://127.0.0.1:9090 (default)
  DATABASE_URL     libpq URL of the likerate database (falls back to LIKERATE_DATABASE_URL)

Usage:
  deploy/check-dashboard-live.py [--dashboard FILE] [--var NAME=VALUE ...]
                                 [--rate-interval 1m] [--require-rows] [--retries N]

Variables take the dashboard's current value; "All" becomes the variable's allValue (".*").
--var subject=Math checks the panels as a user who picked Math would see them.
--retries N (default 0) re-asks a target that returned no data up to N times, 5s apart: use
it right after traffic starts, when rate() windows are still empty.

Exit status 0 when every target passed, 1 otherwise. Python 3 standard library only; psql on
PATH for the SQL targets.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARD = os.path.join(HERE, "..", "grafana", "dashboards", "likerate.json")

# Grafana's time range for the substitutions (the dashboard's default is the last 6 hours).
RANGE_SECONDS = 6 * 3600


def iter_panels(panels):
    """Every panel, including the ones nested in collapsed rows."""
    for p in panels or []:
        yield p
        yield from iter_panels(p.get("panels"))


def datasource_type(ds):
    if isinstance(ds, dict):
        return ds.get("type") or ""
    return ""


def targets(dashboard):
    """(panel, target, kind) for every query target; kind is 'prometheus' or 'sql'."""
    out = []
    for panel in iter_panels(dashboard.get("panels")):
        for t in panel.get("targets") or []:
            ds = t.get("datasource") or panel.get("datasource")
            kind = datasource_type(ds)
            if "expr" in t or kind == "prometheus":
                out.append((panel, t, "prometheus"))
            elif "rawSql" in t or "postgres" in kind:
                out.append((panel, t, "sql"))
            else:
                out.append((panel, t, "unknown:" + kind))
    return out


def variable_values(dashboard, overrides):
    """name -> list of values (the dashboard's current selection, or --var overrides)."""
    values = {}
    for v in (dashboard.get("templating") or {}).get("list") or []:
        name = v.get("name")
        if name in overrides:
            values[name] = overrides[name]
            continue
        cur = (v.get("current") or {}).get("value")
        if cur is None:
            opts = v.get("options") or []
            cur = opts[0]["value"] if opts else ""
        cur = cur if isinstance(cur, list) else [cur]
        if any(c in ("$__all", "All") for c in cur):
            if v.get("allValue"):
                values[name] = {"all": v["allValue"]}
                continue
            cur = [o["value"] for o in v.get("options") or [] if o.get("value") not in ("$__all", "All")]
            if not cur:
                cur = [".*"]
                values[name] = {"all": ".*"}
                continue
        values[name] = cur
    return values


def format_value(value, fmt, kind):
    """Grafana's formatting of a variable value for a query of the given kind."""
    if isinstance(value, dict):  # custom all value: used verbatim
        return value["all"]
    if fmt == "raw":
        return ",".join(value)
    if kind == "prometheus" or fmt == "regex":
        esc = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", x) for x in value]
        if kind == "prometheus" and fmt != "regex":
            esc = [x.replace("\\", "\\\\") for x in esc]  # inside a PromQL "..." string
        return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    if fmt in ("sqlstring", None) and kind == "sql":
        return ",".join("'" + x.replace("'", "''") + "'" for x in value)
    if fmt == "csv":
        return ",".join(value)
    if fmt == "pipe":
        return "|".join(value)
    return ",".join(value)


def builtin_values(rate_interval):
    return {
        "__rate_interval": rate_interval,
        "__interval": "30s",
        "__interval_ms": "30000",
        "__range": f"{RANGE_SECONDS}s",
        "__range_s": str(RANGE_SECONDS),
        "__range_ms": str(RANGE_SECONDS * 1000),
    }


VAR_RE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")


def substitute(text, variables, kind, rate_interval):
    """Replaces $var, ${var}, ${var:fmt}, [[var]] and Grafana's built-in $__ variables."""
    builtins = builtin_values(rate_interval)
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(3) or m.group(5)
        fmt = m.group(2) or m.group(4)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return format_value(variables[name], fmt, kind)
        if name.startswith("__"):
            return m.group(0)  # SQL macro: handled by sql_macros
        unknown.append(name)
        return m.group(0)

    out = VAR_RE.sub(repl, text)
    if unknown:
        raise ValueError("undefined variable(s): " + ", ".join("$" + u for u in sorted(set(unknown))))
    return out


def sql_macros(sql):
    """Grafana's PostgreSQL macros over the dashboard's default range (now-6h .. now)."""
    frm = f"(now() - interval '{RANGE_SECONDS} seconds')"
    to = "now()"
    rules = [
        (r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1).strip()} BETWEEN {frm} AND {to}"),
        (r"\$__timeFrom\(\)", lambda m: frm),
        (r"\$__timeTo\(\)", lambda m: to),
        (r"\$__unixEpochFilter\(([^)]+)\)",
         lambda m: f"{m.group(1).strip()} BETWEEN extract(epoch from {frm}) AND extract(epoch from {to})"),
        (r"\$__timeGroupAlias\(([^,]+),[^)]+\)", lambda m: f"date_trunc('minute', {m.group(1).strip()}) AS \"time\""),
        (r"\$__timeGroup\(([^,]+),[^)]+\)", lambda m: f"date_trunc('minute', {m.group(1).strip()})"),
        (r"\$__time\(([^)]+)\)", lambda m: f"{m.group(1).strip()} AS \"time\""),
    ]
    for pattern, fn in rules:
        sql = re.sub(pattern, fn, sql)
    left = re.findall(r"\$__\w+", sql)
    if left:
        raise ValueError("unsupported Grafana SQL macro(s): " + ", ".join(sorted(set(left))))
    return sql


def prom_get(base, path, params, timeout=15):
    url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    if body.get("status") != "success":
        return None, f"{body.get('errorType', 'error')}: {body.get('error', body)}"
    return body.get("data"), None


# Metrics whose absence is a valid state of the system, not a broken panel: a target that
# reads one of them must answer without error, and passes without data.
MAY_BE_EMPTY = {
    "likerate_dislike_pattern_z": "only terms with z >= 1.96 are exported, refreshed every 5 min "
                                  "(docs/patterns.md): traffic whose text does not depend on the "
                                  "rating has none",
}


def check_prom_expr(base, expr, retries):
    allowed = [f"{m}: {why}" for m, why in MAY_BE_EMPTY.items() if m in expr]
    for attempt in range(retries + 1):
        data, err = prom_get(base, "/api/v1/query", {"query": expr})
        if err:
            return False, err
        result = data.get("result")
        n = len(result) if isinstance(result, list) else (1 if result else 0)
        if n:
            return True, f"{n} series"
        if allowed:
            return True, f"answered, no series (allowed: {allowed[0]})"
        if attempt < retries:
            time.sleep(5)
    return False, "no data"


LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")


def check_variable(base, var, retries):
    q = var.get("query")
    if isinstance(q, dict):
        q = q.get("query")
    m = LABEL_VALUES_RE.match(q or "")
    if not m:
        return None, None
    selector, label = m.group(1), m.group(2)
    params = {"match[]": [selector]} if selector else {}
    for attempt in range(retries + 1):
        data, err = prom_get(base, f"/api/v1/label/{label}/values", params)
        if err:
            return False, err
        if data:
            return True, f"{len(data)} values: {', '.join(map(str, data[:6]))}{' ...' if len(data) > 6 else ''}"
        if attempt < retries:
            time.sleep(5)
    return False, "no values"


def check_sql(database_url, sql, require_rows):
    try:
        p = subprocess.run(
            ["psql", database_url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            input=sql + ";\n" if not sql.rstrip().endswith(";") else sql + "\n",
            capture_output=True, text=True, timeout=60,
        )
    except FileNotFoundError:
        return False, "psql not found on PATH"
    except subprocess.TimeoutExpired:
        return False, "psql timed out after 60s"
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"psql exit {p.returncode}"]
        errs = [l for l in lines if "ERROR" in l or "FATAL" in l or l.startswith("psql:")]
        return False, " | ".join(errs or lines[-1:])
    rows = [l for l in p.stdout.splitlines() if l.strip()]
    if require_rows and not rows:
        return False, "no rows"
    return True, f"{len(rows)} rows" + (f", first: {rows[0]}" if rows else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="value of a template variable (repeatable; comma-separate multi-values)")
    ap.add_argument("--rate-interval", default=os.environ.get("RATE_INTERVAL", "1m"),
                    help="value of $__rate_interval (default 1m: 4x a 15s scrape)")
    ap.add_argument("--require-rows", action="store_true", help="SQL targets must return rows")
    ap.add_argument("--retries", type=int, default=0, help="re-ask empty Prometheus answers N times")
    args = ap.parse_args()

    prom = os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090")
    db = os.environ.get("DATABASE_URL") or os.environ.get("LIKERATE_DATABASE_URL")
    with open(args.dashboard, encoding="utf-8") as f:
        dashboard = json.load(f)

    overrides = {}
    for kv in args.var:
        name, _, value = kv.partition("=")
        overrides[name] = value.split(",")
    variables = variable_values(dashboard, overrides)

    passed, failed = 0, []

    def report(ok, what, detail):
        nonlocal passed
        if ok:
            passed += 1
            print(f"ok    {what}: {detail}")
        else:
            failed.append(what)
            print(f"FAIL  {what}: {detail}")

    for var in (dashboard.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        ok, detail = check_variable(prom, var, args.retries)
        if ok is not None:
            report(ok, f"variable ${var.get('name')}", detail)

    for panel, t, kind in targets(dashboard):
        what = f"panel {panel.get('id')} \"{panel.get('title')}\" {t.get('refId', '?')}"
        try:
            if kind == "prometheus":
                expr = substitute(t.get("expr", ""), variables, "prometheus", args.rate_interval)
                if not expr.strip():
                    report(False, what, "empty expr")
                    continue
                ok, detail = check_prom_expr(prom, expr, args.retries)
                report(ok, what, detail if ok else f"{detail}\n      query: {expr}")
            elif kind == "sql":
                if not db:
                    report(False, what, "DATABASE_URL is not set")
                    continue
                sql = sql_macros(substitute(t.get("rawSql", ""), variables, "sql", args.rate_interval))
                ok, detail = check_sql(db, sql, args.require_rows)
                report(ok, what, detail)
            else:
                report(False, what, f"target of unsupported datasource type {kind!r}")
        except ValueError as e:
            report(False, what, str(e))

    total = passed + len(failed)
    if total == 0:
        print("check-dashboard-live: the dashboard has no query target", file=sys.stderr)
        return 1
    if failed:
        print(f"check-dashboard-live: {len(failed)} of {total} targets FAILED", file=sys.stderr)
        return 1
    print(f"check-dashboard-live: all {total} targets passed (with data, or empty where MAY_BE_EMPTY allows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
