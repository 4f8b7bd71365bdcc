"""The packet loop of one NF instance: one interface, one arm, batches.

Frames are read from an AF_PACKET socket, drained without blocking up to the batch size,
processed together (one store round trip per batch) and written back out of the same
interface. Only frames the switch steered here are touched: those whose destination MAC
is someone else's (``PACKET_OTHERHOST``). The instance's own traffic (e.g. to Redis, which
may share the interface), broadcasts, multicasts and our own transmissions are left to the
kernel and counted as not steered.

How frames are received and sent (a receive ring or one system call per frame, a fanout
group shared with other worker processes) is nf/packetio.py's business.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from nf.base import NetworkFunction
from nf.heartbeat import Heartbeat
from nf.memo import Memo
from nf.packet import NOT_STEERED, parse
from nf.packetio import LINK_DOWN_ERRNOS, InterfaceGone, PacketIO
from nf.state import LocalStore, NFStateUnavailable, NotReplicated, RedisStore

log = logging.getLogger("nfsteer.nf")

BATCH_BUCKETS = (1, 4, 16, 64, 256)


class PacketCounters:
    """What an operator reads: plain numbers, updated by the packet loop only."""

    def __init__(self) -> None:
        self.received = 0  # frames read from the interface
        self.not_steered = 0  # left to the kernel (own MAC, broadcast, ARP, outgoing)
        self.processed = 0  # steered frames the NF looked at
        self.sent = 0
        self.passed_fail_open = 0
        self.held = 0  # frames held while the store was unreachable (hold_ms)
        self.dropped: Counter[str] = Counter()
        self.batches = 0
        self.batch_packets = 0
        self.batch_max = 0
        self.batch_sizes: Counter[str] = Counter()  # histogram, bucket upper bounds
        self.store_ops = 0

    def snapshot(self, store: Any = None) -> dict[str, Any]:
        out = {
            "received": self.received,
            "not_steered": self.not_steered,
            "processed": self.processed,
            "sent": self.sent,
            "passed_fail_open": self.passed_fail_open,
            "held": self.held,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "batches": self.batches,
            "batch_mean": round(self.batch_packets / self.batches, 2) if self.batches else 0,
            "batch_max": self.batch_max,
            "batch_sizes": dict(self.batch_sizes),
            "store_ops": self.store_ops,
        }
        if store is not None:
            out["store_round_trips"] = store.round_trips
            out["store_errors"] = getattr(store, "errors", 0)
            out["store_available"] = getattr(store, "available", True)
        return out


def _bucket(n: int) -> str:
    for b in BATCH_BUCKETS:
        if n <= b:
            return f"<={b}"
    return f">{BATCH_BUCKETS[-1]}"


Pending = tuple[list[tuple[bytes, Any]], Any]  # (frames with their packets, store ticket)


class Processor:
    """Batch processing without I/O: frames in, frames out. Used by the packet loop and
    directly by tests and benchmarks."""

    HOLD_MAX_FRAMES = 4096
    HOLD_BATCH = 256  # held frames given to one batch

    def __init__(self, nf: NetworkFunction, store: LocalStore | RedisStore, fail_open: bool):
        self.nf = nf
        self.store = store
        self.fail_open = fail_open or nf.fail_open
        self.counters = PacketCounters()
        # hold_ms: frames that need state while the store is unreachable wait (up to this
        # long) and go out once it answers, instead of being dropped. A failover then costs
        # its own duration, not the next TCP retransmission after it (RTOs double).
        settings = getattr(nf, "settings", None)
        self.hold_s = getattr(settings, "hold_ms", 0) / 1000
        self.held: deque[tuple[float, bytes]] = deque()  # (deadline, frame), oldest first
        self._retrying: dict[int, tuple[float, bytes]] = {}  # id(frame) -> its hold entry
        # The NF's request per packet: a function of the packet's fields alone, and parse
        # returns one object per field set (interned), so a flow's packets look it up
        # instead of computing it again (key formatting, rule and shard choice).
        self.requests = Memo(nf.request)

    def process(self, frames: Sequence[bytes]) -> list[bytes]:
        """One batch, start to finish (one store round trip)."""
        out, pending = self.prepare(frames)
        if pending is not None:
            out += self.finish(pending)
        return out

    def prepare(
        self, frames: Sequence[bytes], extra: Sequence[str] = ()
    ) -> tuple[list[bytes], Pending | None]:
        """Parse a batch and send its state operations to the store without waiting.
        Returns the frames that need no state (ready to send) and what is pending.
        ``extra`` (the heartbeat) goes to the store with the batch; it is sent only when
        something is pending."""
        c = self.counters
        nf = self.nf
        if self.held:
            frames = self._take_held() + list(frames)
        request = self.requests
        out: list[bytes] = []
        pending: list[tuple[bytes, Any]] = []
        ops = []
        dropped = c.dropped
        not_steered = 0
        for frame in frames:
            pkt = parse(frame)
            if type(pkt) is str:
                if pkt is NOT_STEERED:
                    not_steered += 1
                else:
                    dropped[pkt] += 1
                continue
            try:
                req = request[pkt]
            except Exception as e:  # a bug must cost a packet, not the instance
                dropped["internal_error"] += 1
                log.debug("request failed: %r", e)
                continue
            if req is None:
                out.append(frame)
            elif type(req) is str:
                dropped[req] += 1
            else:
                pending.append((frame, pkt))
                ops.append(req)
        c.processed += len(frames) - not_steered
        c.not_steered += not_steered
        if not ops:
            return out, None
        n = len(ops)
        c.batches += 1
        c.batch_packets += n
        c.store_ops += n
        if n > c.batch_max:
            c.batch_max = n
        c.batch_sizes[_bucket(n)] += 1
        try:
            if extra:
                ticket = self.store.submit(nf.script, nf.cfg(), ops, extra)
            else:
                ticket = self.store.submit(nf.script, nf.cfg(), ops)
        except NFStateUnavailable:
            out += self._unavailable(pending)
            return out, None
        return out, (pending, ticket)

    def finish(self, pending: Pending) -> list[bytes]:
        """Wait for a prepared batch's results and complete its frames."""
        items, ticket = pending
        try:
            results = self.store.collect(ticket)
        except NFStateUnavailable:
            return self._unavailable(items)
        except NotReplicated:  # output commit: held back even when failing open
            self.counters.dropped["store_not_replicated"] += len(items)
            return []
        nf = self.nf
        dropped = self.counters.dropped
        out = []
        for (frame, pkt), res in zip(items, results, strict=False):
            try:
                o = nf.complete(frame, pkt, res)
            except Exception as e:  # e.g. a corrupt value in the store
                dropped["internal_error"] += 1
                log.debug("complete failed: %r", e)
                continue
            if type(o) is str:
                dropped[o] += 1
            else:
                out.append(o)
        return out

    def _unavailable(self, items: list[tuple[bytes, Any]]) -> list[bytes]:
        if self.fail_open:
            self.counters.passed_fail_open += len(items)
            return [f for f, _ in items]
        if self.hold_s <= 0:
            self.counters.dropped["store_unavailable"] += len(items)
            return []
        deadline = time.monotonic() + self.hold_s
        held = self.held
        for f, _ in items:
            held.append(self._retrying.pop(id(f), (deadline, f)))  # keeps a frame's deadline
        self.counters.held += len(items)
        while len(held) > self.HOLD_MAX_FRAMES:
            held.popleft()
            self.counters.dropped["store_unavailable"] += 1
        return []

    def _take_held(self) -> list[bytes]:
        """Held frames for the next batch, oldest first; expired ones are dropped."""
        now = time.monotonic()
        held, out = self.held, []
        self._retrying = {}
        while held and len(out) < self.HOLD_BATCH:
            entry = held.popleft()
            if entry[0] < now:
                self.counters.dropped["store_unavailable"] += 1
                continue
            out.append(entry[1])
            self._retrying[id(entry[1])] = entry
        return out


