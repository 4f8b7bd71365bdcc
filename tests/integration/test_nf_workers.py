"""`nfsteer nf --workers N`: several real worker processes in one fanout group behind one
registration: traffic spread over workers without reordering within a connection, summed
counters, one heartbeat, a killed or hung worker restarted with the heartbeat withheld
meanwhile, drain and deregistration on SIGTERM, an interface that disappears, bad
--workers values."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis
from conftest import require, unique_name
from nf_support import (
    FW,
    NAT,
    NFSTEER,
    NFProcess,
    raw_socket,
    receive,
    tcp,
    veth_pair,
    write_topology,
)

from contract import keys

C, S = "10.0.0.1", "10.0.0.129"


@pytest.fixture
def veth():
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    with veth_pair(unique_name("nw")) as pair:
        yield pair


def _wait(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _start(tmp_path, nf_if, *extra):
    cfg = write_topology(tmp_path / "t.yaml", "nwp", "firewall", FW)
    nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", "nwp",
                   "--name", "fww", "--config", str(cfg), "--workers", "2", *extra)  # fmt: skip
    nf.wait_ready()
    return nf


def _matching(sock, count, keep, timeout=5.0):
    """Frames back from the NF that ``keep`` accepts, up to ``count``."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        out += [f for f in receive(sock, count - len(out), timeout=0.2) if keep(f)]
    return out


def _open_flows(sock, flows):
    """Three-way handshakes for ``flows`` source ports (so data may pass)."""
    for sport in flows:
        sock.send(tcp(C, S, sport, 80, "S"))
        sock.send(tcp(S, C, 80, sport, "SA", src_mac="02:00:00:00:00:81",
                      dst_mac="02:00:00:00:00:01"))  # fmt: skip
        sock.send(tcp(C, S, sport, 80, "A"))
    return receive(sock, 3 * len(flows), timeout=5)


def test_workers_share_traffic_in_order_with_one_registration(redis_server, veth, tmp_path):
    outside, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    nf = _start(tmp_path, nf_if, "--redis", redis_server.url, "--heartbeat-ttl-ms", "400")
    try:
        _wait(lambda: r.exists(keys.instance("nwp", "fww")), what="registration")
        assert r.smembers(keys.members("nwp")) == {"fww"}
        sock = raw_socket(outside)
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: hold every reply
        flows = list(range(42000, 42064))
        assert len(_open_flows(sock, flows)) == 3 * len(flows)
        # Data in sequence order on every flow, interleaved across flows.
        per_flow = 20
        sent = [(sport, seq) for seq in range(per_flow) for sport in flows]
        frames = [tcp(C, S, sport, 80, "PA", payload=seq.to_bytes(4, "big")) for sport, seq in sent]
        for f in frames:
            sock.send(f)
        ours = set(flows)
        got = _matching(
            sock, len(sent), lambda f: int.from_bytes(f[34:36], "big") in ours and len(f) >= 58
        )
        assert len(got) == len(sent)
        order: dict[int, list[int]] = {}
        for f in got:
            sport = int.from_bytes(f[34:36], "big")
            order.setdefault(sport, []).append(int.from_bytes(f[54:58], "big"))
        assert all(v == list(range(per_flow)) for v in order.values()), "reordered"
        # Each worker reports every interval: wait until both reports cover every frame.
        expected = len(flows) * (3 + per_flow)
        _wait(lambda: nf.stats()["counters"].get("processed", 0) >= expected, 5,
              "summed counters")  # fmt: skip
        st = nf.stats()
        assert st["counters"]["processed"] == expected
        assert st["counters"]["sent"] == expected
        per_worker = [w["processed"] for w in st["workers"]]
        assert len(per_worker) == 2 and min(per_worker) > 0, per_worker  # both carry flows
        assert r.get(keys.heartbeat("nwp", "fww")) is not None
        assert r.pttl(keys.heartbeat("nwp", "fww")) > 0
    finally:
        nf.signal(signal.SIGTERM)
        assert nf.stop() == 0
    assert not r.exists(keys.instance("nwp", "fww"))
    assert nf.final["state"] == "stopped"


