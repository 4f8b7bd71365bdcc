"""Source NAT: translation and checksums, return traffic on any instance, atomic port
allocation across concurrent instances, expiry, exhaustion; the local-state baseline."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import redis
from nf_support import checksums_ok, echo, one, processor, tcp, udp
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

PUBLIC = "192.0.2.1"
IN, OUT = "10.0.0.1", "198.51.100.7"


@pytest.fixture(params=["redis", "local"])
def nat(request, redis_server):
    return processor("nat", redis_server.url if request.param == "redis" else None)


def out_and_back(p, q=None, sport=40000):
    """A SYN out through p and the SYN-ACK back through q (default p); returns both."""
    q = q or p
    sent = one(p, tcp(IN, OUT, sport, 443, "S", b"hello"))
    assert sent is not None
    s = Ether(sent)
    reply = one(q, tcp(OUT, PUBLIC, 443, s[TCP].sport, "SA", b"world"))
    return s, Ether(reply) if reply is not None else None


def test_translation_both_ways_with_valid_checksums(nat):
    s, back = out_and_back(nat)
    assert (s[IP].src, s[IP].dst, s[TCP].dport) == (PUBLIC, OUT, 443)
    assert 20000 <= s[TCP].sport <= 20999
    assert bytes(s[TCP].payload) == b"hello"
    assert checksums_ok(bytes(s))
    assert (back[IP].src, back[IP].dst, back[TCP].sport, back[TCP].dport) == (OUT, IN, 443, 40000)
    assert checksums_ok(bytes(back))
    # The same connection keeps its port; another gets another.
    again = Ether(one(nat, tcp(IN, OUT, 40000, 443, "A")))
    other = Ether(one(nat, tcp(IN, OUT, 40001, 443, "S")))
    assert again[TCP].sport == s[TCP].sport != other[TCP].sport


def test_udp_and_icmp(nat):
    u = Ether(one(nat, udp(IN, OUT, 5000, 53, b"q")))
    assert u[IP].src == PUBLIC and checksums_ok(bytes(u))
    r = Ether(one(nat, udp(OUT, PUBLIC, 53, u[UDP].sport, b"a")))
    assert (r[IP].dst, r[UDP].dport) == (IN, 5000) and checksums_ok(bytes(r))
    e = Ether(one(nat, echo(IN, OUT, 77)))
    assert e[IP].src == PUBLIC and checksums_ok(bytes(e))
    er = Ether(one(nat, echo(OUT, PUBLIC, e[ICMP].id, reply=True)))
    assert (er[IP].dst, er[ICMP].id) == (IN, 77) and checksums_ok(bytes(er))


def test_unmapped_or_foreign_return_traffic_is_dropped(nat):
    s, _ = out_and_back(nat)
    port = s[TCP].sport
    assert one(nat, tcp(OUT, PUBLIC, 443, port + 1, "A")) is None
    assert one(nat, tcp("203.0.113.9", PUBLIC, 443, port, "A")) is None  # another remote
    assert nat.counters.dropped == {"nat_no_mapping": 1, "nat_wrong_remote": 1}
    # Inside-to-inside traffic is not translated.
    frame = tcp(IN, "10.0.0.2", 1, 2, "S")
    assert one(nat, frame) == frame


def test_second_instance_translates_identically_with_redis(redis_server):
    a = processor("nat", redis_server.url)
    b = processor("nat", redis_server.url)
    for i in range(10):
        s, back = out_and_back(a, b, sport=41000 + i)  # the reply lands on b
        assert back is not None and back[TCP].dport == 41000 + i
        # and b translates later outbound packets of the connection to the same port
        later = Ether(one(b, tcp(IN, OUT, 41000 + i, 443, "A")))
        assert later[TCP].sport == s[TCP].sport


def test_second_instance_fails_with_local_state():
    a = processor("nat", None)
    b = processor("nat", None)
    _, back = out_and_back(a, b)
    assert back is None  # b never saw the mapping
    assert b.counters.dropped == {"nat_no_mapping": 1}
    # and b hands out a port a already uses: the same public endpoint twice
    a1 = processor("nat", None, port_min=20000, port_max=20000)
    b1 = processor("nat", None, port_min=20000, port_max=20000)
    first = Ether(one(a1, tcp(IN, OUT, 40000, 443, "S")))
    other = Ether(one(b1, tcp("10.0.0.5", OUT, 40000, 443, "S")))
    assert other[TCP].sport == first[TCP].sport == 20000


def _allocate(url: str | None, worker: int, n: int, start_at: float) -> list[int]:
    p = processor("nat", url, port_min=30000, port_max=39999)
    frames = [tcp(f"10.0.0.{worker + 1}", OUT, 10000 + i, 443, "S") for i in range(n)]
    while time.time() < start_at:
        pass
    ports = []
    for i in range(0, n, 8):  # small batches: more interleaving between the processes
        ports += [Ether(f)[TCP].sport for f in p.process(frames[i : i + 8])]
    return ports


@pytest.mark.parametrize("state", ["redis", "local"])
def test_concurrent_instances_never_share_a_port(redis_server, state):
    url = redis_server.url if state == "redis" else None
    workers, n = 4, 400
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 0.5
    with ctx.Pool(workers) as pool:
        results = pool.starmap(_allocate, [(url, w, n, start_at) for w in range(workers)])
    ports = [p for r in results for p in r]
    assert len(ports) == workers * n
    if state == "redis":
        assert len(set(ports)) == len(ports)  # no collision, every allocation succeeded
        r = redis.Redis.from_url(url, decode_responses=True)
        maps = r.keys("nfsteer:nat:{p:tcp:*}:map")
        assert len(maps) == 10  # ports 30000-39999: ten shards of 1024 (the last shorter)
        reverse = [k for m in maps for k in r.hgetall(m) if k.startswith("r:")]
        assert len(reverse) == workers * n
    # (local state: each instance allocates alone; the collisions that causes are shown
    # by test_second_instance_fails_with_local_state)


def test_expiry_frees_the_port_and_stops_return_traffic(redis_server):
    for url in (redis_server.url, None):
        p = processor("nat", url, tcp_timeout=0.3, port_min=20000, port_max=20000)
        s, back = out_and_back(p)
        assert back is not None
        assert one(p, tcp("10.0.0.9", OUT, 1, 443, "S")) is None  # the only port is taken
        assert p.counters.dropped["nat_ports_exhausted"] == 1
        time.sleep(0.4)
        assert one(p, tcp(OUT, PUBLIC, 443, s[TCP].sport, "A")) is None
        assert p.counters.dropped["nat_mapping_expired"] == 1
        reuse = Ether(one(p, tcp("10.0.0.9", OUT, 1, 443, "S")))  # expired: reusable
        assert reuse[TCP].sport == 20000
        # The old owner's mapping is gone for good: its next packet gets a new allocation,
        # which fails here since the single port now belongs to 10.0.0.9.
        assert one(p, tcp(IN, OUT, 40000, 443, "A")) is None


@pytest.mark.parametrize("state", ["redis", "local"])
def test_lost_mapping_comes_back_at_the_same_port(redis_server, state):
    """Deterministic first choice: after the store lost its mappings, the inside side's
    next packet gets the same public port again (unless another connection took it), so
    the remote end sees the same connection. Return traffic before that is dropped."""
    url = redis_server.url if state == "redis" else None
    nat = processor("nat", url)
    before = {i: Ether(one(nat, tcp(IN, OUT, 42000 + i, 443, "S")))[TCP].sport for i in range(50)}
    if url:
        redis.Redis.from_url(url).flushall()
    else:
        nat.store.data.clear()
    assert one(nat, tcp(OUT, PUBLIC, 443, before[0], "A")) is None  # outside first: no mapping
    after = {i: Ether(one(nat, tcp(IN, OUT, 42000 + i, 443, "A")))[TCP].sport for i in range(50)}
    assert after == before
    back = Ether(one(nat, tcp(OUT, PUBLIC, 443, before[0], "A")))
    assert (back[IP].dst, back[TCP].dport) == (IN, 42000)