class PacketLoop:
    """Receive a batch, process it, send the results; until ``stop`` is set. It also
    sends the instance's heartbeat (see nf/heartbeat.py) and records when it last turned
    (``turn_at``), which a supervising process reads to tell a hung loop."""

    def __init__(
        self,
        processor: Processor,
        io: PacketIO,
        batch: int = 64,
        heartbeat: Heartbeat | None = None,
        in_flight: int = 1,
    ):
        self.p = processor
        self.io = io
        self.batch = max(1, batch)
        self.heartbeat = heartbeat
        self.in_flight = max(1, in_flight)
        self.stop = threading.Event()
        self.link_down = False
        self.turn_at = time.monotonic()

    def _set_link_down(self, down: bool) -> None:
        if down != self.link_down:
            self.link_down = down
            log.warning("interface %s", "down: waiting for it" if down else "up again")

    def _check_link(self) -> None:
        """After a link-down error: raise InterfaceGone if the interface was deleted."""
        self._set_link_down(True)
        if self.io.gone():
            raise InterfaceGone(f"interface {self.io.interface} disappeared")

    def run(self) -> None:
        """Batches in flight: while the store works on batch k (and up to ``in_flight``
        batches before it), batch k+1 is read, parsed and sent to it; then the oldest
        batch's results are completed and sent. The store's time overlaps the NF's own
        work instead of adding to it; a batch never waits for the next one to arrive.

        A due heartbeat rides along with the batch sent to the store; with no batch to
        carry it, it goes alone, once nothing is in flight."""
        io = self.io
        c = self.p.counters
        receive = io.receive
        batch = self.batch
        prepare, finish = self.p.prepare, self.p.finish
        stop = self.stop
        hb = self.heartbeat
        ride_along = hb is not None and hb.channel is self.p.store
        monotonic = time.monotonic
        depth = self.in_flight
        pending: deque[Pending] = deque()
        while not stop.is_set():
            now = self.turn_at = monotonic()
            beat = hb is not None and hb.due(now)
            frames: list[bytes] = []
            try:
                n = receive(batch, frames)
            except OSError as e:
                if e.errno not in LINK_DOWN_ERRNOS:
                    raise
                self._check_link()
                n = 0
            if n:
                if self.link_down:
                    self._set_link_down(False)
                c.received += n
                c.not_steered += n - len(frames)
            current = None
            if not frames and self.p.held and not pending:
                frames_ready, current = prepare([])  # held frames: try the store again
                if frames_ready:
                    self._send(frames_ready)
            elif frames:
                if beat and ride_along:
                    ready, current = prepare(frames, hb.command())
                    if current is not None:
                        hb.beat(now, with_batch=True)
                        beat = False
                else:
                    ready, current = prepare(frames)
                if ready:
                    self._send(ready)
            if current is not None:
                pending.append(current)
            # Complete the oldest batch once ``depth`` are in flight, or when no new batch
            # came (nothing else to overlap with).
            while pending and (len(pending) > depth or current is None):
                self._send(finish(pending.popleft()))
            if beat and not pending:  # nothing carried it and nothing is in flight now
                hb.send_alone(now)
            if not frames and not pending:
                wait = 0.05 if hb is None else min(0.05, hb.wait_s(monotonic()))
                if self.link_down:
                    stop.wait(wait)
                    if io.gone():
                        raise InterfaceGone(f"interface {io.interface} disappeared")
                    continue
                try:
                    readable = select.select([io], [], [], wait)[0]
                except InterruptedError:
                    continue
                if readable and io.rx != "socket":
                    # A ring has no recv to raise a socket error: read it here.
                    err = io.pending_error()
                    if err in LINK_DOWN_ERRNOS:
                        self._check_link()
        while pending:
            self._send(finish(pending.popleft()))

    def _send(self, frames: list[bytes]) -> None:
        c = self.p.counters
        send = self.io.send
        failed = 0  # counted once per batch: the per-frame loop is the hot path
        for f in frames:
            try:
                send(f)
            except BlockingIOError:
                if self._wait_writable():
                    try:
                        send(f)
                        continue
                    except OSError:
                        pass
                failed += 1
            except OSError:
                failed += 1
        c.sent += len(frames) - failed
        if failed:
            c.dropped["send_failed"] += failed

    def _wait_writable(self) -> bool:
        try:
            return bool(select.select([], [self.io], [], 0.01)[1])
        except OSError:
            return False


def interface_addresses(interface: str) -> tuple[str, str]:
    """(MAC, IPv4 address or "") of an interface."""
    import fcntl

    with open(f"/sys/class/net/{interface}/address") as f:
        mac = f.read().strip()
    ip = ""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", interface.encode()[:15])
            ip = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
        except OSError:
            pass
    return mac, ip
