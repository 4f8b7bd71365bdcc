"""The os-ken application: a thin layer between OpenFlow events and the pure logic.

Events (switch features, port status, stats, barrier replies, errors) become calls on
:class:`controller.core.state.Steering` and :class:`controller.core.switchsync.SwitchSync`; the
messages those return are sent. Loadable by any os-ken AppManager (options then come from
``NFSTEER_*`` environment variables, see :mod:`controller.ofp.options`); ``nfsteer controller``
passes its options as the ``nfsteer_options`` keyword.

**One loop owns the steering state.** os-ken hands every OpenFlow event to the app's own
event queue, handled in order by one thread. Everything else that changes steering state —
membership decisions, API changes, timers — is posted into that same queue (:meth:`call`,
:meth:`post`), so no lock guards the state. Readers in other threads (REST API, metrics)
get :meth:`view`, an immutable copy the loop publishes after each change.

No handler failure ends the loop: it is logged with the event that caused it and contained
to that event, or to its switch, whose connection is dropped (it reconnects and is read
back and re-synced). If the loop ends anyway, :meth:`fatal` ends the process with a
non-zero status and one line saying why (crash-only: the state in Redis makes a restart
lossless). ``/healthz`` fails while the loop has not turned for ``LOOP_STALL_S``.

How a switch is programmed, always the same way: compute the table it should hold, compare
with what it holds (read back when it connects, tracked from then on), send only the
difference, adds before deletes, with barriers (:mod:`controller.core.switchsync`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from os_ken.base import app_manager
from os_ken.controller import event, ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_v1_3

from contract.topology import Topology, load_topology
from controller.core import flows as fl
from controller.core import loadbalance as lb
from controller.core.leadership import Lease
from controller.core.state import InstanceState, PoolChange, PoolState, Steering
from controller.core.switchsync import Phase, SwitchSync
from controller.core.topology import Routes, compute_routes, fabric_ports
from controller.ofp import ofmsg
from controller.ofp.options import Options

LOG = logging.getLogger("nfsteer.controller")
OFP = ofproto_v1_3
SENT_HISTORY = 8192  # recent messages per switch, to name the cause of an error reply
PORT_STATS_INTERVAL_S = 2.0
TICK_S = 0.5  # the loop is woken at least this often (timers, liveness)
LOOP_STALL_S = 3.0  # /healthz fails when the loop has not turned for this long
FAILURE_WINDOW_S = 30.0  # ... and for this long after a handler failed
CALL_TIMEOUT_S = 30.0  # a caller waits this long for the loop to run its function
SEND_CHUNK = 64 * 1024  # bytes of OpenFlow messages handed to a connection at once
# duration_*: the port's age on the switch when it read the counters, a clock for rates.
PORT_STATS_KEYS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "duration_sec", "duration_nsec"
)  # fmt: skip
EXIT_LOOP_DIED = 70  # EX_SOFTWARE

T = TypeVar("T")


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

    def expect(self, dp_key: int, xid: int) -> None:
        with self._cond:
            self._pending.add((dp_key, xid))

    def seal(self) -> None:
        """All barriers are sent; from now on an empty pending set means done."""
        with self._cond:
            self._sealed = True
            self._cond.notify_all()

    def answered(self, dp_key: int, xid: int | None, when: float | None) -> None:
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
    switch_refused: int = 0
    port_events: int = 0
    handler_errors: int = 0
    takeovers: int = 0
    fenced: int = 0  # writes refused as stale (switch or store), each a step-down
    # seconds from winning a term to every switch MASTER and programmed
    takeover_seconds: deque = field(default_factory=lambda: deque(maxlen=1000))
    # seconds from a barrier request to its reply, per switch
    barrier_latency: deque = field(default_factory=lambda: deque(maxlen=1000))
    # seconds from apply() to the last switch's barrier reply for that change
    change_latency: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass(frozen=True)
class View:
    """What readers outside the loop see: copies published by the loop, never changed."""

    topology: Topology
    pools: Mapping[str, PoolState]
    switches: tuple[str, ...]  # connected
    switch_ports: Mapping[str, Mapping[int, bool]]
    switch_problems: tuple[str, ...]  # why a connected switch is not in sync
    published: float  # time.monotonic() when the loop published it


@dataclass
class _Switch:
    """A connected switch: its connection and its programming state."""

    dp: Any
    sync: SwitchSync
    sent: OrderedDict = field(default_factory=OrderedDict)  # xid -> message
    result: ApplyResult | None = None  # confirms the first programming
    # OpenFlow role (with several controllers): asked for and confirmed, (role, generation)
    role_asked: tuple[int, int] | None = None
    role: tuple[int, int] | None = None


class EventCall(event.EventBase):
    """A function to run in the loop (an API change, a membership decision, a timer)."""

    def __init__(self, fn: Callable[[], Any], reply: _Reply | None):
        super().__init__()
        self.fn = fn
        self.reply = reply


class _Reply:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class EventTick(event.EventBase):
    """Posted every ``TICK_S``: timers, health, and proof that the loop turns."""


def _describe_event(ev: Any) -> str:
    msg = getattr(ev, "msg", None)
    if msg is None:
        return type(ev).__name__
    dpid = getattr(getattr(msg, "datapath", None), "id", None)
    return f"{type(ev).__name__} (xid {getattr(msg, 'xid', '?')}, dpid {dpid})"


def _exit_process(reason: str) -> None:
    os._exit(EXIT_LOOP_DIED)


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
        # (switch, port) -> {"rx_packets", "tx_packets", "rx_bytes", "tx_bytes"}; each
        # value is replaced whole, so readers need no lock.
        self.port_stats: dict[tuple[str, int], dict[str, int]] = {}
        # Called with one line when the loop dies: ends the process (tests replace it).
        self.on_fatal: Callable[[str], None] = _exit_process
        # The leader's lease when several controllers share Redis (set by the election
        # service before the loop starts); None: this is the only controller.
        self.lease: Lease | None = None
        self.takeover_started: float | None = None
        self.loop_turned = time.monotonic()
        self.last_failure: tuple[float, str] | None = None  # (when, what) of a handler
        self._loop_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None
        self._tick_queued = False
        self._next_port_stats = 0.0
        self._listeners: list[Callable[[list[PoolChange], str], None]] = []
        self.loads = lb.LoadWatch.for_topology(topology, fl.pool_ids(topology))
        for pool, why in self.loads.off.items():
            LOG.warning("pool %s: %s: it stays in flows mode", pool, why)
        self._listeners.append(self._record_moves)
        self._publish_loads()
        self._switches: dict[str, _Switch] = {}
        self._fabric = fabric_ports(topology)
        self._routes: Routes = compute_routes(topology)
        self._services_started = False
        self._results: dict[tuple[int, int], list[ApplyResult]] = {}  # (dp, barrier xid)
        self._answered = threading.Condition()  # a barrier reply came, a switch left
        self._sync_events: dict[str, threading.Event] = {
            n: threading.Event() for n in topology.switches
        }
        self._view: View = self._make_view()
        self._view_dirty = False

    # -- the loop --------------------------------------------------------------------------

    def _event_loop(self) -> None:
        """os-ken's event loop, with every handler failure contained (os-ken's native hub
        treats any exception as a request to end the loop, silently)."""
        self._loop_thread = threading.current_thread()
        try:
            while self.is_active or not self.events.empty():
                ev, state = self.events.get()
                self._events_sem.release()
                if ev == self._event_stop:
                    continue
                self.loop_turned = time.monotonic()
                for handler in self.get_handlers(ev, state):
                    try:
                        handler(ev)
                    except Exception:
                        self._handler_failed(handler, ev)
                if self._view_dirty:
                    self._publish()
        except BaseException as e:
            if not self._stopping.is_set():
                self.fatal(f"event loop ended: {type(e).__name__}: {e}")
            raise

    def _handler_failed(self, handler: Any, ev: Any) -> None:
        self.counters.handler_errors += 1
        what = f"handler {getattr(handler, '__name__', handler)} failed on {_describe_event(ev)}"
        self.last_failure = (time.monotonic(), what)
        LOG.exception(
            "handler %s failed on %s: contained", getattr(handler, "__name__", handler),
            _describe_event(ev),
        )  # fmt: skip
        dp = getattr(getattr(ev, "msg", None), "datapath", None)
        sw = self._switch_of(dp) if dp is not None else None
        if sw is not None:
            # Its state may be half-updated: start it over from a fresh read-back.
            LOG.warning("switch %s: dropping its connection to re-sync it", sw.sync.name)
            self._drop_connection(dp)
            self._forget(sw)

    def fatal(self, reason: str) -> None:
        """The loop cannot go on: one line, then the process ends (``on_fatal``)."""
        LOG.critical("nfsteer controller: %s: exiting", reason)
        self.on_fatal(reason)

    def in_loop(self) -> bool:
        return threading.current_thread() is self._loop_thread

    def call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``fn`` in the loop and return its result (or raise its exception). Runs it
        at once when called from the loop, or before the loop has started."""
        if self._loop_thread is None or self.in_loop():
            return fn()
        reply = _Reply()
        self._send_event(EventCall(fn, reply), None)
        deadline = time.monotonic() + timeout
        while not reply.done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self._stopping.is_set() or not self._loop_thread.is_alive():
                raise TimeoutError("the controller's event loop is stopping or has ended")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the controller's event loop did not answer in {timeout:g} s")
        if reply.error is not None:
            raise reply.error
        return reply.value

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the loop later; its failure is logged there."""
        if self._loop_thread is None:
            fn()
            return
        self._send_event(EventCall(fn, None), None)

    @set_ev_cls(EventCall)
    def _run_call(self, ev: EventCall) -> None:
        if ev.reply is None:
            ev.fn()  # a failure is contained and logged by the loop
            return
        try:
            ev.reply.value = ev.fn()
        except BaseException as e:
            ev.reply.error = e
        finally:
            ev.reply.done.set()

    def _tick_loop(self) -> None:
        while not self._stopping.wait(TICK_S):
            if not self._tick_queued:
                self._tick_queued = True
                self._send_event(EventTick(), None)

    @set_ev_cls(EventTick)
    def _tick(self, ev: EventTick) -> None:
        self._tick_queued = False
        now = time.monotonic()
        if now >= self._next_port_stats:
            self._next_port_stats = now + PORT_STATS_INTERVAL_S
            for sw in list(self._switches.values()):
                if sw.sync.phase is Phase.PROGRAMMED:
                    try:
                        self._send_all(sw, [ofmsg.port_stats_request(sw.dp)])
                    except Exception:  # e.g. the connection is closing: next round
                        LOG.debug("switch %s: port stats request failed", sw.sync.name)
        self._read_slot_load(now)
        self._view_dirty = True  # switch problems age with time

    # -- readers ---------------------------------------------------------------------------

    def view(self) -> View:
        """The latest published state; safe to read from any thread."""
        return self._view

    def mark_changed(self) -> None:
        """Something readers see changed (loop only): publish after this event."""
        self._view_dirty = True

    def _make_view(self) -> View:
        now = time.monotonic()
        pools = {
            name: PoolState(
                ps.name,
                ps.kind,
                ps.n_slots,
                ps.basis,
                {n: dataclasses.replace(i) for n, i in ps.instances.items()},
                list(ps.assignment),
                ps.epoch,
            )
            for name, ps in self.steering.pools.items()
        }
        problems = [sw.sync.problem(now) for sw in self._switches.values()]
        return View(
            topology=self.steering.topology,
            pools=pools,
            switches=tuple(sorted(self._switches)),
            switch_ports={n: dict(s.sync.ports) for n, s in self._switches.items()},
            switch_problems=tuple(p for p in problems if p),
            published=now,
        )

    def _publish(self) -> None:
        self._view = self._make_view()
        self._view_dirty = False

    def health(self) -> list[str]:
        """Problems that make the controller unhealthy ([] when healthy)."""
        problems = []
        stalled = time.monotonic() - self.loop_turned
        if self._loop_thread is not None and stalled > LOOP_STALL_S:
            problems.append(f"event loop has not turned for {stalled:.1f} s")
        elif self._loop_thread is not None and not self._loop_thread.is_alive():
            problems.append("event loop is not running")
        if self.last_failure is not None:
            when, what = self.last_failure
            ago = time.monotonic() - when
            if ago < FAILURE_WINDOW_S:
                problems.append(f"{what} {ago:.0f} s ago (contained)")
        problems += self._view.switch_problems
        return problems

    @property
    def datapaths(self) -> dict[str, Any]:
        """Connected switches by name."""
        return {n: s.dp for n, s in list(self._switches.items())}

    @property
    def switch_ports(self) -> dict[str, dict[int, bool]]:
        """Ports of each connected switch: port number -> up."""
        return {n: dict(s.sync.ports) for n, s in list(self._switches.items())}

    def installed_table(self, switch: str) -> fl.Installed | None:
        def read() -> fl.Installed | None:
            sw = self._switches.get(switch)
            if sw is None or sw.sync.installed is None:
                return None
            return fl.Installed(dict(sw.sync.installed.flows), dict(sw.sync.installed.groups))

        return self.call(read)

    def add_listener(self, fn: Callable[[list[PoolChange], str], None]) -> None:
        self._listeners.append(fn)

    def wait_synced(self, switch: str, timeout: float) -> bool:
        """True once ``switch`` connected and confirmed its full table (tests, tools)."""
        return self._sync_events[switch].wait(timeout)

    def wait_confirmed(self, timeout: float) -> bool:
        """True once every connected switch answered every barrier sent to it so far, i.e.
        every change applied before this call is in the switches' tables (tests, tools)."""
        self.call(lambda: None, timeout)  # the loop finished what it was doing (and sent it)
        with self._answered:
            return self._answered.wait_for(
                lambda: not any(sw.sync.barriers for sw in list(self._switches.values())),
                timeout,
            )

    # -- changes ---------------------------------------------------------------------------

    def apply(
        self, mutation: Callable[[Steering], PoolChange | list[PoolChange]], reason: str
    ) -> ApplyResult:
        """Run a mutation in the loop, program every switch with the difference, notify
        listeners. From any thread; the mutation's exception is raised to the caller."""
        return self.call(lambda: self._apply(mutation, reason))

    def _apply(
        self, mutation: Callable[[Steering], PoolChange | list[PoolChange]], reason: str
    ) -> ApplyResult:
        started = time.monotonic()
        inputs = fl.table_inputs(self.steering)
        try:
            out = mutation(self.steering)
        except Exception:
            # A mutation that made several changes may have applied some of them
            # before failing: keep the switches in line with the state either way.
            self._program_all(None)
            self.mark_changed()
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
        result.seal()
        if changes:
            self.mark_changed()
        summary = ", ".join(
            f"{c.pool}: {len(c.moved)} slots moved, epoch {c.epoch}" for c in changes
        )
        fields = {}
        if len(changes) == 1:
            c = changes[0]
            fields = {"pool": c.pool, "epoch": c.epoch, "moved": len(c.moved)}
        LOG.info("%s (%s)", reason, summary or "no change", extra=fields)
        for fn in list(self._listeners):
            try:
                fn(changes, reason)
            except Exception:
                LOG.exception("change listener %r failed", fn)
        return result

    def _record_latency(self, result: ApplyResult) -> None:
        if result.barrier_done is not None:
            self.counters.change_latency.append(result.barrier_done - result.started)

    def send_messages(self, switch: str, msgs: list[Any]) -> list[int]:
        """Send extra OpenFlow messages to a connected switch (diagnostics, tools); errors
        they cause are logged with them like those of the app's own messages."""

        def send() -> list[int]:
            sw = self._switches.get(switch)
            if sw is None:
                raise KeyError(f"switch {switch!r} is not connected")
            return self._send_all(sw, msgs)

        return self.call(send)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Any:
        # Membership and state in Redis when a URL is given; the REST API, metrics and
        # CLI either way (unless the API is off). A service that cannot start stops the
        # controller from starting (e.g. the API port is taken).
        from controller.ofp import service

        service.start_services(self)
        self._services_started = True
        self._ticker = threading.Thread(target=self._tick_loop, name="nfsteer-tick", daemon=True)
        self._ticker.start()
        LOG.info(
            "steering %s: %d switches, %d pools, %d services",
            self.steering.topology.name,
            len(self.steering.topology.switches),
            len(self.steering.pools),
            len(self.steering.topology.services),
        )
        return super().start()

    def close(self) -> None:
        self._stop_services()
        super().close()

    def stop(self) -> None:
        # The services first: their threads call into the loop, which ends next.
        self._stop_services()
        super().stop()

    def _stop_services(self) -> None:
        # While the loop still runs: the services' threads may be waiting on it.
        if self._services_started:
            self._services_started = False
            try:
                from controller.ofp import service

                service.stop_services(self)
            except Exception:
                LOG.exception("stopping the controller's services failed")
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(TICK_S + 1)
            self._ticker = None

    # -- programming -----------------------------------------------------------------------

    def _program_all(self, result: ApplyResult | None) -> None:
        for sw in list(self._switches.values()):
            if sw.sync.phase is Phase.PROGRAMMED:
                self._program(sw, result)

    def _program(self, sw: _Switch, result: ApplyResult | None) -> None:
        """Send ``sw`` what its table lacks (when this controller leads, as its MASTER)."""
        if not self._may_program(sw):
            return
        steps = sw.sync.program(self.steering, self._routes)
        if not steps:
            return
        last_barrier = None
        xids = self._send_all(sw, ofmsg.messages(sw.dp, steps))
        sent_at = time.monotonic()
        for step, xid in zip(steps, xids, strict=False):
            if isinstance(step, fl.Barrier):
                last_barrier = xid
                self.counters.barriers_sent += 1
                sw.sync.barrier_sent(xid, sent_at)
            elif isinstance(step, fl.FlowAdd | fl.FlowDelete):
                self.counters.flow_mods_sent += 1
            else:
                self.counters.group_mods_sent += 1
        if result is not None and last_barrier is not None:
            result.expect(id(sw.dp), last_barrier)
            self._results.setdefault((id(sw.dp), last_barrier), []).append(result)
        counts = fl.count_mods(steps)
        LOG.debug(
            "%s: sent %d flow-mods, %d group-mods", sw.sync.name, counts["flow"], counts["group"]
        )

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
            for port, up in sw.sync.ports.items()
            if not up
        }

    def _recompute_routes(self) -> bool:
        """Refresh routes from live link state; True when they changed."""
        routes = compute_routes(self.steering.topology, self._down_ports())
        changed = routes != self._routes
        self._routes = routes
        return changed

    # -- instance health from port state -------------------------------------------------

    def _port_changes(self, switch: str, ports: dict[int, bool], why: str) -> None:
        """React to instance ports going down/up (static pools come back on their own)."""
        for pname, ps in self.steering.pools.items():
            static = self.steering.topology.pools[pname].membership == "static"
            for iname, info in list(ps.instances.items()):
                if info.switch != switch or info.port is None:
                    continue
                up = ports.get(info.port)
                if up is None:
                    continue
                if not up and info.state in (InstanceState.ACTIVE, InstanceState.DRAINING):
                    self._apply(
                        lambda s, p=pname, n=iname: s.set_state(
                            p, n, InstanceState.FAILED, time.time()
                        ),
                        f"instance {pname}/{iname}: port {switch}:{info.port} down ({why})",
                    )
                elif up and static and info.state is InstanceState.FAILED:
                    self._apply(
                        lambda s, p=pname, n=iname: s.set_state(
                            p, n, InstanceState.ACTIVE, time.time()
                        ),
                        f"instance {pname}/{iname}: port {switch}:{info.port} up ({why})",
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
        old = self._switches.get(name)
        if old is not None and old.dp is not dp and getattr(old.dp, "is_active", True):
            # The switch we manage is still connected: whoever this is, it does not
            # take it over (a dead connection ends on its own, and then this may connect).
            self.counters.switch_refused += 1
            LOG.warning(
                "switch %s (dpid %#x): refusing a second connection from %s; it stays "
                "managed over its connection from %s",
                name, dpid, dp.address, old.dp.address,
            )  # fmt: skip
            self._drop_connection(dp)
            return
        if old is not None:
            self._forget(old)
        self.counters.switch_connects += 1
        self._sync_events[name].clear()
        sw = _Switch(dp=dp, sync=SwitchSync(name, time.monotonic()))
        self._switches[name] = sw
        self.mark_changed()
        if self.lease is None:  # the only controller: the switch's default role will do
            LOG.info("switch %s (dpid %#x) connected from %s: reading its table", name, dpid,
                     dp.address)  # fmt: skip
            self._read_back(sw)
            return
        LOG.info("switch %s (dpid %#x) connected from %s", name, dpid, dp.address)
        self._assert_role(sw)  # nothing else is sent before the switch confirms a role

    def _read_back(self, sw: _Switch) -> None:
        sw.sync = SwitchSync(sw.sync.name, time.monotonic())
        self._send_all(
            sw,
            [
                ofmsg.port_desc_request(sw.dp),
                ofmsg.flow_stats_request(sw.dp),
                ofmsg.group_desc_request(sw.dp),
            ],
        )

    # -- roles (several controllers) ---------------------------------------------------------

    def leading(self) -> bool:
        """This controller may change the switches and the pool state now."""
        return self.lease is None or self.lease.leading(time.monotonic())

    def _wanted_role(self) -> tuple[int, int] | None:
        assert self.lease is not None
        if self.leading():
            return (OFP.OFPCR_ROLE_MASTER, self.lease.term)
        if self.lease.term > 0:
            return (OFP.OFPCR_ROLE_SLAVE, self.lease.term)
        return None  # no term known yet: wait, send nothing

    def _assert_role(self, sw: _Switch) -> None:
        want = self._wanted_role()
        if want is None or want in (sw.role, sw.role_asked):
            return
        sw.role_asked = want
        self._send_all(sw, [ofmsg.role_request(sw.dp, *want)])

    def assert_roles(self) -> None:
        """Ask every switch for the role this controller should have now (loop only)."""
        for sw in list(self._switches.values()):
            self._assert_role(sw)

    def on_lease(self, granted: bool, term: int, holder: str, asked_at: float) -> bool:
        """The election's answer (loop only). True when this makes us the leader of a new
        term: the caller then loads the pool state and claims the switches."""
        assert self.lease is not None
        if granted:
            new = self.lease.granted(term, asked_at)
            if new:
                self.counters.takeovers += 1
                self.takeover_started = time.monotonic()
                LOG.warning("leading as term %d", term)
                self.mark_changed()
            return new
        if self.lease.refused(term, holder):
            LOG.warning("stepping down: %s holds the lease (term %d)", holder, term)
        self.mark_changed()
        self.assert_roles()
        return False

    def lease_unknown(self) -> None:
        """The election could not reach Redis (loop only)."""
        assert self.lease is not None
        if self.lease.leading_as_of_holder() and not self.leading():
            self.lease.lost()
            LOG.warning("stepping down: the lease could not be renewed in time")
            self.mark_changed()

    def step_down(self, reason: str) -> None:
        """Fenced (a switch or the store refused us as stale): stop acting at once."""
        if self.lease is None or not self.lease.leading_as_of_holder():
            return
        self.counters.fenced += 1
        if self.lease.lost():
            LOG.warning("stepping down: %s", reason)
            self.mark_changed()

    def role_status(self) -> dict[str, Any]:
        """Role, term and leader for /healthz and `nfsteer status` (any thread)."""
        lease = self.lease
        view = self.view()
        missing = sorted(set(view.topology.switches) - set(view.switches))
        warnings = [
            f"switch {n} is not connected to this controller (is its address in the switch's "
            "controller list?)"
            for n in missing
        ]
        if lease is None:
            return {"role": "single", "term": None, "leader": None, "warnings": warnings}
        return {
            "role": "leader" if self.leading() else "standby",
            "id": lease.controller_id,
            "term": lease.term,
            "leader": lease.holder,
            "warnings": warnings,
        }

    def believe_leader(self, term_delta: int) -> dict[str, Any]:
        """A test hook (``NFSTEER_TEST_HOOKS=1``): believe we lead, with our known term
        shifted by ``term_delta``, and claim the switches — as a partitioned leader would."""
        assert self.lease is not None
        term = self.lease.term + term_delta
        self.lease.granted(term, time.monotonic())
        LOG.warning("test hook: believing to lead as term %d", term)
        self.claim_switches()
        return {"term": term}

    def claim_switches(self) -> None:
        """A new term: become MASTER on every switch, then read back and diff."""
        self.assert_roles()

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def _role_reply(self, ev: Any) -> None:
        msg = ev.msg
        sw = self._switch_of(msg.datapath)
        if sw is None or self.lease is None:
            return
        sw.role = (msg.role, msg.generation_id)
        if self.lease.term < msg.generation_id < 2**63:  # 2**63 up: no generation set yet
            self.lease.raise_floor(msg.generation_id)
        if sw.role_asked == sw.role or sw.role_asked is None:
            sw.role_asked = None
        if msg.role == OFP.OFPCR_ROLE_MASTER and self._may_program(sw):
            LOG.info("switch %s: MASTER (generation %d): reading its table", sw.sync.name,
                     msg.generation_id)  # fmt: skip
            self._read_back(sw)
        elif msg.role == OFP.OFPCR_ROLE_SLAVE and sw.sync.phase is Phase.READING:
            self._read_back(sw)  # ports and table, kept warm for a takeover
        self.mark_changed()

    @set_ev_cls(ofp_event.EventOFPExperimenter, MAIN_DISPATCHER)
    def _experimenter(self, ev: Any) -> None:
        role = ofmsg.parse_role_status(ev.msg)
        sw = self._switch_of(ev.msg.datapath)
        if role is None or sw is None:
            return
        new_role, generation = role
        sw.role = (new_role, generation)
        if new_role != OFP.OFPCR_ROLE_MASTER and self.leading():
            self.step_down(f"switch {sw.sync.name} made another controller MASTER "
                           f"(generation {generation})")  # fmt: skip

    def _may_program(self, sw: _Switch) -> bool:
        if self.lease is None:
            return True
        return (
            self.leading()
            and sw.role is not None
            and sw.role == (OFP.OFPCR_ROLE_MASTER, self.lease.term)
        )

    def _switch_of(self, dp: Any) -> _Switch | None:
        for sw in self._switches.values():
            if sw.dp is dp:
                return sw
        return None

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _port_desc(self, ev: Any) -> None:
        self._readback(ev, "ports", ofmsg.parse_port_desc)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev: Any) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is not None and self.loads.waits_for(sw.sync.name, ev.msg.xid):
            self._slot_load_reply(sw, ev)
            return
        self._readback(ev, "flows", ofmsg.parse_flow_stats)

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev: Any) -> None:
        self._readback(ev, "groups", ofmsg.parse_group_desc)

    def _readback(self, ev: Any, part: str, parse: Callable[..., None]) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is None or sw.sync.phase is not Phase.READING:
            return
        parse(ev.msg.body, sw.sync.readback)
        if sw.sync.part_received(part, bool(ev.msg.flags & OFP.OFPMPF_REPLY_MORE)):
            self._finish_sync(sw)

    def _finish_sync(self, sw: _Switch) -> None:
        name = sw.sync.name
        readback = sw.sync.readback
        n_flows, n_groups, doubtful = len(readback.flows), len(readback.groups), readback.doubtful
        sw.sync.finish_readback()
        self._recompute_routes()
        # Instance health first, so the first table already avoids dead instances.
        # An instance port the switch does not have is as good as down.
        ports = {
            i.port: sw.sync.ports.get(i.port, False)
            for ps in self.steering.pools.values()
            for i in ps.instances.values()
            if i.switch == name and i.port is not None
        }
        if self.leading():
            self._port_changes(name, ports, "at connect")
        result = ApplyResult([], time.monotonic())
        sw.result = result
        before = self.counters.flow_mods_sent + self.counters.group_mods_sent
        self._program_all(result)
        result.seal()
        sw.sync.first_programming_done()
        sent = self.counters.flow_mods_sent + self.counters.group_mods_sent - before
        if doubtful:
            LOG.warning("switch %s: its table could not be fully parsed: wiped it", name)
        LOG.info(
            "switch %s: table read back (%d flows, %d groups), %d changes sent",
            name,
            n_flows,
            n_groups,
            sent,
        )
        self.mark_changed()
        if sw.sync.synced and self._may_program(sw):
            self._sync_events[name].set()
            if self.takeover_started is not None:
                self._takeover_switch_done(sw)

    def _takeover_switch_done(self, sw: _Switch) -> None:
        """A takeover is complete once every connected switch is MASTER and programmed."""
        if all(self._may_program(s) and s.sync.synced for s in self._switches.values()):
            assert self.takeover_started is not None
            took = time.monotonic() - self.takeover_started
            self.counters.takeover_seconds.append(took)
            self.takeover_started = None
            LOG.info("takeover complete in %.0f ms", took * 1000)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev: Any) -> None:
        msg = ev.msg
        port = msg.desc
        if port.port_no > OFP.OFPP_MAX:
            return
        up = msg.reason != OFP.OFPPR_DELETE and ofmsg.port_is_up(port)
        sw = self._switch_of(msg.datapath)
        if sw is None:
            return
        self.counters.port_events += 1
        was = sw.sync.ports.get(port.port_no)
        sw.sync.ports[port.port_no] = up
        self.mark_changed()
        if was == up or sw.sync.phase is not Phase.PROGRAMMED:
            return
        name = sw.sync.name
        LOG.info("switch %s: port %d %s", name, port.port_no, "up" if up else "down")
        if not self.leading():
            return  # the leader acts on it; our copy of the port state stays warm
        self._port_changes(name, {port.port_no: up}, "port status")
        if port.port_no in self._fabric[name] and self._recompute_routes():
            LOG.info(
                "switch %s: fabric port %d %s: rerouting",
                name,
                port.port_no,
                "up" if up else "down",
            )
            self._program_all(None)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _port_stats_reply(self, ev: Any) -> None:
        sw = self._switch_of(ev.msg.datapath)
        if sw is None:
            return
        for st in ev.msg.body:
            if st.port_no <= OFP.OFPP_MAX:
                self.port_stats[(sw.sync.name, st.port_no)] = {
                    k: int(getattr(st, k)) for k in PORT_STATS_KEYS
                }

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier_reply(self, ev: Any) -> None:
        now = time.monotonic()
        dp = ev.msg.datapath
        xid = ev.msg.xid
        sw = self._switch_of(dp)
        if sw is not None:
            sent_at = sw.sync.barrier_answered(xid)
            if sent_at is not None:
                self.counters.barrier_latency.append(now - sent_at)
                with self._answered:
                    self._answered.notify_all()
                self.mark_changed()
        for r in self._results.pop((id(dp), xid), []):
            r.answered(id(dp), xid, now)
        if sw is not None and sw.sync.synced and self._may_program(sw):
            self._sync_events[sw.sync.name].set()
            if self.takeover_started is not None:
                self._takeover_switch_done(sw)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        self.counters.switch_errors += 1
        sw = self._switch_of(msg.datapath)
        cause = sw.sent.get(msg.xid) if sw is not None else None
        fenced = ofmsg.fencing_error(msg.type, msg.code)
        if fenced is not None and sw is not None:
            sw.role = None
            self.step_down(f"switch {sw.sync.name}: {fenced}")
            # Learn the switch's generation id: the next term must go above it.
            self._send_all(sw, [ofmsg.role_request(sw.dp, OFP.OFPCR_ROLE_NOCHANGE, 0)])
        LOG.error(
            "switch %s: error type=%d code=%d for xid %d: %s",
            sw.sync.name if sw else getattr(msg.datapath, "id", "?"),
            msg.type,
            msg.code,
            msg.xid,
            ofmsg.describe(cause) if cause is not None else "message no longer known",
        )
        if sw is not None and self.loads.waits_for(sw.sync.name, msg.xid):
            why = f"error type={msg.type} code={msg.code}"
            for pool in self.loads.switch_unable(sw.sync.name, why):
                LOG.warning("pool %s: %s: it stays in flows mode", pool, self.loads.off[pool])
            self._publish_loads()

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _disconnected(self, ev: Any) -> None:
        sw = self._switch_of(ev.datapath)
        if sw is None:
            return
        self._forget(sw)
        LOG.info("switch %s disconnected", sw.sync.name)

    def _forget(self, sw: _Switch) -> None:
        """The switch's connection is gone (or dropped): nothing of it is kept."""
        name = sw.sync.name
        if self._switches.get(name) is sw:
            del self._switches[name]
        self._sync_events[name].clear()
        for key in [k for k in self.port_stats if k[0] == name]:
            self.port_stats.pop(key, None)
        for pool in self.loads.switch_gone(name):
            self._balance(pool)
        key = id(sw.dp)
        pending = [k for k in self._results if k[0] == key]
        for k in pending:
            for r in self._results.pop(k):
                r.answered(key, None, None)
        with self._answered:
            self._answered.notify_all()
        self.mark_changed()

    @staticmethod
    def _drop_connection(dp: Any) -> None:
        sock = getattr(dp, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- load-aware slot moves (controller.core.loadbalance) -------------------------------------

    def _read_slot_load(self, now: float) -> None:
        """Ask every programmed switch for its slot entries' counters, when a pool in load
        mode is due for a reading."""
        pools = self.loads.due(now)
        if not pools:
            return
        self.loads.start_round(pools, now)
        for sw in list(self._switches.values()):
            if sw.sync.phase is Phase.PROGRAMMED:
                try:
                    [xid] = self._send_all(sw, [ofmsg.slot_stats_request(sw.dp)])
                except Exception:  # e.g. the connection is closing: next round
                    LOG.debug("switch %s: slot stats request failed", sw.sync.name)
                    continue
                self.loads.asked(sw.sync.name, xid)

    def _slot_load_reply(self, sw: _Switch, ev: Any) -> None:
        more = bool(ev.msg.flags & OFP.OFPMPF_REPLY_MORE)
        entries = ofmsg.parse_slot_counters(ev.msg.body)
        done = self.loads.reply(sw.sync.name, entries, more, time.monotonic())
        for pool in done:
            self._balance(pool)
        if done:
            self._publish_loads()

    def _balance(self, pool: str) -> None:
        """A fresh load reading of ``pool``: move hot slots if the policy says so (the
        leader only: a standby's readings only keep its view warm)."""
        if not self.leading():
            return
        ps = self.steering.pools[pool]
        caps = ps.active_capacities()
        moves = self.loads.decide(pool, ps.assignment, caps)
        if not moves:
            return
        before = lb.imbalance(self.loads.pools[pool].loads(ps.assignment, caps), caps)
        policy = self.loads.pools[pool].policy
        reason = (
            f"{lb.LOAD_REASON}: pool {pool}: imbalance {before:.2f} (threshold "
            f"{policy.threshold:g}, aim {policy.aim:.2f}): {len(moves)} hot "
            f"slot{'s' if len(moves) != 1 else ''} to less loaded instances"
        )
        try:
            self._apply(lambda s: s.move_slots(pool, moves), reason)
        except ValueError as e:  # planned from state that changed since: next reading
            LOG.warning("pool %s: load moves refused: %s", pool, e)

    def _record_moves(self, changes: list[PoolChange], reason: str) -> None:
        self.loads.record(changes, reason, time.time())
        self._publish_loads()

    def _publish_loads(self) -> None:
        self.loads.publish(
            {
                name: (
                    ps.assignment,
                    {n: i.capacity for n, i in ps.instances.items()},
                    ps.active_capacities(),
                )
                for name, ps in self.steering.pools.items()
            }
        )
