"""L4 load balancer: weighted choice, affinity on any instance, reverse translation."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from nf_support import checksums_ok, one, processor, tcp, udp
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

VIP, CL = "10.0.0.100", "10.0.0.1"
B1, B2 = ("10.0.0.129", 8080), ("10.0.0.130", 8080)


@pytest.fixture(params=["redis", "local"])
def lb(request, redis_server):
    return processor("lb", redis_server.url if request.param == "redis" else None)


def backend_of(frame: bytes) -> tuple[str, int]:
    p = Ether(frame)
    return p[IP].dst, p[TCP].dport


def test_new_connections_follow_the_weights_and_stick(lb):
    chosen = {}
    for i in range(400):
        out = one(lb, tcp(CL, VIP, 30000 + i, 80, "S"))
        assert out is not None and checksums_ok(out)
        chosen[i] = backend_of(out)
    share = Counter(chosen.values())
    assert set(share) == {B1, B2}
    assert 0.15 < share[B1] / 400 < 0.35  # weight 1 of 4
    for i in range(0, 400, 7):  # later packets: the same backend
        assert backend_of(one(lb, tcp(CL, VIP, 30000 + i, 80, "PA", b"x"))) == chosen[i]


def test_replies_come_from_the_vip(lb):
    b = backend_of(one(lb, tcp(CL, VIP, 30000, 80, "S")))
    reply = one(lb, tcp(b[0], CL, b[1], 30000, "SA"))
    p = Ether(reply)
    assert (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport) == (VIP, 80, CL, 30000)
    assert checksums_ok(reply)
    u = Ether(one(lb, udp(CL, VIP, 5555, 53)))
    assert (u[IP].dst, u[UDP].dport) == ("10.0.0.131", 5353)
    back = Ether(one(lb, udp("10.0.0.131", CL, 5353, 5555)))
    assert (back[IP].src, back[UDP].sport) == (VIP, 53) and checksums_ok(bytes(back))


def test_lost_entries_come_back_to_the_same_backend(lb):
    """The consistent fallback: the backend of a connection is a function of the client
    endpoint, so a lost entry is re-created with the same backend, from either side."""
    chosen = {i: backend_of(one(lb, tcp(CL, VIP, 30100 + i, 80, "S"))) for i in range(40)}
    if hasattr(lb.store, "data"):
        lb.store.data.clear()
    else:
        lb.store.command(["FLUSHALL"])
    for i in range(0, 40, 2):  # the client speaks first
        assert backend_of(one(lb, tcp(CL, VIP, 30100 + i, 80, "PA", b"x"))) == chosen[i]
    for i in range(1, 40, 2):  # the backend speaks first: its reply is translated back
        be = chosen[i]
        wrong = B2 if be == B1 else B1
        assert one(lb, tcp(wrong[0], CL, wrong[1], 30100 + i, "PA", b"y")) is None
        reply = Ether(one(lb, tcp(be[0], CL, be[1], 30100 + i, "PA", b"y")))
        assert (reply[IP].src, reply[TCP].sport) == (VIP, 80)
        assert backend_of(one(lb, tcp(CL, VIP, 30100 + i, 80, "A"))) == be
    assert lb.counters.dropped == {"lb_no_reverse_mapping": 20}
    other = tcp(CL, "10.0.0.200", 1, 2, "S")  # not for a VIP: forwarded unchanged
    assert one(lb, other) == other


def test_second_instance_keeps_the_backend_with_redis(redis_server):
    a = processor("lb", redis_server.url)
    b = processor("lb", redis_server.url)
    chosen = {i: backend_of(one(a, tcp(CL, VIP, 31000 + i, 80, "S"))) for i in range(40)}
    for i in range(40):
        assert backend_of(one(b, tcp(CL, VIP, 31000 + i, 80, "A"))) == chosen[i]
        be = chosen[i]
        reply = Ether(one(b, tcp(be[0], CL, be[1], 31000 + i, "A")))
        assert (reply[IP].src, reply[TCP].sport) == (VIP, 80)


def test_second_instance_with_local_state_picks_the_consistent_backend():
    """Even without shared state, instances agree while the backend set is unchanged."""
    a = processor("lb", None)
    b = processor("lb", None)
    for i in range(40):
        sent = backend_of(one(a, tcp(CL, VIP, 31000 + i, 80, "S")))
        assert backend_of(one(b, tcp(CL, VIP, 31000 + i, 80, "A"))) == sent


def test_racing_syns_on_two_instances_agree(redis_server):
    """Retransmitted SYNs reaching two instances at once end on one backend."""
    procs = [processor("lb", redis_server.url) for _ in range(2)]
    frames = [tcp(CL, VIP, 32000 + i, 80, "S") for i in range(300)]
    results: dict[int, list] = {}

    def work(k):
        results[k] = [backend_of(o) for o in procs[k].process(frames)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
