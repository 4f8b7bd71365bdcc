"""Prometheus metrics, read from the app's state and counters at scrape time.

A custom collector (no metric objects updated on the hot path): every scrape reads the
pools, the app's plain counters and the membership state. Served at ``/metrics`` by the
REST API server.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from controller.api.deps import (
    CounterReadings,
    MembershipService,
    PoolStore,
    PublishedView,
    SteeringHost,
)
from controller.core.state import InstanceState, PoolState

# Event-to-barrier times: from a change to the switches' barrier replies (seconds).
TAKEOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class SampleHistogram:
    """A cumulative histogram fed from a bounded deque of samples that the app appends to.

    The app keeps only recent samples; each scrape takes the samples appended since the
    last one. Without a running total from the app, new samples are found by object
    identity: every sample is a distinct float object, and the last one consumed is kept
    referenced so its identity cannot be reused. Samples that fall out of the deque between
    two scrapes (more than its length) are not counted.
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS):
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self._last: Any = None
        self._lock = threading.Lock()

    def consume(self, samples: Iterable[float]) -> None:
        current = list(samples)
        with self._lock:
            start = 0
            for i in range(len(current) - 1, -1, -1):
                if current[i] is self._last:
                    start = i + 1
                    break
            for value in current[start:]:
                self.counts[bisect.bisect_left(self.bounds, value)] += 1
                self.total += value
            if current:
                self._last = current[-1]

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        with self._lock:
            cumulative, running = [], 0
            for bound, count in zip(self.bounds, self.counts, strict=False):
                running += count
                cumulative.append((repr(bound), running))
            running += self.counts[-1]
            cumulative.append(("+Inf", running))
            return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


class SteeringCollector(Collector):
    def __init__(
        self,
        app: SteeringHost,
        membership: MembershipService | None = None,
        store: PoolStore | None = None,
    ) -> None:
        self.app = app
        self.membership = membership
        self.store = store
        self.latency = SampleHistogram()
        self.takeover = SampleHistogram(TAKEOVER_BUCKETS)

    def collect(self) -> Iterable[Any]:
        view = self.app.view()
        pools = dict(view.pools)
        yield from _pool_metrics(pools)
        yield from self._traffic(pools)
        yield from self._load()
        c = self.app.counters
        yield from _counter_metrics(c)
        yield from self._switch_metrics(view)
        self.latency.consume(c.change_latency)
        yield self.latency.family(
            "nfsteer_change_to_barrier_seconds",
            "Time from a change to the barrier reply of every switch",
        )
        yield from self._leadership(c)
        yield from self._service_metrics()

    def _switch_metrics(self, view: PublishedView) -> Iterable[Any]:
        connected = set(view.switches)
        yield GaugeMetricFamily(
            "nfsteer_switches_connected", "Connected switches", value=len(connected)
        )
        yield GaugeMetricFamily(
            "nfsteer_healthy",
            "1 when /healthz reports no problem",
            value=0 if self.app.health() else 1,
        )
        per_switch = GaugeMetricFamily(
            "nfsteer_switch_connected",
            "1 while the topology's switch is connected to this controller",
            labels=["switch"],
        )
        for name in sorted(view.topology.switches):
            per_switch.add_metric([name], 1 if name in connected else 0)
        yield per_switch

    def _service_metrics(self) -> Iterable[Any]:
        if self.store is not None:
            yield GaugeMetricFamily(
                "nfsteer_redis_up", "1 when Redis answered the last command", value=self.store.up
            )
            rejected = CounterMetricFamily(
                "nfsteer_store_records_rejected",
                "Values read from Redis that failed validation and were ignored",
                labels=["pool", "key"],
            )
            for (pool, key), count in sorted(dict(self.store.rejected).items()):
                rejected.add_metric([pool, key], count)
            yield rejected
        if self.membership is not None:
            yield CounterMetricFamily(
                "nfsteer_heartbeat_failures",
                "Instances failed because their heartbeat stopped",
                value=self.membership.heartbeat_failures,
            )

    def _leadership(self, c: CounterReadings) -> Iterable[Any]:
        yield from _role_metrics(self.app)
        self.takeover.consume(c.takeover_seconds)
        yield self.takeover.family(
            "nfsteer_takeover_seconds",
            "Time from winning a term to every switch MASTER and programmed",
        )

    def _load(self) -> Iterable[Any]:
        watch = self.app.loads
        load = GaugeMetricFamily(
            "nfsteer_instance_load",
            "Packets/s through the instance's hash slots (pools in load mode)",
            labels=["pool", "instance"],
        )
        imbalance = GaugeMetricFamily(
            "nfsteer_load_imbalance",
            "Max load per unit of capacity over the pool mean (pools in load mode)",
            labels=["pool"],
        )
        moves = CounterMetricFamily(
            "nfsteer_slot_moves",
            "Hash slots that changed owner, by reason (load, membership)",
            labels=["pool", "reason"],
        )
        for pname, rep in sorted(dict(watch.reports).items()):
            if rep.mode == "load" and rep.readings:
                for name, value in sorted(rep.loads.items()):
                    load.add_metric([pname, name], value)
                if rep.imbalance is not None:
                    imbalance.add_metric([pname], rep.imbalance)
            for kind in ("load", "membership"):
                moves.add_metric([pname, kind], rep.moves_total.get(kind, 0))
        yield from (load, imbalance, moves)

    def _traffic(self, pools: dict[str, PoolState]) -> Iterable[Any]:
        """Per-instance port counters, when the app collects port statistics
        (``app.port_stats[(switch, port)] = {"rx_packets": ..., ...}``)."""
        port_stats = self.app.port_stats
        if not port_stats:
            return
        families = {
            key: CounterMetricFamily(
                f"nfsteer_instance_{key}", f"{key} on the instance's switch port",
                labels=["pool", "instance"],
            )
            for key in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes")
        }  # fmt: skip
        for pname, ps in sorted(pools.items()):
            for name, info in sorted(dict(ps.instances).items()):
                stats = None
                if info.switch is not None and info.port is not None:  # located
                    stats = port_stats.get((info.switch, info.port))
                for key, family in families.items():
                    if stats and key in stats:
                        family.add_metric([pname, name], stats[key])
        yield from families.values()


