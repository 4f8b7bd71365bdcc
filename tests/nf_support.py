"""Helpers for the NF tests: real frames (scapy), stores, veth pairs, NF processes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from contract.nf_settings import settings_for_kind
from nf.instance import build_nf
from nf.runtime import Processor
from nf.state import LocalStore, redis_client, redis_store

REPO = Path(__file__).resolve().parents[1]
NFSTEER = str(REPO / ".venv" / "bin" / "nfsteer")
CLIENT_MAC = "02:00:00:00:00:01"
SERVER_MAC = "02:00:00:00:00:81"

FW = {
    "inside": ["10.0.0.0/25"],
    "rules": [
        {"action": "deny", "proto": "tcp", "dst_ports": [23]},
        {"action": "allow", "proto": "tcp", "dst": "10.0.0.128/25"},
        {"action": "allow", "proto": "udp", "dst": "10.0.0.128/25"},
        {"action": "allow", "proto": "icmp"},
    ],
    "default": "deny",
}
NAT = {"inside": ["10.0.0.0/25"], "public_ip": "192.0.2.1", "port_min": 20000, "port_max": 20999}
LB = {
    "vips": [
        {
            "vip": "10.0.0.100",
            "port": 80,
            "backends": [
                {"ip": "10.0.0.129", "port": 8080, "weight": 1},
                {"ip": "10.0.0.130", "port": 8080, "weight": 3},
            ],
        },
        {
            "vip": "10.0.0.100",
            "port": 53,
            "proto": "udp",
            "backends": [{"ip": "10.0.0.131", "port": 5353}],
        },
    ]
}
SETTINGS = {"firewall": FW, "nat": NAT, "lb": LB}


def _eth(src_mac: str = CLIENT_MAC, dst_mac: str = SERVER_MAC) -> Ether:
    return Ether(src=src_mac, dst=dst_mac)


def tcp(src, dst, sport, dport, flags="A", payload=b"", **eth) -> bytes:
    pkt = _eth(**eth) / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
    return raw(pkt / Raw(payload)) if payload else raw(pkt)


def udp(src, dst, sport, dport, payload=b"x", **eth) -> bytes:
    return raw(_eth(**eth) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


def echo(src, dst, ident, reply=False, **eth) -> bytes:
    return raw(_eth(**eth) / IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident))


def checksums_ok(frame: bytes) -> bool:
    """True when scapy computes the same IP and L4 checksums as the frame carries."""
    p = Ether(frame)
    fresh = p.copy()
    del fresh[IP].chksum
    layer = TCP if TCP in p else UDP if UDP in p else ICMP
    if layer is UDP and p[UDP].chksum == 0:
        return Ether(raw(fresh))[IP].chksum == p[IP].chksum
    del fresh[layer].chksum
    rebuilt = Ether(raw(fresh))
    return rebuilt[IP].chksum == p[IP].chksum and rebuilt[layer].chksum == p[layer].chksum


def processor(kind: str, url: str | None, pool: str = "p", **overrides: Any) -> Processor:
    """An NF of ``kind`` over Redis (url) or over local state (url None)."""
    settings = settings_for_kind(kind, {**SETTINGS[kind], **overrides})
    nf = build_nf(kind, pool, settings)
    store = redis_store(redis_client(url), [nf.script]) if url else LocalStore()
    return Processor(nf, store, fail_open=False)


def one(p: Processor, frame: bytes) -> bytes | None:
    out = p.process([frame])
    assert len(out) <= 1
    return out[0] if out else None


def write_topology(path: Path, pool: str, kind: str, nf: dict, instances: dict | None = None):
    doc = {
        "name": "nftest",
        "switches": {"s1": {"dpid": 1}},
        "pools": {pool: {"kind": kind, "membership": "registered", "nf": nf}},
    }
    if instances:
        doc["pools"][pool]["instances"] = instances
    path.write_text(yaml.safe_dump(doc))
    return path


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@contextlib.contextmanager
def veth_pair(name: str) -> Iterator[tuple[str, str]]:
    """A veth pair ``name``a <-> ``name``b, up, without IPv6 chatter; deleted on exit."""
    a, b = f"{name}a", f"{name}b"
    run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        for i in (a, b):
            subprocess.run(
                ["sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1"], capture_output=True
            )
            run("ip", "link", "set", i, "up")
        yield a, b
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)


def raw_socket(interface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind((interface, 0x0003))
    s.setblocking(False)
    return s


def receive(sock: socket.socket, count: int, timeout: float = 2.0) -> list[bytes]:
    """Frames for other MACs arriving on ``sock`` (what an NF sent back), up to count."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not select.select([sock], [], [], left)[0]:
            continue
        while True:
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            if addr[2] == 3:  # PACKET_OTHERHOST: not our own transmissions
                out.append(data)
    return out


class NFProcess:
    """A real `nfsteer nf` process."""

    def __init__(self, tmp: Path, *args: str):
        self.stats_file = tmp / f"stats-{os.getpid()}-{time.monotonic_ns()}.json"
        self.log = tmp / f"nf-{time.monotonic_ns()}.log"
        cmd = [NFSTEER, "nf", *args, "--stats-file", str(self.stats_file)]
        cmd += ["--stats-interval", "0.1"]
        self.logf = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logf, text=True)
        self.final: dict | None = None
        self.signalled = False

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nf exited early: {self.log.read_text()}")
            if self.stats_file.exists():
                return
            time.sleep(0.05)
        raise AssertionError(f"nf not ready: {self.log.read_text()}")

    def stats(self) -> dict:
        return json.loads(self.stats_file.read_text())

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.signalled = True

    def stop(self, timeout: float = 10.0) -> int:
        # Not a second time: a signal arriving while the interpreter shuts down (its
        # handlers already reset) would kill it and hide its exit status.
        if self.proc.poll() is None and not self.signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.logf.close()
        lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
        self.final = json.loads(lines[-1]) if lines else None
        return self.proc.returncode


def python() -> str:
    return sys.executable
