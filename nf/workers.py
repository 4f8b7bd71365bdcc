"""One instance, several worker processes (``--workers N``).

The workers share the interface through one ``PACKET_FANOUT`` hash group (nf/packetio.py):
the kernel gives all packets of a connection, both directions, to one worker, so they stay
in order. Workers hold no connection state of their own (it is in the store), so they need
no coordination beyond what the store already does.

The parent process owns everything that is per instance: the one registration, the one
heartbeat, draining, the summed counters. Each worker runs a packet loop and reports its
counters and when its loop last turned over a pipe every heartbeat interval.

A worker that dies, or whose loop has not turned for the heartbeat TTL (hung), is killed
and restarted; while any worker is dead or late the parent sends no heartbeat, so the
instance's key expires and the controller moves its slots away — a hung worker's share of
the traffic would otherwise be lost behind a live heartbeat. More than ``MAX_RESTARTS``
restarts within ``RESTART_WINDOW_S`` (a worker that keeps crashing) stop the instance:
it deregisters and exits 1. A worker whose interface disappeared stops the instance the
same way, with one line saying so. Workers die with the parent (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from nf.instance import write_stats_file
from nf.packetio import join_fanout, open_socket

log = logging.getLogger("nfsteer.nf")

MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0
EXIT_INTERFACE_GONE = 3
STOP_GRACE_S = 5.0  # how long stopped workers may take to finish their batches
PR_SET_PDEATHSIG = 1

# A worker's body: (index, socket joined to the group, pipe to report on) -> exit status.
WorkerMain = Callable[[int, socket.socket, Connection], int]


def sum_counters(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of one instance from its workers' snapshots: numbers and per-reason
    dictionaries are summed, maxima taken, means recomputed."""
    out: dict[str, Any] = {}
    for snap in snapshots:
        for k, v in snap.items():
            if k in ("batch_mean", "store_available"):
                continue
            if k == "batch_max":
                out[k] = max(out.get(k, 0), v)
            elif isinstance(v, dict):
                d = out.setdefault(k, {})
                for kk, vv in v.items():
                    d[kk] = d.get(kk, 0) + vv
            elif isinstance(v, bool):
                continue
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
    if "dropped" in out:
        out["dropped"] = dict(sorted(out["dropped"].items()))
    batches = out.get("batches", 0)
    out["batch_mean"] = round(out.get("store_ops", 0) / batches, 2) if batches else 0
    if any("store_available" in s for s in snapshots):
        out["store_available"] = all(s.get("store_available", True) for s in snapshots)
    return out


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _worker_entry(main: WorkerMain, index: int, sock: socket.socket, conn: Connection) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; ^C reaches us all
    try:
        status = main(index, sock, conn)
    except BaseException as e:  # e.g. a ring the kernel refused: the parent restarts us
        log.error("worker %d could not run: %s", index, e)
        status = 1
    os._exit(status)


class Worker:
    def __init__(self, index: int):
        self.index = index
        self.proc: Any = None
        self.conn: Connection | None = None
        self.loop_at = 0.0  # monotonic time the loop last turned, as last reported
        self.counters: dict[str, Any] = {}
        self.retired: list[dict[str, Any]] = []  # counters of earlier processes
        self.restarts = 0
        self.final = False


