#!/usr/bin/env python3
"""Traffic programs for the emulated network; each runs inside one Mininet host.

``serve``    echo servers on TCP ports (and UDP sinks on the same ports).
``client``   long-lived TCP connections that send a sequence-numbered message every
             ``--interval`` seconds and check that the echo comes back complete and in order,
             plus a stream of new short connections (connect, one message, echo, close).
             A status line (JSON) every ``--status-every`` seconds on stdout; a final one with
             every connection's record after SIGTERM/SIGINT or ``--duration``.
``udpburst`` one UDP datagram from each of N random source ports: N distinct flows, for measuring
             how a pool spreads flows.
``udpzipf``  N steady UDP flows whose rates follow a Zipf law (flow k gets a share
             proportional to 1/k^s): a few elephants and many mice, for measuring how a pool
             spreads load.

Definitions used in the figures: a connection *stalls* when no echoed data arrives for more
than ``--stall`` seconds (1 s); it is *broken* when it is reset or closed, returns wrong
data, or makes no progress for ``--dead`` seconds (an application would give up).
Times are wall-clock (``time.time()``), which every network namespace shares, so the
orchestrator can line gaps up with its events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import socket
import struct
import sys
import time

MSG_LEN = 64
HEADER = struct.Struct("!4sIQ")  # magic, connection id, sequence number
MAGIC = b"NFSQ"


def message(conn_id: int, seq: int) -> bytes:
    head = HEADER.pack(MAGIC, conn_id, seq)
    body = hashlib.blake2b(head, digest_size=MSG_LEN - HEADER.size).digest()
    return head + body


def parse_targets(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        host, _, port = item.strip().rpartition(":")
        out.append((host, int(port)))
    return out


# ---- server ------------------------------------------------------------------------------
async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


class _Sink(asyncio.DatagramProtocol):
    pass


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port in args.ports:
        servers.append(await asyncio.start_server(_echo, args.bind, port, backlog=1024))
        await loop.create_datagram_endpoint(_Sink, local_addr=(args.bind, port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"serving": args.ports}), flush=True)
    await stop.wait()
    for s in servers:
        s.close()


# ---- client ------------------------------------------------------------------------------
class LongConn:
    def __init__(self, conn_id: int, target: tuple[str, int], args: argparse.Namespace):
        self.id = conn_id
        self.target = target
        self.args = args
        self.sport = 0
        self.state = "connecting"  # connecting, ok, broken; "done" after a clean stop
        self.reason = ""
        self.sent = 0
        self.received = 0
        self.last_progress = time.time()
        self.max_gap = 0.0
        self.gaps: list[tuple[float, float]] = []  # (start, length) of gaps > report threshold
        self.writer: asyncio.StreamWriter | None = None

    def record(self) -> dict:
        return {
            "id": self.id,
            "target": f"{self.target[0]}:{self.target[1]}",
            "sport": self.sport,
            "state": self.state,
            "reason": self.reason,
            "sent": self.sent,
            "received": self.received,
            "max_gap": round(self.max_gap, 4),
            "gaps": [[round(s, 4), round(g, 4)] for s, g in self.gaps],
        }

    def fail(self, reason: str) -> None:
        if self.state in ("connecting", "ok"):
            self.state, self.reason = "broken", reason
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.transport.abort()

    def progress(self, now: float) -> None:
        gap = now - self.last_progress
        if gap > self.args.gap_report:
            self.gaps.append((self.last_progress, gap))
        self.max_gap = max(self.max_gap, gap)
        self.last_progress = now

    async def run(self, stop: asyncio.Event) -> None:
        try:
            reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), self.args.connect_timeout
            )
        except (OSError, TimeoutError) as e:
            self.fail(f"connect: {e or type(e).__name__}")
            return
        self.sport = self.writer.get_extra_info("sockname")[1]
        self.state = "ok"
        self.last_progress = time.time()
        sender = asyncio.create_task(self._send(stop))
        try:
            while not stop.is_set() and self.state == "ok":
                try:
                    data = await reader.readexactly(MSG_LEN)
                except asyncio.IncompleteReadError:
                    self.fail("closed by peer")
                    break
                except OSError as e:
                    self.fail(f"error: {e.strerror or e}")
                    break
                if data != message(self.id, self.received):
                    self.fail(f"wrong data at message {self.received}")
                    break
                self.received += 1
                self.progress(time.time())
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            if self.state in ("ok", "done") and self.writer is not None:
                with contextlib.suppress(OSError):
                    self.writer.close()

    async def _send(self, stop: asyncio.Event) -> None:
        assert self.writer is not None
        next_t = time.monotonic()
        with contextlib.suppress(OSError):
            while not stop.is_set() and self.state == "ok":
                self.writer.write(message(self.id, self.sent))
                self.sent += 1
                next_t += self.args.interval
                await asyncio.sleep(max(0.0, next_t - time.monotonic()))


class Client:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        targets = args.targets
        self.conns = [
            LongConn(args.id_base + i, targets[i % len(targets)], args) for i in range(args.long)
        ]
        self.short_ok = 0
        self.short_failed = 0
        self.short_slow = 0  # took more than the stall threshold (e.g. a retransmitted SYN)
        self.short_max = 0.0
        self.short_failures: list[dict] = []
        self.started = time.time()

    def status(self, final: bool = False) -> dict:
        now = time.time()
        ok = [c for c in self.conns if c.state in ("ok", "done")]
        stalled_now = [c for c in ok if c.state == "ok" and now - c.last_progress > self.args.stall]
        stalled_ever = [c for c in self.conns if c.max_gap > self.args.stall or c in stalled_now]
        out = {
            "t": round(now, 4),
            "long": {
                "total": len(self.conns),
                "ok": len(ok),
                "broken": sum(c.state == "broken" for c in self.conns),
                "connecting": sum(c.state == "connecting" for c in self.conns),
                "stalled_now": len(stalled_now),
                "stalled_ever": len(stalled_ever),
                "max_gap": round(max([c.max_gap for c in self.conns] + [0.0]), 4),
                "received": sum(c.received for c in self.conns),
            },
            "short": {
                "ok": self.short_ok,
                "failed": self.short_failed,
                "slow": self.short_slow,
                "max_latency": round(self.short_max, 4),
            },
        }
        if final:
            out["final"] = True
            out["conns"] = [c.record() for c in self.conns]
            out["short_failures"] = self.short_failures[:200]
        return out

    async def short_one(self, n: int) -> None:
        target = self.args.short_targets[n % len(self.args.short_targets)]
        t0 = time.time()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*target), self.args.short_timeout
            )
            msg = message(0xFFFF0000 + (n & 0xFFFF), n)
            writer.write(msg)
            data = await asyncio.wait_for(reader.readexactly(MSG_LEN), self.args.short_timeout)
            if data != msg:
                raise ValueError("wrong data")
            took = time.time() - t0
            self.short_ok += 1
            self.short_slow += took > self.args.stall
            self.short_max = max(self.short_max, took)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            self.short_failed += 1
            self.short_failures.append(
                {"t": round(t0, 4), "target": f"{target[0]}:{target[1]}", "error": repr(e)}
            )
        finally:
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()

    async def watchdog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.time()
            for c in self.conns:
                if c.state == "ok" and now - c.last_progress > self.args.dead:
                    c.progress(now)  # record the gap so far
                    c.fail(f"no progress for {self.args.dead:g} s")
            await asyncio.sleep(0.1)

    async def report(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            print(json.dumps(self.status()), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.status_every)

    async def shorts(self, stop: asyncio.Event) -> None:
        if self.args.short_rate <= 0 or not self.args.short_targets:
            return
        tasks: set[asyncio.Task] = set()
        n = 0
        next_t = time.monotonic()
        while not stop.is_set():
            t = asyncio.create_task(self.short_one(n))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
            next_t += 1.0 / self.args.short_rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_t - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=self.args.short_timeout + 1)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.args.duration:
            loop.call_later(self.args.duration, stop.set)
        runs = [asyncio.create_task(c.run(stop)) for c in self.conns]
        helpers = [
            asyncio.create_task(self.watchdog(stop)),
            asyncio.create_task(self.report(stop)),
            asyncio.create_task(self.shorts(stop)),
        ]
        await stop.wait()
        # A connection that is stalled at the end counts its gap so far.
        now = time.time()
        for c in self.conns:
            if c.state == "ok" and now - c.last_progress > self.args.gap_report:
                c.progress(now)
        for c in self.conns:
            if c.state == "ok":
                c.state = "done"
                if c.writer is not None:
                    with contextlib.suppress(Exception):
                        c.writer.transport.abort()
        await asyncio.wait(runs + helpers, timeout=self.args.short_timeout + 2)
        print(json.dumps(self.status(final=True)), flush=True)


# ---- UDP flows ---------------------------------------------------------------------------
def udpburst(args: argparse.Namespace) -> None:
    # Random source ports below the ephemeral range, as real clients' ports look to a hash;
    # consecutive ports would fall into clumps of the switch's symmetric L3/L4 hash.
    ports = random.Random(args.seed).sample(range(1024, 32768), args.flows)
    sent = 0
    t0 = time.monotonic()
    for i, sport in enumerate(ports):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("", sport))
            except OSError:
                continue
            s.sendto(b"nfsteer-flow-%d" % i, (args.dst, args.port))
            sent += 1
        if args.rate > 0:
            delay = t0 + sent / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - t0, 3)}), flush=True)


def zipf_rates(flows: int, total: float, s: float) -> list[float]:
    weights = [1 / (k + 1) ** s for k in range(flows)]
    norm = sum(weights)
    return [total * w / norm for w in weights]


def udpzipf(args: argparse.Namespace) -> None:
    ports = random.Random(args.seed).sample(range(1024, 32768), args.flows)
    rates = zipf_rates(args.flows, args.rate, args.zipf)
    socks = []
    for sport in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("", sport))
        s.setblocking(False)
        socks.append(s)
    payload = b"z" * args.size
    credit = [0.0] * len(socks)
    sent = dropped = 0
    stop = False

    def halt(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, halt)
    t0 = last = time.monotonic()
    while not stop and (args.duration <= 0 or last - t0 < args.duration):
        time.sleep(0.005)
        now = time.monotonic()
        dt, last = now - last, now
        for i, s in enumerate(socks):
            credit[i] += rates[i] * dt
            n = int(credit[i])
            credit[i] -= n
            for _ in range(n):
                try:
                    s.sendto(payload, (args.dst, args.port))
                    sent += 1
                except BlockingIOError:
                    dropped += 1
    print(json.dumps({"sent": sent, "dropped": dropped, "ports": ports}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="echo servers")
    s.add_argument("--ports", type=lambda v: [int(x) for x in v.split(",")], required=True)
    s.add_argument("--bind", default="0.0.0.0")
    c = sub.add_parser("client", help="long-lived and short TCP connections")
    c.add_argument("--targets", type=parse_targets, required=True, help="IP:PORT,...")
    c.add_argument("--short-targets", type=parse_targets, default=None)
    c.add_argument("--long", type=int, default=8, help="long-lived connections")
    c.add_argument("--interval", type=float, default=0.02, help="seconds between messages")
    c.add_argument("--short-rate", type=float, default=10.0, help="new connections per second")
    c.add_argument("--short-timeout", type=float, default=5.0)
    c.add_argument("--connect-timeout", type=float, default=5.0)
    c.add_argument("--stall", type=float, default=1.0)
    c.add_argument("--dead", type=float, default=3.0)
    c.add_argument("--gap-report", type=float, default=0.1, help="record gaps longer than this")
    c.add_argument("--status-every", type=float, default=0.5)
    c.add_argument("--duration", type=float, default=0.0, help="0: until SIGTERM")
    c.add_argument("--id-base", type=int, default=0, help="first connection id")
    u = sub.add_parser("udpburst", help="one datagram per source port")
    u.add_argument("--dst", required=True)
    u.add_argument("--port", type=int, default=5001)
    u.add_argument("--flows", type=int, default=2000)
    u.add_argument("--seed", type=int, default=0, help="seed of the random source ports")
    u.add_argument("--rate", type=float, default=2000.0, help="datagrams per second (0: no limit)")
    z = sub.add_parser("udpzipf", help="steady UDP flows with Zipf-distributed rates")
    z.add_argument("--dst", required=True)
    z.add_argument("--port", type=int, default=5001)
    z.add_argument("--flows", type=int, default=64)
    z.add_argument("--rate", type=float, default=2000.0, help="datagrams per second, all flows")
    z.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s")
    z.add_argument("--size", type=int, default=64, help="payload bytes")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--duration", type=float, default=0.0, help="0: until SIGTERM")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        asyncio.run(serve(args))
    elif args.cmd == "client":
        if args.short_targets is None:
            args.short_targets = args.targets
        asyncio.run(Client(args).run())
    elif args.cmd == "udpzipf":
        udpzipf(args)
    else:
        udpburst(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