def test_a_killed_or_hung_worker_is_restarted_and_beats_pause(redis_server, veth, tmp_path):
    outside, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hb = keys.heartbeat("nwp", "fww")
    nf = _start(tmp_path, nf_if, "--redis", redis_server.url, "--heartbeat-ttl-ms", "300")
    try:
        _wait(lambda: r.exists(hb), what="heartbeat")
        pids = [w["pid"] for w in nf.stats()["workers"]]
        # Hung: stopped, not dead. Beats are withheld after half the TTL, the worker is
        # killed after the TTL and a new one started; then beats resume.
        t0 = time.monotonic()
        os.kill(pids[0], signal.SIGSTOP)
        _wait(lambda: nf.stats()["workers"][0]["pid"] != pids[0], 3, "hung worker replaced")
        assert time.monotonic() - t0 < 1.5
        _wait(lambda: nf.stats()["heartbeat"]["withheld"] > 0, 2, "beats withheld")
        _wait(lambda: r.exists(hb), 3, "heartbeat to resume")
        # Dead: killed outright.
        os.kill(pids[1], signal.SIGKILL)
        _wait(lambda: nf.stats()["workers"][1]["pid"] != pids[1], 3, "dead worker replaced")
        st = nf.stats()
        assert all(w["restarts"] >= 1 for w in st["workers"])
        sock = raw_socket(outside)
        flows = list(range(43000, 43016))
        assert len(_open_flows(sock, flows)) == 3 * len(flows)  # both new workers carry
        assert r.exists(keys.instance("nwp", "fww"))
    finally:
        nf.signal(signal.SIGTERM)
        assert nf.stop() == 0
    assert not r.exists(keys.instance("nwp", "fww"))


def test_a_worker_that_keeps_dying_stops_the_instance(redis_server, veth, tmp_path):
    _, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    nf = _start(tmp_path, nf_if, "--redis", redis_server.url)
    try:
        _wait(lambda: r.exists(keys.instance("nwp", "fww")), what="registration")
        for _ in range(4):
            pid = nf.stats()["workers"][0]["pid"]
            os.kill(pid, signal.SIGKILL)
            _wait(lambda p=pid: nf.proc.poll() is not None or
                  nf.stats()["workers"][0]["pid"] != p, 3, "restart")  # fmt: skip
        _wait(lambda: nf.proc.poll() is not None, 5, "instance to stop")
    finally:
        code = nf.stop()
    assert code == 1
    assert not r.exists(keys.instance("nwp", "fww")), "registered but dead"
    assert "stopping the instance" in nf.log.read_text()


def test_interface_that_disappears_stops_the_instance(redis_server, tmp_path):
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for workers in ("1", "2"):
        name = unique_name("ng")
        subprocess.run(["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name",
                        f"{name}b"], check=True)  # fmt: skip
        subprocess.run(["ip", "link", "set", f"{name}b", "up"], check=True)
        cfg = write_topology(tmp_path / "t.yaml", "nwp", "firewall", FW)
        nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", f"{name}b", "--pool",
                       "nwp", "--name", "fwg", "--config", str(cfg), "--workers", workers,
                       "--redis", redis_server.url)  # fmt: skip
        try:
            nf.wait_ready()
            _wait(lambda: r.exists(keys.instance("nwp", "fwg")), what="registration")
            subprocess.run(["ip", "link", "del", f"{name}a"], check=True)
            _wait(lambda p=nf.proc: p.poll() is not None, 5, "instance to stop")
        finally:
            code = nf.stop()
            subprocess.run(["ip", "link", "del", f"{name}a"], capture_output=True)
        assert code == 2, workers
        assert not r.exists(keys.instance("nwp", "fwg")), "registered but dead"
        errors = [ln for ln in nf.log.read_text().splitlines() if "disappeared" in ln]
        assert errors and "Traceback" not in nf.log.read_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "--workers must be at least 1"),
        ("-1", "--workers must be a whole number or auto"),
        ("two", "--workers must be a whole number or auto"),
        ("100000", "CPU(s) available"),
        ("local-nat", "--workers above 1 needs --state redis for nat"),
    ],
)
def test_bad_workers_value_is_one_line(veth, value, message):
    _, nf_if = veth
    kind = "firewall"
    if value == "local-nat":
        kind, value = "nat", "2"
    p = subprocess.run(
        [NFSTEER, "nf", "--kind", kind, "--interface", nf_if, "--pool", "p",
         "--state", "local", "--workers", value],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr


@pytest.mark.parametrize("rx", ["ring", "blocks", "socket"])
def test_every_receive_mode_carries_a_connection(veth, tmp_path, rx):
    outside, nf_if = veth
    cfg = write_topology(tmp_path / "t.yaml", "nwp", "firewall", FW)
    nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", "nwp",
                   "--name", "fwr", "--config", str(cfg), "--state", "local",
                   "--rx", rx)  # fmt: skip
    try:
        nf.wait_ready()
        sock = raw_socket(outside)
        assert len(_open_flows(sock, [44000, 44001])) == 6
        sock.send(tcp(C, S, 44002, 80, "A"))  # no connection: dropped and counted
        _wait(lambda: nf.stats()["counters"]["dropped"].get("fw_no_connection") == 1, 3,
              "the drop to be counted")  # fmt: skip
        assert nf.stats()["rx"] == rx
    finally:
        assert nf.stop() == 0


