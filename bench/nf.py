"""NF cost, throughput and added latency through a real interface.

For each NF (firewall, nat, lb) real `nfsteer nf` processes run side by side, one per
*mode*: by default local (in-process dict), unbatched (Redis, one packet per round trip)
and batched (Redis, up to 64 packets per round trip); --modes adds batched Redis state with
one thing changed: socket (--rx socket), blocks (--rx blocks), inflight2 (--in-flight 2),
w2core (--workers 2, both on the NFs' CPU), w2 (--workers 2, not pinned), store_sync
(output commit: ``WAIT 1 100`` after every batch, against a replica of the bench's
redis-server), before (the NF of another checkout, --compare-with). Each sits on its own
veth pair; this process generates traffic on the far ends.

Method:
* The machine should be quiet first: no pytest or other nfsteer process and under 15 % CPU
  busy; otherwise wait (polling every 20 s), at most --wait-quiet seconds, then measure
  anyway and report how busy it was.
* Pinning (with two or more CPUs): generator and redis-server on one CPU, the NFs on
  another, so the NF never competes with the traffic it is measured with (w2 is free to
  use both). redis-server runs at real-time priority (SCHED_FIFO 1) on its CPU, so the
  generator's busy loop never holds up a reply: the store answers as if it had a host of
  its own.
* Traffic is a closed loop: a window of 1,024 frames in flight, sent with sendmmsg and
  counted back in a TPACKET_V3 ring (FastGenerator), so the generator outruns the NF. The
  modes take turns in slices of --slice seconds until each has had --duration seconds (one
  *round* at one frame size); the order rotates every slice and round, so a change in the
  machine's speed (this is a VM: the same work takes +-25 % CPU time from one moment to the
  next) hits all modes alike.
* Around each slice the CPU time (user + sys, all threads of the NF and its worker
  processes: /proc/PID/task/*/schedstat) of the NF and of redis-server is read; around each
  round the NF's counters (its stats file). Per mode and round:
  - observed pps: frames returned per second of wall time (bounded by the generator too);
  - NF CPU per packet = NF CPU seconds / packets processed (counters); *capacity per core*
    = its inverse, what one instance carries on one core (the headline figure);
  - redis-server CPU per packet (a separate server in a real deployment);
  - batch mean = store operations / batches.
  Then latency: frames one at a time, send -> processed frame back; and open-loop Poisson
  traffic (PacedGenerator) at 1,000 pps and at 80 % of what the mode carried in a closed
  loop just before, with the NF's CPU share meanwhile.
* Figures are medians over --rounds rounds with the min-max; ratios to local state (and to
  "before") are taken per round (paired in time), then their median and range.
* CPU outside the bench's own processes (other tasks, interrupts) and hypervisor steal are
  measured per round and reported, so interference is visible rather than assumed away.

Needs root. `--json`: the last line is one JSON object with every figure.

    .venv/bin/python bench/nf.py [--quick] [--rounds 5] [--duration 1.0] [--modes ...]
                                 [--compare-with DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import mmap
import os
import random
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from packetio import LIBC, IOVec, MMsgHdr  # noqa: E402  (bench/packetio.py)
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402

NFSTEER = str(REPO / ".venv" / "bin" / "nfsteer")
C_MAC, S_MAC = "02:00:00:00:00:01", "02:00:00:00:00:81"
SETTINGS = {
    "firewall": {"inside": ["10.0.0.0/25"], "rules": [{"action": "allow", "proto": "tcp"}]},
    "nat": {"inside": ["10.0.0.0/25"], "public_ip": "192.0.2.1"},
    "lb": {
        "vips": [
            {
                "vip": "10.0.0.100",
                "port": 80,
                "backends": [
                    {"ip": "10.0.0.129", "port": 8080},
                    {"ip": "10.0.0.130", "port": 8080, "weight": 2},
                ],
            }
        ]
    },
}
# (mode, state store, max batch): local and batched Redis read the same batches.
MODES = [("local", "local", 64), ("unbatched", "redis", 1), ("batched", "redis", 64)]
# Further modes (--modes): batched Redis state with one thing changed. "w2core" runs two
# worker processes on the NFs' CPU (what splitting an instance costs per packet, with the
# CPU held constant); "w2" runs them unpinned (both CPUs, shared with the generator and
# redis-server: the total an instance reaches here).
EXTRA_MODES = {
    "socket": ("redis", 64, ["--rx", "socket"]),  # recvfrom per frame, no receive ring
    "blocks": ("redis", 64, ["--rx", "blocks"]),  # TPACKET_V3 ring: frames in blocks
    "inflight2": ("redis", 64, ["--in-flight", "2"]),  # two store batches in flight
    "w2core": ("redis", 64, ["--workers", "2"]),
    "w2": ("redis", 64, ["--workers", "2"]),
    # output commit: WAIT for one replica after every batch (a replica of the bench's
    # redis-server is started for it)
    "store_sync": ("redis", 64, []),
}
STORE_SYNC = {"replicas": 1, "timeout_ms": 100}
UNPINNED_MODES = {"w2"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
STATS_INTERVAL_S = 0.1  # how fresh an idle NF's counters are; the write costs ~0.1 % CPU
QUIET_BUSY = 0.15  # machine busy share (all CPUs) below which it counts as quiet
LOW_RATE_PPS = 1000  # "low load" for the paced latency figure
HIGH_LOAD = 0.8  # and the share of capacity for the loaded one
SEQ_OFFSET = 38  # TCP sequence number: the paced sender's frame index


def frame(src, dst, sport, dport, flags, size, src_mac=C_MAC, dst_mac=S_MAC) -> bytes:
    base = Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
    base = base / TCP(sport=sport, dport=dport, flags=flags)
    pad = max(0, size - len(raw(base)))
    return raw(base / Raw(b"\x00" * pad)) if pad else raw(base)


def workload(kind: str, flows: int, sizes: list[int]) -> tuple[list[list[bytes]], dict]:
    """(set-up exchanges per flow, per frame size the data frames to send round-robin)."""
    dst = "10.0.0.100" if kind == "lb" else "10.0.0.129"
    setup = []
    for i in range(flows):
        sport = 10000 + i
        steps = [frame("10.0.0.1", dst, sport, 80, "S", 60)]
        if kind == "firewall":
            steps.append(frame(dst, "10.0.0.1", 80, sport, "SA", 60, S_MAC, C_MAC))
            steps.append(frame("10.0.0.1", dst, sport, 80, "A", 60))
        setup.append(steps)
    data = {
        size: [frame("10.0.0.1", dst, 10000 + i, 80, "PA", size) for i in range(flows)]
        for size in sizes
    }
    return setup, data


def pool_name(kind: str, mode: str) -> str:
    return f"{kind[:3]}_{mode[:5]}"  # names are at most 10 characters


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def veth(a: str, b: str) -> None:
    """A veth pair a <-> b, up, without IPv6 (its router solicitations would be traffic)."""
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    for i in (a, b):
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1"])
        sh("ip", "link", "set", i, "up")


# -- CPU accounting and the machine's quiet ------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (an instance's workers)."""
    total = proc_cpu_s(pid)
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    total += tree_cpu_s(int(child))
    return total


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + sys) of a process, all its threads: the sum of the threads'
    run time in /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts 10 ms
    ticks, too coarse for a quarter-second slice), else /proc/PID/stat."""
    total, found = 0, False
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                found = True
    if found:
        return total / 1e9
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def own_cpu_s() -> float:
    """CPU seconds of this process (the traffic generator)."""
    t = os.times()
    return t.user + t.system


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return (total - idle - steal) / CLK_TCK, steal / CLK_TCK, total / CLK_TCK


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def others_running() -> list[str]:
    """Test runs and nfsteer processes that are not ours."""
    mine = {os.getpid(), os.getppid()}
    out = []
    for pattern in ("pytest", "nfsteer"):
        r = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            pid, _, cmd = line.partition(" ")
            if int(pid) not in mine and "pgrep" not in cmd:
                out.append(line[:100])
    return out


def busy_share(seconds: float = 2.0) -> float:
    b0, _, t0 = machine_cpu()
    time.sleep(seconds)
    b1, _, t1 = machine_cpu()
    return (b1 - b0) / max(t1 - t0, 1e-9)


def wait_quiet(max_wait_s: float, say) -> dict:
    """Wait until nothing else runs (other people share this machine), for at most
    ``max_wait_s``: on a machine that stays busy, measure anyway and say how busy it was."""
    start = time.monotonic()
    while True:
        others, busy = others_running(), busy_share()
        quiet = not others and busy < QUIET_BUSY
        waited = time.monotonic() - start
        if quiet or waited >= max_wait_s:
            if not quiet:
                say(f"WARNING: machine not quiet after {waited:.0f} s; measuring anyway")
            return {
                "quiet": quiet,
                "waited_s": round(waited),
                "busy_pct": round(100 * busy, 1),
                "others": others,
            }
        what = f"{len(others)} other process(es)" if others else f"{100 * busy:.0f} % busy"
        pause = min(20.0, max(0.0, max_wait_s - waited))
        say(f"waiting for a quiet machine ({what}, load {loadavg()}); next check in {pause:.0f} s")
        time.sleep(pause)


def us_per(packets: int, cpu_s: float) -> float | None:
    return 1e6 * cpu_s / packets if packets else None


def pin(cpu: int | None, store: bool = False):
    """preexec_fn for a child pinned to one CPU (None: no pinning). ``store``: the child
    is a redis-server, which shares its CPU with the traffic generator; it gets a
    real-time priority (SCHED_FIFO 1) so the generator's busy loop never delays its
    replies (in a deployment the store has a host of its own; without this, a woken
    redis-server waits up to a scheduler slice behind the generator, the NF waits on it
    and its queue grows at loads its own CPU could carry)."""
    if cpu is None:
        return None

    def setup() -> None:
        os.sched_setaffinity(0, {cpu})
        if store:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))

    return setup


# -- traffic generation ----------------------------------------------------------------------

WINDOW = 1024  # frames in flight in the closed loop: fits every NF receive mode's buffer


def plain_socket(interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sock.setsockopt(263, 23, 1)  # PACKET_IGNORE_OUTGOING
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    sock.bind((interface, 3))
    sock.setblocking(False)
    return sock


class BatchSender:
    """Prepared frames sent with ``sendmmsg`` from a socket of protocol 0 (which receives
    nothing, so it adds no work to the NF's transmissions)."""

    STRIDE = 2048

    def __init__(self, interface: str, data: list[bytes]):
        n = self.n = len(data)
        stride = self.STRIDE
        self.buf = ctypes.create_string_buffer(n * stride)
        self.view = memoryview(self.buf).cast("B")
        # Every frame twice in a row, so that any run of up to n frames is contiguous.
        self.iovs = (IOVec * (2 * n))()
        self.msgs = (MMsgHdr * (2 * n))()
        base = ctypes.addressof(self.buf)
        for i, f in enumerate(data):
            ctypes.memmove(base + i * stride, f, len(f))
        for j in range(2 * n):
            self.iovs[j].base = base + (j % n) * stride
            self.iovs[j].len = len(data[j % n])
            self.msgs[j].hdr.iov = ctypes.addressof(self.iovs[j])
            self.msgs[j].hdr.iovlen = 1
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
        self.tx.bind((interface, 0))

    def send(self, start: int, count: int) -> int:
        first = ctypes.byref(self.msgs, start * ctypes.sizeof(MMsgHdr))
        return max(0, LIBC.sendmmsg(self.tx.fileno(), first, count, 0x40))  # MSG_DONTWAIT

    def close(self) -> None:
        self.view.release()
        self.tx.close()


class FastGenerator(BatchSender):
    """Closed-loop traffic at a rate Python can reach: ``sendmmsg`` out, a TPACKET_V3 ring
    in, counted per block without touching the frames."""

    BLOCK, BLOCKS = 1 << 16, 64

    def __init__(self, interface: str, data: list[bytes]):
        super().__init__(interface, data)
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.rx.setsockopt(263, 23, 1)  # PACKET_IGNORE_OUTGOING
        self.rx.setsockopt(263, 10, 2)  # PACKET_VERSION: TPACKET_V3
        req = struct.pack("7I", self.BLOCK, self.BLOCKS, 2048,
                          self.BLOCK * self.BLOCKS // 2048, 1, 0, 0)  # fmt: skip
        self.rx.setsockopt(263, 5, req)  # PACKET_RX_RING
        self.rx.bind((interface, 3))
        self.ring = mmap.mmap(self.rx.fileno(), self.BLOCK * self.BLOCKS)
        self.block = 0

    def count(self) -> int:
        """Frames in the blocks the kernel has handed over; the blocks go back at once."""
        ring, got = self.ring, 0
        while True:
            at = self.block * self.BLOCK
            status, num = struct.unpack_from("<8xII", ring, at)
            if not status & 1:  # TP_STATUS_USER
                return got
            got += num
            struct.pack_into("<I", ring, at + 8, 0)
            self.block = (self.block + 1) % self.BLOCKS

    def run(self, lane: Lane, duration: float, window: int) -> dict:
        n, i = self.n, lane.cursor
        received = inflight = 0
        nf0, redis0 = tree_cpu_s(lane.proc.pid), proc_cpu_s(lane.bench.redis.pid)
        gen0 = own_cpu_s()
        t0 = last_rx = time.perf_counter()
        t_end = t0 + duration
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            room = min(window - inflight, n)
            if room > 0:
                sent = self.send(i, room)
                i = (i + sent) % n
                inflight += sent
            got = self.count()
            if got:
                received += got
                inflight -= got
                last_rx = now
            elif now - last_rx > 0.05:  # frames lost: do not stall the window
                inflight = 0
                last_rx = now
            else:
                select.select([self.rx], [], [], 0.001)
        elapsed = time.perf_counter() - t0
        # The frames still in flight: processed now, counted by the NF, not timed here.
        deadline = time.perf_counter() + 0.1
        while inflight > 0 and time.perf_counter() < deadline:
            select.select([self.rx], [], [], 0.01)
            inflight -= self.count()
        lane.cursor = i
        return {
            "received": received,
            "elapsed": elapsed,
            "nf_cpu": tree_cpu_s(lane.proc.pid) - nf0,
            "redis_cpu": proc_cpu_s(lane.bench.redis.pid) - redis0,
            "gen_cpu": own_cpu_s() - gen0,
        }

    def close(self) -> None:
        self.ring.close()
        self.rx.close()
        super().close()


class PacedGenerator(BatchSender):
    """Open-loop traffic at a set rate, with the latency of every frame: arrivals are a
    Poisson process (evenly spaced frames would beat against the kernel's 1 ms timers);
    each turn sends the frames that are due in one ``sendmmsg`` (each carries its index in
    the TCP sequence number), and frames come back into a TPACKET_V2 ring, which wakes the
    reader per frame (a V3 ring would add its block timeout to every sample)."""

    FRAME, FRAMES = 2048, 2048

    def __init__(self, interface: str, data: list[bytes]):
        super().__init__(interface, data)
        self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.rx.setsockopt(263, 23, 1)  # PACKET_IGNORE_OUTGOING
        self.rx.setsockopt(263, 10, 1)  # PACKET_VERSION: TPACKET_V2
        size = self.FRAME * self.FRAMES
        req = struct.pack("4I", 1 << 16, size >> 16, self.FRAME, self.FRAMES)
        self.rx.setsockopt(263, 5, req)  # PACKET_RX_RING
        self.rx.bind((interface, 3))
        self.ring = mmap.mmap(self.rx.fileno(), size)
        self.slot = 0

    def run(self, rate: float, duration: float) -> dict:
        n, stride = self.n, self.STRIDE
        view, ring = self.view, self.ring
        put = struct.Struct("!I").pack_into
        seq_at, head = struct.Struct("!I").unpack_from, struct.Struct("<I4xIH").unpack_from
        release = struct.Struct("<I").pack_into
        sent_at: dict[int, float] = {}
        lat: list[float] = []
        clock = time.perf_counter
        rng = random.Random(1)
        arrivals = list(accumulate(rng.expovariate(rate) for _ in range(int(rate * duration))))
        arrivals.append(float("inf"))
        sent = 0
        t0 = clock()
        end = t0 + duration
        while True:
            now = clock()
            if now >= end:
                break
            due = bisect_right(arrivals, now - t0, lo=sent) - sent
            due = min(due, 64)
            if due > 0:
                start = sent % n
                for k in range(due):
                    put(view, ((start + k) % n) * stride + SEQ_OFFSET, sent + k)
                t = clock()
                done = self.send(start, due)
                for k in range(done):
                    sent_at[sent + k] = t
                sent += done
            got = False
            while True:
                off = self.slot * self.FRAME
                status, snap, mac = head(ring, off)
                if not status & 1:
                    break
                if snap >= SEQ_OFFSET + 4:
                    t = sent_at.pop(seq_at(ring, off + mac + SEQ_OFFSET)[0], None)
                    if t is not None:
                        lat.append((clock() - t) * 1e6)
                release(ring, off, 0)
                self.slot = (self.slot + 1) % self.FRAMES
                got = True
            if not got and due <= 0:
                wait = arrivals[sent] - (clock() - t0)
                if wait > 0.00005:
                    select.select([self.rx], [], [], min(wait, 0.001))
        elapsed = clock() - t0
        deadline = clock() + 0.05
        while sent_at and clock() < deadline:
            select.select([self.rx], [], [], 0.005)
            while True:
                off = self.slot * self.FRAME
                status, snap, mac = head(ring, off)
                if not status & 1:
                    break
                t = sent_at.pop(seq_at(ring, off + mac + SEQ_OFFSET)[0], None)
                if t is not None:
                    lat.append((clock() - t) * 1e6)
                release(ring, off, 0)
                self.slot = (self.slot + 1) % self.FRAMES
        return {"rate": sent / elapsed, "samples": lat, "lost": len(sent_at)}

    def close(self) -> None:
        self.ring.close()
        self.rx.close()
        super().close()


# -- one NF process on its own veth pair ----------------------------------------------------


class Lane:
    def __init__(
        self,
        bench: Bench,
        kind: str,
        mode: str,
        state: str,
        batch: int,
        extra: list[str],
        index: int,
    ):
        self.bench, self.kind, self.mode = bench, kind, mode
        self.state, self.batch, self.extra = state, batch, extra
        tag = f"{bench.tag}{index}"
        self.index = index
        self.gen_if, self.nf_if = f"nb{tag}g", f"nb{tag}n"
        self.pool = pool_name(kind, mode)
        self.stats = bench.tmp / f"{self.pool}.json"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.made = False
        self.cursor = 0  # the next data frame to send
        # Workers report to the parent every 0.1 s: its summed counters lag by that much.
        self.lag_s = 0.3 if "--workers" in extra else 0.0

    def open(self, topo: Path) -> None:
        self.made = True  # deleted on close even if setting it up fails half-way
        veth(self.gen_if, self.nf_if)
        self.sock = plain_socket(self.gen_if)
        url = f"redis://127.0.0.1:{self.bench.port}/0"
        cmd, env, cwd = [NFSTEER], None, None
        if self.mode == "before":  # the same NF from another checkout (--compare-with)
            cwd = os.path.abspath(self.bench.args.compare_with)  # first on sys.path with -m
            # Older checkouts have the entry point in controller/cli.py.
            entry = "cli" if os.path.isdir(os.path.join(cwd, "cli")) else "controller.cli"
            cmd = [sys.executable, "-m", entry]
            env = {**os.environ, "PYTHONPATH": cwd}
        self.proc = subprocess.Popen(
            [*cmd, "nf", "--kind", self.kind, "--interface", self.nf_if, "--pool", self.pool,
             "--name", f"nb-{self.index}", "--config", str(topo), "--state", self.state,
             "--redis", url, "--batch", str(self.batch), "--stats-file", str(self.stats),
             "--stats-interval", str(STATS_INTERVAL_S), "--drain-grace", "0",
             "--log-level", "WARNING", *self.extra],
            stdout=subprocess.DEVNULL, env=env, cwd=cwd,
            preexec_fn=pin(None if self.mode in UNPINNED_MODES else self.bench.nf_cpu),
        )  # fmt: skip

    def wait_started(self, deadline: float) -> None:
        while not self.stats.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nf {self.pool} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a drain with no grace (--drain-grace 0)

    def close(self) -> None:
        if self.proc is not None:
            self.stop()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.sock is not None:
            self.sock.close()
        if self.made:
            subprocess.run(["ip", "link", "del", self.gen_if], capture_output=True)
            self.made = False

    # -- traffic -----------------------------------------------------------------------

    def drain(self) -> int:
        n = 0
        while True:
            try:
                self.sock.recv(65535)
                n += 1
            except BlockingIOError:
                return n

    def exchange(self, frames: list[bytes], timeout: float) -> int:
        got = 0
        for f in frames:
            self.sock.send(f)
            if select.select([self.sock], [], [], timeout)[0]:
                got += self.drain()
        return got

    def slice(self, data: list[bytes], duration: float, window: int = WINDOW) -> dict:
        """One slice of closed-loop traffic: a window of frames in flight, so the NF is
        saturated but its receive buffer never overflows; then every frame in flight is
        waited for. The generator must outrun the NF on a shared CPU: frames go out with
        ``sendmmsg`` and come back into a TPACKET_V3 ring that is only counted, block by
        block (per-frame ``send``/``recv`` in Python could not saturate the NF here). The
        lane's plain socket is closed meanwhile: every packet socket on the interface gets
        a copy of what the NF sends, at the NF's expense. The CPU time of the NF and of
        redis-server is read right before and after."""
        self.sock.close()
        gen = FastGenerator(self.gen_if, data)
        try:
            out = gen.run(self, duration, window)
        finally:
            gen.close()
            self.sock = plain_socket(self.gen_if)
        return out

    def latency(self, data: list[bytes], count: int) -> list[float]:
        samples = []
        for k in range(count):
            t = time.perf_counter()
            self.sock.send(data[k % len(data)])
            if select.select([self.sock], [], [], 0.5)[0]:
                samples.append((time.perf_counter() - t) * 1e6)
                self.drain()
        return samples

    def paced(self, data: list[bytes], rate: float, duration: float) -> dict:
        """Open-loop traffic at ``rate`` frames/s for ``duration`` s; latency is send -> the
        processed frame back (PacedGenerator). The plain socket is closed meanwhile."""
        self.sock.close()
        gen = PacedGenerator(self.gen_if, data)
        try:
            cpu0 = tree_cpu_s(self.proc.pid)
            out = gen.run(rate, duration)
            out["nf_cpu_pct"] = round(100 * (tree_cpu_s(self.proc.pid) - cpu0) / duration)
            return out
        finally:
            gen.close()
            self.sock = plain_socket(self.gen_if)

    def counters(self, asked: float) -> dict:
        """The NF's counters as written after ``asked`` (time.time()): with the NF idle
        since then, they cover every frame sent before."""
        asked += self.lag_s
        deadline = time.monotonic() + 3 + self.lag_s
        while True:
            with contextlib.suppress(OSError, ValueError):
                stats = json.loads(self.stats.read_text())
                if stats["time"] > asked:
                    return stats["counters"]
            if time.monotonic() > deadline:
                raise RuntimeError(f"nf {self.pool} stopped writing its stats")
            time.sleep(0.01)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nfbench"))
        self.tag = uuid.uuid4().hex[:5]
        self.redis: subprocess.Popen | None = None
        self.replica: subprocess.Popen | None = None  # for store_sync's WAIT
        self.port = 0
        self.lanes: list[Lane] = []
        cpus = sorted(os.sched_getaffinity(0))
        self.gen_cpu = self.nf_cpu = None
        if len(cpus) >= 2 and not args.no_pin:
            self.gen_cpu, self.nf_cpu = cpus[0], cpus[1]

    def pinning(self) -> str:
        if self.gen_cpu is None:
            return "none"
        return f"generator + redis-server on CPU {self.gen_cpu}, NF processes on CPU {self.nf_cpu}"

    def __enter__(self) -> Bench:
        if self.gen_cpu is not None:
            os.sched_setaffinity(0, {self.gen_cpu})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, preexec_fn=pin(self.gen_cpu, store=True),
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True
        ).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.start_replica()
        return self

    def start_replica(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.replica = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp), "--dbfilename", "replica.rdb",
             "--replicaof", "127.0.0.1", str(self.port)],
            stdout=subprocess.DEVNULL, preexec_fn=pin(self.gen_cpu, store=True),
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while (
            "master_link_status:up"
            not in subprocess.run(
                ["redis-cli", "-p", str(port), "info", "replication"],
                capture_output=True,
                text=True,
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.close_lanes()
        for server in (self.replica, self.redis):
            if server:
                server.terminate()
                server.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def close_lanes(self) -> None:
        for lane in self.lanes:
            lane.stop()
        for lane in self.lanes:
            lane.close()
        self.lanes = []

    def ours_cpu(self) -> float:
        t = os.times()
        total = t.user + t.system + proc_cpu_s(self.redis.pid)
        for lane in self.lanes:
            with contextlib.suppress(OSError):
                total += proc_cpu_s(lane.proc.pid)
        return total

    def open_lanes(self, kind: str) -> list[Lane]:
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True)
        topo = self.tmp / f"{kind}.yaml"
        modes = self.modes()
        pools = {
            pool_name(kind, m): {
                "kind": kind,
                "nf": {
                    **SETTINGS[kind],
                    **({"store_sync": STORE_SYNC} if m == "store_sync" else {}),
                },
            }
            for m, _, _, _ in modes
        }
        doc = {"name": "bench", "switches": {"s1": {"dpid": 1}}, "pools": pools}
        topo.write_text(yaml.safe_dump(doc))
        # The other checkout gets a file with its own pool only: its strict config may not
        # know the settings of this checkout's other lanes (e.g. store_sync).
        own = self.tmp / f"{kind}-before.yaml"
        before = pool_name(kind, "before")
        own.write_text(yaml.safe_dump({**doc, "pools": {before: pools.get(before, {})}}))
        self.lanes = [Lane(self, kind, m, s, b, x, i) for i, (m, s, b, x) in enumerate(modes)]
        for lane in self.lanes:
            lane.open(own if lane.mode == "before" else topo)
        deadline = time.monotonic() + 20
        for lane in self.lanes:
            lane.wait_started(deadline)
        return self.lanes

    def generator_floor(self, rates: list[float], duration: float) -> list[dict]:
        """The paced generator's own latency: frames reflected by the kernel on the far end
        of a veth pair (tc mirred, no NF), at each rate. The reflection runs in the
        generator's own send on its CPU, so this is the generator and the kernel path
        without a second process or CPU: what the latency figures cannot go below."""
        gen_if, far = f"nb{self.tag}fg", f"nb{self.tag}fn"
        out = []
        try:
            veth(gen_if, far)
            sh("tc", "qdisc", "add", "dev", far, "ingress")
            sh("tc", "filter", "add", "dev", far, "parent", "ffff:", "u32", "match", "u32",
               "0", "0", "action", "mirred", "egress", "redirect", "dev", far)  # fmt: skip
            _, data = workload("firewall", self.args.flows, [64])
            for rate in rates:
                gen = PacedGenerator(gen_if, data[64])
                try:
                    p = gen.run(rate, duration)
                finally:
                    gen.close()
                out.append(
                    {
                        "rate": round(p["rate"]),
                        "p50_us": percentile(p["samples"], 50),
                        "p99_us": percentile(p["samples"], 99),
                        "lost": p["lost"],
                    }
                )
        finally:
            subprocess.run(["ip", "link", "del", gen_if], capture_output=True)
        return out

    def modes(self) -> list[tuple[str, str, int, list[str]]]:
        """(mode, state store, max batch, extra arguments) of every mode this run measures."""
        base = {m: (m, s, b, []) for m, s, b in MODES}
        base.update({m: (m, *v) for m, v in EXTRA_MODES.items()})
        base["before"] = ("before", "redis", 64, [])
        return [base[m] for m in self.args.modes.split(",")]

    def snapshot(self) -> dict:
        asked = time.time()
        return {
            "counters": {lane.mode: lane.counters(asked) for lane in self.lanes},
            "ours_cpu": self.ours_cpu(),
            "machine": machine_cpu(),
            "t": time.perf_counter(),
        }

    def block(self, data: list[bytes], first: int) -> list[dict]:
        """One round at one frame size: every lane gets --duration seconds of traffic in
        slices, the lanes taking turns slice by slice (so a change in the machine's speed
        hits all of them alike), between two reads of every NF's counters."""
        a = self.args
        lanes = self.lanes
        slices = max(1, round(a.duration / a.slice))
        acc = {
            lane.mode: {"received": 0, "elapsed": 0.0, "nf_cpu": 0.0, "redis_cpu": 0.0,
                        "gen_cpu": 0.0}
            for lane in lanes
        }  # fmt: skip
        before = self.snapshot()
        for k in range(slices):
            j = (first + k) % len(lanes)
            for lane in lanes[j:] + lanes[:j]:
                for key, v in lane.slice(data, a.duration / slices).items():
                    acc[lane.mode][key] += v
        after = self.snapshot()
        wall = after["t"] - before["t"]
        busy = after["machine"][0] - before["machine"][0]
        steal = after["machine"][1] - before["machine"][1]
        outside = max(0.0, busy - (after["ours_cpu"] - before["ours_cpu"]))
        out = []
        for lane in lanes:
            m = acc[lane.mode]
            ca, cb = before["counters"][lane.mode], after["counters"][lane.mode]
            packets = cb["processed"] - ca["processed"]
            batches = cb["batches"] - ca["batches"]
            nf_cpu, redis_cpu = m["nf_cpu"], m["redis_cpu"]
            out.append(
                {
                    "mode": lane.mode,
                    "pps": m["received"] / m["elapsed"],
                    "packets": packets,
                    "dropped": cb["dropped_total"] - ca["dropped_total"],
                    "nf_cpu_s": nf_cpu,
                    "nf_cpu_pct": 100 * nf_cpu / m["elapsed"],
                    # the generator's CPU: the generator and redis-server together
                    "gen_cpu_pct": 100 * (m["gen_cpu"] + redis_cpu) / m["elapsed"],
                    "nf_us_per_pkt": us_per(packets, nf_cpu),
                    "capacity_pps": packets / nf_cpu if nf_cpu else None,
                    "redis_us_per_pkt": us_per(packets, redis_cpu),
                    "total_us_per_pkt": us_per(packets, nf_cpu + redis_cpu),
                    "batch_mean": (cb["store_ops"] - ca["store_ops"]) / batches if batches else 0,
                    "outside_cpu_pct": 100 * outside / wall,
                    "steal_pct": 100 * steal / wall,
                    "latency_us": lane.latency(data, a.latency_count),
                }
            )
        return out

    def run_kind(self, kind: str, say) -> list[dict]:
        a = self.args
        sizes = [int(s) for s in a.sizes.split(",")]
        setup, data = workload(kind, a.flows, sizes)
        lanes = self.open_lanes(kind)
        try:
            for lane in lanes:
                lane.drain()
                for steps in setup:
                    lane.exchange(steps, timeout=0.2)
                lane.slice(data[sizes[0]], 0.2)  # warm-up: code paths, caches
            runs: dict[tuple[int, str], list[dict]] = {}
            for r in range(a.rounds):
                for si, size in enumerate(sizes):
                    for one in self.block(data[size], r + si):
                        one["round"] = r
                        runs.setdefault((size, one["mode"]), []).append(one)
                        say(
                            f"  {kind:8} {size:5} B {one['mode']:9} round {r + 1}: "
                            f"{one['pps']:8.0f} pps  NF {one['nf_us_per_pkt'] or 0:6.2f} us/pkt "
                            f"({one['nf_cpu_pct']:3.0f} % CPU)  redis "
                            f"{one['redis_us_per_pkt'] or 0:5.2f} us/pkt  "
                            f"batch {one['batch_mean']:5.1f}"
                        )
            loaded = self.paced_latency(kind, data, say)
        finally:
            self.close_lanes()
        out = []
        for size in sizes:
            for mode, _, _, _ in self.modes():
                one = summarise(kind, size, mode, runs)
                one.update(loaded.get((size, mode), {}))
                out.append(one)
        return out

    def paced_latency(self, kind: str, data: dict, say) -> dict:
        """p50/p99 latency with open-loop traffic at LOW_RATE_PPS and at HIGH_LOAD of what
        the lane carries in a closed loop just before. Not of its capacity per core: the
        NF seldom has a whole CPU here (the machine's own tasks take part of it), and 80 %
        of a CPU it does not get is an overload."""
        out = {}
        d = self.args.paced_duration
        for size, frames in data.items():
            for lane in self.lanes:
                # What the lane carries right now (closed loop): on a shared machine the
                # NF's share of its CPU changes from minute to minute.
                now = lane.slice(frames, 0.3)
                cap = now["received"] / now["elapsed"]
                figures = {}
                for label, rate in (("low", LOW_RATE_PPS), ("loaded", HIGH_LOAD * cap)):
                    lane.drain()
                    p = lane.paced(frames, rate, d)
                    figures[f"{label}_rate"] = round(p["rate"])
                    figures[f"{label}_target"] = round(rate)
                    figures[f"{label}_p50_us"] = percentile(p["samples"], 50)
                    figures[f"{label}_p99_us"] = percentile(p["samples"], 99)
                    figures[f"{label}_lost"] = p["lost"]
                    figures[f"{label}_nf_cpu_pct"] = p["nf_cpu_pct"]
                say(
                    f"  {kind:8} {size:5} B {lane.mode:9} paced: {LOW_RATE_PPS} pps p50/p99 "
                    f"{figures['low_p50_us']}/{figures['low_p99_us']} us; "
                    f"{figures['loaded_rate']} pps (target {figures['loaded_target']}) "
                    f"p50/p99 {figures['loaded_p50_us']}/{figures['loaded_p99_us']} us, "
                    f"NF CPU {figures['loaded_nf_cpu_pct']} %"
                )
                out[(size, lane.mode)] = figures
        return out


# -- figures --------------------------------------------------------------------------------


def med_range(values: list[float], digits: int = 2) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(v), digits),
        "min": round(min(v), digits),
        "max": round(max(v), digits),
    }


