"""Idle OpenFlow connections against a real `nfsteer controller` process: its thread count
before, while N connections sit idle (sending nothing), and after the handshake timeout.

    .venv/bin/python bench/idle_connections.py [--connections 200] [--wait 13] [-- ARGS...]

ARGS go to `nfsteer controller` (e.g. ``--handshake-timeout 10 --max-handshakes 64``). No
root, OVS or Redis needed. Prints one line per sample; ``--json`` adds a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NFSTEER = Path(sys.executable).parent / "nfsteer"


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no thread count")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_sockets(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        out.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return out


def closed_by_peer(sockets: list[socket.socket]) -> int:
    closed = 0
    for s in sockets:
        s.setblocking(False)
        try:
            while True:
                if s.recv(65536) == b"":
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=200)
    p.add_argument("--wait", type=float, default=13.0, help="seconds idle before the last sample")
    p.add_argument("--json", action="store_true")
    p.add_argument("controller_args", nargs="*")
    args = p.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = open(Path(tmp) / "controller.log", "w")  # noqa: SIM115
        topology = REPO / "topologies" / "single.yaml"
        listen = f"127.0.0.1:{port}"
        proc = subprocess.Popen(
            [
                *(str(NFSTEER), "controller", "--topology", str(topology), "--listen", listen),
                *("--api", "off", *args.controller_args),
            ],
            stdout=log,
            stderr=log,
        )
        sockets: list[socket.socket] = []
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the controller did not start") from None
                    time.sleep(0.1)
            time.sleep(1.0)
            samples = {"before": threads(proc.pid)}
            sockets = open_sockets(port, args.connections)
            time.sleep(1.0)
            samples["idle 1 s"] = threads(proc.pid)
            time.sleep(max(0.0, args.wait - 1.0))
            samples[f"idle {args.wait:g} s"] = threads(proc.pid)
            closed = closed_by_peer(sockets)
        finally:
            for s in sockets:
                s.close()
            proc.terminate()
            proc.wait(15)
    print(f"{args.connections} idle connections, controller args: {args.controller_args}")
    for name, value in samples.items():
        print(f"  threads {name:>12}: {value}")
    print(f"  closed by the controller after {args.wait:g} s: {closed}/{args.connections}")
    if args.json:
        print(json.dumps({"threads": samples, "closed": closed, "connections": args.connections}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
