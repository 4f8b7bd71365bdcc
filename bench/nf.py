"""NF throughput and added latency through a real interface.

For each NF (firewall, nat, lb), state store (local, Redis one round trip per packet, Redis
batched) and frame size (64 B, ~1400 B): start a real `nfsteer nf` process on one end of a
veth pair, and from the other end
* throughput: keep a window of frames in flight (closed loop, so the NF is saturated but
  its socket never overflows) for --duration seconds; packets per second it sends back;
* added latency: one frame at a time, the time from sending it into the NF's interface to
  receiving the processed frame (p50, p99).
Also measures the hand-written parser against scapy. Needs root. `--json`: the last line
is one JSON object with every figure.

    .venv/bin/python bench/nf.py [--duration 1.5] [--repeat 3] [--kinds firewall,nat,lb] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
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
MODES = [("local", "local", 64), ("redis_unbatched", "redis", 1), ("redis_batched", "redis", 64)]


def frame(src, dst, sport, dport, flags, size, src_mac=C_MAC, dst_mac=S_MAC) -> bytes:
    base = Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst)
    base = base / TCP(sport=sport, dport=dport, flags=flags)
    pad = max(0, size - len(raw(base)))
    return raw(base / Raw(b"\x00" * pad)) if pad else raw(base)


def workload(kind: str, flows: int, size: int) -> tuple[list[list[bytes]], list[bytes]]:
    """(set-up exchanges per flow, the data frames to blast round-robin)."""
    dst = "10.0.0.100" if kind == "lb" else "10.0.0.129"
    setup, data = [], []
    for i in range(flows):
        sport = 10000 + i
        steps = [frame("10.0.0.1", dst, sport, 80, "S", 60)]
        if kind == "firewall":
            steps.append(frame(dst, "10.0.0.1", 80, sport, "SA", 60, S_MAC, C_MAC))
            steps.append(frame("10.0.0.1", dst, sport, 80, "A", 60))
        setup.append(steps)
        data.append(frame("10.0.0.1", dst, sport, 80, "PA", size))
    return setup, data


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nfbench"))
        name = f"np{uuid.uuid4().hex[:6]}"
        self.gen_if, self.nf_if = f"{name}g", f"{name}n"
        self.redis: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> Bench:
        sh("ip", "link", "add", self.gen_if, "type", "veth", "peer", "name", self.nf_if)
        for i in (self.gen_if, self.nf_if):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{i}.disable_ipv6=1"])
            sh("ip", "link", "set", i, "up")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(263, 23, 1)  # PACKET_IGNORE_OUTGOING
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.sock.bind((self.gen_if, 3))
        self.sock.setblocking(False)
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        if self.redis:
            self.redis.terminate()
            self.redis.wait(5)
        subprocess.run(["ip", "link", "del", self.gen_if], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start_nf(self, kind: str, state: str, batch: int) -> subprocess.Popen:
        topo = self.tmp / f"{kind}.yaml"
        topo.write_text(
            yaml.safe_dump(
                {
                    "name": "bench",
                    "switches": {"s1": {"dpid": 1}},
                    "pools": {"bp": {"kind": kind, "nf": SETTINGS[kind]}},
                }
            )
        )
        stats = self.tmp / "stats.json"
        stats.unlink(missing_ok=True)
        url = f"redis://127.0.0.1:{self.port}/0"
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True)
        proc = subprocess.Popen(
            [NFSTEER, "nf", "--kind", kind, "--interface", self.nf_if, "--pool", "bp",
             "--name", "bench", "--config", str(topo), "--state", state, "--redis", url,
             "--batch", str(batch), "--stats-file", str(stats), "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not stats.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nf did not start")
            time.sleep(0.05)
        return proc

    def drain(self) -> int:
        n = 0
        while True:
            try:
                self.sock.recv(65535)
                n += 1
            except BlockingIOError:
                return n

    def exchange(self, frames: list[bytes], timeout: float = 1.0) -> int:
        got = 0
        for f in frames:
            self.sock.send(f)
            if select.select([self.sock], [], [], timeout)[0]:
                got += self.drain()
        return got

    def throughput(self, data: list[bytes], duration: float, window: int = 256) -> float:
        sock, n = self.sock, len(data)
        sent = received = i = 0
        inflight = 0
        t_end = time.perf_counter() + duration
        last_rx = time.perf_counter()
        t0 = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            while inflight < window:
                try:
                    sock.send(data[i])
                except BlockingIOError:
                    break
                i = (i + 1) % n
                sent += 1
                inflight += 1
            got = 0
            while True:
                try:
                    sock.recv(65535)
                    got += 1
                except BlockingIOError:
                    break
            if got:
                received += got
                inflight -= got
                last_rx = now
            elif now - last_rx > 0.05:  # frames lost: do not stall the window
                inflight = 0
                last_rx = now
            else:
                select.select([sock], [], [], 0.001)
        elapsed = time.perf_counter() - t0
        time.sleep(0.05)
        received += self.drain()
        return received / elapsed

    def latency(self, data: list[bytes], count: int = 400) -> tuple[float, float]:
        samples = []
        for k in range(count):
            t = time.perf_counter()
            self.sock.send(data[k % len(data)])
            if select.select([self.sock], [], [], 0.5)[0]:
                samples.append((time.perf_counter() - t) * 1e6)
                self.drain()
        samples.sort()
        q = statistics.quantiles(samples, n=100)
        return q[49], q[98]

    def run_one(self, kind: str, mode: str, state: str, batch: int, size: int) -> dict:
        setup, data = workload(kind, self.args.flows, size)
        proc = self.start_nf(kind, state, batch)
        try:
            self.drain()
            for steps in setup:
                self.exchange(steps, timeout=0.2)
            self.throughput(data, 0.3)  # warm-up
            # Best of several runs: the machine is shared, and interference only ever
            # lowers a run's rate.
            pps = max(self.throughput(data, self.args.duration) for _ in range(self.args.repeat))
            p50, p99 = self.latency(data)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
        stats = json.loads((self.tmp / "stats.json").read_text())["counters"]
        return {
            "kind": kind, "mode": mode, "size": size, "pps": round(pps),
            "p50_us": round(p50, 1), "p99_us": round(p99, 1),
            "batch": batch, "batch_mean": stats["batch_mean"], "batch_max": stats["batch_max"],
            "batch_sizes": stats["batch_sizes"], "dropped": stats["dropped"],
        }  # fmt: skip


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
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs; the best counts")
    ap.add_argument("--flows", type=int, default=256)
    ap.add_argument("--kinds", default="firewall,nat,lb")
    ap.add_argument("--sizes", default="64,1400")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/nf.py needs root (veth pair, packet sockets)", file=sys.stderr)
        return 2
    results = []
    with Bench(args) as b:
        for kind in args.kinds.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for mode, state, batch in MODES:
                    r = b.run_one(kind, mode, state, batch, size)
                    results.append(r)
                    print(
                        f"{kind:8} {size:5} B {mode:16} {r['pps']:8} pps  "
                        f"p50 {r['p50_us']:7.1f} us  p99 {r['p99_us']:7.1f} us  "
                        f"batch {r['batch_mean']:5}  dropped {r['dropped']}",
                        flush=True,
                    )
    base = {(r["kind"], r["size"]): r["pps"] for r in results if r["mode"] == "local"}
    for r in results:
        r["ratio_to_local"] = round(r["pps"] / base[(r["kind"], r["size"])], 2)
    print()
    print("| NF | frame | state | batch (max / mean) | pps | x local | p50 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['kind']} | {r['size']} B | {r['mode']} | {r['batch']} / {r['batch_mean']} | "
            f"{r['pps']} | {r['ratio_to_local']} | {r['p50_us']} | {r['p99_us']} |"
        )
    parser = parser_cost()
    print(f"\nparser: {parser['parse_us']} us/frame (scapy: {parser['scapy_parse_us']} us/frame)")
    if args.json:
        print(json.dumps({"results": results, "parser": parser, "duration_s": args.duration,
                          "repeat": args.repeat}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
