"""The real controller (app, loop, core, OpenFlow messages) against switch models, in one
process and without sockets: what the controller writes to a connection goes to a
:class:`sim.ofcodec.WireSwitch` as bytes, and what the model answers comes back to the app
as os-ken events, as from a real switch. For tests of the controller's logic; the same
behaviour on Open vSwitch is tested in ``tests/integration``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from os_ken.controller import ofp_event
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from contract.topology import load_topology
from controller.core import events as ev
from controller.ofp.app import SteeringApp
from controller.ofp.options import Options
from sim import ofcodec
from sim import switch as sw


class ModelDatapath:
    """What the controller needs of an os-ken datapath, over a model's connection."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser

    def __init__(self, bed: ModelBed, app: SteeringApp, wire: ofcodec.WireSwitch, dpid: int):
        self.bed = bed
        self.app = app
        self.wire = wire
        self.id = dpid
        self.conn, _ = wire.connect()
        self.address = ("model", self.conn)
        self.is_active = True
        self.xid = 0x10000000
        self.socket = None

    def set_xid(self, msg: Any) -> int:
        self.xid += 1
        msg.set_xid(self.xid)
        return self.xid

    def send(self, buf: bytes) -> bool:
        if not self.is_active:
            return False
        with self.bed.lock:  # the model is one switch: one writer at a time
            replies = self.wire.receive(self.conn, buf)
        self.bed.deliver(self.wire, replies)
        return True

    def event(self, data: bytes) -> Any:
        version, msg_type, length, xid = ofcodec.HEADER.unpack_from(data)
        msg = ofproto_v1_3_parser.msg_parser(self, version, msg_type, length, xid, data)
        return ofp_event.ofp_msg_to_ev(msg)

    def close(self) -> None:
        self.is_active = False
        self.wire.disconnect(self.conn)
        state = ofp_event.EventOFPStateChange(self)
        self.app.loop.post_event(state)


class ModelBed:
    """Controllers and switch models of one topology, wired together."""

    def __init__(self, topology: Path):
        self.topology_path = topology
        topo = load_topology(topology)
        self.switches: dict[str, sw.Switch] = {}
        self.wires: dict[str, ofcodec.WireSwitch] = {}
        for name, spec in topo.switches.items():
            ports = {h.port for h in topo.hosts.values() if h.switch == name}
            ports |= {i.port for p in topo.pools.values() for i in p.instances.values()
                      if i.switch == name}  # fmt: skip
            for link in topo.links:
                ports |= {link.a_port} if link.a == name else set()
                ports |= {link.b_port} if link.b == name else set()
            self.switches[name] = sw.Switch(name, spec.dpid, sorted(ports))
            self.wires[name] = ofcodec.WireSwitch(self.switches[name])
        self.datapaths: list[ModelDatapath] = []
        self.lock = threading.RLock()

    def controller(self) -> SteeringApp:
        app = SteeringApp(nfsteer_options=Options(topology=self.topology_path, api=None))
        app.loop.start()
        return app

    def connect(self, app: SteeringApp, name: str) -> ModelDatapath:
        """A new connection from switch ``name`` to ``app``: features, then whatever the
        controller asks."""
        wire = self.wires[name]
        dp = ModelDatapath(self, app, wire, self.switches[name].dpid)
        self.datapaths.append(dp)
        features = ofcodec.features_reply(self.switches[name], 1)
        app.loop.post_event(dp.event(features))
        return dp

    def deliver(self, wire: ofcodec.WireSwitch, replies: list[tuple[int, bytes]]) -> None:
        for conn, data in replies:
            for dp in self.datapaths:
                if dp.wire is wire and dp.conn == conn and dp.is_active:
                    dp.app.loop.post_event(dp.event(data))

    def set_port(self, name: str, port: int, up: bool) -> None:
        with self.lock:
            replies = self.wires[name].set_port(port, up)
        self.deliver(self.wires[name], replies)


def wait_for(what: Any, timeout: float = 5.0, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {message}")
        time.sleep(0.01)


@contextmanager
def model_controller(topology: Path) -> Iterator[tuple[ModelBed, SteeringApp]]:
    bed = ModelBed(topology)
    app = bed.controller()
    try:
        yield bed, app
    finally:
        app.loop.stop()


def lease(app: SteeringApp, controller_id: str, term: int | None, holder: str) -> None:
    """Tell ``app`` what the election would: it leads with ``term``, or ``holder`` does."""
    app.tell(ev.LeaseConfigured(controller_id, 30.0))
    if term is not None and holder == controller_id:
        app.tell(ev.LeaseGranted(term, time.monotonic()))
    elif term is not None:
        app.tell(ev.LeaseRefused(term, holder))
    app.tell(ev.ClaimSwitches())
