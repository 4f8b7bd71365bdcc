"""End to end on topologies/chain.yaml: long-lived TCP through a firewall -> NAT chain on two
switches, with real Mininet, OVS, controller, Redis and NF processes. Either pool of the chain
scales out, loses an instance to SIGKILL and one to a link failure, and drains, while every
instance of the other pool runs: with Redis state no connection breaks, although a reply
reaches another NAT instance than its request for most connections (the switch hashes the
translated 5-tuple); with the scaled pool's state local, connections break.
"""

from __future__ import annotations

import time

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


PUBLIC = "10.0.0.240"
SERVERS = ["10.0.0.129:5001", "10.0.0.130:5001"]


def nat_mappings(emu) -> dict[int, tuple[str, int, str, int]]:
    """TCP mappings the NAT pool holds in Redis: public port -> inside and remote ends."""
    from controller.store.pools import connect

    r = connect(emu.redis_url)  # the replicated store's Sentinel URL
    out = {}
    for key in r.scan_iter(match="nfsteer:nat:{nat:*}:map"):
        for field, value in r.hgetall(key).items():
            if field.startswith("r:") and value:
                inside, remote = value.split(">")
                (ip, port), (rip, rport) = inside.rsplit(":", 1), remote.rsplit(":", 1)
                if int(rport) == 5001:
                    out[int(field[2:])] = (ip, int(port), rip, int(rport))
    return out


def hop_instances(emu, src: str, dst: str, sport: int, dport: int) -> tuple[str, list]:
    q = {"src": src, "dst": dst, "proto": "tcp", "sport": sport, "dport": dport}
    answer = emu.api("GET", "/api/v1/services/web/lookup", params=q)
    return answer["direction"], [(h["pool"], h["instance"]) for h in answer["hops"]]


def test_replies_reach_other_nat_instances_and_every_connection_works(emu, scaleout):
    """Each hop hashes the packet as it is then: the reply (to the public address) is hashed
    on the translated 5-tuple and, for most connections, reaches another NAT instance than
    the request. The NAT's state is in Redis, so every connection works."""
    emu.restart_control_plane()
    names = ["fw1", "fw2", "fw3", "nat1", "nat2", "nat3"]
    for name in names:
        emu.start_nf(name, state="redis")
    for name in names:
        t = scaleout.wait_member(emu, emu.pool_of(name), name, ("active",))
        assert t is not None, logs(emu, [name, "controller"])
    clients = scaleout.Clients(emu, SERVERS, scaleout.TEST_TIMING)
    try:
        assert clients.wait_established(15), logs(emu)
        time.sleep(3)
        mappings = nat_mappings(emu)
    finally:
        finals = clients.stop()
    conns = [c for f in finals.values() for c in f["conns"]]
    detail = logs(emu)
    assert len(conns) == 12 and all(c["state"] != "broken" for c in conns), (conns, detail)
    assert all(f["short"]["failed"] == 0 for f in finals.values()), (finals, detail)
    assert len(mappings) >= 12, mappings
    differs = 0
    for public_port, (ip, port, rip, rport) in mappings.items():
        way, forward = hop_instances(emu, ip, rip, port, rport)
        assert way == "forward" and [p for p, _ in forward] == ["fw", "nat"]
        way, reverse = hop_instances(emu, rip, PUBLIC, rport, public_port)
        assert way == "reverse" and reverse[0][0] == "nat"
        differs += reverse[0][1] != forward[1][1]
    # about two in three with three NAT instances; each of these connections worked
    assert differs >= len(mappings) // 4, (differs, len(mappings))


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


@pytest.mark.parametrize("pool", ["nat", "fw"])
def test_local_state_breaks_connections_in_the_chain(emu, scaleout, pool):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, pool, "local", scaleout.TEST_TIMING, say=lambda _: None).run()
    # a packet that reaches an instance without its connection's state is dropped there (a
    # NAT reply without its mapping, a firewall packet of a connection it never saw)
    assert report["summary"]["broken"] > 0, "\n".join(scaleout.summary_lines(report))