class Supervisor:
    """Starts the workers, watches them, beats for the instance while all are alive."""

    def __init__(
        self,
        interface: str,
        workers: int,
        main: WorkerMain,
        registration: Any = None,
        heartbeat: tuple[Any, str, int, float] | None = None,  # (client, key, ttl ms, s)
        stats_file: str | None = None,
        stats_interval_s: float = 1.0,
        drain_grace_s: float = 5.0,
        describe: dict[str, Any] | None = None,
    ):
        self.interface = interface
        self.main = main
        self.reg = registration
        self.hb = heartbeat
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        self.drain_grace_s = drain_grace_s
        self.describe = describe or {}
        self.workers = [Worker(i) for i in range(workers)]
        self.ttl_s = heartbeat[2] / 1000 if heartbeat else 0.5
        self.tick_s = min(0.05, heartbeat[3] if heartbeat else 0.05)
        self.group = 0
        self.ctx = mp.get_context("fork")
        self.drain_requested = threading.Event()
        self.stop_now = threading.Event()
        self.state = "active"
        self.restarts: list[float] = []
        self.beats = 0
        self.beats_withheld = 0
        self.last_beat = 0.0
        self._healthy = True
        self._store_ok = True
        self.exit_status = 0

    # -- workers -----------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        sock = open_socket(self.interface)
        if self.group:
            join_fanout(sock, self.group)
            return sock
        # The group id is per network namespace: find one that is free.
        base = os.getpid() & 0xFFFF
        for k in range(64):
            group = (base + k * 7919) & 0xFFFF
            try:
                join_fanout(sock, group)
            except OSError:
                continue
            self.group = group
            return sock
        sock.close()
        raise OSError("no free PACKET_FANOUT group id")

    def _start(self, w: Worker) -> None:
        sock = self._socket()
        ours, theirs = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker_entry, args=(self.main, w.index, sock, theirs), daemon=False
        )
        proc.start()
        # Our copies must go: a socket left open here would stay in the group and take
        # its share of the traffic after the worker died.
        sock.close()
        theirs.close()
        w.proc, w.conn = proc, ours
        w.loop_at = time.monotonic()  # grace for start-up
        w.final = False

    def _read_reports(self, timeout: float) -> None:
        conns = {w.conn: w for w in self.workers if w.conn is not None}
        for conn in wait(list(conns), timeout):
            w = conns[conn]
            try:
                while conn.poll():
                    msg = conn.recv()
                    now = time.monotonic()
                    w.loop_at = max(w.loop_at, now - msg["loop_age_s"])
                    w.counters = msg["counters"]
                    w.final = msg.get("final", False)
            except (EOFError, OSError):
                conn.close()
                w.conn = None

    def _check_workers(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            code = w.proc.exitcode
            if code is None and now - w.loop_at > self.ttl_s:
                log.warning(
                    "worker %d (pid %d) has not turned its loop for %.0f ms: killing it",
                    w.index, w.proc.pid, (now - w.loop_at) * 1000,
                )  # fmt: skip
                w.proc.kill()
                w.proc.join(2)
                code = w.proc.exitcode
            if code is None:
                continue
            self._read_reports(0)
            if code == EXIT_INTERFACE_GONE:
                log.error("interface %s disappeared: stopping the instance", self.interface)
                self.exit_status = EXIT_INTERFACE_GONE
                self.stop_now.set()
                return
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
            if len(self.restarts) >= MAX_RESTARTS:
                log.error(
                    "worker %d exited (%s) and %d workers were restarted in the last %.0f s:"
                    " stopping the instance", w.index, code, len(self.restarts),
                    RESTART_WINDOW_S,
                )  # fmt: skip
                self.exit_status = 1
                self.stop_now.set()
                return
            log.warning("worker %d (pid %d) exited (%s): restarting it", w.index, w.proc.pid, code)
            self.restarts.append(now)
            w.retired.append(w.counters)
            w.counters = {}
            w.restarts += 1
            if w.conn is not None:
                w.conn.close()
                w.conn = None
            try:
                self._start(w)
            except OSError as e:
                log.error("cannot restart worker %d: %s; stopping the instance", w.index, e)
                self.exit_status = 1
                self.stop_now.set()
                return

    def healthy(self, now: float) -> bool:
        """Every worker alive and its loop turned within half the TTL."""
        return all(
            w.proc.exitcode is None and now - w.loop_at < self.ttl_s / 2 for w in self.workers
        )

    # -- the instance ------------------------------------------------------------------

    def counters(self) -> dict[str, Any]:
        return sum_counters([c for w in self.workers for c in (*w.retired, w.counters)])

    def stats(self) -> dict[str, Any]:
        out = {
            **self.describe,
            "state": self.state,
            "time": round(time.time(), 3),
            "counters": self.counters(),
            "workers": [
                {
                    "index": w.index,
                    "pid": w.proc.pid if w.proc else None,
                    "restarts": w.restarts,
                    "processed": w.counters.get("processed", 0),
                }
                for w in self.workers
            ],
        }
        if self.hb is not None:
            out["heartbeat"] = {
                "ttl_ms": self.hb[2],
                "interval_ms": round(self.hb[3] * 1000, 3),
                "alone": self.beats,
                "withheld": self.beats_withheld,
            }
        return out

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: drain first; a second signal stops at once."""
        if self.drain_requested.is_set():
            self.stop_now.set()
        self.drain_requested.set()

    def _redis(self, fn: Callable[..., Any], *args: Any) -> Any:
        import redis

        try:
            out = fn(*args)
        except (redis.exceptions.RedisError, OSError) as e:
            if self._store_ok:
                log.warning("registration: state store unreachable (%s)", e)
            self._store_ok = False
            return None
        if not self._store_ok:
            log.info("registration: state store reachable again")
        self._store_ok = True
        return out

    def _beat(self, now: float) -> None:
        if self.hb is None or now - self.last_beat < self.hb[3]:
            return
        healthy = self.healthy(now)
        if healthy != self._healthy:
            self._healthy = healthy
            if healthy:
                log.info("all workers turning again: heartbeats resume")
            else:
                log.warning("a worker is dead or late: heartbeats withheld")
        if not healthy:
            self.beats_withheld += 1
            return
        client, key, ttl_ms, _ = self.hb
        if self.reg is not None and not self.reg.registered:
            return
        beat = f"{time.time():.3f}"
        if self._redis(lambda: client.set(key, beat, px=ttl_ms)) is not None:
            self.beats += 1
            self.last_beat = now

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for w in self.workers:
            self._start(w)
        log.info(
            "%d workers on %s in fanout group %d", len(self.workers), self.interface, self.group
        )
        next_stats = next_ensure = 0.0
        deadline = None
        check_s = self.hb[3] if self.hb else 0.1
        try:
            while not self.stop_now.is_set():
                self._read_reports(self.tick_s)
                now = time.monotonic()
                self._check_workers()
                if self.stop_now.is_set():
                    break
                if self.reg is not None and now >= next_ensure:
                    next_ensure = now + check_s
                    if self.healthy(now):
                        self._redis(self.reg.ensure)
                self._beat(now)
                if self.drain_requested.is_set():
                    if deadline is None:
                        deadline = now + self.drain_grace_s
                        self.state = "draining"
                        if self.reg is None:
                            break
                        self._redis(self.reg.start_drain)
                    elif self.reg is not None and self.reg.state != "draining":
                        self._redis(self.reg.start_drain)
                    slots = self._redis(self.reg.slots)
                    if slots == 0 or now >= deadline:
                        log.info("drained (%s)", "no slots left" if slots == 0 else "grace over")
                        break
                if now >= next_stats:
                    next_stats = now + self.stats_interval_s
                    self._write_stats()
        finally:
            self._stop_workers()
            if self.reg is not None and self.reg.registered:
                self._redis(self.reg.deregister)
            self.state = "stopped"
            self._write_stats()
            print(json.dumps(self.stats()), flush=True)
            log.info("stopped")
        return self.exit_status

    def _stop_workers(self) -> None:
        """SIGTERM to every worker (each finishes its batches in flight and reports its
        last counters), then SIGKILL to any that is still there."""
        for w in self.workers:
            if w.proc is not None and w.proc.exitcode is None:
                with contextlib.suppress(OSError):
                    os.kill(w.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers:
            if w.proc is None:
                continue
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.exitcode is None:
                w.proc.kill()
                w.proc.join(1)
        self._read_reports(0)

    def _write_stats(self) -> None:
        stats = self.stats()
        if self.stats_file:
            write_stats_file(self.stats_file, stats)
        if self.reg is not None and self.reg.registered:
            self._redis(self.reg.write_stats, stats)


def report_loop(
    loop: Any, conn: Connection, interval_s: float, store: Any, done: threading.Event
) -> None:
    """In a worker: send the parent this worker's counters and the age of its loop's last
    turn every ``interval_s`` (a side thread; a loop that hangs in Python shows as an ever
    older turn, a process that hangs whole as no report at all)."""
    while not done.wait(interval_s):
        _report(loop, conn, store, final=False)


def _report(loop: Any, conn: Connection, store: Any, final: bool) -> None:
    msg = {
        "loop_age_s": max(0.0, time.monotonic() - loop.turn_at),
        "counters": loop.p.counters.snapshot(store),
        "final": final,
    }
    with contextlib.suppress(OSError, ValueError):
        conn.send(msg)


def final_report(loop: Any, conn: Connection, store: Any) -> None:
    _report(loop, conn, store, final=True)
