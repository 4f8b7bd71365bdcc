"""One running NF instance: the packet loop (which also sends the heartbeats) plus a side
thread for registration, draining and stats. The side thread shares no lock and no
connection with the loop, so a slow store or a slow stats write cannot hold packets up."""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from typing import Any

from contract import keys
from contract.nf_settings import FirewallSettings, LBSettings, NATSettings, NFSettings
from nf.base import NetworkFunction
from nf.registration import Registration
from nf.runtime import PacketLoop, Processor

log = logging.getLogger("nfsteer.nf")


def build_nf(kind: str, pool: str, settings: NFSettings) -> NetworkFunction:
    from nf.firewall import Firewall
    from nf.lb import LoadBalancer
    from nf.nat import NAT

    if kind == "firewall" and isinstance(settings, FirewallSettings):
        return Firewall(pool, settings)
    if kind == "nat" and isinstance(settings, NATSettings):
        return NAT(pool, settings)
    if kind == "lb" and isinstance(settings, LBSettings):
        return LoadBalancer(pool, settings)
    raise ValueError(f"settings of kind {type(settings).__name__} do not fit an NF of kind {kind}")


class Instance:
    def __init__(
        self,
        loop: PacketLoop,
        registration: Registration | None,
        stats_file: str | None = None,
        stats_interval_s: float = 1.0,
        drain_grace_s: float = keys.DRAIN_GRACE_S,
        describe: dict[str, Any] | None = None,
    ):
        self.loop = loop
        self.reg = registration
        self.stats_file = stats_file
        self.stats_interval_s = stats_interval_s
        hb = loop.heartbeat
        self.check_interval_s = (
            hb.interval_s if hb is not None else keys.HEARTBEAT_INTERVAL_MS / 1000
        )
        self.drain_grace_s = drain_grace_s
        self.describe = describe or {}
        self.drain_requested = threading.Event()
        self._done = threading.Event()
        self._store_ok = True  # for one log line per change of the side thread's view
        self.state = "active"

    @property
    def processor(self) -> Processor:
        return self.loop.p

    def stats(self) -> dict[str, Any]:
        out = {
            **self.describe,
            "state": self.state,
            "time": round(time.time(), 3),
            "counters": self.processor.counters.snapshot(self.processor.store),
        }
        if self.loop.heartbeat is not None:
            out["heartbeat"] = self.loop.heartbeat.stats()
        return out

    def request_stop(self, *_: Any) -> None:
        """SIGTERM/SIGINT: drain first; a second signal stops at once."""
        if self.drain_requested.is_set():
            self.loop.stop.set()
        self.drain_requested.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        side = threading.Thread(target=self._side, name="nf-side", daemon=True)
        side.start()
        log.info("processing packets on %s", self.describe.get("interface"))
        try:
            self.loop.run()
        finally:
            self._done.set()
            side.join(2)
            if self.loop.heartbeat is not None:
                self.loop.heartbeat.enabled = False
            if self.reg is not None and self.reg.registered:
                self._redis(self.reg.deregister)
            self.state = "stopped"
            self._write_stats()
            print(json.dumps(self.stats()), flush=True)
            log.info("stopped")
        return 0

    def _redis(self, fn, *args) -> Any:
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

    def _side(self) -> None:
        next_stats = 0.0
        deadline = None
        hb = self.loop.heartbeat
        while not self._done.is_set():
            now = time.monotonic()
            # Registered (again, if the store lost the hash): the loop may beat. Not again
            # for a loop that has stopped beating: registering sets the heartbeat too.
            if (
                self.reg is not None
                and (hb is None or hb.loop_alive(now))
                and self._redis(self.reg.ensure)
                and hb is not None
            ):
                hb.enabled = True
            if self.drain_requested.is_set():
                if deadline is None:
                    deadline = now + self.drain_grace_s
                    self.state = "draining"
                    if self.reg is None:
                        self.loop.stop.set()
                    else:
                        self._redis(self.reg.start_drain)
                elif self.reg is not None and self.reg.state != "draining":
                    self._redis(self.reg.start_drain)  # the first attempt failed
                if self.reg is not None:
                    slots = self._redis(self.reg.slots)
                    if slots == 0 or now >= deadline:
                        why = "no slots left" if slots == 0 else "drain grace over"
                        log.info("drained (%s)", why)
                        self.loop.stop.set()
            if now >= next_stats:
                next_stats = now + self.stats_interval_s
                self._write_stats()
            self._done.wait(self.check_interval_s)

    def _write_stats(self) -> None:
        stats = self.stats()
        if self.stats_file:
            write_stats_file(self.stats_file, stats)
        if self.reg is not None and self.reg.registered:
            self._redis(self.reg.write_stats, stats)


def write_stats_file(path: str, stats: dict) -> None:
    """Replace the stats file at once (readers never see half a file)."""
    try:
        d = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".nfstats")
        with os.fdopen(fd, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("cannot write stats file: %s", e)
