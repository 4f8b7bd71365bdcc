"""Switch models joined by links, programmed from the steering state as the controller
programs real switches; follows a packet from an edge port to where it leaves."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.core import flows as fl
from controller.core.state import Steering
from controller.core.topology import compute_routes
from sim.packet import Packet
from sim.switch import Switch


@dataclass
class Network:
    """Switches joined by links; follows a packet from an edge port to where it leaves."""

    switches: dict[str, Switch] = field(default_factory=dict)
    links: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    down: set[tuple[str, int]] = field(default_factory=set)

    def add_link(self, a: str, a_port: int, b: str, b_port: int) -> None:
        self.links[(a, a_port)] = (b, b_port)
        self.links[(b, b_port)] = (a, a_port)

    def send(
        self, switch: str, in_port: int, pkt: Packet
    ) -> list[tuple[str, int, Packet, list[str]]]:
        """Edge deliveries (switch, port, packet, switches visited) of one packet."""
        done: list[tuple[str, int, Packet, list[str]]] = []
        todo = [(switch, in_port, pkt, [switch])]
        while todo:
            sw, port, p, path = todo.pop()
            if len(path) > 16:
                raise AssertionError(f"forwarding loop: {path}")
            for out_port, q in self.switches[sw].process(port, p):
                peer = self.links.get((sw, out_port))
                if peer is None:
                    done.append((sw, out_port, q, path))
                elif (sw, out_port) in self.down or peer in self.down:
                    continue  # the link is down: the packet is lost
                else:
                    todo.append((peer[0], peer[1], q, [*path, peer[0]]))
        return done


def program(st: Steering, down: set[tuple[str, int]] | None = None) -> Network:
    """Every switch of the topology holding the table the controller computes for it."""
    routes = compute_routes(st.topology, down or set())
    net = Network(down=set(down or ()))
    for name, spec in st.topology.switches.items():
        sw = Switch(name, spec.dpid)
        sw.apply(fl.diff(fl.Installed(), fl.desired_table(st, name, routes)))
        net.switches[name] = sw
    for link in st.topology.links:
        net.add_link(link.a, link.a_port, link.b, link.b_port)
    return net


def reprogram(
    net: Network, st: Steering, down: set[tuple[str, int]] | None = None
) -> dict[str, list[fl.Step]]:
    """Bring every switch to the current state by the controller's diff; returns the steps."""
    routes = compute_routes(st.topology, down or set())
    net.down = set(down or ())
    plans = {}
    for name, sw in net.switches.items():
        plans[name] = fl.diff(sw.installed(), fl.desired_table(st, name, routes))
        sw.apply(plans[name])
    return plans
