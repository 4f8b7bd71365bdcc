"""What the parts of the control core share: the steering state, the connected switches,
the clock of the input being handled, counters, and the outputs being collected."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from contract.topology import Topology
from controller.core.events import Output, Request, Send
from controller.core.leadership import Lease
from controller.core.state import Steering
from controller.core.switchsync import SwitchSync
from controller.core.topology import Routes, compute_routes, fabric_ports


@dataclass
class ControllerCounters:
    """Counters of the controller's work, read by the metrics exporter."""

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
    # seconds from a change to the last switch's barrier reply for it
    change_latency: deque = field(default_factory=lambda: deque(maxlen=1000))


@dataclass
class Switch:
    """A connected switch: its connection, its programming and its role."""

    conn: int
    sync: SwitchSync
    address: str
    next_xid: int = 1
    # OpenFlow role (with several controllers): asked for and confirmed, (role, generation)
    role_asked: tuple[int, int] | None = None
    role: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self.sync.name


class Context:
    """State shared by the core's parts; one instance per controller, one thread."""

    def __init__(self, topology: Topology, wall: float):
        self.steering = Steering(topology, now=wall)
        self.counters = ControllerCounters()
        self.switches: dict[str, Switch] = {}  # connected, by name
        self._by_conn: dict[int, Switch] = {}
        self.fabric = fabric_ports(topology)
        self.routes: Routes = compute_routes(topology)
        # The leader's lease when several controllers share a store; None: the only one.
        self.lease: Lease | None = None
        self.port_stats: dict[tuple[str, int], dict[str, int]] = {}
        self.now = 0.0  # monotonic time of the input being handled
        self.wall = wall  # wall-clock time of the same
        self.outputs: list[Output] = []
        self.changed = False  # something readers see changed: publish a new view

    @property
    def topology(self) -> Topology:
        return self.steering.topology

    def by_conn(self, conn: int) -> Switch | None:
        return self._by_conn.get(conn)

    def add_switch(self, sw: Switch) -> None:
        self.switches[sw.name] = sw
        self._by_conn[sw.conn] = sw

    def remove_switch(self, sw: Switch) -> None:
        if self.switches.get(sw.name) is sw:
            del self.switches[sw.name]
        if self._by_conn.get(sw.conn) is sw:
            del self._by_conn[sw.conn]

    def send(self, sw: Switch, requests: list[Request]) -> list[int]:
        """Queue requests to a switch, numbering them; returns their xids."""
        xids = list(range(sw.next_xid, sw.next_xid + len(requests)))
        sw.next_xid += len(requests)
        if requests:
            self.outputs.append(Send(sw.conn, tuple(zip(xids, requests, strict=True))))
        return xids

    def emit(self, output: Output) -> None:
        self.outputs.append(output)

    def leading(self) -> bool:
        """This controller may change the switches and the pool state now."""
        return self.lease is None or self.lease.leading(self.now)

    def down_ports(self) -> set[tuple[str, int]]:
        return {
            (name, port)
            for name, sw in self.switches.items()
            for port, up in sw.sync.ports.items()
            if not up
        }

    def recompute_routes(self) -> bool:
        """Refresh routes from live link state; True when they changed."""
        routes = compute_routes(self.topology, self.down_ports())
        changed = routes != self.routes
        self.routes = routes
        return changed
