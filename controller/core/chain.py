"""Which pools a service's packet visits, in order, and the 5-tuple each hop hashes. Pure.

A service names one pool or a chain of them. The forward direction visits the chain in
order; a NAT can only be last, so every forward hop sees the packet as it entered. The
reverse direction of a chain ending in a NAT is addressed to the NAT's public address: it
meets the NAT first, with that 5-tuple, and the hops after it see the 5-tuple the NAT
translated it to, which only the NAT's state knows (their answer is then ``None``: look
the translated 5-tuple up in its place; with the symmetric hash it is the forward
direction's 5-tuple, reversed, so the forward answer for those pools holds).
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.topology import Service, Topology
from controller.core.hashing import FiveTuple


@dataclass(frozen=True)
class Hop:
    pool: str
    five_tuple: FiveTuple | None  # as this hop's switch hashes it; None: after a NAT


def reverse_public_address(topology: Topology, service: Service) -> str | None:
    """The address the reverse direction of a chain ending in a NAT is sent to."""
    hops = service.hops
    last = topology.pools[hops[-1]]
    if len(hops) < 2 or last.kind != "nat":
        return None
    return last.settings.public_ip  # type: ignore[union-attr]


def hops_of(topology: Topology, service: Service, ft: FiveTuple) -> tuple[str, list[Hop]]:
    """The direction ``ft`` travels ("forward" or "reverse") and the hops it visits."""
    public = reverse_public_address(topology, service)
    if public is not None and service.bidirectional and ft.dst == public:
        first, *rest = reversed(service.hops)
        return "reverse", [Hop(first, ft), *(Hop(p, None) for p in rest)]
    return "forward", [Hop(p, ft) for p in service.hops]
