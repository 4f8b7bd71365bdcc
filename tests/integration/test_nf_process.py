"""Real `nfsteer nf` processes on real interfaces (veth pairs): frames in one side,
processed frames out; registration, heartbeats and drain-on-SIGTERM as seen in Redis."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import redis
from conftest import require, unique_name
from nf_support import (
    FW,
    NAT,
    NFSTEER,
    SERVER_MAC,
    NFProcess,
    checksums_ok,
    raw_socket,
    receive,
    tcp,
    veth_pair,
    write_topology,
)
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import raw

from contract import keys

C, S = "10.0.0.1", "10.0.0.129"


@pytest.fixture
def veth():
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    with veth_pair(unique_name("np")) as pair:
        yield pair


def _wait(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _messages(pubsub) -> list[str]:
    out = []
    while (m := pubsub.get_message(timeout=0.05)) is not None:
        if m["type"] == "message":
            out.append(m["data"])
    return out


def test_firewall_process_end_to_end(redis_server, veth, tmp_path):
    outside, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pool, name = "nfp", "fwa"
    pubsub = r.pubsub()
    pubsub.subscribe(keys.events(pool))
    cfg = write_topology(tmp_path / "t.yaml", pool, "firewall", FW)
    nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", pool,
                   "--name", name, "--redis", redis_server.url, "--config", str(cfg),
                   "--capacity", "2", "--drain-grace", "20")  # fmt: skip
    try:
        nf.wait_ready()
        inst = keys.instance(pool, name)
        _wait(lambda: r.exists(inst), what="registration")
        h = r.hgetall(inst)
        with open(f"/sys/class/net/{nf_if}/address") as f:
            nf_mac = f.read().strip()
        assert {k: h[k] for k in ("name", "pool", "kind", "mac", "interface", "capacity")} == {
            "name": name, "pool": pool, "kind": "firewall", "mac": nf_mac,
            "interface": nf_if, "capacity": "2",
        }  # fmt: skip
        assert h["state"] == "active" and int(h["pid"]) == nf.proc.pid
        assert r.sismember(keys.members(pool), name)
        hb = keys.heartbeat(pool, name)
        first = r.get(hb)
        assert 0 < r.pttl(hb) <= keys.HEARTBEAT_TTL_MS
        _wait(lambda: r.get(hb) != first, what="a heartbeat")

        sock = raw_socket(outside)
        allowed = [
            tcp(C, S, 40000, 80, "S"),
            tcp(S, C, 80, 40000, "SA", src_mac=SERVER_MAC, dst_mac="02:00:00:00:00:01"),
            tcp(C, S, 40000, 80, "A"),
            tcp(C, S, 40000, 80, "PA", b"x" * 1400),
        ]
        denied = tcp(S, C, 80, 40001, "S")
        own = tcp(C, S, 40002, 80, "S", dst_mac=nf_mac)  # the NF's own traffic: not steered
        bcast = raw(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01") / ARP(pdst=S))
        for frame in [*allowed[:1], denied, own, bcast, *allowed[1:]]:
            sock.send(frame)
            time.sleep(0.01)  # keep the handshake's order on the wire
        got = receive(sock, 5, timeout=1.5)
        assert got == allowed
        _wait(lambda: nf.stats()["counters"]["sent"] == 4, what="stats")
        c = nf.stats()["counters"]
        assert c["dropped"] == {"fw_denied": 1}
        assert c["not_steered"] >= 2 and c["processed"] == 5
        assert c["store_round_trips"] >= 1
        assert r.get(f"nfsteer:fw:{pool}:{{6:{C}:40000:{S}:80}}") is not None
        stats_in_redis = r.get(f"nfsteer:{{{pool}}}:stats:{name}")
        assert stats_in_redis and '"sent"' in stats_in_redis

        # Drain: SIGTERM marks the instance draining but it keeps processing ...
        nf.signal(signal.SIGTERM)
        _wait(lambda: r.hget(inst, "state") == "draining", what="draining")
        sock.send(tcp(S, C, 80, 40000, "PA", b"still here"))
        assert len(receive(sock, 1)) == 1
        assert nf.proc.poll() is None
        # ... until the controller has taken its slots away.
        r.hset(inst, mapping={"slots": 0, "epoch": 7})
        assert nf.proc.wait(5) == 0
        assert not r.exists(inst) and not r.exists(hb)
        assert not r.sismember(keys.members(pool), name)
        assert _messages(pubsub) == [f"register {name}", f"drain {name}", f"deregister {name}"]
        sock.close()
    finally:
        nf.stop()
    assert nf.final["counters"]["sent"] == 5
    assert nf.final["state"] == "stopped"


def _nat_pair(state, redis_server, tmp_path, veths):
    cfg = write_topology(tmp_path / f"{state}.yaml", "natp", "nat", NAT)
    procs = []
    for i, (_, nf_if) in enumerate(veths):
        procs.append(NFProcess(tmp_path, "--kind", "nat", "--interface", nf_if, "--pool",
                               "natp", "--name", f"nat{i}", "--redis", redis_server.url,
                               "--state", state, "--config", str(cfg)))  # fmt: skip
    return procs


@pytest.mark.parametrize("state", ["redis", "local"])
def test_nat_connection_carried_on_by_another_process(redis_server, tmp_path, state):
    require(os.geteuid() == 0, "root")
    with veth_pair(unique_name("np")) as v1, veth_pair(unique_name("np")) as v2:
        procs = _nat_pair(state, redis_server, tmp_path, [v1, v2])
        try:
            for p in procs:
                p.wait_ready()
            s1, s2 = raw_socket(v1[0]), raw_socket(v2[0])
            s1.send(tcp(C, "198.51.100.7", 40000, 443, "S"))
            (out,) = receive(s1, 1)
            o = Ether(out)
            assert o[IP].src == "192.0.2.1" and checksums_ok(out)
            # The reply is steered to the other instance.
            s2.send(tcp("198.51.100.7", "192.0.2.1", 443, o[TCP].sport, "SA"))
            back = receive(s2, 1, timeout=1.0)
            if state == "redis":
                assert len(back) == 1
                b = Ether(back[0])
                assert (b[IP].dst, b[TCP].dport) == (C, 40000) and checksums_ok(back[0])
            else:
                assert back == []
                _wait(lambda: procs[1].stats()["counters"]["dropped"], what="drop count")
                assert procs[1].stats()["counters"]["dropped"] == {"nat_no_mapping": 1}
            s1.close()
            s2.close()
        finally:
            for p in procs:
                p.signal(signal.SIGINT)
                p.signal(signal.SIGINT)  # a second signal stops without waiting to drain
            for p in procs:
                assert p.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "nat", "--interface", "lo", "--pool", "p", "--state", "local"], "public_ip"),
        (
            ["--kind", "lb", "--interface", "nfnosuchif", "--pool", "p", "--state", "local"],
            "does not exist",
        ),
        (["--kind", "lb", "--interface", "lo", "--pool", "p"], "--state redis needs --redis"),
        (
            [
                "--kind",
                "lb",
                "--interface",
                "lo",
                "--pool",
                "p",
                "--state",
                "local",
                "--config",
                "/nonexistent",
            ],
            "cannot read",
        ),
    ],
)
def test_bad_invocations_are_one_line(args, message):
    r = subprocess.run([NFSTEER, "nf", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
