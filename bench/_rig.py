"""A test rig for steering benchmarks: one OVS userspace bridge, veth pairs, raw frames.

The bridge has a client port (OpenFlow port 1) and instance ports (11, 12, ...). Each port
is one end of a veth pair; frames are injected on the far end of the client pair with an
AF_PACKET socket and captured on the far ends of the instance pairs, so which port a flow
left by is read off the wire. Everything is named with the ``sl`` prefix plus a random tag
and removed on exit, also on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
CLIENT_PORT = 1
INSTANCE_PORT_BASE = 10  # instance k (1-based) is OpenFlow port 10 + k


def sh(*args: str, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _quiet(dev: str) -> None:
    """No IPv6 on a rig interface: no router solicitations or MLD in the capture."""
    with (
        contextlib.suppress(OSError),
        open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f,
    ):
        f.write("1")


@dataclass
class Rig:
    n_instances: int
    dpid: int = 0x5E
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])

    def __post_init__(self) -> None:
        self.bridge = f"slb{self.tag}"
        self.client = (f"sl{self.tag}c", f"sl{self.tag}cx")  # (on the bridge, far end)
        self.instances = [
            (f"sl{self.tag}i{k}", f"sl{self.tag}i{k}x") for k in range(1, self.n_instances + 1)
        ]
        self._made: list[str] = []

    @staticmethod
    def instance_port(k: int) -> int:
        return INSTANCE_PORT_BASE + k

    def __enter__(self) -> Rig:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        for near, far in [self.client, *self.instances]:
            sh("ip", "link", "add", near, "type", "veth", "peer", "name", far)
            self._made.append(near)
            for dev in (near, far):
                _quiet(dev)
                sh("ip", "link", "set", dev, "up")
        cmd = ["ovs-vsctl", "add-br", self.bridge, "--", "set", "bridge", self.bridge]
        cmd += ["datapath_type=netdev", "protocols=OpenFlow13,OpenFlow15", "fail_mode=secure"]
        cmd += [f"other-config:datapath-id={self.dpid:016x}", "other-config:disable-in-band=true"]
        ports = [(self.client[0], CLIENT_PORT)]
        ports += [(near, self.instance_port(k)) for k, (near, _) in enumerate(self.instances, 1)]
        for dev, ofport in ports:
            cmd += ["--", "add-port", self.bridge, dev, "--", "set", "interface", dev]
            cmd += [f"ofport_request={ofport}"]
        sh(*cmd)
        _quiet(self.bridge)

    def close(self) -> None:
        sh("ovs-vsctl", "--if-exists", "del-br", self.bridge, check=False)
        for dev in self._made:
            sh("ip", "link", "del", dev, check=False)  # removes both ends of the pair
        self._made.clear()

    # -- OpenFlow programming without a controller ---------------------------------------

    def ofctl(self, *args: str, version: str = "OpenFlow15", input: str | None = None) -> str:
        return sh("ovs-ofctl", "-O", version, *args[:1], self.bridge, *args[1:], input=input)

    def set_controller(self, target: str | None) -> None:
        if target:
            sh("ovs-vsctl", "set-controller", self.bridge, target)
        else:
            sh("ovs-vsctl", "del-controller", self.bridge)

    def reset_tables(self) -> None:
        self.ofctl("del-flows")
        self.ofctl("del-groups")

    def settle(self) -> None:
        """Wait until the datapath's cached flows reflect the current OpenFlow tables."""
        for _ in range(2):
            sh("ovs-appctl", "revalidator/wait")


# -- flows and frames ----------------------------------------------------------------------


