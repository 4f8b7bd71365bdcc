"""The OpenFlow pipeline, declared as data: each table, the match fields it may use, the
actions and instructions its entries may carry, and the tables it may go to.

:mod:`controller.core.flows` builds entries for these tables; :func:`violations` checks an entry
(or a select group's buckets) against the declaration, so a change to flow programming that
strays from the pipeline fails the tests (every generated table is checked there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.core.flows import (
    OFPVID_NONE,
    PRIO_HOP_BASE,
    T_CLASSIFY,
    T_FORWARD,
    T_SLOTS,
    Flow,
    Group,
)


@dataclass(frozen=True)
class Band:
    """Entries of a table in a priority range, and the match values they must all have."""

    low: int
    high: int
    purpose: str
    requires: tuple[tuple[str, Any], ...]  # (field, value); value None: any value


@dataclass(frozen=True)
class Table:
    table_id: int
    name: str
    purpose: str
    match_fields: frozenset[str]
    actions: frozenset[str]
    instructions: frozenset[str]
    goto: frozenset[int] = frozenset()
    bands: tuple[Band, ...] = ()


L4 = {"tcp_src", "tcp_dst", "udp_src", "udp_dst"}
DELIVER = {"output", "push_vlan", "set_field"}  # to an instance, here or over the fabric

PIPELINE: dict[int, Table] = {
    t.table_id: t
    for t in (
        Table(
            T_CLASSIFY,
            "classify",
            "which traffic is steered, and by which pool (hash into reg0, or a select group):"
            " where it enters (host ports), and again where a chain's hop hands it back"
            " (in_port = an instance of that hop, untagged) for the next hop's pool",
            frozenset({"in_port", "vlan_vid", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst"} | L4),
            frozenset({"multipath", "group"}),
            frozenset({"apply", "write_metadata", "goto"}),
            frozenset({T_SLOTS, T_FORWARD}),
            (
                Band(
                    PRIO_HOP_BASE,
                    PRIO_HOP_BASE + 1000,
                    "a chain's next hop: only what an instance of the previous hop hands back",
                    (("in_port", None), ("vlan_vid", OFPVID_NONE), ("eth_type", None)),
                ),
            ),
        ),
        Table(
            T_SLOTS,
            "slots",
            "hash slot of a pool -> the instance that owns it",
            frozenset({"metadata", "reg0"}),
            frozenset(DELIVER),
            frozenset({"apply"}),
        ),
        Table(
            T_FORWARD,
            "forward",
            "fabric VLANs, ARP (answered here for virtual addresses), IPv4 and L2 delivery",
            frozenset({"vlan_vid", "eth_type", "arp_op", "arp_tpa", "ipv4_dst", "eth_dst"}),
            frozenset({"output", "pop_vlan", "set_field", "move"}),
            frozenset({"apply"}),
        ),
    )
}
GROUP_ACTIONS = frozenset(DELIVER)  # buckets of a pool's select group


def violations(flow: Flow) -> list[str]:
    """How ``flow`` strays from the declared pipeline ([] when it does not)."""
    table = PIPELINE.get(flow.table)
    if table is None:
        return [f"table {flow.table} is not in the pipeline"]
    out = []
    where = f"table {table.name} priority {flow.priority}"
    for name, _ in flow.match:
        if name not in table.match_fields:
            out.append(f"{where}: match field {name} is not allowed")
    match = dict(flow.match)
    for band in table.bands:
        if band.low <= flow.priority <= band.high:
            for name, value in band.requires:
                if name not in match or (value is not None and match[name] != value):
                    want = name if value is None else f"{name}={value}"
                    out.append(f"{where}: {band.purpose}: needs {want}")
    for ins in flow.instructions:
        if ins[0] not in table.instructions:
            out.append(f"{where}: instruction {ins[0]} is not allowed")
        elif ins[0] == "goto" and (ins[1] not in table.goto or ins[1] <= table.table_id):
            out.append(f"{where}: goto {ins[1]} is not allowed")
        elif ins[0] == "apply":
            out += [
                f"{where}: action {a[0]} is not allowed"
                for a in ins[1]
                if a[0] not in table.actions
            ]
    return out


def group_violations(group: Group) -> list[str]:
    return [
        f"group {group.group_id}: action {a[0]} is not allowed"
        for _, actions in group.buckets
        for a in actions
        if a[0] not in GROUP_ACTIONS
    ]
