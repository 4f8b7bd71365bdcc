"""Heartbeats come from the packet loop: they keep coming while the instance is saturated
with new flows, stop when the process stops, and the interval follows the TTL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis
from conftest import require, unique_name
from nf_support import FW, NFSTEER, NFProcess, tcp, veth_pair, write_topology

from contract import keys

TTL_MS = 300
LOAD_S = 3.0

# Sends firewall SYNs of ever new 5-tuples as fast as one process can: a copy of each
# template (one per source address, checksums right) with a fresh source port per frame.
SENDER = """
import socket, struct, sys, time
iface, seconds = sys.argv[1], float(sys.argv[2])
frames = [bytearray(bytes.fromhex(h)) for h in sys.argv[3].split(",")]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
pack, send, k, n, port = struct.pack_into, s.send, len(frames), 0, 1024
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(64):
        f = frames[n % k]
        pack("!H", f, 34, port)
        try:
            send(f)
        except OSError:
            pass
        n += 1
        if n % k == 0:
            port = port + 1 if port < 65535 else 1024
print(n)
"""


@pytest.fixture
def veth():
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    with veth_pair(unique_name("nh")) as pair:
        yield pair


def _start(tmp_path, redis_server, nf_if, pool, name, *extra):
    cfg = write_topology(tmp_path / "t.yaml", pool, "firewall", FW)
    nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", pool,
                   "--name", name, "--redis", redis_server.url, "--config", str(cfg),
                   "--heartbeat-ttl-ms", str(TTL_MS), *extra)  # fmt: skip
    nf.wait_ready()
    return nf


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Watcher:
    """Polls a heartbeat key every 10 ms: whether it ever vanished, and the longest time
    between two beats seen (a beat is a new value)."""

    def __init__(self, client: redis.Redis, key: str):
        self.r, self.key = client, key
        self.missing = 0
        self.polls = 0
        self.min_pttl = TTL_MS
        self.max_gap_ms = 0.0

    def watch(self, seconds: float, until=None) -> None:
        last_value, last_change = None, time.monotonic()
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            p = self.r.pipeline(transaction=False)
            p.get(self.key)
            p.pttl(self.key)
            value, pttl = p.execute()
            now = time.monotonic()
            self.polls += 1
            if value is None:
                self.missing += 1
            else:
                self.min_pttl = min(self.min_pttl, pttl)
                if value != last_value:
                    if last_value is not None:
                        self.max_gap_ms = max(self.max_gap_ms, (now - last_change) * 1000)
                    last_value, last_change = value, now
            time.sleep(0.01)


def test_heartbeat_survives_a_flood_of_new_flows(redis_server, veth, tmp_path):
    outside, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pool, name = "hbl", "fwh"
    nf = _start(tmp_path, redis_server, nf_if, pool, name)
    sender = None
    try:
        hb = keys.heartbeat(pool, name)
        _wait(lambda: r.exists(hb), 5, "the first heartbeat")
        with open(f"/sys/class/net/{nf_if}/address") as f:
            nf_mac = f.read().strip()
        # Allowed SYNs, so every frame creates connection state (one store op each).
        templates = [tcp(f"10.0.0.{i}", "10.0.0.129", 1024, 80, "S").hex() for i in range(1, 101)]
        assert nf_mac  # frames go to another MAC than the NF's: steered, as by the switch
        before = nf.stats()["counters"]
        sender = subprocess.Popen(
            [sys.executable, "-c", SENDER, outside, str(LOAD_S), ",".join(templates)],
            stdout=subprocess.PIPE,
            text=True,
        )
        w = Watcher(r, hb)
        w.watch(LOAD_S + 5, until=lambda: sender.poll() is not None)
        w.watch(0.3)  # and the backlog the NF may still be working through
        sent = int(sender.communicate(timeout=10)[0])
        after = nf.stats()
        c = after["counters"]
        print(
            f"\nheartbeat TTL {TTL_MS} ms under load: largest gap between beats "
            f"{w.max_gap_ms:.0f} ms, lowest PTTL seen {w.min_pttl} ms, key missing in "
            f"{w.missing}/{w.polls} polls; frames sent {sent}, processed "
            f"{c['processed'] - before['processed']}, store batches "
            f"{c['batches'] - before['batches']}, heartbeat {after.get('heartbeat')}"
        )
        assert w.polls > 100
        assert w.missing == 0, f"heartbeat key expired under load ({w.missing} polls)"
        assert c["processed"] - before["processed"] > 1000, "the instance was not loaded"
        assert r.exists(keys.instance(pool, name))
        # Under load the heartbeat rode along with the batches (no round trip of its own).
        assert after["heartbeat"]["with_batch"] > 0
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait()
        nf.stop()


def test_a_stopped_process_stops_heartbeating(redis_server, veth, tmp_path):
    _, nf_if = veth
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    pool, name = "hbs", "fws"
    nf = _start(tmp_path, redis_server, nf_if, pool, name)
    try:
        hb = keys.heartbeat(pool, name)
        _wait(lambda: r.exists(hb), 5, "the first heartbeat")
        time.sleep(0.2)
        os.kill(nf.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            _wait(lambda: not r.exists(hb), TTL_MS / 1000 + 0.5, "the heartbeat to expire")
            gone_ms = (time.monotonic() - stopped) * 1000
            print(f"\nheartbeat key gone {gone_ms:.0f} ms after SIGSTOP")
            time.sleep(0.2)
            assert not r.exists(hb)  # nothing else beats for it
        finally:
            os.kill(nf.proc.pid, signal.SIGCONT)
        _wait(lambda: r.exists(hb), 2, "the heartbeat to return")
        assert r.exists(keys.instance(pool, name)) and nf.proc.poll() is None
    finally:
        nf.stop()


def test_interval_follows_the_ttl():
    from nf.heartbeat import default_interval_ms, interval_error

    assert default_interval_ms(500) == 100 == keys.HEARTBEAT_INTERVAL_MS
    assert default_interval_ms(300) == 60
    assert default_interval_ms(10) == 2
    assert interval_error(300, 60) is None
    assert interval_error(300, 149) is None
    assert "below half" in interval_error(300, 150)
    assert interval_error(300, 0) is not None
    assert interval_error(0, None) is not None


def test_due_beats_follow_the_interval():
    from nf.heartbeat import Heartbeat

    hb = Heartbeat(None, "k", ttl_ms=300, interval_ms=60)
    assert not hb.due(0.0)  # not before the instance is registered
    hb.enabled = True
    assert hb.due(0.0)
    hb.beat(0.0, with_batch=True)
    assert not hb.due(0.059) and hb.due(0.060)
    hb.beat(0.2, with_batch=False)
    assert hb.max_gap_ms == 200
    assert hb.stats()["with_batch"] == 1 and hb.stats()["alone"] == 1
    assert hb.loop_alive(0.2 + 0.299) and not hb.loop_alive(0.2 + 0.3)
    cmd = hb.command()
    assert cmd[:2] == ["SET", "k"] and cmd[3:] == ["PX", "300"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--heartbeat-ttl-ms", "300", "--heartbeat-interval-ms", "150"], "below half"),
        (["--heartbeat-ttl-ms", "0"], "--heartbeat-ttl-ms"),
        (["--heartbeat-interval-ms", "0"], "--heartbeat-interval-ms"),
    ],
)
def test_bad_heartbeat_settings_are_one_line(args, message):
    cmd = [NFSTEER, "nf", "--kind", "lb", "--interface", "lo", "--pool", "p"]
    cmd += ["--state", "local", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