@dataclass(frozen=True)
class FlowSet:
    """N distinct TCP 5-tuples from ``src_net`` to ``dst_net`` and their SYN frames.

    Frames are packed by hand rather than with scapy: 20,000+ frames per run are built in
    well under a second this way, and the layout is fixed (IPv4, IHL 5, TCP, no options).
    """

    keys: list[bytes]  # src(4) dst(4) sport(2) dport(2), as in the frame at offset 26
    frames: list[bytes]

    @classmethod
    def make(
        cls, n: int, seed: int, src_net: str, dst_net: str, src_mac: str, dst_mac: str
    ) -> FlowSet:
        rng = random.Random(seed)
        src, dst = ipaddress.IPv4Network(src_net), ipaddress.IPv4Network(dst_net)
        seen: set[bytes] = set()
        keys, frames = [], []
        eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
        eth += struct.pack("!H", ETH_P_IP)
        while len(keys) < n:
            s = int(src.network_address) + rng.randrange(1, src.num_addresses - 1)
            d = int(dst.network_address) + rng.randrange(1, dst.num_addresses - 1)
            sport, dport = rng.randrange(1024, 65536), rng.choice((80, 443, 5001, 8080))
            key = struct.pack("!IIHH", s, d, sport, dport)
            if key in seen:
                continue
            seen.add(key)
            keys.append(key)
            frames.append(eth + _ipv4_tcp_syn(s, d, sport, dport, seq=rng.getrandbits(32)))
        return cls(keys, frames)

    @staticmethod
    def tuple_of(key: bytes) -> tuple[str, str, int, int]:
        s, d, sport, dport = struct.unpack("!IIHH", key)
        return str(ipaddress.IPv4Address(s)), str(ipaddress.IPv4Address(d)), sport, dport


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_tcp_syn(src: int, dst: int, sport: int, dport: int, seq: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = struct.pack("!IIBBH", src, dst, 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + tcp


# -- sending and capturing -----------------------------------------------------------------


class Capture:
    """Records, per flow key, the instance (1-based) whose port each TCP frame left by."""

    def __init__(self, devices: list[str]):
        self.socks = []
        for dev in devices:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
            s.bind((dev, ETH_P_IP))
            s.setblocking(False)
            self.socks.append(s)
        self.by_fd = {s.fileno(): k for k, s in enumerate(self.socks, 1)}
        self.seen: dict[bytes, int] = {}
        self.conflicts: set[bytes] = set()  # flows seen leaving by two different ports
        self.frames = 0
        self.last_frame = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.seen = {}
            self.conflicts = set()
            self.frames = 0

    def _loop(self) -> None:
        poller = select.poll()
        for s in self.socks:
            poller.register(s, select.POLLIN)
        buf = bytearray(2048)
        while not self._stop.is_set():
            for fd, _ in poller.poll(50):
                s = self.socks[self.by_fd[fd] - 1]
                k = self.by_fd[fd]
                while True:
                    try:
                        n = s.recv_into(buf)
                    except BlockingIOError:
                        break
                    # IPv4 (IHL 5) TCP only: the frames this rig sent.
                    if n < 54 or buf[14] != 0x45 or buf[23] != 6:
                        continue
                    key = bytes(buf[26:38])
                    with self._lock:
                        self.frames += 1
                        self.last_frame = time.monotonic()
                        old = self.seen.setdefault(key, k)
                        if old != k:
                            self.conflicts.add(key)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self.socks:
            s.close()


class Sender:
    def __init__(self, device: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 16 << 20)
        self.sock.bind((device, 0))

    def send(self, frames: list[bytes], batch: int, pause: float) -> None:
        # Paced bursts: the userspace datapath handles each new flow as an upcall in its
        # main thread; a burst larger than its receive buffer is dropped on the floor.
        for i in range(0, len(frames), batch):
            for frame in frames[i : i + batch]:
                while True:
                    try:
                        self.sock.send(frame)
                        break
                    except BlockingIOError:
                        time.sleep(0.001)
            time.sleep(pause)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Observation:
    instance: dict[bytes, int]  # flow key -> instance number (1-based)
    missing: list[bytes]
    conflicts: int
    rounds: int
    seconds: float


def observe(
    sender: Sender,
    capture: Capture,
    flows: FlowSet,
    batch: int = 64,
    pause: float = 0.004,
    max_rounds: int = 6,
    quiet: float = 0.3,
) -> Observation:
    """Send every flow's SYN and read where it leaves; resend flows not seen (drops at
    the datapath's receive buffer) for up to ``max_rounds`` rounds."""
    start = time.monotonic()
    capture.reset()
    pending = list(range(len(flows.keys)))
    rounds = 0
    while pending and rounds < max_rounds:
        rounds += 1
        sender.send([flows.frames[i] for i in pending], batch, pause)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(quiet / 3)
            with capture._lock:
                idle = time.monotonic() - capture.last_frame
                done = all(flows.keys[i] in capture.seen for i in pending)
            if done or idle > quiet:
                break
        with capture._lock:
            pending = [i for i in pending if flows.keys[i] not in capture.seen]
        pause *= 2  # losses mean the datapath is busy (the machine is shared): slow down
    with capture._lock:
        seen = dict(capture.seen)
        conflicts = len(capture.conflicts)
    return Observation(
        instance=seen,
        missing=[flows.keys[i] for i in pending],
        conflicts=conflicts,
        rounds=rounds,
        seconds=time.monotonic() - start,
    )


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("this benchmark needs root (veth pairs, OVS bridges, raw sockets)")
