"""Every benchmark in ``bench/`` runs, small, and prints plausible figures: a bench that
rots fails here, not on the day its figures are needed. Real OVS, Redis and NF processes,
as the benches use them; the figures themselves come from full runs (README, "Figures")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

pytestmark = [pytest.mark.ovs, pytest.mark.redis, pytest.mark.timeout(240)]


def bench(name: str, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=REPO,
    )
    assert r.returncode == 0, f"bench/{name}.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def last_json(out: str) -> dict[str, Any]:
    """The JSON object a bench prints last (one line or indented)."""
    start = out.rfind("\n{")
    return json.loads(out[start + 1 :] if start >= 0 else out)


def test_steering(ovs):
    d = last_json(bench("steering", "--flows", "500", "--runs", "1", "--json"))
    ours = d["methods"]["nfsteer"]
    assert ours["prediction_mismatches"] == 0
    assert all(o["missing"] == 0 for o in ours["observations"])
    for change in ("remove", "add", "double"):
        c = ours["changes"][change]
        assert c["collateral"] == 0.0 and 0 < c["moved"] < 0.3, (change, c)
    assert d["methods"]["select dp_hash"]["changes"]["remove"]["moved"] > 0
    assert 0 < d["compute_ms_1000_instances"]["4096"]["worst_median"] < 10_000


def test_failover(ovs):
    d = last_json(bench("failover", "--runs", "1", "--heartbeat-runs", "1", "--json"))
    for event in ("port_down", "registration", "heartbeat_from_last_beat"):
        assert d[event]["n"] == 1 and 0 < d[event]["median_ms"] < 5000, (event, d[event])
    assert d["heartbeat_from_last_beat"]["median_ms"] >= d["heartbeat_ttl_ms"] / 2


def test_takeover(ovs):
    d = last_json(bench("takeover", "--kills", "1", "--json"))
    took = d["kill_to_master_on_every_switch"]
    assert took["n"] == 1 and 0 < took["median_ms"] < 10 * d["lease_ms"]
    assert d["flow_mods_per_takeover"]["max"] == 0  # a takeover moves nothing


def test_store_failover():
    d = last_json(bench("store_failover", "--kills", "1", "--json"))
    for lane in ("nf_without", "controller"):
        assert d[lane]["n"] == 1 and 0 < d[lane]["median_s"] < 30, (lane, d[lane])


def test_rebalance(ovs):
    args = ("--flows", "50", "--rate", "2000", "--steady-s", "1", "--interval-s", "1", "--json")
    d = last_json(bench("rebalance", *args))
    assert d["measured"]["slot_pkts_per_s_total"] > 0
    assert d["imbalance"]["hash_only"] >= 1.0


def test_idle_connections():
    d = last_json(bench("idle_connections", "--connections", "10", "--wait", "1", "--json"))
    assert d["connections"] == 10 and d["closed"] == 0


def test_nf():
    args = (
        "--rounds", "1", "--duration", "0.2", "--kinds", "firewall", "--sizes", "64",
        "--modes", "local,batched", "--paced-duration", "0.2", "--latency-count", "20",
        "--wait-quiet", "0", "--json",
    )  # fmt: skip
    d = last_json(bench("nf", *args))
    modes = {r["mode"]: r for r in d["results"]}
    assert set(modes) == {"local", "batched"}
    assert all(r["pps"]["median"] > 1000 for r in modes.values()), modes


def test_packetio():
    out = bench("packetio", "--rounds", "1", "--seconds", "0.2")
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()]
    rates = [r for r in rows if len(r) == 4 and r[3][:1].isdigit()]
    assert len(rates) >= 10, out
    for row in rates:
        assert float(row[3].split()[0].replace(",", "")) > 0, row