def _pool_metrics(pools: dict[str, PoolState]) -> Iterable[Any]:
    by_state = GaugeMetricFamily(
        "nfsteer_pool_instances", "Instances per pool by state", labels=["pool", "state"]
    )
    epoch = GaugeMetricFamily("nfsteer_pool_epoch", "Assignment epoch", labels=["pool"])
    unserved = GaugeMetricFamily(
        "nfsteer_pool_unserved_slots",
        "Hash slots without an owner: their traffic is dropped",
        labels=["pool"],
    )
    no_active = GaugeMetricFamily(
        "nfsteer_pool_without_active_instance",
        "1 when the pool has no active instance and drops its service traffic",
        labels=["pool"],
    )
    slots = GaugeMetricFamily(
        "nfsteer_instance_slots", "Hash slots held by an instance", labels=["pool", "instance"]
    )
    capacity = GaugeMetricFamily(
        "nfsteer_instance_capacity", "Configured capacity", labels=["pool", "instance"]
    )
    state = GaugeMetricFamily(
        "nfsteer_instance_state",
        "1 for the instance's current state",
        labels=["pool", "instance", "state"],
    )
    for pname, ps in sorted(pools.items()):
        instances = dict(ps.instances)
        assignment = list(ps.assignment)
        counts: dict[str, int] = {}
        for owner in assignment:
            if owner is not None:
                counts[owner] = counts.get(owner, 0) + 1
        for st in InstanceState:
            n = sum(1 for i in instances.values() if i.state is st)
            by_state.add_metric([pname, st.value], n)
        epoch.add_metric([pname], ps.epoch)
        unserved.add_metric([pname], assignment.count(None))
        has_active = any(i.state is InstanceState.ACTIVE and i.located for i in instances.values())
        no_active.add_metric([pname], 0 if has_active else 1)
        for name, info in sorted(instances.items()):
            slots.add_metric([pname, name], counts.get(name, 0))
            capacity.add_metric([pname, name], info.capacity)
            for st in InstanceState:
                state.add_metric([pname, name, st.value], 1 if info.state is st else 0)
    yield from (by_state, epoch, unserved, no_active, slots, capacity, state)


def _counter_metrics(c: CounterReadings) -> Iterable[Any]:
    for attr, doc in (
        ("rebalances", "Changes that moved at least one slot"),
        ("slots_moved", "Hash slots that changed owner"),
        ("flow_mods_sent", "OpenFlow flow-mods sent"),
        ("group_mods_sent", "OpenFlow group-mods sent"),
        ("barriers_sent", "OpenFlow barrier requests sent"),
        ("switch_errors", "OpenFlow error messages received"),
        ("switch_connects", "Switch connections (first and re-connections)"),
        ("port_events", "Port status messages received"),
        ("switch_refused", "Switch connections refused (dpid already connected)"),
        ("handler_errors", "Event handler failures (contained)"),
        ("takeovers", "Terms this controller won (it became the leader)"),
        ("fenced", "Writes refused as stale by a switch or the store (each a step-down)"),
    ):
        yield CounterMetricFamily(f"nfsteer_{attr}", doc, value=getattr(c, attr))


def _role_metrics(app: SteeringHost) -> Iterable[Any]:
    status = app.role_status()
    role = GaugeMetricFamily(
        "nfsteer_role", "1 for this controller's role (single, leader, standby)", labels=["role"]
    )
    for name in ("single", "leader", "standby"):
        role.add_metric([name], 1 if status["role"] == name else 0)
    yield role
    yield GaugeMetricFamily(
        "nfsteer_term", "The leader's term this controller knows", value=status["term"] or 0
    )


def make_registry(
    app: SteeringHost, membership: MembershipService | None = None, store: PoolStore | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SteeringCollector(app, membership, store))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
