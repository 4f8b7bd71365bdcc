"""The common-case parse agrees with the full parse on every frame; packets are interned
per field set and the loop's request cache answers like the NF; memoized decisions agree
with the rules and stay bounded; --workers values; counters summed over workers."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from nf_support import echo, processor, tcp, udp

from contract.nf_settings import FirewallSettings
from nf import packet
from nf.cli import parse_workers
from nf.firewall import Firewall
from nf.memo import Memo
from nf.packet import ACK, TCP, UDP, Packet, parse, parse_full
from nf.state import pack_batch
from nf.workers import sum_counters


def _same(a, b) -> bool:
    if isinstance(a, Packet) and isinstance(b, Packet):
        return all(getattr(a, k) == getattr(b, k) for k in Packet.__slots__)
    return a == b


VALID = [
    tcp("10.0.0.1", "10.0.0.129", 1000, 80, "PA", payload=b"x" * 30),
    tcp("192.0.2.7", "10.9.8.7", 65535, 1, "S"),
    udp("10.0.0.1", "10.0.0.131", 53, 5353, payload=b"abc"),
]


@settings(max_examples=400, deadline=None)
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 120),
)
def test_common_case_parse_equals_full_parse(base, edits, cut):
    f = bytearray(base)
    for pos, val in edits:
        if pos < len(f):
            f[pos] = val
    frame = bytes(f[: max(cut, 0)] if cut < len(f) else f)
    assert _same(parse(frame), parse_full(frame))


def test_common_case_parse_on_random_bytes():
    rng = random.Random(7)
    for _ in range(3000):
        head = bytes.fromhex("0200000000810200000000010800") + bytes([0x45])
        frame = head + rng.randbytes(rng.randrange(0, 80))
        assert _same(parse(frame), parse_full(frame))


@given(st.one_of(st.text(max_size=12), st.integers(-10, 10**12).map(str)))
def test_workers_value_is_a_count_or_a_reason(value):
    out = parse_workers(value, 2)
    assert (isinstance(out, int) and 1 <= out <= 8) or (isinstance(out, str) and out)


def test_workers_values():
    assert parse_workers("auto", 3) == 3
    assert parse_workers("8", 2) == 8
    assert "at most 8" in parse_workers("9", 2)
    assert parse_workers("0", 2) == "--workers must be at least 1"
    assert "whole number" in parse_workers("²", 2)
    assert "whole number" in parse_workers("9" * 5000, 2)


def test_counters_sum_over_workers():
    a = {"processed": 10, "dropped": {"x": 1}, "batches": 2, "store_ops": 8, "batch_max": 5,
         "batch_mean": 4.0, "store_available": True}  # fmt: skip
    b = {"processed": 5, "dropped": {"x": 2, "y": 1}, "batches": 1, "store_ops": 1,
         "batch_max": 9, "batch_mean": 1.0, "store_available": False}  # fmt: skip
    out = sum_counters([a, b, {}])
    assert out["processed"] == 15 and out["dropped"] == {"x": 3, "y": 1}
    assert out["batch_max"] == 9 and out["batch_mean"] == 3.0
    assert out["store_available"] is False


def test_memo_computes_once_and_stays_bounded():
    calls = []
    memo = Memo(lambda k: calls.append(k) or k * 2, limit=4)
    assert [memo[1], memo[1], memo[2]] == [2, 2, 4] and calls == [1, 2]
    for k in range(10):
        assert memo[k] == 2 * k
        assert len(memo) <= 4


def test_firewall_memoized_decision_follows_the_rules():
    fw = Firewall(
        "p",
        FirewallSettings.model_validate(
            {
                "inside": ["10.0.0.0/25"],
                "rules": [
                    {"action": "deny", "proto": "tcp", "dst": "10.0.0.129/32", "dst_ports": [22]},
                    {"action": "allow", "proto": "tcp"},
                ],
                "default": "deny",
            }
        ),
    )
    cases = [
        (tcp("10.0.0.1", "10.0.0.129", 1000, 80, "S"), True),
        (tcp("10.0.0.1", "10.0.0.129", 1001, 22, "S"), False),
        (tcp("10.0.0.200", "10.0.0.129", 1000, 80, "S"), False),  # not inside
        (udp("10.0.0.1", "10.0.0.129", 1000, 53), False),  # default deny
    ]
    for _ in range(2):  # computed, then from the memo
        for frame, allowed in cases:
            assert fw.may_open(parse(frame)) is allowed


def test_packets_are_interned_per_field_set():
    a = tcp("10.0.0.1", "10.0.0.129", 1000, 80, "PA", payload=b"x")
    same = tcp("10.0.0.1", "10.0.0.129", 1000, 80, "PA", payload=b"other payload")
    assert parse(a) is parse(same)
    assert parse(echo("10.0.0.1", "10.0.0.129", 7)) is parse(echo("10.0.0.1", "10.0.0.129", 7))
    # Any field differing gives another packet, with its own fields.
    ack = parse(tcp("10.0.0.1", "10.0.0.129", 1000, 80, "A"))
    assert ack is not parse(a) and ack.flags == ACK
    other = parse(tcp("10.0.0.1", "10.0.0.129", 1001, 80, "PA"))
    assert other is not parse(a) and other.sport == 1001
    # TCP without flags and UDP on the same addresses and ports are not confused.
    t = parse(tcp("10.0.0.1", "10.0.0.129", 1000, 80, ""))
    u = parse(udp("10.0.0.1", "10.0.0.129", 1000, 80))
    assert (t.proto, t.flags, u.proto, u.flags) == (TCP, 0, UDP, 0)


def test_packet_tables_stay_bounded(monkeypatch):
    monkeypatch.setattr(packet, "_TCP", Memo(packet._TCP._fn, limit=8))
    for port in range(100):
        pkt = parse(tcp("10.0.0.1", "10.0.0.129", 1000 + port, 80))
        assert pkt.sport == 1000 + port
        assert len(packet._TCP) <= 8


def test_request_cache_answers_like_the_nf_and_asks_once_per_packet():
    """The loop's cache of the NF's requests: the same op as the NF computes, asked once
    per interned packet, and bounded."""
    for kind in ("firewall", "nat", "lb"):
        p = processor(kind, None)
        calls = []
        ask = p.nf.request
        p.requests._fn = lambda pkt, ask=ask, calls=calls: calls.append(pkt) or ask(pkt)
        dst = "10.0.0.100" if kind == "lb" else "10.0.0.129"
        frames = [tcp("10.0.0.1", dst, 1000 + i % 4, 80, "S") for i in range(12)]
        p.process(frames)
        assert len(calls) == 4, kind  # four flows, twelve packets
        for f in frames:
            pkt = parse(f)
            assert p.requests[pkt] == p.nf.request(pkt), kind
    p = processor("firewall", None)
    p.requests._limit = 8
    p.process([tcp("10.0.0.1", "10.0.0.129", 2000 + i, 80, "S") for i in range(50)])
    assert len(p.requests) <= 8


KEY = st.text(alphabet="abcxyz0123456789:{}.", min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.lists(KEY, min_size=1, max_size=2), KEY), min_size=1, max_size=8),
    st.lists(st.integers(0, 10**9), max_size=5),
)
def test_batch_packing_is_the_resp_command(ops, cfg):
    """The hand-made EVALSHA (with its cached key and cfg encodings) is byte for byte what
    redis-py would send; asked twice, so the second packing comes from the caches."""
    from redis.connection import Connection

    ops = [(tuple(ks), a) for ks, a in ops]
    keys = [k for ks, _ in ops for k in ks]
    want = b"".join(
        Connection().pack_command(
            "EVALSHA", "f" * 40, len(keys), *keys, *cfg, "\n".join(a for _, a in ops)
        )
    )
    for _ in range(2):
        assert pack_batch("f" * 40, tuple(cfg), ops) == want
