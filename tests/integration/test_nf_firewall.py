"""Stateful firewall: rules, TCP state machine, UDP/ICMP pseudo-connections, timeouts, and
connections carried on by another instance (Redis) or not (local state)."""

from __future__ import annotations

import time

import pytest
import redis
from nf_support import echo, one, processor, tcp, udp

from nf.firewall import ESTABLISHED

C, S = "10.0.0.1", "10.0.0.129"  # inside client, server


@pytest.fixture(params=["redis", "local"])
def fw(request, redis_server):
    url = redis_server.url if request.param == "redis" else None
    return processor("firewall", url)


def handshake(p, sport=40000, dport=80):
    assert one(p, tcp(C, S, sport, dport, "S")) is not None
    assert one(p, tcp(S, C, dport, sport, "SA")) is not None
    assert one(p, tcp(C, S, sport, dport, "A")) is not None


def test_tcp_lifecycle_from_inside(fw):
    handshake(fw)
    data = tcp(C, S, 40000, 80, "PA", b"GET /")
    assert one(fw, data) == data  # unchanged
    assert one(fw, tcp(S, C, 80, 40000, "PA", b"200 OK")) is not None
    assert one(fw, tcp(C, S, 40000, 80, "FA")) is not None
    assert one(fw, tcp(S, C, 80, 40000, "A")) is not None
    assert one(fw, tcp(S, C, 80, 40000, "FA")) is not None
    assert one(fw, tcp(C, S, 40000, 80, "A")) is not None
    assert fw.counters.dropped == {}


def test_policy_for_new_connections(fw):
    # From outside: no new connections.
    assert one(fw, tcp(S, C, 80, 40000, "S")) is None
    # Rules: telnet denied by the first rule, other destinations by the default.
    assert one(fw, tcp(C, S, 40001, 23, "S")) is None
    assert one(fw, tcp(C, "10.0.0.2", 40002, 80, "S")) is None
    assert fw.counters.dropped["fw_denied"] == 3


def test_packets_must_fit_the_connection_state(redis_server):
    fw = processor("firewall", redis_server.url, pickup="off")
    # No connection: mid-stream packets from either side are dropped.
    assert one(fw, tcp(C, S, 40000, 80, "A")) is None
    assert one(fw, tcp(S, C, 80, 40000, "PA", b"x")) is None
    assert fw.counters.dropped["fw_no_connection"] == 2
    # After the SYN only the SYN-ACK may come back; data from the server may not.
    assert one(fw, tcp(C, S, 40000, 80, "S")) is not None
    assert one(fw, tcp(S, C, 80, 40000, "PA", b"x")) is None
    assert fw.counters.dropped["fw_invalid_state"] == 1
    # Bad flag combinations never reach the store.
    assert one(fw, tcp(C, S, 40000, 80, "SF")) is None
    assert one(fw, tcp(C, S, 40000, 80, "")) is None
    assert fw.counters.dropped["fw_bad_tcp_flags"] == 2


def test_rst_closes_and_a_new_syn_reopens(fw):
    handshake(fw)
    assert one(fw, tcp(S, C, 80, 40000, "R")) is not None
    assert one(fw, tcp(C, S, 40000, 80, "PA", b"late")) is None
    assert one(fw, tcp(C, S, 40000, 80, "S")) is not None  # port reuse
    # ... but a closed connection cannot be reopened from outside.
    assert one(fw, tcp(C, S, 40000, 80, "R")) is not None
    assert one(fw, tcp(S, C, 80, 40000, "S")) is None


def test_udp_and_icmp_pseudo_connections(fw):
    assert one(fw, udp(S, C, 53, 5000)) is None  # unsolicited
    assert one(fw, udp(C, S, 5000, 53)) is not None
    assert one(fw, udp(S, C, 53, 5000)) is not None  # the reply
    assert one(fw, echo(S, C, 7, reply=True)) is None
    assert one(fw, echo(C, S, 7)) is not None
    assert one(fw, echo(S, C, 7, reply=True)) is not None
    assert one(fw, echo(S, C, 7)) is None  # a request from outside opens nothing


def test_idle_timeout(redis_server):
    for url in (redis_server.url, None):
        p = processor("firewall", url, udp_timeout=0.3, tcp_established_timeout=0.3)
        handshake(p)
        assert one(p, udp(C, S, 5000, 53)) is not None
        time.sleep(0.45)
        assert one(p, udp(S, C, 53, 5000)) is None
        assert one(p, tcp(S, C, 80, 40000, "PA", b"x")) is None


