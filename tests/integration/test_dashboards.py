"""The Grafana dashboard and the Prometheus alert rules in deploy/: their PromQL parses,
promtool accepts the rules and their unit tests pass, and every metric (and label) a panel
or a rule names is exported by a running controller with Redis and a connected switch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import promql_parser
import pytest
import yaml
from conftest import REPO, require, unique_name
from membership_support import Bridge, ContractNF, api_url, controller, wait_until, write_topology
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = REPO / "deploy" / "grafana" / "nfsteer.json"
RULES = REPO / "deploy" / "prometheus" / "nfsteer-rules.yml"
SCRAPE = REPO / "deploy" / "prometheus" / "scrape.yml"
RULE_TESTS = REPO / "tests" / "data" / "nfsteer-rules.test.yml"
# Series and labels that Prometheus itself adds to every scrape, not the controller.
SCRAPE_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "__name__"}
# Grafana's variables, replaced by something PromQL accepts before parsing.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$pool": ".*"}


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
            assert m, f"variable {var['name']}: unexpected query {var['definition']!r}"
            out.append((f"variable {var['name']}", f"{m.group(1)}{{{m.group(2)}!=''}}"))
    return out


def rule_exprs(rules: dict) -> list[tuple[str, str]]:
    return [
        (f"rule {r.get('alert') or r.get('record')}", r["expr"])
        for group in rules["groups"]
        for r in group["rules"]
    ]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) of every series selector in a PromQL expression."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    found: list[tuple[str, set[str]]] = []

    def walk(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))
            return
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None:
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    return found


def missing(exprs: list[tuple[str, str]], exported: dict[str, set[str]]) -> list[str]:
    """What the expressions name that the controller does not export, one line each."""
    problems = []
    for where, expr in exprs:
        for name, labels in selectors(expr):
            if name in SCRAPE_SERIES:
                continue
            if name not in exported:
                problems.append(f"{where}: metric {name} is not exported")
                continue
            unknown = labels - exported[name] - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {name} has no label {', '.join(sorted(unknown))}")
    return problems


def exported_series(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from a /metrics page."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def load_all() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load(RULES.read_text())
    return dashboard_exprs(dashboard) + rule_exprs(rules)


def test_every_expression_parses_and_the_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    exprs = load_all()
    assert len(exprs) > 20
    for where, expr in exprs:
        assert selectors(expr), f"{where}: no series selector in {expr!r}"
    names = {name for _, expr in exprs for name, _ in selectors(expr)}
    # What the dashboard and the alerts must cover.
    for needed in (
        "nfsteer_pool_instances",
        "nfsteer_instance_slots",
        "nfsteer_instance_tx_packets_total",
        "nfsteer_change_to_barrier_seconds_bucket",
        "nfsteer_rebalances_total",
        "nfsteer_heartbeat_failures_total",
        "nfsteer_redis_up",
        "nfsteer_switch_connected",
        "nfsteer_pool_unserved_slots",
        "nfsteer_pool_without_active_instance",
    ):
        assert needed in names, needed
    alerts = {r["alert"] for _, r in _rules()}
    assert {
        "NfsteerPoolWithoutActiveInstance",
        "NfsteerUnservedSlots",
        "NfsteerSwitchDisconnected",
        "NfsteerRedisDown",
        "NfsteerChangeLatencyHigh",
    } <= alerts


def _rules():
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield group["name"], rule


def test_the_check_reports_a_missing_metric_or_label():
    exported = {"nfsteer_pool_epoch": {"pool"}}
    exprs = [
        ("panel 'a'", "rate(nfsteer_no_such_metric_total[$__rate_interval])"),
        ("panel 'b'", 'nfsteer_pool_epoch{pool=~"$pool", switch="s1"}'),
        ("panel 'c'", 'max by (pool) (nfsteer_pool_epoch{job="nfsteer"}) and on() up'),
    ]
    assert missing(exprs, exported) == [
        "panel 'a': metric nfsteer_no_such_metric_total is not exported",
        "panel 'b': nfsteer_pool_epoch has no label switch",
    ]
    with pytest.raises(ValueError):
        selectors("sum(rate(nfsteer_x[5m])")


def test_promtool_accepts_the_rules_and_their_tests_pass():
    require(shutil.which("promtool") is not None, "promtool (Debian package prometheus)")
    for cmd in (
        ["promtool", "check", "rules", str(RULES)],
        ["promtool", "check", "config", "--syntax-only", str(SCRAPE)],
        ["promtool", "test", "rules", str(RULE_TESTS)],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stdout}{r.stderr}"


@pytest.mark.ovs
@pytest.mark.redis
@pytest.mark.timeout(60)
def test_every_metric_named_is_exported_by_a_running_controller(tmp_path, redis_server, ovs):
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xD5, n_instances=2)
    bridge = Bridge.create(unique_name("md"), 0xD5, [11, 12, 31, 32])
    nf = ContractNF(redis_server.url, "fw", "fw1", ttl_ms=300)
    try:
        with controller(topo, redis_server.url, heartbeat_ttl_ms=300) as app:
            bridge.connect(app.options.listen[1])
            assert app.wait_synced("s1", 15)
            nf.register()
            wait_until(lambda: app.steering.pools["fw"].slot_counts().get("fw1"), 10)
            url = api_url(app) + "/metrics"

            def scraped() -> dict[str, set[str]]:
                series = exported_series(httpx.get(url, timeout=5).text)
                # Port counters arrive with the first port-stats reply (polled every 2 s).
                return series if "nfsteer_instance_tx_packets_total" in series else {}

            exported = wait_until(scraped, 15, step=0.2)
    finally:
        nf.close()
        bridge.delete()
    problems = missing(load_all(), exported)
    assert not problems, "\n".join(problems)
