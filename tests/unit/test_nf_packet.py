"""The hand-written parser and rewriter against scapy, and fuzzing of the whole batch path:
no input may crash an NF; every bad frame is a counted drop."""

from __future__ import annotations

import pytest
from conftest import RedisServer, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nf_support import checksums_ok, echo, processor, tcp, udp
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

from nf.packet import NOT_STEERED, Packet, ip_to_int, parse, rewrite, translate

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:81")


def test_fields_match_scapy():
    p = parse(tcp("10.0.0.1", "10.0.0.129", 1234, 80, "SA", b"data"))
    assert isinstance(p, Packet)
    assert (p.proto, p.src_ip, p.dst_ip, p.sport, p.dport) == (
        6,
        "10.0.0.1",
        "10.0.0.129",
        1234,
        80,
    )
    assert p.flags == 0x12 and p.src == ip_to_int("10.0.0.1")
    u = parse(udp("10.0.0.1", "10.0.0.2", 5, 6))
    assert (u.proto, u.sport, u.dport) == (17, 5, 6)
    i = parse(echo("10.0.0.1", "10.0.0.2", 99))
    assert (i.proto, i.sport, i.dport, i.icmp_type) == (1, 99, 99, 8)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (raw(E / IPv6() / UDP()), "ipv6_unsupported"),
        (raw(E / Dot1Q(vlan=5) / IP() / UDP()), "vlan_unsupported"),
        (raw(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()), NOT_STEERED),
        (raw(E / IP(options=b"\x01\x01\x01\x01") / UDP()), "ip_options"),
        (raw(E / IP(flags="MF") / UDP()), "fragment"),
        (raw(E / IP(frag=100) / UDP()), "fragment"),
        (raw(E / IP(chksum=1) / UDP()), "bad_ip_checksum"),
        (raw(E / IP(proto=47) / (b"gre!" * 4)), "unsupported_protocol"),
        (raw(E / IP() / TCP(dataofs=15)), "bad_tcp_header"),
        (raw(E / IP() / UDP(len=4)), "bad_udp_header"),
        (raw(E / IP(proto=1) / b"\x03\x01\x00\x00\x00\x00\x00\x00"), "icmp_unsupported"),
        (tcp("10.0.0.1", "10.0.0.2", 1, 2)[:40], "truncated"),
        (b"\x00" * 10, "truncated"),
        (raw(E / IP(len=400) / UDP()), "truncated"),
        (raw(E / b"\x12\x34"), "unsupported_ethertype"),
    ],
)
def test_bad_frames_have_a_reason(frame, reason):
    assert parse(frame) == reason


def test_ethernet_padding_is_kept_and_ignored():
    frame = tcp("10.0.0.1", "10.0.0.2", 1, 2, "S") + b"\x00" * 6  # padded to 60 bytes
    p = parse(frame)
    assert isinstance(p, Packet)
    out = rewrite(frame, p, src=ip_to_int("192.0.2.1"), sport=20000)
    assert len(out) == len(frame) and out.endswith(b"\x00" * 6)
    assert checksums_ok(out)


@given(
    proto=st.sampled_from(["tcp", "udp", "udp0", "icmp"]),
    src=st.integers(0, 2**32 - 1),
    dst=st.integers(0, 2**32 - 1),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    payload=st.binary(max_size=64),
)
@settings(max_examples=150, deadline=None)
def test_rewrite_keeps_checksums_valid(proto, src, dst, sport, dport, payload):
    if proto == "tcp":
        frame = tcp("10.1.2.3", "10.4.5.6", 1000, 2000, "PA", payload)
    elif proto.startswith("udp"):
        frame = raw(E / IP(src="10.1.2.3", dst="10.4.5.6") / UDP(sport=1, dport=2) / payload)
        if proto == "udp0":  # "no checksum" must stay so
            frame = frame[:40] + b"\x00\x00" + frame[42:]
    else:
        frame = echo("10.1.2.3", "10.4.5.6", 1000)
    p = parse(frame)
    out = rewrite(frame, p, src=src, sport=sport, dst=dst, dport=dport)
    assert checksums_ok(out)
    q = parse(out)
    assert isinstance(q, Packet) and (q.src, q.dst) == (src, dst)
    if proto == "udp0":
        assert out[40:42] == b"\x00\x00"


