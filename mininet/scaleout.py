#!/usr/bin/env python3
"""The scale-out scenario: one NF pool under steady TCP traffic while it grows, loses
instances and shrinks, with every figure measured on the way.

Timeline (``Timing`` sets the pauses; the instance order is the pool's order in the file)::

    start 1st instance ............ traffic starts: long-lived connections + short ones
    scale out: start 2nd instance
    scale out: start the rest ..... share probe: N new UDP flows, counted per instance port
    kill -9 one instance .......... detected by heartbeat expiry
    link down of another .......... detected by port status
    link up again ................. the instance rejoins
    store-failover ................ kill -9 the store's primary (demo; replicated store)
    controller-failover ........... kill -9 the leading controller (several controllers)
    controller-pause .............. SIGSTOP the leader for three lease lengths, then SIGCONT
    scale in: SIGTERM all but the first (each drains, then deregisters)

Per-instance traffic is read from the switches' port counters (``ovs-ofctl dump-ports``:
packets the switch sent to the instance's port), independent of the controller. The
traffic programs (``nftraffic.py``) report connection health; their gaps are lined up
with the events to give the traffic gap of each failure.

Used by ``nfsteer demo`` and the end-to-end tests; run on its own with
``.venv/bin/python mininet/scaleout.py --topology topologies/single.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import nfnet  # noqa: E402

Say = Callable[[str], None]


@dataclass(frozen=True)
class Timing:
    warmup: float = 4.0  # one instance under traffic before the first event
    phase: float = 6.0  # pause after each event
    long_per_client: int = 8  # long-lived connections per client host
    interval: float = 0.02  # seconds between messages on a long-lived connection
    short_rate: float = 8.0  # new short connections per second per client host
    probe_flows: int = 2000  # UDP flows per client host in the share probe
    sample: float = 0.1  # port counter polling period


DEMO_TIMING = Timing()
TEST_TIMING = Timing(warmup=2.5, phase=4.0, long_per_client=6, probe_flows=1500)


# ---- per-instance traffic ----------------------------------------------------------------
class PortMonitor(threading.Thread):
    """Samples the switch->instance packet counters of a pool's instances."""

    def __init__(self, emu: nfnet.Emulation, instances: list[str], period: float):
        super().__init__(daemon=True, name="em-portmon")
        ports = emu.instance_ports()
        self.where = {n: ports[n] for n in instances}
        self.switches = sorted({sw for sw, _ in self.where.values()})
        self.emu = emu
        self.period = period
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def read(self) -> dict[str, int]:
        counters = self.emu.port_counters(self.switches)
        return {n: counters.get(sw_port, (0, 0))[1] for n, sw_port in self.where.items()}

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.time()
            try:
                values = self.read()
            except Exception:  # a switch being torn down: skip the sample
                values = None
            if values is not None:
                with self.lock:
                    self.samples.append((t, values))
            self._halt.wait(max(0.0, self.period - (time.time() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def latest(self) -> tuple[float, dict[str, int]] | None:
        with self.lock:
            return self.samples[-1] if self.samples else None

    def rates(self, window: float = 1.0) -> dict[str, float]:
        with self.lock:
            if len(self.samples) < 2:
                return {n: 0.0 for n in self.where}
            t1, v1 = self.samples[-1]
            t0, v0 = next(
                ((t, v) for t, v in reversed(self.samples) if t1 - t >= window), self.samples[0]
            )
        dt = max(t1 - t0, 1e-6)
        return {n: (v1[n] - v0[n]) / dt for n in self.where}

    def value_at(self, when: float) -> dict[str, int]:
        with self.lock:
            best = self.samples[0][1] if self.samples else {n: 0 for n in self.where}
            for t, v in self.samples:
                if t > when:
                    break
                best = v
        return dict(best)

    def first_rise(self, name: str, since: float, packets: int = 3) -> float | None:
        """Wall time of the first sample after ``since`` with ``packets`` more sent to it."""
        base = self.value_at(since)[name]
        with self.lock:
            for t, v in self.samples:
                if t > since and v[name] - base >= packets:
                    return t
        return None

    def series(self, t0: float, window: float = 0.5) -> dict[str, Any]:
        """Packets per second per instance, each point over the preceding ``window``
        seconds (smooths the jitter of the polling)."""
        with self.lock:
            samples = list(self.samples)
        times: list[float] = []
        rates: dict[str, list[float]] = {n: [] for n in self.where}
        j = 0
        for tb, vb in samples[1:]:
            while j + 1 < len(samples) and tb - samples[j + 1][0] >= window:
                j += 1
            ta, va = samples[j]
            if tb <= ta:
                continue
            times.append(round(tb - t0, 3))
            for n in self.where:
                rates[n].append(round((vb[n] - va[n]) / (tb - ta), 1))
        return {"t": times, "pps": rates}


# ---- traffic -----------------------------------------------------------------------------
class Clients:
    """One traffic client per client host; their status lines are read as they come."""

    def __init__(
        self,
        emu: nfnet.Emulation,
        targets: list[str],
        timing: Timing,
        extra_args: tuple[str, ...] = (),
    ):
        self.emu = emu
        self.procs: dict[str, subprocess.Popen] = {}
        self.status: dict[str, dict] = {}
        self.final: dict[str, dict] = {}
        self.history: list[tuple[float, dict]] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        clients = [n for n, h in emu.topology.hosts.items() if h.role == "client"]
        for i, name in enumerate(clients):
            args = ["client", "--targets", ",".join(targets), "--long", str(timing.long_per_client)]
            args += ["--interval", str(timing.interval), "--short-rate", str(timing.short_rate)]
            args += ["--id-base", str(i * 10000), *extra_args]
            proc = emu.host(name).popen(
                emu.traffic_cmd(*args), cwd=str(nfnet.REPO), stderr=subprocess.DEVNULL, text=True
            )
            self.procs[name] = proc
            th = threading.Thread(target=self._read, args=(name, proc), daemon=True)
            th.start()
            self.threads.append(th)

    def _read(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                if msg.get("final"):
                    self.final[name] = msg
                self.status[name] = msg
                self.history.append((msg["t"], self.total_locked()))

    def total_locked(self) -> dict:
        tot: dict[str, Any] = {"long": {}, "short": {}}
        for st in self.status.values():
            for part in ("long", "short"):
                for k, v in st[part].items():
                    if k in ("max_gap", "max_latency"):
                        tot[part][k] = max(tot[part].get(k, 0.0), v)
                    else:
                        tot[part][k] = tot[part].get(k, 0) + v
        return tot

    def total(self) -> dict:
        with self.lock:
            return self.total_locked()

    def wait_established(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                done = len(self.status) == len(self.procs) and all(
                    s["long"]["connecting"] == 0 for s in self.status.values()
                )
            if done:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> dict[str, dict]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            self.threads[list(self.procs).index(name)].join(5)
        return dict(self.final)


def measure_shares(
    emu: nfnet.Emulation,
    pool: str,
    flows_per_client: int,
    monitor: PortMonitor | None = None,
    port: int = 5001,
    rate: float = 500.0,
) -> dict[str, Any]:
    """Send many new UDP flows and compare each active instance's packets with its capacity.

    The rate is modest on purpose: every new flow is a state write at an instance, and a
    saturated 2-core machine delays the instances' heartbeats.

    Packets are counted on the switch ports of the instances. When ``monitor`` runs (other
    traffic is flowing), each port's background rate of the preceding second is subtracted.
    """
    active = {
        m["name"]: m["capacity"]
        for m in emu.api("GET", f"/api/v1/pools/{pool}")["members"]
        if m["state"] == "active"
    }
    ports = emu.instance_ports()
    switches = sorted({ports[n][0] for n in active})
    if monitor is not None:
        background = monitor.rates(1.0)
    else:  # what reaches the instances anyway (e.g. retransmissions of old connections)
        first = emu.port_counters(switches)
        time.sleep(1.0)
        second = emu.port_counters(switches)
        background = {n: second[ports[n]][1] - first[ports[n]][1] for n in active}
    before = emu.port_counters(switches)
    t0 = time.monotonic()
    clients = [n for n, h in emu.topology.hosts.items() if h.role == "client"]
    servers = [h.ip_address for h in emu.topology.hosts.values() if h.role == "server"]
    procs = []
    for i, c in enumerate(clients):
        args = ["udpburst", "--dst", servers[i % len(servers)], "--port", str(port)]
        args += ["--flows", str(flows_per_client), "--seed", str(i), "--rate", str(rate)]
        procs.append(emu.host(c).popen(emu.traffic_cmd(*args), cwd=str(nfnet.REPO), text=True))
    for p in procs:
        p.communicate(timeout=120)
    time.sleep(0.5)  # let the last datagrams through the instances
    dt = time.monotonic() - t0
    after = emu.port_counters(switches)
    counts = {
        n: max(0.0, after[ports[n]][1] - before[ports[n]][1] - background.get(n, 0.0) * dt)
        for n in active
    }
    total = sum(counts.values()) or 1.0
    cap_total = sum(active.values())
    out = {}
    for n in sorted(active):
        expected = active[n] / cap_total
        share = counts[n] / total
        out[n] = {
            "capacity": active[n],
            "packets": round(counts[n]),
            "share": round(share, 4),
            "expected": round(expected, 4),
            "relative_error": round(abs(share - expected) / expected, 4),
        }
    return {"flows": flows_per_client * len(clients), "seconds": round(dt, 2), "instances": out}


def members(emu: nfnet.Emulation, pool: str) -> dict[str, dict]:
    """The pool's instances as the controller's API shows them (empty if it does not answer)."""
    try:
        return {m["name"]: m for m in emu.api("GET", f"/api/v1/pools/{pool}")["members"]}
    except Exception:
        return {}


def wait_member(
    emu: nfnet.Emulation, pool: str, name: str, states: tuple[str, ...], timeout: float = 15.0
) -> float | None:
    """Wall time at which the instance reached one of ``states``; None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = members(emu, pool).get(name)
        if m and m["state"] in states:
            return time.time()
        if "active" in states and name in emu.nfs and not emu.nfs[name].alive():
            break  # it will not become active: it exited
        time.sleep(0.05)
    return None


# Failovers of the control and state planes: each costs a gap of its own, reported apart
# from (and not counted as) a stall.
FAILOVER_EVENTS = ("store-failover", "controller-failover", "controller-pause")


# ---- the scenario ------------------------------------------------------------------------
def chained_instances(topology: Any, pool: str) -> list[str]:
    """Instances of the pools that share a service chain with ``pool``, in file order."""
    out: list[str] = []
    for svc in topology.services.values():
        if pool in svc.hops:
            for other in svc.hops:
                if other != pool:
                    out += [n for n in topology.pools[other].instances if n not in out]
    return out


class Scenario:
    def __init__(
        self,
        emu: nfnet.Emulation,
        pool: str,
        state: str = "redis",
        timing: Timing = DEMO_TIMING,
        say: Say = print,
        port: int = 5001,
        store_failover: bool = False,
        controller_events: bool = False,
    ):
        self.emu = emu
        # kill -9 the leading controller, then pause it for three lease lengths (needs
        # several controllers): a standby takes over; the gap each costs is reported.
        self.controller_events = controller_events and emu.controllers > 1
        # kill -9 the store's primary once (needs the replicated store): Sentinel promotes
        # a replica and every client follows; the gap it costs is reported on its own.
        self.store_failover = store_failover and getattr(emu, "store_layout", None) is not None
        self.pool = pool
        self.state = state
        self.timing = timing
        self.say = say
        self.port = port
        self.instances = list(emu.topology.pools[pool].instances)
        if len(self.instances) < 3:
            raise ValueError(f"pool {pool!r} needs at least 3 instances for the scenario")
        # The other pools of every chain this pool is in carry the same traffic: all their
        # instances run, with their state in Redis, so that what breaks is this pool's doing.
        self.chained = chained_instances(emu.topology, pool)
        self.events: list[dict[str, Any]] = []
        self.t0 = time.time()
        self.monitor = PortMonitor(emu, self.instances, timing.sample)
        self.clients: Clients | None = None
        self.figures: dict[str, Any] = {"time_to_traffic": {}, "drain_seconds": {}}
        self._ticker_stop = threading.Event()

    # -- helpers --
    def now(self) -> float:
        return time.time() - self.t0

    def event(self, kind: str, instance: str | None = None, **detail: Any) -> dict:
        ev = {"t": round(self.now(), 3), "wall": time.time(), "kind": kind, "instance": instance}
        ev.update(detail)
        self.events.append(ev)
        extra = " ".join(f"{k}={v}" for k, v in detail.items())
        self.say(f"[{ev['t']:6.1f}s] >>> {kind} {instance or ''} {extra}".rstrip())
        return ev

    def members(self) -> dict[str, dict]:
        return members(self.emu, self.pool)

    def wait_state(self, name: str, states: tuple[str, ...], timeout: float = 15.0) -> float | None:
        return wait_member(self.emu, self.pool, name, states, timeout)

    def start_instance(self, name: str) -> None:
        nf = self.emu.start_nf(name, state=self.state)
        self.event("start", name, capacity=nf.capacity, state=self.state)
        t_active = self.wait_state(name, ("active",))
        if t_active is None:
            tail = nf.log.read_text(errors="replace")[-1500:] if nf.log.exists() else ""
            raise RuntimeError(f"instance {name} did not become active:\n{tail}")
        self.figures["time_to_traffic"][name] = {"started": nf.started, "active": t_active}

    def start_chained(self) -> None:
        for name in self.chained:
            self.emu.start_nf(name, state="redis")
        for name in self.chained:
            if wait_member(self.emu, self.emu.pool_of(name), name, ("active",)) is None:
                raise RuntimeError(f"instance {name} of the chain did not become active")
        if self.chained:
            self.event("chain", None, running=",".join(self.chained))

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def ticker(self) -> None:
        while not self._ticker_stop.wait(1.0):
            rates = self.monitor.rates(1.0)
            members = self.members()
            parts = []
            for n in self.instances:
                st = members.get(n, {}).get("state", "-")
                if st == "down" and rates.get(n, 0) < 1:
                    continue
                parts.append(f"{n} {rates.get(n, 0):5.0f}/s {st[:6]:<6}")
            line = f"[{self.now():6.1f}s] " + " | ".join(parts)
            if self.clients is not None:
                tot = self.clients.total()
                lg, sh = tot.get("long", {}), tot.get("short", {})
                if lg:
                    line += (
                        f" || long: {lg['ok']} ok {lg['broken']} broken "
                        f"{lg['stalled_now']} stalled (max gap {lg['max_gap']:.2f}s)"
                        f" | short: {sh['ok']} ok {sh['failed']} failed"
                    )
            self.say(line)

    # -- the run --
    def run(self) -> dict[str, Any]:
        first, second, rest = self.instances[0], self.instances[1], self.instances[2:]
        kill_target = rest[0]
        link_target = second
        servers = [h.ip_address for h in self.emu.topology.hosts.values() if h.role == "server"]
        targets = [f"{ip}:{self.port}" for ip in servers]
        self.monitor.start()
        ticker = threading.Thread(target=self.ticker, daemon=True, name="em-ticker")
        ticker.start()
        try:
            self.start_chained()
            self.start_instance(first)
            self.clients = Clients(self.emu, targets, self.timing)
            if not self.clients.wait_established(15):
                raise RuntimeError("the traffic clients could not open their connections")
            self.event("traffic", None, connections=self.clients.total()["long"]["total"])
            self.sleep(self.timing.warmup)

            self.event("scale-out", None, to=2)
            self.start_instance(second)
            self.sleep(self.timing.phase)

            self.event("scale-out", None, to=len(self.instances))
            for name in rest:
                self.start_instance(name)
            self.sleep(min(2.0, self.timing.phase / 2))
            self.event("share-probe", None, flows=self.timing.probe_flows)
            self.figures["shares"] = measure_shares(
                self.emu, self.pool, self.timing.probe_flows, self.monitor, self.port
            )
            for n, s in self.figures["shares"]["instances"].items():
                self.say(
                    f"          share {n}: {s['share']:.3f} (capacity share {s['expected']:.3f})"
                )
            self.sleep(self.timing.phase / 2)

            self.event("kill", kill_target, signal="SIGKILL")
            self.emu.stop_nf(kill_target, kill=True)
            t_failed = self.wait_state(kill_target, ("failed", "down"), timeout=5)
            self.figures["kill_detected_s"] = (
                round(t_failed - self.events[-1]["wall"], 3) if t_failed else None
            )
            self.sleep(self.timing.phase)

            sw = self.emu.instance_ports()[link_target][0]
            self.event("link-down", link_target, switch=sw)
            self.emu.set_link(link_target, sw, up=False)
            t_failed = self.wait_state(link_target, ("failed", "down"), timeout=5)
            self.figures["link_down_detected_s"] = (
                round(t_failed - self.events[-1]["wall"], 3) if t_failed else None
            )
            self.sleep(self.timing.phase)

            self.event("link-up", link_target, switch=sw)
            self.emu.set_link(link_target, sw, up=True)
            t_active = self.wait_state(link_target, ("active",), timeout=10)
            self.figures["link_up_rejoined_s"] = (
                round(t_active - self.events[-1]["wall"], 3) if t_active else None
            )
            self.sleep(self.timing.phase)

            if self.store_failover:
                self.kill_store_primary()
                self.sleep(self.timing.phase)

            if self.controller_events:
                self.controller_failover()
                self.sleep(self.timing.phase)
                self.controller_pause()
                self.sleep(self.timing.phase)

            drain = [n for n in [*rest[1:], second] if self.emu.nfs[n].alive()]
            self.event("scale-in", None, to=1, draining=",".join(drain))
            for name in drain:
                self.event("drain", name, signal="SIGTERM")
                took = self.emu.stop_nf(name)
                self.figures["drain_seconds"][name] = round(took, 3)
                self.say(f"          {name} drained and exited in {took:.2f} s")
            self.sleep(self.timing.phase)
            self.event("stop", None)
        finally:
            finals = self.clients.stop() if self.clients else {}
            self._ticker_stop.set()
            ticker.join(3)
            self.monitor.stop()
        return self.report(finals)

    def kill_store_primary(self) -> None:
        from controller.ops.storenodes import current_primary, node_pid, up

        layout = self.emu.store_layout
        primary = current_primary(layout)
        if primary is None:
            self.say("          store: no primary known; store-failover skipped")
            return
        i = layout.ports.index(primary[1])
        self.event("store-failover", None, primary=f"{primary[0]}:{primary[1]}", signal="SIGKILL")
        os.kill(node_pid(layout, i), signal.SIGKILL)
        deadline = time.monotonic() + 15
        new = primary
        while new == primary and time.monotonic() < deadline:
            time.sleep(0.05)
            new = current_primary(layout)
        took = self.now() - self.events[-1]["t"]
        self.figures["store_promoted_s"] = round(took, 3) if new != primary else None
        if new != primary:
            self.say(f"          store: {new[0]}:{new[1]} promoted after {took:.2f} s")
        up(layout)  # the old primary comes back as a replica

    def wait_leader(self, other_than: int, timeout: float = 15.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.emu.leader()
            if lead is not None and lead != other_than:
                return lead
            time.sleep(0.05)
        return None

    def controller_failover(self) -> None:
        """kill -9 the leader; a standby takes over; the killed one comes back as one."""
        old = self.emu.leader()
        if old is None:
            self.say("          controllers: no leader known; controller-failover skipped")
            return
        proc = self.emu.controller_procs[old]
        assert proc is not None
        self.event("controller-failover", None, leader=f"ctl{old + 1}", signal="SIGKILL")
        proc.kill()
        proc.wait()
        new = self.wait_leader(old)
        took = self.now() - self.events[-1]["t"]
        self.figures["controller_takeover_s"] = round(took, 3) if new is not None else None
        if new is not None:
            self.say(f"          controllers: ctl{new + 1} leads after {took:.2f} s")
        self.emu.start_one_controller(old)  # back, as a standby

    def controller_pause(self) -> None:
        """SIGSTOP the leader for three lease lengths, then SIGCONT: it must come back as a
        standby and change nothing."""
        old = self.emu.leader()
        if old is None:
            self.say("          controllers: no leader known; controller-pause skipped")
            return
        proc = self.emu.controller_procs[old]
        assert proc is not None
        pause = 3 * self.emu.lease_ms / 1000
        self.event("controller-pause", None, leader=f"ctl{old + 1}", seconds=pause)
        os.kill(proc.pid, signal.SIGSTOP)
        new = self.wait_leader(old, timeout=pause + 10)
        took = self.now() - self.events[-1]["t"]
        self.figures["controller_pause_takeover_s"] = round(took, 3) if new is not None else None
        self.sleep(max(0.0, pause - took))
        os.kill(proc.pid, signal.SIGCONT)
        if new is not None:
            self.say(f"          controllers: ctl{new + 1} leads after {took:.2f} s; "
                     f"ctl{old + 1} resumed after {pause:.0f} s")  # fmt: skip

    # -- figures --
    def report(self, finals: dict[str, dict]) -> dict[str, Any]:
        conns = [c for f in finals.values() for c in f.get("conns", [])]
        long_total = len(conns)
        broken = [c for c in conns if c["state"] == "broken"]
        # A store failover costs its own gap (reported below), not counted as a stall.
        failover = [e["wall"] for e in self.events if e["kind"] in FAILOVER_EVENTS]

        def outside_failover(start: float) -> bool:
            return not any(w - 0.3 <= start <= w + self.timing.phase for w in failover)

        stalled = [c for c in conns if any(g > 1.0 and outside_failover(s) for s, g in c["gaps"])]
        short = {"ok": 0, "failed": 0, "slow": 0, "max_latency": 0.0}
        for f in finals.values():
            for k in ("ok", "failed", "slow"):
                short[k] += f["short"][k]
            short["max_latency"] = max(short["max_latency"], f["short"]["max_latency"])
        for name, tt in self.figures["time_to_traffic"].items():
            rise = self.monitor.first_rise(name, tt["started"])
            tt["to_active_s"] = round(tt["active"] - tt["started"], 3)
            tt["to_traffic_s"] = round(rise - tt["started"], 3) if rise else None
            del tt["started"], tt["active"]
        gaps = {}
        for ev in self.events:
            if ev["kind"] not in (
                "start",
                "kill",
                "link-down",
                "link-up",
                "drain",
                *FAILOVER_EVENTS,
            ):
                continue
            # gaps that began from just before the event until the next phase
            lo, hi = ev["wall"] - 0.3, ev["wall"] + self.timing.phase
            hit = [g for c in conns for s, g in c["gaps"] if lo <= s <= hi or (s < lo < s + g)]
            gaps[f"{ev['kind']} {ev['instance']} @{ev['t']:.1f}s"] = {
                "kind": ev["kind"],
                "connections_with_gap": len(hit),
                "max_gap_s": round(max(hit), 3) if hit else 0.0,
                "median_gap_s": round(statistics.median(hit), 3) if hit else 0.0,
            }
        self.figures["gaps"] = gaps
        self.figures["failure_gap_s"] = {
            kind: max([g["max_gap_s"] for g in gaps.values() if g["kind"] == kind] + [0.0])
            for kind in ("kill", "link-down", *FAILOVER_EVENTS)
        }
        summary = {
            "long_connections": long_total,
            "broken": len(broken),
            "stalled": len(stalled),
            "max_gap_s": round(max([c["max_gap"] for c in conns] + [0.0]), 3),
            "short_ok": short["ok"],
            "short_failed": short["failed"],
            "short_slow": short["slow"],
            "short_max_latency_s": round(short["max_latency"], 3),
            "broken_reasons": sorted({c["reason"] for c in broken}),
        }
        history = []
        if self.clients:
            with self.clients.lock:
                history = [
                    {
                        "t": round(t - self.t0, 3),
                        **tot["long"],
                        "short_failed": tot["short"].get("failed", 0),
                    }
                    for t, tot in self.clients.history
                    if tot.get("long")
                ]
        return {
            "topology": self.emu.topology.name,
            "pool": self.pool,
            "chained": self.chained,
            "state": self.state,
            "timing": asdict(self.timing),
            "heartbeat_ttl_ms": self.emu.heartbeat_ttl_ms,
            "started": self.t0,
            "duration_s": round(self.now(), 2),
            "summary": summary,
            "figures": self.figures,
            "events": [{k: v for k, v in e.items() if k != "wall"} for e in self.events],
            "traffic": self.monitor.series(self.t0),
            "connections_over_time": history,
            "connections": conns,
        }


# ---- report files ------------------------------------------------------------------------
def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=1))
    png_path = out_dir / f"{stem}.png"
    plot(report, png_path)
    return json_path, png_path


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    tr = report["traffic"]
    for name, pps in tr["pps"].items():
        if any(pps):
            ax.plot(tr["t"], pps, label=name, linewidth=1.2)
    colors = {
        "kill": "red",
        "link-down": "darkorange",
        "link-up": "green",
        "drain": "purple",
        "store-failover": "black",
        "controller-failover": "blue",
        "controller-pause": "teal",
    }
    top = max([max(v) for v in tr["pps"].values() if v] + [1.0])
    for ev in report["events"]:
        if ev["kind"] in ("traffic", "stop", "share-probe", "scale-out", "scale-in"):
            continue
        c = colors.get(ev["kind"], "gray")
        for a in (ax, ax2):
            a.axvline(ev["t"], color=c, linestyle="--", linewidth=0.8)
        ax.text(ev["t"], top * 1.02, f"{ev['kind']} {ev['instance'] or ''}", rotation=60,
                fontsize=7, color=c, va="bottom")  # fmt: skip
    ax.set_ylabel("packets/s to instance")
    ax.set_ylim(0, top * 1.35)
    ax.legend(loc="upper left", fontsize=8)
    s = report["summary"]
    ax.set_title(
        f"{report['topology']} / pool {report['pool']} / state {report['state']}: "
        f"{s['long_connections']} long connections, {s['broken']} broken, {s['stalled']} "
        f"stalled, max gap {s['max_gap_s']:.2f} s",
        fontsize=10,
    )
    hist = report["connections_over_time"]
    if hist:
        t = [h["t"] for h in hist]
        ax2.plot(t, [h["ok"] for h in hist], label="ok", color="tab:green")
        ax2.plot(t, [h["stalled_now"] for h in hist], label="stalled now", color="tab:orange")
        ax2.plot(t, [h["broken"] for h in hist], label="broken", color="tab:red")
        ax2.legend(loc="center left", fontsize=8)
    ax2.set_ylabel("long conns")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(report: dict[str, Any]) -> list[str]:
    s, f = report["summary"], report["figures"]
    lines = [
        f"state {report['state']}: {s['long_connections']} long-lived connections, "
        f"{s['broken']} broken, {s['stalled']} stalled > 1 s, largest gap {s['max_gap_s']:.3f} s; "
        f"short connections {s['short_ok']} ok, {s['short_failed']} failed, "
        f"{s['short_slow']} slower than 1 s",
    ]
    if report.get("chained"):
        lines.insert(
            0,
            f"pool {report['pool']} in a chain; running throughout (Redis state): "
            + ", ".join(report["chained"]),
        )
    fg = f.get("failure_gap_s", {})
    lines.append(
        f"traffic gap on failure: process kill {fg.get('kill', 0):.3f} s "
        f"(detected after {f.get('kill_detected_s')} s), link down {fg.get('link-down', 0):.3f} s "
        f"(detected after {f.get('link_down_detected_s')} s)"
        + (
            f", store primary kill {fg['store-failover']:.3f} s (replica promoted after "
            f"{f.get('store_promoted_s')} s)"
            if "store_promoted_s" in f
            else ""
        )
        + (
            f", leader kill {fg.get('controller-failover', 0):.3f} s (standby leading after "
            f"{f.get('controller_takeover_s')} s), leader paused "
            f"{fg.get('controller-pause', 0):.3f} s "
            f"(standby leading after {f.get('controller_pause_takeover_s')} s)"
            if "controller_takeover_s" in f
            else ""
        )
    )
    tt = f.get("time_to_traffic", {})
    lines.append(
        "instance start -> active / carrying traffic: "
        + ", ".join(
            f"{n} {v['to_active_s']:.2f}/{v['to_traffic_s'] or float('nan'):.2f} s"
            for n, v in tt.items()
        )
    )
    sh = f.get("shares", {}).get("instances", {})
    if sh:
        lines.append(
            "share by capacity: "
            + ", ".join(f"{n} {v['share']:.3f} (want {v['expected']:.3f})" for n, v in sh.items())
        )
    if s["broken_reasons"]:
        lines.append("broken because: " + "; ".join(s["broken_reasons"]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the scale-out scenario in Mininet.")
    p.add_argument("--topology", default=str(nfnet.REPO / "topologies" / "single.yaml"))
    p.add_argument("--pool", default=None, help="pool to scale (default: the first)")
    p.add_argument("--state", choices=("redis", "local"), default="redis")
    p.add_argument("--out", default=str(nfnet.REPO / "reports"))
    p.add_argument("--quick", action="store_true", help="the shorter timings of the tests")
    p.add_argument("--keep", default=None, help="keep logs and sockets in this directory")
    p.add_argument("--controllers", type=int, default=2, help="controllers (default 2)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("scaleout: must run as root", file=sys.stderr)
        return 2
    from mininet.log import setLogLevel

    setLogLevel("warning")
    workdir = Path(args.keep) if args.keep else None
    with nfnet.Emulation(
        Path(args.topology), workdir=workdir, heartbeat_ttl_ms=300, controllers=args.controllers
    ) as emu:
        pool = args.pool or next(iter(emu.topology.pools))
        timing = TEST_TIMING if args.quick else DEMO_TIMING
        sc = Scenario(
            emu, pool, args.state, timing, store_failover=True,
            controller_events=args.controllers > 1,
        )  # fmt: skip
        report = sc.run()
    when = time.strftime("%Y%m%d-%H%M%S")
    stem = f"scaleout-{report['topology']}-{report['pool']}-{args.state}-{when}"
    j, png = write_report(report, Path(args.out), stem)
    for line in summary_lines(report):
        print(line)
    print(f"report: {j}\nplot:   {png}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
