"""The state client when Redis goes away and comes back, and the nf: settings."""

from __future__ import annotations

import time

import pytest
import redis
from conftest import REPO
from nf_support import echo, one, processor, tcp, udp

from contract.nf_settings import settings_for_kind
from contract.topology import load_topology

C, S = "10.0.0.1", "10.0.0.129"


def test_fail_closed_then_reconnect(redis_server):
    p = processor("firewall", redis_server.url)
    assert one(p, udp(C, S, 5000, 53)) is not None
    redis_server.stop()
    assert one(p, udp(C, S, 5000, 53)) is None
    t0 = time.monotonic()
    for _ in range(50):  # while down, failing costs no timeout per batch (backoff)
        assert one(p, udp(C, S, 5000, 53)) is None
    assert time.monotonic() - t0 < 1.0
    assert p.counters.dropped["store_unavailable"] == 51
    assert p.store.available is False
    redis_server.start()  # same port, empty: scripts must be loaded again
    deadline = time.monotonic() + 5
    while one(p, udp(C, S, 5000, 53)) is None:
        assert time.monotonic() < deadline, "did not reconnect"
        time.sleep(0.05)
    assert p.store.available is True
    assert one(p, udp(S, C, 53, 5000)) is not None


def test_fail_open_forwards_unchanged(redis_server):
    p = processor("firewall", redis_server.url, fail_open=True)
    redis_server.stop()
    frame = tcp(S, C, 80, 40000, "PA", b"x")  # would be dropped with a store
    assert one(p, frame) == frame
    assert p.counters.passed_fail_open == 1 and not p.counters.dropped


def test_password_is_used(tmp_path):
    import shutil

    from conftest import RedisServer, require

    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        p = processor("firewall", server.url)
        assert one(p, echo(C, S, 1)) is not None
        bad = processor("firewall", server.url.replace("s3cret", "wrong"))
        assert one(bad, echo(C, S, 1)) is None
        assert bad.counters.dropped["store_unavailable"] == 1
    finally:
        server.stop()


def test_corrupt_state_costs_a_packet_not_the_instance(redis_server):
    p = processor("lb", redis_server.url)
    r = redis.Redis.from_url(redis_server.url)
    r.hset("nfsteer:lb:p:{6:10.0.0.1:1234}", "f:10.0.0.100:80", "garbage")
    assert one(p, tcp(C, "10.0.0.100", 1234, 80, "A")) is None
    assert p.counters.dropped["internal_error"] == 1
    assert one(p, tcp(C, "10.0.0.100", 1235, 80, "S")) is not None


def test_single_topology_settings_are_valid():
    topo = load_topology(REPO / "topologies" / "single.yaml")
    fw = topo.pools["fw"].settings
    assert fw.default == "deny" and fw.inside == ["10.0.0.0/25"]


@pytest.mark.parametrize(
    ("kind", "data", "message"),
    [
        ("firewall", {"insides": []}, "nf.insides: unknown key"),
        ("firewall", {"inside": ["10.0.0.1/24"]}, "not an IPv4 prefix"),
        ("firewall", {"udp_timeout": 0}, "nf.udp_timeout"),
        ("firewall", {"udp_timeout": True}, "nf.udp_timeout"),
        ("firewall", {"rules": [{"action": "allow", "proto": "icmp", "dst_ports": [1]}]}, "tcp"),
        ("nat", {"port_min": 3000, "port_max": 2000}, "above port_max"),
        ("nat", {"public_ip": "1.2.3"}, "not an IPv4 address"),
        ("lb", {"vips": [{"vip": "10.0.0.1", "port": 80, "backends": []}]}, "nf.vips.0.backends"),
        (
            "lb",
            {
                "vips": [
                    {"vip": "10.0.0.1", "port": 80, "backends": [{"ip": "10.0.0.9", "port": 1}]},
                    {"vip": "10.0.0.2", "port": 80, "backends": [{"ip": "10.0.0.9", "port": 1}]},
                ]
            },
            "serves two VIPs",
        ),
        ("router", {}, "unknown NF kind"),
    ],
)
def test_bad_settings_are_one_clear_error(kind, data, message):
    with pytest.raises(ValueError, match=message) as e:
        settings_for_kind(kind, data)
    assert "\n" not in str(e.value)


def test_capacity_change_follows_the_contract(redis_server):
    from contract import keys
    from nf.registration import Identity, Registration

    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pubsub = r.pubsub()
    pubsub.subscribe(keys.events("cp"))
    reg = Registration(r, Identity("i1", "cp", "lb", "02:00:00:00:00:09", "", "i1-eth0", 1))
    reg.register()
    reg.set_capacity(2.5)
    assert r.hget(keys.instance("cp", "i1"), "capacity") == "2.5"
    msgs = []
    while (m := pubsub.get_message(timeout=0.2)) is not None:
        if m["type"] == "message":
            msgs.append(m["data"])
    assert msgs == ["register i1", "update i1"]
    r.delete(keys.instance("cp", "i1"))  # e.g. the store restarted empty
    reg.heartbeat()
    assert r.hget(keys.instance("cp", "i1"), "capacity") == "2.5"


def test_instance_name_comes_from_the_mininet_interface_name():
    from nf.cli import default_name

    assert default_name("fw2-eth0") == "fw2" and default_name("nfx") == "nfx"