def percentile(samples: list[float], q: int) -> float | None:
    if len(samples) < 2:
        return None
    return round(statistics.quantiles(samples, n=100)[q - 1], 1)


def summarise(kind: str, size: int, mode: str, runs: dict) -> dict:
    mine = runs[(size, mode)]
    local = {r["round"]: r for r in runs.get((size, "local"), mine)}
    lat = [x for r in mine for x in r["latency_us"]]
    paired = [
        r["capacity_pps"] / local[r["round"]]["capacity_pps"]
        for r in mine
        if r["capacity_pps"] and local[r["round"]]["capacity_pps"]
    ]
    observed = [r["pps"] / local[r["round"]]["pps"] for r in mine]
    before = {r["round"]: r for r in runs.get((size, "before"), [])}
    x_before = [
        r["capacity_pps"] / before[r["round"]]["capacity_pps"]
        for r in mine
        if r["round"] in before and r["capacity_pps"] and before[r["round"]]["capacity_pps"]
    ]
    # NF + redis-server CPU per packet, as a throughput ratio: what local state would
    # carry with the CPU that batched state spends in both processes.
    with_redis = [
        local[r["round"]]["total_us_per_pkt"] / r["total_us_per_pkt"]
        for r in mine
        if r["total_us_per_pkt"] and local[r["round"]]["total_us_per_pkt"]
    ]
    return {
        "kind": kind,
        "size": size,
        "mode": mode,
        "rounds": len(mine),
        "pps": med_range([r["pps"] for r in mine], 0),
        "pps_x_local": med_range(observed),
        "capacity_pps": med_range([r["capacity_pps"] for r in mine], 0),
        "capacity_x_local": med_range(paired),
        "capacity_x_before": med_range(x_before),
        "nf_us_per_pkt": med_range([r["nf_us_per_pkt"] for r in mine]),
        "nf_cpu_pct": med_range([r["nf_cpu_pct"] for r in mine], 0),
        "gen_cpu_pct": med_range([r["gen_cpu_pct"] for r in mine], 0),
        "redis_us_per_pkt": med_range([r["redis_us_per_pkt"] for r in mine]),
        "total_us_per_pkt": med_range([r["total_us_per_pkt"] for r in mine]),
        "total_x_local": med_range(with_redis),
        "batch_mean": med_range([r["batch_mean"] for r in mine], 1),
        "p50_us": percentile(lat, 50),
        "p99_us": percentile(lat, 99),
        "latency_samples": len(lat),
        "capacity_by_round": [round(r["capacity_pps"] or 0) for r in mine],
        "dropped": sum(r["dropped"] for r in mine),
        "outside_cpu_pct": med_range([r["outside_cpu_pct"] for r in mine], 1),
        "steal_pct": med_range([r["steal_pct"] for r in mine], 1),
    }