def test_drain_keeps_every_worker_forwarding_until_the_slots_are_gone(redis_server, veth, tmp_path):
    outside, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    inst = keys.instance("nwp", "fww")
    nf = _start(tmp_path, nf_if, "--redis", redis_server.url, "--drain-grace", "20")
    try:
        _wait(lambda: r.exists(inst), what="registration")
        r.hset(inst, "slots", 5)  # as the controller would
        nf.signal(signal.SIGTERM)
        _wait(lambda: r.hget(inst, "state") == "draining", what="drain")
        sock = raw_socket(outside)
        flows = list(range(45000, 45032))
        assert len(_open_flows(sock, flows)) == 3 * len(flows)  # both workers still carry
        assert nf.proc.poll() is None
        r.hset(inst, "slots", 0)  # the controller moved every slot away
        _wait(lambda: nf.proc.poll() is not None, 5, "exit after the drain")
    finally:
        code = nf.stop()
    assert code == 0 and not r.exists(inst)
    assert nf.final["counters"]["processed"] == 3 * len(flows)


def test_workers_die_with_the_parent(veth, tmp_path):
    _, nf_if = veth
    nf = _start(tmp_path, nf_if, "--state", "local")
    try:
        pids = [w["pid"] for w in nf.stats()["workers"]]
        nf.proc.kill()
        nf.proc.wait(5)

        def gone(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(")")[-1].split()[0] == "Z"
            except FileNotFoundError:
                return True

        _wait(lambda: all(gone(p) for p in pids), 3, "workers to die with their parent")
    finally:
        nf.stop()


def test_nat_return_traffic_reaching_the_other_worker_is_translated(redis_server, veth, tmp_path):
    """A NAT's reply carries the public address: the fanout hash may give it to the worker
    that did not translate the request. With state in Redis every reply is translated."""
    outside, nf_if = veth
    cfg = write_topology(tmp_path / "t.yaml", "nwn", "nat", NAT)
    nf = NFProcess(tmp_path, "--kind", "nat", "--interface", nf_if, "--pool", "nwn",
                   "--name", "natw", "--config", str(cfg), "--workers", "2",
                   "--redis", redis_server.url)  # fmt: skip
    try:
        nf.wait_ready()
        sock = raw_socket(outside)
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
        flows = list(range(46000, 46048))
        for sport in flows:
            sock.send(tcp(C, S, sport, 80, "S"))
        out = _matching(sock, len(flows), lambda f: f[26:30] == bytes([192, 0, 2, 1]))
        assert len(out) == len(flows)
        public = {int.from_bytes(f[34:36], "big"): int.from_bytes(f[36:38], "big") for f in out}
        for port in public:
            sock.send(tcp(S, "192.0.2.1", 80, port, "SA", src_mac="02:00:00:00:00:81",
                          dst_mac="02:00:00:00:00:01"))  # fmt: skip
        back = _matching(sock, len(flows), lambda f: f[30:34] == bytes([10, 0, 0, 1]))
        assert sorted(int.from_bytes(f[36:38], "big") for f in back) == flows
        _wait(lambda: nf.stats()["counters"].get("processed", 0) == 2 * len(flows), 3,
              "counters")  # fmt: skip
        per_worker = [w["processed"] for w in nf.stats()["workers"]]
        assert min(per_worker) > 0, per_worker
    finally:
        assert nf.stop() == 0