def test_state_in_redis_has_ttl_and_survives_the_instance(redis_server):
    p = processor("firewall", redis_server.url, tcp_established_timeout=120)
    handshake(p)
    r = redis.Redis.from_url(redis_server.url)
    (key,) = r.keys("nfsteer:fw:p:*")
    assert key.decode() == f"nfsteer:fw:p:{{6:{C}:40000:{S}:80}}"
    assert r.get(key).decode().startswith(f"{ESTABLISHED}0")  # state, initiator, time
    assert 100_000 < r.pttl(key) <= 120_000


@pytest.mark.parametrize("state", ["redis", "local"])
def test_established_traffic_keeps_the_connection_alive(redis_server, state):
    """An unchanged state is rewritten only once per refresh interval (a tenth of the
    timeout): packets in between only read, yet steady traffic never lets it expire."""
    url = redis_server.url if state == "redis" else None
    p = processor("firewall", url, tcp_established_timeout=1.0)
    handshake(p)
    if url:
        r = redis.Redis.from_url(url)
        (key,) = r.keys("nfsteer:fw:p:*")
        written = r.get(key)
        assert one(p, tcp(C, S, 40000, 80, "PA", b"x")) is not None
        assert r.get(key) == written  # within the refresh interval: read only
    for _ in range(12):  # 1.2 s of traffic, longer than the idle timeout
        time.sleep(0.1)
        assert one(p, tcp(C, S, 40000, 80, "PA", b"x")) is not None
    if url:
        assert r.get(key) != written and r.pttl(key) > 700
    time.sleep(1.1)
    # Expired: the server's next segment is dropped (only the inside may pick it up).
    assert one(p, tcp(S, C, 80, 40000, "PA", b"x")) is None


def test_second_instance_carries_on_with_redis(redis_server):
    a = processor("firewall", redis_server.url)
    b = processor("firewall", redis_server.url)
    for i in range(20):
        handshake(a, sport=41000 + i)
    for i in range(20):
        # The switch moved these connections to b: replies and data still pass...
        assert one(b, tcp(S, C, 80, 41000 + i, "PA", b"data")) is not None
        assert one(b, tcp(C, S, 41000 + i, 80, "FA")) is not None
    # ... and b's view of the state is the same as a's: the server's FIN closes it there.
    assert one(a, tcp(S, C, 80, 41000, "FA")) is not None
    assert b.counters.dropped == {} and a.counters.dropped == {}


def test_second_instance_drops_with_local_state():
    """The baseline's weakness: state stays inside the instance that saw the handshake."""
    a = processor("firewall", None)
    b = processor("firewall", None)
    for i in range(20):
        handshake(a, sport=41000 + i)
    passed = [one(b, tcp(S, C, 80, 41000 + i, "PA", b"data")) for i in range(20)]
    assert passed == [None] * 20
    assert b.counters.dropped["fw_no_connection"] == 20


def test_racing_instances_agree_on_one_batch(redis_server):
    """Two packets of one connection in one batch see each other's effect."""
    p = processor("firewall", redis_server.url)
    out = p.process([tcp(C, S, 42000, 80, "S"), tcp(S, C, 80, 42000, "SA"), tcp(C, S, 42000, 80)])
    assert len(out) == 3
    assert p.store.round_trips == 2  # script load + the one batch


@pytest.mark.parametrize("state", ["redis", "local"])
def test_lost_entries_are_picked_up_from_the_inside_only(redis_server, state):
    """Mid-stream pickup: after the store lost everything, the inside's next segment
    re-creates the connection as established; the outside's is dropped until then, and a
    connection the rules would refuse is never picked up."""
    url = redis_server.url if state == "redis" else None
    p = processor("firewall", url)
    handshake(p)
    if url:
        redis.Redis.from_url(url).flushall()
    else:
        p.store.data.clear()
    assert one(p, tcp(S, C, 80, 40000, "PA", b"x")) is None  # outside first: dropped
    assert one(p, tcp(C, S, 40000, 80, "PA", b"y")) is not None  # inside: picked up
    assert one(p, tcp(S, C, 80, 40000, "PA", b"x")) is not None  # and replies pass again
    assert one(p, tcp(C, S, 40000, 80, "FA")) is not None
    assert one(p, tcp(C, S, 40001, 23, "A")) is None  # the rules deny telnet
    assert one(p, tcp(C, S, 40002, 80, "R")) is None  # no pickup of a bare RST
    assert p.counters.dropped == {"fw_no_connection": 3}
