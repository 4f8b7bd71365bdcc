"""End to end on topologies/chain.yaml: long-lived TCP through a firewall -> NAT chain on two
switches, with real Mininet, OVS, controller, Redis and NF processes. Either pool of the chain
scales out, loses an instance to SIGKILL and one to a link failure, and drains, while every
instance of the other pool runs: with Redis state no connection breaks, although a reply
reaches another NAT instance than its request for most connections (the switch hashes the
translated 5-tuple); with the scaled pool's state local, connections break.
"""

from __future__ import annotations

import pytest
from e2e_support import emulation, load, logs

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    yield from emulation("chain.yaml", tmp_path_factory.mktemp("em-chain"))


@pytest.fixture
def scaleout():
    return load("scaleout")


@pytest.mark.parametrize("pool", ["nat", "fw"])
def test_redis_state_keeps_every_connection_through_the_chain(emu, scaleout, pool):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, pool, "redis", scaleout.TEST_TIMING, say=lambda _: None).run()
    s, f = report["summary"], report["figures"]
    detail = "\n".join(scaleout.summary_lines(report)) + "\n" + logs(emu)
    other = {"nat": "fw", "fw": "nat"}[pool]
    assert report["chained"] == [f"{other}1", f"{other}2", f"{other}3"]
    assert s["long_connections"] == 12
    assert s["broken"] == 0, detail
    assert s["short_failed"] == 0, detail
    # scale-out: every instance of the scaled pool carried chain traffic
    assert all(v["to_traffic_s"] is not None for v in f["time_to_traffic"].values()), detail
    assert f["kill_detected_s"] is not None and f["kill_detected_s"] < 1.0, detail
    assert set(f["drain_seconds"]) == {f"{pool}2"}, detail
    assert emu.nfs[f"{pool}2"].proc.returncode == 0, detail


def test_local_nat_state_breaks_connections_in_the_chain(emu, scaleout):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, "nat", "local", scaleout.TEST_TIMING, say=lambda _: None).run()
    # a reply that reaches a NAT instance without the connection's mapping is dropped
    assert report["summary"]["broken"] > 0, "\n".join(scaleout.summary_lines(report))
