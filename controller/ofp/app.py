"""The os-ken application: a shim between os-ken and the controller's loop.

Each OpenFlow handler hands its event to the loop (:mod:`controller.ofp.loop`), whose one
thread turns it into an input of the control core (:mod:`controller.core.control`) and
carries out what the core decides. The other methods are what the services (store,
membership, election, REST API) and tools use: the published view, changes, roles.

Loadable by any os-ken AppManager (options then come from ``NFSTEER_*`` environment
variables, see :mod:`controller.ofp.options`); ``nfsteer controller`` passes its options as
the ``nfsteer_options`` keyword.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER
from os_ken.controller.handler import set_ev_cls as on
from os_ken.ofproto import ofproto_v1_3

from contract.topology import load_topology
from controller.core import events as ev
from controller.core import loadbalance as lb
from controller.core.context import ControllerCounters
from controller.core.control import Core, View, role_status
from controller.core.leadership import Lease
from controller.core.roster import Roster
from controller.core.state import PoolChange, Steering
from controller.core.topology import Routes
from controller.ofp.loop import ApplyResult, Loop
from controller.ofp.options import Options

if TYPE_CHECKING:
    from controller.ofp.service import Services

LOG = logging.getLogger("nfsteer.controller")
EXIT_LOOP_DIED = 70  # EX_SOFTWARE
T = TypeVar("T")
Mutation = Callable[[Steering], PoolChange | list[PoolChange]]


def _exit_process(reason: str) -> None:
    os._exit(EXIT_LOOP_DIED)


class SteeringApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any):
        options = kwargs.pop("nfsteer_options", None)
        super().__init__(*args, **kwargs)
        self.options: Options = options or Options.from_env()
        logging.getLogger("nfsteer").setLevel(self.options.log_level)
        self.core = Core(
            load_topology(self.options.topology),
            wall=time.time(),
            heartbeat_ttl_s=self.options.heartbeat_ttl_ms / 1000,
        )
        self.loop = Loop(self.core, on_fatal=_exit_process)
        self._services_started = False
        self.services: Services | None = None  # set while they run

    # -- OpenFlow events: to the loop ---------------------------------------------------------

    @on(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _switch_features(self, event: Any) -> None:
        self.loop.post_event(event)

    @on(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _disconnected(self, event: Any) -> None:
        self.loop.post_event(event)

    @on(
        [
            ofp_event.EventOFPPortDescStatsReply,
            ofp_event.EventOFPFlowStatsReply,
            ofp_event.EventOFPGroupDescStatsReply,
            ofp_event.EventOFPPortStatsReply,
            ofp_event.EventOFPPortStatus,
            ofp_event.EventOFPBarrierReply,
            ofp_event.EventOFPRoleReply,
            ofp_event.EventOFPExperimenter,
        ],
        MAIN_DISPATCHER,
    )
    def _message(self, event: Any) -> None:
        self.loop.post_event(event)

    @on(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _error(self, event: Any) -> None:
        self.loop.post_event(event)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Any:
        # Membership and state in the store when a URL is given; the REST API, metrics and
        # CLI either way (unless the API is off). A service that cannot start stops the
        # controller from starting (e.g. the API port is taken).
        from controller.ofp import service

        self.loop.start()
        try:
            service.start_services(self)
        except BaseException:
            self.loop.stop()
            raise
        self._services_started = True
        topology = self.steering.topology
        LOG.info(
            "steering %s: %d switches, %d pools, %d services",
            topology.name, len(topology.switches), len(self.steering.pools),
            len(topology.services),
        )  # fmt: skip
        return super().start()

    def stop(self) -> None:
        self._stop_services()
        super().stop()

    def close(self) -> None:
        self._stop_services()
        super().close()

    def _stop_services(self) -> None:
        # First the services (their threads call into the loop), then the loop.
        if self._services_started:
            self._services_started = False
            try:
                from controller.ofp import service

                service.stop_services(self)
            except Exception:
                LOG.exception("stopping the controller's services failed")
        self.loop.stop()

    # -- the loop -----------------------------------------------------------------------------

    @property
    def on_fatal(self) -> Callable[[str], None]:
        return self.loop.on_fatal

    @on_fatal.setter
    def on_fatal(self, fn: Callable[[str], None]) -> None:
        self.loop.on_fatal = fn

    def fatal(self, reason: str) -> None:
        self.loop.fatal(reason)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        return self.loop.call(fn) if timeout is None else self.loop.call(fn, timeout)

    def post(self, fn: Callable[[], Any]) -> None:
        self.loop.post(fn)

    def apply(self, mutation: Mutation, reason: str) -> ApplyResult:
        """Change the pool state in the loop and program every switch with the difference;
        from any thread. The mutation's exception is raised to the caller."""
        return self.loop.call(lambda: self.loop.apply(ev.Change(mutation, reason)))

    def recent_changes(self) -> list[tuple[str, ApplyResult]]:
        """(reason, result) of the latest changes, whatever made them (tools, benchmarks)."""
        return self.loop.call(lambda: list(self.loop.recent_changes))

    def submit(self, event: ev.Input) -> None:
        """An input for the core, handled in the loop soon (any thread)."""
        self.loop.submit(event)

    def tell(self, event: ev.Input) -> list[ev.Output]:
        """An input for the core, handled in the loop now; its outputs (any thread)."""
        return self.loop.tell(event)

    def set_store_sink(self, sink: Callable[[ev.StoreOutput], None]) -> None:
        """Where the core's store writes and reads go (the membership service)."""
        self.loop.store_sink = sink

    @property
    def roster(self) -> Roster:
        return self.core.roster

    def view(self) -> View:
        return self.loop.view()

    def health(self) -> list[str]:
        """Problems that make the controller unhealthy ([] when healthy)."""
        return self.loop.health()

    def wait_synced(self, switch: str, timeout: float) -> bool:
        """True once ``switch`` connected and confirmed its full table (tests, tools)."""
        return self.loop.wait_synced(switch, timeout)

    def wait_confirmed(self, timeout: float) -> bool:
        """True once every change applied before this call is confirmed by the switches."""
        return self.loop.wait_confirmed(timeout)

    @property
    def steering(self) -> Steering:
        """The loop's own state: read it in the loop (``call``), or the view elsewhere."""
        return self.core.steering

    @property
    def counters(self) -> ControllerCounters:
        return self.core.counters

    @property
    def loads(self) -> lb.LoadWatch:
        return self.core.loads.watch

    @property
    def routes(self) -> Routes:
        return self.core.routes

    @property
    def datapaths(self) -> dict[str, Any]:
        """Connected switches' os-ken datapaths by name."""
        return self.loop.datapaths()

    @property
    def switch_ports(self) -> dict[str, dict[int, bool]]:
        return {n: dict(p) for n, p in self.view().switch_ports.items()}

    @property
    def port_stats(self) -> dict[tuple[str, int], dict[str, int]]:
        return {k: dict(v) for k, v in self.view().port_stats.items()}

    def send_messages(self, switch: str, msgs: list[Any]) -> list[int]:
        """Send extra OpenFlow messages to a connected switch (diagnostics, tools)."""

        def send() -> list[int]:
            conn = self.core.connections().get(switch)
            if conn is None:
                raise KeyError(f"switch {switch!r} is not connected")
            return self.loop.links.send_raw(conn, msgs)

        return self.loop.call(send)

    # -- leadership ---------------------------------------------------------------------------

    @property
    def lease(self) -> Lease | None:
        """What this controller knows of the lease (a copy); None: the only controller."""
        return self.view().lease

    def leading(self) -> bool:
        """This controller may change the switches and the pool state now (any thread): read
        from the published view, so that a caller sees one term throughout."""
        lease = self.view().lease
        return lease is None or lease.leading(time.monotonic())

    def believe_leader(self, term_delta: int) -> dict[str, Any]:
        """A test hook (``NFSTEER_TEST_HOOKS=1``), from the loop: believe we lead with our
        known term shifted by ``term_delta``, and claim the switches."""
        self.loop.feed(ev.BelieveLeader(term_delta))
        assert self.lease is not None
        return {"term": self.lease.term}

    def role_status(self) -> dict[str, Any]:
        """Role, term and leader for /healthz and `nfsteer status` (any thread)."""
        return role_status(self.view(), time.monotonic())
