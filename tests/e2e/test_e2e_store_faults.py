"""End to end with store faults on topologies/single.yaml: long-lived TCP connections through
the firewall pool while the replicated store (primary, 2 replicas, 3 Sentinels, AOF) loses
its primary to kill -9, has it stopped for 5 s, restarts every node, and is wiped (FLUSHALL:
the firewall picks the connections up from the inside)."""

from __future__ import annotations

import pytest
from e2e_support import emulation, logs
from store_fault_support import describe, gap_at, run_store_faults

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    yield from emulation("single.yaml", tmp_path_factory.mktemp("em-store"))


def test_firewall_connections_survive_every_store_fault(emu):
    servers = [h.ip_address for h in emu.topology.hosts.values() if h.role == "server"]
    result = run_store_faults(emu, {"fw": ["fw1", "fw2"]}, [f"{ip}:5001" for ip in servers])
    conns, detail = result["conns"], describe(result)
    assert len(conns) == 12, detail
    assert [c for c in conns if c["state"] == "broken"] == [], detail + logs(emu)
    # Sentinel's failover with down-after-milliseconds 1000 takes 1.3-2.3 s from the kill to
    # the new primary's announcement; held packets go out right after it.
    assert max(gap_at(c, result["faults"][f]) for c in conns for f in result["faults"]) < 5.0, (
        detail
    )