def fmt(m: dict, spec: str = ".0f", spread: bool = True) -> str:
    if m["median"] is None:
        return "-"
    s = format(m["median"], spec)
    if spread:
        s += f" ({format(m['min'], spec)}-{format(m['max'], spec)})"
    return s


def table(results: list[dict]) -> list[str]:
    lines = [
        "| NF | frame | state | observed pps | NF CPU | capacity / core, pps | x local "
        "(capacity) | NF µs/pkt | redis µs/pkt | batch mean | p50 / p99 µs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = "1" if r["mode"] == "local" else fmt(r["capacity_x_local"], ".2f")
        lines.append(
            f"| {r['kind']} | {r['size']} B | {r['mode']} | {fmt(r['pps'])} | "
            f"{fmt(r['nf_cpu_pct'], '.0f', False)} % | {fmt(r['capacity_pps'])} | {ratio} | "
            f"{fmt(r['nf_us_per_pkt'], '.2f', False)} | "
            f"{fmt(r['redis_us_per_pkt'], '.1f', False)} | "
            f"{fmt(r['batch_mean'], '.1f', False)} | {r['p50_us']} / {r['p99_us']} |"
        )
    return lines


def paced_table(results: list[dict]) -> list[str]:
    lines = [
        f"| NF | frame | state | p50 / p99 µs at {LOW_RATE_PPS} pps | {HIGH_LOAD:.0%} of capacity:"
        " target / sent pps | p50 / p99 µs there | NF CPU there | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "low_p50_us" not in r:
            continue
        lines.append(
            f"| {r['kind']} | {r['size']} B | {r['mode']} | {r['low_p50_us']} / {r['low_p99_us']}"
            f" | {r['loaded_target']:,} / {r['loaded_rate']:,} | {r['loaded_p50_us']} / "
            f"{r['loaded_p99_us']} | {r['loaded_nf_cpu_pct']} % | "
            f"{r['low_lost'] + r['loaded_lost']} |"
        )
    return lines


def workers_table(results: list[dict]) -> list[str]:
    """One worker (the batched lane) beside two: both on the NFs' CPU (w2core) and free to
    use both CPUs (w2), with the generator CPU's load (generator + redis-server) in w2."""
    by = {(r["kind"], r["size"], r["mode"]): r for r in results}
    lines = [
        "| NF | frame | observed pps: 1 worker / 2 on one CPU / 2 unpinned | capacity per core:"
        " 1 / 2 on one CPU / 2 unpinned | 2 / 1 per core: one CPU, unpinned "
        "| generator CPU busy in w2 |",
        "|---|---|---|---|---|---|",
    ]

    def ratio(a: dict | None, b: dict | None) -> str:
        if not a or not b or not a["capacity_pps"]["median"] or not b["capacity_pps"]["median"]:
            return "-"
        return f"{b['capacity_pps']['median'] / a['capacity_pps']['median']:.2f}"

    def col(r: dict | None, key: str, spread: bool = True) -> str:
        return fmt(r[key], spread=spread) if r else "-"

    for kind, size in dict.fromkeys((k, z) for k, z, _ in by):
        one = by.get((kind, size, "batched"))
        core, free = by.get((kind, size, "w2core")), by.get((kind, size, "w2"))
        if one is None or (core is None and free is None):
            continue
        busy = f"{free['gen_cpu_pct']['median']:.0f} %" if free else "-"
        lines.append(
            f"| {kind} | {size} B | {col(one, 'pps', False)} / {col(core, 'pps', False)} / "
            f"{col(free, 'pps', False)} | {col(one, 'capacity_pps')} / "
            f"{col(core, 'capacity_pps')} / {col(free, 'capacity_pps')} | "
            f"{ratio(one, core)}, {ratio(one, free)} | {busy} |"
        )
    return lines


def before_table(results: list[dict]) -> list[str]:
    lines = [
        "| NF | frame | state | capacity / core, pps | x before (same rounds) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r["capacity_x_before"]["median"] is not None:
            lines.append(
                f"| {r['kind']} | {r['size']} B | {r['mode']} | {fmt(r['capacity_pps'])} | "
                f"{fmt(r['capacity_x_before'], '.2f')} |"
            )
    return lines


def headline(results: list[dict]) -> list[str]:
    lines = [
        "| NF | frame | batched / local, capacity per core | >= 0.9? | unbatched / local "
        "| batched / local, counting redis-server CPU too |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["kind"], r["size"], r["mode"]): r for r in results}
    for r in results:
        if r["mode"] != "batched":
            continue
        u = by.get((r["kind"], r["size"], "unbatched"))
        m = r["capacity_x_local"]["median"]
        ok = "-" if m is None else ("yes" if m >= 0.9 else "no")
        lines.append(
            f"| {r['kind']} | {r['size']} B | {fmt(r['capacity_x_local'], '.2f')} | {ok} | "
            f"{fmt(u['capacity_x_local'], '.2f') if u else '-'} | "
            f"{fmt(r['total_x_local'], '.2f')} |"
        )
    return lines


def store_sync_cost(results: list[dict]) -> list[str]:
    """Output commit against batched state without it: capacity per core (paired by
    round) and the latency it adds at the median."""
    lines = [
        "| NF | frame | store_sync / batched, capacity per core | >= 0.7? "
        "| p50 added (µs) | <= 300? |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["kind"], r["size"], r["mode"]): r for r in results}
    for r in results:
        b = by.get((r["kind"], r["size"], "batched"))
        if r["mode"] != "store_sync" or b is None:
            continue
        ratios = [
            x / y for x, y in zip(r["capacity_by_round"], b["capacity_by_round"], strict=False) if y
        ]
        m = med_range(ratios)
        added = None
        if r["p50_us"] is not None and b["p50_us"] is not None:
            added = round(r["p50_us"] - b["p50_us"], 1)
        r["capacity_x_batched"], r["p50_added_us"] = m, added
        ok = "-" if m["median"] is None else ("yes" if m["median"] >= 0.7 else "no")
        lat_ok = "-" if added is None else ("yes" if added <= 300 else "no")
        lines.append(
            f"| {r['kind']} | {r['size']} B | {fmt(m, '.2f')} | {ok} | {added} | {lat_ok} |"
        )
    return lines


def parser_cost() -> dict:
    from nf.packet import parse

    f = frame("10.0.0.1", "10.0.0.129", 1, 80, "PA", 60)
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        parse(f)
    ours = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(500):
        Ether(f)
    scapy_us = (time.perf_counter() - t) / 500 * 1e6
    return {"parse_us": round(ours, 2), "scapy_parse_us": round(scapy_us, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s (about a minute)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    ap.add_argument("--duration", type=float, help="seconds per run (default 1.0, quick 0.5)")
    ap.add_argument("--slice", type=float, default=0.25, help="seconds per turn of a store")
    ap.add_argument("--latency-count", type=int, help="latency samples per run (default 200)")
    ap.add_argument("--flows", type=int, default=256)
    ap.add_argument("--kinds", default="firewall,nat,lb")
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--wait-quiet", type=float, default=60, metavar="S",
                    help="longest wait for a quiet machine (0: do not wait); the load is "
                    "reported either way")  # fmt: skip
    ap.add_argument(
        "--modes",
        default="local,unbatched,batched",
        help="comma-separated: local, unbatched, batched, socket (recvfrom per "
        "frame), blocks (TPACKET_V3 ring), inflight2 (two batches in flight), w2core (two "
        "workers on the NFs' CPU), w2 (two workers, unpinned), store_sync (output "
        "commit), before (needs --compare-with)",
    )
    ap.add_argument(
        "--compare-with",
        metavar="DIR",
        help="a checkout of another revision: mode 'before' runs its NF with "
        "batched Redis state (with this checkout's virtualenv)",
    )
    ap.add_argument("--paced-duration", type=float, default=0.5, metavar="S",
                    help=f"seconds of paced traffic for latency at {LOW_RATE_PPS} pps and "
                    f"at {HIGH_LOAD * 100:.0f} %% of capacity")  # fmt: skip
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.duration is None:
        args.duration = 0.5 if args.quick else 1.0
    if args.latency_count is None:
        args.latency_count = 150 if args.quick else 200
    kinds = args.kinds.split(",")
    bad = [k for k in kinds if k not in SETTINGS]
    if bad:
        print(f"bench/nf.py: unknown NF kind(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    known = {m for m, _, _ in MODES} | set(EXTRA_MODES) | {"before"}
    bad = [m for m in args.modes.split(",") if m not in known]
    if bad:
        print(f"bench/nf.py: unknown mode(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    if "before" in args.modes.split(",") and not (
        args.compare_with and (Path(args.compare_with) / "nf" / "runtime.py").exists()
    ):
        print("bench/nf.py: mode 'before' needs --compare-with a checkout", file=sys.stderr)
        return 2
    if min(args.rounds, args.latency_count) < 1 or min(args.duration, args.slice) <= 0:
        print(
            "bench/nf.py: --rounds, --duration, --slice, --latency-count must be positive",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("bench/nf.py needs root (veth pairs, packet sockets)", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(msg, flush=True)

    started = time.monotonic()
    load_before = loadavg()
    quiet = wait_quiet(max(0.0, args.wait_quiet), say)
    load_start = loadavg()
    results: list[dict] = []
    with Bench(args) as b:
        say(
            f"load average {load_start} (before waiting: {load_before}); pinning: "
            f"{b.pinning()}; {args.rounds} interleaved rounds x {args.duration} s per run"
        )
        for kind in kinds:
            results += b.run_kind(kind, say)
        loaded = [r["loaded_rate"] for r in results if r.get("loaded_rate")]
        floor = b.generator_floor([LOW_RATE_PPS, *([max(loaded)] if loaded else [])],
                                  args.paced_duration)  # fmt: skip
        pinning = b.pinning()
    load_end = loadavg()
    outside = [r["outside_cpu_pct"]["median"] for r in results]
    steal = [r["steal_pct"]["max"] for r in results]
    print()
    print(
        f"Method: NF CPU time (user+sys) / packets processed (NF counters); capacity / core ="
        f" 1 / that. Stores take turns in {args.slice} s slices, {args.duration} s each per "
        f"round; median (min-max) over {args.rounds} rounds; x local paired per round. "
        f"Pinning: {pinning}."
    )
    print(
        f"Load average at start {load_start}, at end {load_end}; waited {quiet['waited_s']} s "
        f"for quiet (quiet: {quiet['quiet']}, machine {quiet['busy_pct']} % busy, "
        f"{len(quiet['others'])} other test/nfsteer processes); CPU outside the bench's "
        f"processes (median per run, % of one CPU): "
        f"{min(outside):.1f}-{max(outside):.1f}; steal <= {max(steal):.1f} %."
    )
    print()
    for line in table(results):
        print(line)
    print()
    for line in headline(results):
        print(line)
    print()
    for line in paced_table(results):
        print(line)
    if any(r["mode"] == "before" for r in results):
        print()
        for line in before_table(results):
            print(line)
    if any(r["mode"] in ("w2", "w2core") for r in results):
        print()
        for line in workers_table(results):
            print(line)
    for line in store_sync_cost(results):
        print(line)
    print()
    for f in floor:
        print(
            f"generator floor (frames reflected by the kernel, no NF): {f['rate']:,} pps "
            f"p50/p99 {f['p50_us']} / {f['p99_us']} us, lost {f['lost']}"
        )
    parser = parser_cost()
    print(f"\nparser: {parser['parse_us']} us/frame (scapy: {parser['scapy_parse_us']} us/frame)")
    print(f"runtime: {time.monotonic() - started:.0f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "results": results,
                    "generator_floor": floor,
                    "parser": parser,
                    "rounds": args.rounds,
                    "duration_s": args.duration,
                    "pinning": pinning,
                    "quiet": quiet,
                    "loadavg_start": load_start,
                    "loadavg_end": load_end,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