@given(
    proto=st.sampled_from(["tcp", "udp", "udp0", "icmp"]),
    addr=st.one_of(st.just(None), st.integers(0, 2**32 - 1)),  # None: unchanged
    port=st.one_of(st.just(None), st.integers(0, 65535)),
    ip_csum=st.one_of(st.just(None), st.sampled_from([0, 0xFFFF]), st.integers(0, 0xFFFF)),
    l4_csum=st.one_of(st.just(None), st.sampled_from([0, 0xFFFF]), st.integers(0, 0xFFFF)),
    dst=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_translate_equals_rewrite(proto, addr, port, ip_csum, l4_csum, dst):
    """The hand-written one-endpoint rewrite gives rewrite's bytes, checksums included
    (also for checksums that are already wrong, 0 or 0xFFFF, and for unchanged fields)."""
    if proto == "tcp":
        frame = tcp("10.1.2.3", "10.4.5.6", 1000, 2000, "PA", b"data")
    elif proto.startswith("udp"):
        frame = raw(E / IP(src="10.1.2.3", dst="10.4.5.6") / UDP(sport=1, dport=2) / b"x")
        if proto == "udp0":
            frame = frame[:40] + b"\x00\x00" + frame[42:]
    else:
        frame = echo("10.1.2.3", "10.4.5.6", 1000)
    coff = {"tcp": 50, "udp": 40, "udp0": 40, "icmp": 36}[proto]
    if ip_csum is not None:  # the parser checks the IP checksum: keep it valid then
        frame = frame[:24] + ip_csum.to_bytes(2, "big") + frame[26:]
    if l4_csum is not None and proto != "udp0":
        frame = frame[:coff] + l4_csum.to_bytes(2, "big") + frame[coff + 2 :]
    p = parse(frame)
    if not isinstance(p, Packet):
        return  # a corrupted IP checksum: never reaches a rewrite
    a = (p.dst if dst else p.src) if addr is None else addr
    o = (p.dport if dst else p.sport) if port is None else port
    want = rewrite(frame, p, dst=a, dport=o) if dst else rewrite(frame, p, src=a, sport=o)
    assert translate(frame, p, a, o, dst) == want


VALID = [
    tcp("10.0.0.1", "10.0.0.129", 40000, 80, "S"),
    tcp("10.0.0.1", "10.0.0.100", 40000, 80, "S"),
    tcp("198.51.100.7", "192.0.2.1", 443, 20000, "SA"),
    udp("10.0.0.1", "10.0.0.100", 5, 53),
    echo("10.0.0.1", "198.51.100.7", 3),
]
KINDS = ("firewall", "nat", "lb")


def mutated_frames():
    flips = st.lists(st.tuples(st.integers(0, 1600), st.integers(0, 255)), max_size=6)
    valid = st.tuples(st.sampled_from(VALID), flips, st.integers(0, 1600)).map(_mutate)
    return st.lists(st.one_of(st.binary(max_size=200), valid), min_size=1, max_size=16)


def _mutate(args):
    frame, flips, cut = args
    b = bytearray(frame)
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    return bytes(b[: max(cut, 14)] if cut < len(b) else b)


def _check_batch(p, frames):
    out = p.process(frames)
    c = p.counters
    assert c.processed + c.not_steered >= len(frames)
    assert len(out) <= len(frames)
    for frame in out:
        assert isinstance(parse(frame), Packet)  # we only ever send well-formed frames


@given(frames=mutated_frames(), kind=st.sampled_from(KINDS))
@settings(max_examples=300, deadline=None)
def test_fuzz_local_state_never_crashes(frames, kind):
    _check_batch(processor(kind, None), frames)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    import shutil

    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path_factory.mktemp("nfredis"))
    server.start()
    yield server
    server.stop()


@given(frames=mutated_frames(), kind=st.sampled_from(KINDS))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzz_redis_state_never_crashes(shared_redis, frames, kind):
    _check_batch(processor(kind, shared_redis.url), frames)


def test_parser_is_never_the_exception():
    import random

    rng = random.Random(7)
    for _ in range(20000):
        frame = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80)))
        if len(frame) > 14 and rng.random() < 0.5:
            frame = frame[:12] + b"\x08\x00\x45" + frame[15:]  # mostly-plausible IPv4
        assert isinstance(parse(frame), Packet | str)
