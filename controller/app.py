"""The os-ken application: a thin layer between OpenFlow events and the pure logic.

Events (switch features, port status, stats, barrier replies, errors) become calls on
:class:`controller.state.Steering` and :mod:`controller.flows`; the messages those return
are sent. Loadable by any os-ken AppManager (options then come from ``NFSTEER_*``
environment variables, see :mod:`controller.options`); ``nfsteer controller`` passes its
options as the ``nfsteer_options`` keyword.

How a switch is programmed, always the same way: compute the table it should hold, compare
with what it holds (read back with flow-stats and group-desc requests when it connects,
tracked from then on), send only the difference, adds before deletes, with barriers. After a
change the table is updated rather than recomputed (:func:`controller.flows.update`), so a
change costs what it moves; a switch that (re)connects gets the full computation.

Port counters of every connected switch are polled every ``PORT_STATS_INTERVAL_S``
(``app.port_stats``, read by the REST API, ``nfsteer status`` and the metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_3

from contract.topology import load_topology
from controller import flows as fl
from controller import ofmsg
from controller.options import Options
from controller.state import InstanceState, PoolChange, Steering
from controller.topology import Routes, compute_routes, fabric_ports

LOG = logging.getLogger("nfsteer.controller")
OFP = ofproto_v1_3
SENT_HISTORY = 8192  # recent messages per switch, to name the cause of an error reply
PORT_STATS_INTERVAL_S = 2.0
SEND_CHUNK = 64 * 1024  # bytes of OpenFlow messages handed to a connection at once
PORT_STATS_KEYS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes")


class ApplyResult:
    """The outcome of one change: which slots moved, and when the switches confirmed it."""

    def __init__(
        self,
        changes: list[PoolChange],
        started: float,
        on_done: Callable[[ApplyResult], None] | None = None,
    ):
        self.changes = changes
        self.started = started
        self._on_done = on_done  # called once, by the barrier reply that completes it
        self.barrier_done: float | None = None
        self._pending: set[tuple[int, int]] = set()  # (id of datapath, barrier xid)
        self._cond = threading.Condition()
        self._sealed = False

    def _expect(self, dp_key: int, xid: int) -> None:
        with self._cond:
            self._pending.add((dp_key, xid))

    def _seal(self) -> None:
        """All barriers are sent; from now on an empty pending set means done."""
        with self._cond:
            self._sealed = True
            self._cond.notify_all()

    def _answered(self, dp_key: int, xid: int | None, when: float | None) -> None:
        """Record a barrier reply (xid None: the switch went away)."""
        with self._cond:
            if xid is None:
                self._pending = {p for p in self._pending if p[0] != dp_key}
            elif (dp_key, xid) in self._pending:
                self._pending.discard((dp_key, xid))
                self.barrier_done = when
                if self._sealed and not self._pending and self._on_done is not None:
                    self._on_done(self)  # before waiters wake, so they see its effect
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        with self._cond:
            return self._sealed and not self._pending

    def wait(self, timeout: float) -> bool:
        """True once every connected switch answered the barrier that follows the change."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sealed and not self._pending, timeout)


@dataclass
class Counters:
    """Plain counters, read by the metrics exporter at scrape time."""

    rebalances: int = 0
    slots_moved: int = 0
    flow_mods_sent: int = 0
    group_mods_sent: int = 0
    barriers_sent: int = 0
    switch_errors: int = 0
    switch_connects: int = 0
    port_events: int = 0
    # seconds from a barrier request to its reply, per switch
    barrier_latency: deque = field(default_factory=lambda: deque(maxlen=1000))
    # seconds from apply() to the last switch's barrier reply for that change
    change_latency: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class _Switch:
    """A connected switch and what we know of its table."""

    name: str
    dp: Any
    installed: fl.Installed | None = None  # None until the read-back finished
    desired: fl.Desired | None = None  # what it was last programmed to hold
    ports: dict[int, bool] = field(default_factory=dict)  # port -> up
    sent: OrderedDict = field(default_factory=OrderedDict)  # xid -> message
    barrier_sent_at: dict[int, float] = field(default_factory=dict)
    waiting: set[str] = field(default_factory=lambda: {"ports", "flows", "groups"})
    flow_bodies: list = field(default_factory=list)
    group_bodies: list = field(default_factory=list)
    port_bodies: list = field(default_factory=list)
    synced: ApplyResult | None = None


class SteeringApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any):
        options = kwargs.pop("nfsteer_options", None)
        super().__init__(*args, **kwargs)
        self.options: Options = options or Options.from_env()
        logging.getLogger("nfsteer").setLevel(self.options.log_level)
        topology = load_topology(self.options.topology)
        self.steering = Steering(topology, now=time.time())
        self.counters = Counters()
        # Held while the steering state or a switch's tables change; readers that need a
        # consistent view of several pools (e.g. a snapshot for Redis) take it too.
        self.lock = threading.RLock()
        self._answered = threading.Condition(self.lock)  # a barrier reply came, a switch left
        # (switch, port) -> {"rx_packets", "tx_packets", "rx_bytes", "tx_bytes"}; each
        # value is replaced whole, so readers need no lock.
        self.port_stats: dict[tuple[str, int], dict[str, int]] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._listeners: list[Callable[[list[PoolChange], str], None]] = []
        self._switches: dict[str, _Switch] = {}
        self._fabric = fabric_ports(topology)
        self._routes: Routes = compute_routes(topology)
        self._services_started = False
        self._results: dict[tuple[int, int], list[ApplyResult]] = {}  # (dp, barrier xid)
        self._sync_events: dict[str, threading.Event] = {
            n: threading.Event() for n in topology.switches
        }

    # -- public API ------------------------------------------------------------------------

    @property
    def datapaths(self) -> dict[str, Any]:
        """Connected switches by name."""
        with self.lock:
            return {n: s.dp for n, s in self._switches.items()}

    @property
    def switch_ports(self) -> dict[str, dict[int, bool]]:
        """Ports of each connected switch: port number -> up."""
        with self.lock:
            return {n: dict(s.ports) for n, s in self._switches.items()}

    def add_listener(self, fn: Callable[[list[PoolChange], str], None]) -> None:
        self._listeners.append(fn)

    def apply(
        self, mutation: Callable[[Steering], PoolChange | list[PoolChange]], reason: str
    ) -> ApplyResult:
        """Run a mutation, program every switch with the difference, notify listeners."""
        started = time.monotonic()
        with self.lock:
            inputs = fl.table_inputs(self.steering)
            try:
                out = mutation(self.steering)
            except Exception:
                # A mutation that made several changes may have applied some of them
                # before failing: keep the switches in line with the state either way.
                self._program_all(None)
                raise
            changes = [out] if isinstance(out, PoolChange) else list(out)
            result = ApplyResult(changes, started, self._record_latency)
            moved = sum(len(c.moved) for c in changes)
            if moved:
                self.counters.rebalances += 1
                self.counters.slots_moved += moved
            # No slot moved and no instance came, went or moved: the tables are the same.
            if moved or fl.table_inputs(self.steering) != inputs:
                self._program_all(result)
            result._seal()
        summary = ", ".join(
            f"{c.pool}: {len(c.moved)} slots moved, epoch {c.epoch}" for c in changes
        )
        LOG.info("%s (%s)", reason, summary or "no change")
        for fn in list(self._listeners):
            try:
                fn(changes, reason)
            except Exception:
                LOG.exception("change listener %r failed", fn)
        return result

    def _record_latency(self, result: ApplyResult) -> None:
        if result.barrier_done is not None:
            self.counters.change_latency.append(result.barrier_done - result.started)

    def wait_synced(self, switch: str, timeout: float) -> bool:
        """True once ``switch`` connected and confirmed its full table (tests, tools)."""
        return self._sync_events[switch].wait(timeout)

    def wait_confirmed(self, timeout: float) -> bool:
        """True once every connected switch answered every barrier sent to it so far, i.e.
        every change applied before this call is in the switches' tables (tests, tools)."""
        with self._answered:
            return self._answered.wait_for(
                lambda: not any(sw.barrier_sent_at for sw in self._switches.values()), timeout
            )

    def send_messages(self, switch: str, msgs: list[Any]) -> list[int]:
        """Send extra OpenFlow messages to a connected switch (diagnostics, tools); errors
        they cause are logged with them like those of the app's own messages."""
        with self.lock:
            sw = self._switches.get(switch)
            if sw is None:
                raise KeyError(f"switch {switch!r} is not connected")
            return self._send_all(sw, msgs)

    def installed_table(self, switch: str) -> fl.Installed | None:
        with self.lock:
            sw = self._switches.get(switch)
            return (
                None
                if sw is None or sw.installed is None
                else fl.Installed(dict(sw.installed.flows), dict(sw.installed.groups))
            )

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Any:
        # Membership and state in Redis when a URL is given; the REST API, metrics and
        # CLI either way (unless the API is off).
        try:
            from controller import service

            service.start_services(self)
            self._services_started = True
        except Exception:
            LOG.exception("could not start the controller's services")
        self._poller = threading.Thread(
            target=self._poll_port_stats, name="nfsteer-port-stats", daemon=True
        )
        self._poller.start()
        LOG.info(
            "steering %s: %d switches, %d pools, %d services",
            self.steering.topology.name,
            len(self.steering.topology.switches),
            len(self.steering.pools),
            len(self.steering.topology.services),
        )
        return super().start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(PORT_STATS_INTERVAL_S + 1)
            self._poller = None
        if self._services_started:
            self._services_started = False
            try:
                from controller import service

                service.stop_services(self)
            except Exception:
                LOG.exception("stopping the controller's services failed")
        super().close()

    # -- programming -----------------------------------------------------------------------

    def _program_all(self, result: ApplyResult | None) -> None:
        for sw in list(self._switches.values()):
            if sw.installed is not None:
                self._program(sw, result)

    def _program(self, sw: _Switch, result: ApplyResult | None) -> None:
        """Send ``sw`` what its table lacks. The first time (after the read-back) the
        whole table is computed and compared; from then on only what the change touched."""
        if sw.desired is None:
            sw.desired = fl.desired(self.steering, sw.name, self._routes)
            steps = fl.diff(sw.installed or fl.Installed(), sw.desired.table)
        else:
            sw.desired, keys = fl.update(sw.desired, self.steering, sw.name, self._routes)
            steps = fl.diff(sw.installed or fl.Installed(), sw.desired.table, keys)
        if not steps:
            return
        last_barrier = None
        xids = self._send_all(sw, ofmsg.messages(sw.dp, steps))
        sent_at = time.monotonic()
        for step, xid in zip(steps, xids, strict=True):
            if isinstance(step, fl.Barrier):
                last_barrier = xid
                self.counters.barriers_sent += 1
                sw.barrier_sent_at[xid] = sent_at
            elif isinstance(step, fl.FlowAdd | fl.FlowDelete):
                self.counters.flow_mods_sent += 1
            else:
                self.counters.group_mods_sent += 1
        sw.installed = fl.apply_steps(sw.installed or fl.Installed(), steps)
        if result is not None and last_barrier is not None:
            result._expect(id(sw.dp), last_barrier)
            self._results.setdefault((id(sw.dp), last_barrier), []).append(result)
        counts = fl.count_mods(steps)
        LOG.debug("%s: sent %d flow-mods, %d group-mods", sw.name, counts["flow"], counts["group"])

    def _send(self, sw: _Switch, msg: Any) -> int:
        return self._send_all(sw, [msg])[0]

    def _send_all(self, sw: _Switch, msgs: list[Any]) -> list[int]:
        """Send messages in order; returns their xids. They are handed to the connection
        in chunks of several messages: one queue hand-off and one write per chunk instead of
        per message, which is most of the cost of a change that moves many slots."""
        xids = []
        chunk = bytearray()
        for msg in msgs:
            sw.dp.set_xid(msg)
            msg.serialize()
            sw.sent[msg.xid] = msg
            xids.append(msg.xid)
            chunk += msg.buf
            if len(chunk) >= SEND_CHUNK:
                sw.dp.send(bytes(chunk))
                chunk.clear()
        if chunk:
            sw.dp.send(bytes(chunk))
        while len(sw.sent) > SENT_HISTORY:
            sw.sent.popitem(last=False)
        return xids

    def _down_ports(self) -> set[tuple[str, int]]:
        return {
            (name, port)
            for name, sw in self._switches.items()
            for port, up in sw.ports.items()
            if not up
        }

    def _recompute_routes(self) -> bool:
        """Refresh routes from live link state; True when they changed."""
        routes = compute_routes(self.steering.topology, self._down_ports())
        changed = routes != self._routes
        self._routes = routes
        return changed

    # -- instance health from port state -------------------------------------------------

    def _port_changes(self, sw: _Switch, ports: dict[int, bool], why: str) -> None:
        """React to instance ports going down/up (static pools come back on their own)."""
        for pname, ps in self.steering.pools.items():
            static = self.steering.topology.pools[pname].membership == "static"
            for iname, info in ps.instances.items():
                if info.switch != sw.name or info.port is None:
                    continue
                up = ports.get(info.port)
                if up is None:
                    continue
                if not up and info.state in (InstanceState.ACTIVE, InstanceState.DRAINING):
                    self.apply(
                        lambda s, p=pname, n=iname: s.set_state(
                            p, n, InstanceState.FAILED, time.time()
                        ),
                        f"instance {pname}/{iname}: port {sw.name}:{info.port} down ({why})",
                    )
                elif up and static and info.state is InstanceState.FAILED:
                    self.apply(
                        lambda s, p=pname, n=iname: s.set_state(
                            p, n, InstanceState.ACTIVE, time.time()
                        ),
                        f"instance {pname}/{iname}: port {sw.name}:{info.port} up ({why})",
                    )

    # -- OpenFlow events -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        # ev.msg.datapath_id, not dp.id: os-ken's handler that sets dp.id runs in another
        # thread and may not have run yet.
        dpid = ev.msg.datapath_id
        name = self.steering.topology.switch_by_dpid(dpid)
        if name is None:
            LOG.warning("switch with dpid %#x is not in the topology: ignored", dpid)
            return
        with self.lock:
            self.counters.switch_connects += 1
            self._sync_events[name].clear()
            sw = _Switch(name=name, dp=dp)
            self._switches[name] = sw
            LOG.info(
                "switch %s (dpid %#x) connected from %s: reading its table", name, dpid, dp.address
            )
            for msg in (
                ofmsg.port_desc_request(dp),
                ofmsg.flow_stats_request(dp),
                ofmsg.group_desc_request(dp),
            ):
                self._send(sw, msg)

    def _switch_of(self, dp: Any) -> _Switch | None:
        for sw in self._switches.values():
            if sw.dp is dp:
                return sw
        return None

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev: Any) -> None:
        self._collect(ev, "ports", "port_bodies")

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev: Any) -> None:
        self._collect(ev, "flows", "flow_bodies")

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev: Any) -> None:
        self._collect(ev, "groups", "group_bodies")

    def _collect(self, ev: Any, what: str, attr: str) -> None:
        with self.lock:
            sw = self._switch_of(ev.msg.datapath)
            if sw is None or sw.installed is not None:
                return
            getattr(sw, attr).extend(ev.msg.body)
            if ev.msg.flags & OFP.OFPMPF_REPLY_MORE:
                return
            sw.waiting.discard(what)
            if not sw.waiting:
                self._finish_sync(sw)

    def _finish_sync(self, sw: _Switch) -> None:
        sw.ports = {
            p.port_no: ofmsg.port_is_up(p) for p in sw.port_bodies if p.port_no <= OFP.OFPP_MAX
        }
        current = fl.Installed(
            ofmsg.parse_flow_stats(sw.flow_bodies), ofmsg.parse_group_desc(sw.group_bodies)
        )
        sw.flow_bodies, sw.group_bodies, sw.port_bodies = [], [], []
        self._recompute_routes()
        # Instance health first, so the first table already avoids dead instances.
        # An instance port the switch does not have is as good as down.
        ports = {
            i.port: sw.ports.get(i.port, False)
            for ps in self.steering.pools.values()
            for i in ps.instances.values()
            if i.switch == sw.name and i.port is not None
        }
        self._port_changes(sw, ports, "at connect")
        sw.installed = current
        sw.desired = None  # compared in full with what was read back
        result = ApplyResult([], time.monotonic())
        sw.synced = result
        before = self.counters.flow_mods_sent + self.counters.group_mods_sent
        self._program_all(result)
        result._seal()
        sent = self.counters.flow_mods_sent + self.counters.group_mods_sent - before
        LOG.info(
            "switch %s: table read back (%d flows, %d groups), %d changes sent",
            sw.name,
            len(current.flows),
            len(current.groups),
            sent,
        )
        if result.done:
            self._sync_events[sw.name].set()

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        msg = ev.msg
        port = msg.desc
        if port.port_no > OFP.OFPP_MAX:
            return
        up = msg.reason != OFP.OFPPR_DELETE and ofmsg.port_is_up(port)
        with self.lock:
            sw = self._switch_of(msg.datapath)
            if sw is None:
                return
            self.counters.port_events += 1
            was = sw.ports.get(port.port_no)
            sw.ports[port.port_no] = up
            if was == up or sw.installed is None:
                return
            LOG.info("switch %s: port %d %s", sw.name, port.port_no, "up" if up else "down")
            self._port_changes(sw, {port.port_no: up}, "port status")
            if port.port_no in self._fabric[sw.name] and self._recompute_routes():
                LOG.info(
                    "switch %s: fabric port %d %s: rerouting",
                    sw.name,
                    port.port_no,
                    "up" if up else "down",
                )
                self._program_all(None)

    def _poll_port_stats(self) -> None:
        """Ask every programmed switch for its port counters, until the app stops."""
        while not self._stop.wait(PORT_STATS_INTERVAL_S):
            with self.lock:
                for sw in list(self._switches.values()):
                    if sw.installed is None:
                        continue
                    try:
                        self._send(sw, ofmsg.port_stats_request(sw.dp))
                    except Exception:  # e.g. the connection is closing: next round
                        LOG.debug("switch %s: port stats request failed", sw.name, exc_info=True)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats_reply(self, ev: Any) -> None:
        with self.lock:
            sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        for st in ev.msg.body:
            if st.port_no <= OFP.OFPP_MAX:
                self.port_stats[(sw.name, st.port_no)] = {
                    k: int(getattr(st, k)) for k in PORT_STATS_KEYS
                }

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev: Any) -> None:
        now = time.monotonic()
        dp = ev.msg.datapath
        xid = ev.msg.xid
        with self.lock:
            sw = self._switch_of(dp)
            if sw is not None:
                sent_at = sw.barrier_sent_at.pop(xid, None)
                if sent_at is not None:
                    self.counters.barrier_latency.append(now - sent_at)
                    self._answered.notify_all()
            results = self._results.pop((id(dp), xid), [])
        for r in results:
            r._answered(id(dp), xid, now)
        if sw is not None and sw.synced is not None and sw.synced.done:
            self._sync_events[sw.name].set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        with self.lock:
            self.counters.switch_errors += 1
            sw = self._switch_of(msg.datapath)
            cause = sw.sent.get(msg.xid) if sw is not None else None
        LOG.error(
            "switch %s: error type=%d code=%d for xid %d: %s",
            sw.name if sw else msg.datapath.id,
            msg.type,
            msg.code,
            msg.xid,
            ofmsg.describe(cause) if cause is not None else "message no longer known",
        )

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _disconnected(self, ev: Any) -> None:
        dp = ev.datapath
        with self.lock:
            sw = self._switch_of(dp)
            if sw is None:
                return
            del self._switches[sw.name]
            self._sync_events[sw.name].clear()
            for key in [k for k in self.port_stats if k[0] == sw.name]:
                self.port_stats.pop(key, None)
            pending = [k for k in self._results if k[0] == id(dp)]
            results = [r for k in pending for r in self._results.pop(k)]
            self._answered.notify_all()
        for r in results:
            r._answered(id(dp), None, None)
        LOG.info("switch %s disconnected", sw.name)
