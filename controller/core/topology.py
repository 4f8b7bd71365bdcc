"""The switch fabric as a networkx graph, and the routes derived from it. Pure.

Nodes are switches; an edge is a switch-to-switch link whose two ports are up. Routing is
per destination switch: a shortest-path tree towards it (breadth-first, ties broken by
switch name and port number), so every switch on a path agrees with the next one about the
rest of the path and a packet can never loop. A link that goes down is left out of the
graph and the trees are recomputed: traffic is routed around it where another path exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import networkx as nx

from contract.topology import Topology

PortRef = tuple[str, int]  # (switch, port)


@dataclass(frozen=True)
class Routes:
    """``egress[(here, dest)]`` = port on switch ``here`` leading towards switch ``dest``."""

    egress: dict[tuple[str, str], int]

    def port_towards(self, here: str, dest: str) -> int | None:
        return self.egress.get((here, dest))


def fabric_ports(topology: Topology) -> dict[str, set[int]]:
    """Ports of each switch that face another switch."""
    out: dict[str, set[int]] = {name: set() for name in topology.switches}
    for link in topology.links:
        out[link.a].add(link.a_port)
        out[link.b].add(link.b_port)
    return out


def build_graph(topology: Topology, down: Iterable[PortRef] = ()) -> nx.Graph:
    """Switch graph of the links that are up; parallel links keep the lowest port pair."""
    down = set(down)
    g = nx.Graph()
    g.add_nodes_from(sorted(topology.switches))
    links = sorted(
        topology.links, key=lambda lk: (min(lk.a, lk.b), max(lk.a, lk.b), lk.a_port, lk.b_port)
    )
    for link in links:
        if (link.a, link.a_port) in down or (link.b, link.b_port) in down:
            continue
        if g.has_edge(link.a, link.b):
            continue
        g.add_edge(link.a, link.b, ports={link.a: link.a_port, link.b: link.b_port})
    return g


def compute_routes(topology: Topology, down: Iterable[PortRef] = ()) -> Routes:
    g = build_graph(topology, down)
    egress: dict[tuple[str, str], int] = {}
    for dest in sorted(g.nodes):
        # single_target_shortest_path returns a tree of paths (each path is the first hop
        # plus the path of that hop), so hops along a path are consistent.
        paths = nx.single_target_shortest_path(g, dest)
        for here, path in paths.items():
            if here == dest:
                continue
            egress[(here, dest)] = g.edges[here, path[1]]["ports"][here]
    return Routes(egress)
