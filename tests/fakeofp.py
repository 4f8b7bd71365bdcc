"""A fake OpenFlow 1.3 switch (and network of them) for unit tests of flow programming.

It consumes the same steps the controller sends (:mod:`controller.flows`) and answers
"which port does this packet leave by". The Nicira multipath action is computed with
:mod:`controller.hashing`, i.e. the switch's own hash. Only the match fields and actions
that :mod:`controller.flows` produces are modelled; the real-switch tests in
``test_ovs_controller.py`` check the same behaviour on Open vSwitch.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from controller import flows as fl
from controller.hashing import FiveTuple, flow_hash, slot_of
from controller.state import Steering
from controller.topology import compute_routes

OFPVID_PRESENT = 0x1000
_ARP_FIELDS = {"arp_op": 16, "arp_sha": 48, "arp_spa": 32, "arp_tha": 48, "arp_tpa": 32}
_FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "ipv4_src": 32, "ipv4_dst": 32, **_ARP_FIELDS}


@dataclass
class Packet:
    eth_src: str = "02:00:00:00:00:99"
    eth_dst: str = "ff:ff:ff:ff:ff:ff"
    eth_type: int = fl.ETH_IPV4
    vlan: int | None = None  # VID when tagged
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    ip_proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    arp_op: int | None = None
    arp_sha: str | None = None
    arp_spa: str | None = None
    arp_tha: str | None = None
    arp_tpa: str | None = None

    @classmethod
    def l4(cls, proto: int, src: str, dst: str, sport: int, dport: int, **kw: Any) -> Packet:
        return cls(ipv4_src=src, ipv4_dst=dst, ip_proto=proto, sport=sport, dport=dport, **kw)

    @classmethod
    def arp(cls, tpa: str, **kw: Any) -> Packet:
        """An ARP request for ``tpa`` unless ``arp_op`` says otherwise; the sender MAC
        defaults to the Ethernet source."""
        kw.setdefault("arp_op", fl.ARP_REQUEST)
        kw.setdefault("eth_src", cls.eth_src)
        kw.setdefault("arp_sha", kw["eth_src"])
        kw.setdefault("arp_spa", "10.0.0.99")
        kw.setdefault("arp_tha", "00:00:00:00:00:00")
        return cls(eth_type=fl.ETH_ARP, arp_tpa=tpa, **kw)

    def five_tuple(self) -> FiveTuple:
        return FiveTuple(
            self.ipv4_src or "0.0.0.0",
            self.ipv4_dst or "0.0.0.0",
            self.ip_proto or 0,
            self.sport or 0,
            self.dport or 0,
        )

    def field(self, name: str, regs: dict[str, int], in_port: int) -> Any:
        """Value of an OXM field, or None when the packet has no such field."""
        ip = self.eth_type == fl.ETH_IPV4
        if name == "in_port":
            return in_port
        if name in ("metadata", "reg0"):
            return regs[name]
        if name == "eth_type":
            return self.eth_type
        if name in ("eth_src", "eth_dst"):
            return getattr(self, name)
        if name == "vlan_vid":
            return OFPVID_PRESENT | self.vlan if self.vlan is not None else 0
        if name == "ip_proto":
            return self.ip_proto if ip else None
        if name == "ipv4_src":
            return self.ipv4_src if ip else None
        if name == "ipv4_dst":
            return self.ipv4_dst if ip else None
        if name in _ARP_FIELDS:
            return getattr(self, name) if self.eth_type == fl.ETH_ARP else None
        for proto, l4 in ((6, "tcp"), (17, "udp")):
            if name == f"{l4}_src":
                return self.sport if ip and self.ip_proto == proto else None
            if name == f"{l4}_dst":
                return self.dport if ip and self.ip_proto == proto else None
        raise ValueError(f"fake switch does not model match field {name!r}")


def _field_matches(actual: Any, wanted: Any) -> bool:
    if actual is None:
        return False
    if isinstance(wanted, tuple):
        value, mask = wanted
        if isinstance(value, str) and "." in value:
            net = ipaddress.IPv4Network(f"{value}/{mask}")
            return ipaddress.IPv4Address(actual) in net
        return (actual & mask) == (value & mask)
    return actual == wanted


class FakeSwitch:
    def __init__(self, name: str = "s1"):
        self.name = name
        self.flows: dict[fl.FlowKey, fl.Flow] = {}
        self.groups: dict[int, fl.Group] = {}
        self.flow_mods = 0
        self._indexed: tuple[int, dict] | None = None

    def apply(self, steps: Iterable[fl.Step]) -> None:
        for step in steps:
            if isinstance(step, fl.FlowAdd):
                self.flows[step.flow.key] = step.flow
                self.flow_mods += 1
            elif isinstance(step, fl.FlowDelete):
                self.flows.pop(step.key, None)
                self.flow_mods += 1
            elif isinstance(step, fl.GroupAdd | fl.GroupModify):
                self.groups[step.group.group_id] = step.group
                self.flow_mods += 1
            elif isinstance(step, fl.GroupDelete):
                self.groups.pop(step.group_id, None)
                self.flow_mods += 1

    def installed(self) -> fl.Installed:
        return fl.Installed(
            {k: f.cookie for k, f in self.flows.items()},
            {g: grp.buckets for g, grp in self.groups.items()},
        )

    def _index(self) -> dict[int, list[tuple[int, tuple[str, ...], dict | list]]]:
        """Per table, groups of entries with one priority and one set of match fields, in
        priority order; a group whose values are all exact is a hash table (fast lookups
        in the 4096-entry slot table)."""
        if self._indexed is not None and self._indexed[0] == self.flow_mods:
            return self._indexed[1]
        groups: dict[tuple[int, int, tuple[str, ...]], list[fl.Flow]] = {}
        for flow in self.flows.values():
            names = tuple(n for n, _ in flow.match)
            groups.setdefault((flow.table, flow.priority, names), []).append(flow)
        index: dict[int, list[tuple[int, tuple[str, ...], dict | list]]] = {}
        for (table, prio, names), members in sorted(groups.items(), key=lambda g: -g[0][1]):
            exact = all(not isinstance(v, tuple) for f in members for _, v in f.match)
            entry: dict | list = (
                {tuple(v for _, v in f.match): f for f in members} if exact else members
            )
            index.setdefault(table, []).append((prio, names, entry))
        self._indexed = (self.flow_mods, index)
        return index

    def lookup(self, table: int, pkt: Packet, regs: dict[str, int], in_port: int) -> fl.Flow | None:
        found: list[fl.Flow] = []
        for prio, names, entry in self._index().get(table, []):
            if found and prio < found[0].priority:
                break
            if isinstance(entry, dict):
                values = tuple(pkt.field(n, regs, in_port) for n in names)
                if values in entry:
                    found.append(entry[values])
                continue
            for flow in entry:
                if all(_field_matches(pkt.field(n, regs, in_port), v) for n, v in flow.match):
                    found.append(flow)
        if len(found) > 1:
            raise AssertionError(f"ambiguous entries at one priority: {found}")
        return found[0] if found else None

    def process(self, in_port: int, pkt: Packet) -> list[tuple[int, Packet]]:
        """Ports (and packets as they leave) for a packet arriving on ``in_port``."""
        pkt = copy.copy(pkt)
        regs = {"metadata": 0, "reg0": 0}
        out: list[tuple[int, Packet]] = []
        table: int | None = 0
        while table is not None:
            flow = self.lookup(table, pkt, regs, in_port)
            if flow is None:
                return out  # table miss: drop
            table = None
            for ins in flow.instructions:
                if ins[0] == "apply":
                    pkt = self._actions(ins[1], pkt, regs, in_port, out)
                elif ins[0] == "write_metadata":
                    regs["metadata"] = (regs["metadata"] & ~ins[2]) | (ins[1] & ins[2])
                elif ins[0] == "goto":
                    table = ins[1]
        return out

    def _actions(
        self,
        actions: Iterable[fl.Action],
        pkt: Packet,
        regs: dict[str, int],
        in_port: int,
        out: list[tuple[int, Packet]],
    ) -> Packet:
        for act in actions:
            kind = act[0]
            if kind == "output":
                if act[1] == fl.OFPP_IN_PORT:
                    out.append((in_port, copy.copy(pkt)))
                elif act[1] != in_port:  # only IN_PORT sends a packet back where it came from
                    out.append((act[1], copy.copy(pkt)))
            elif kind == "push_vlan":
                pkt = replace(pkt, vlan=0)
            elif kind == "pop_vlan":
                pkt = replace(pkt, vlan=None)
            elif kind == "set_field":
                if act[1] == "vlan_vid":
                    pkt = replace(pkt, vlan=act[2] & 0xFFF)
                else:
                    pkt = replace(pkt, **{act[1]: act[2]})
            elif kind == "move":
                _, src, dst, n_bits = act
                # whole fields only, as flows.py moves them
                assert _FIELD_BITS[src] == _FIELD_BITS[dst] == n_bits, act
                if pkt.field(src, regs, in_port) is None or pkt.field(dst, regs, in_port) is None:
                    raise AssertionError(f"{act!r} on a packet without those fields")
                pkt = replace(pkt, **{dst: getattr(pkt, src)})
            elif kind == "multipath":
                _, _fields, basis, _alg, max_link, _arg, dst, start, _end = act
                assert dst == "reg0" and start == 0
                regs["reg0"] = slot_of(pkt.five_tuple(), max_link + 1, basis)
            elif kind == "group":
                group = self.groups.get(act[1])
                if group is None or not group.buckets:
                    continue
                bucket = self.select_bucket(group, pkt)
                pkt = self._actions(bucket[1], pkt, dict(regs), in_port, out)
            else:
                raise ValueError(f"fake switch does not model action {act!r}")
        return pkt

    @staticmethod
    def select_bucket(group: fl.Group, pkt: Packet) -> fl.Bucket:
        """Weighted choice by flow hash (not OVS's dp_hash choice, only its proportions)."""
        total = sum(w for w, _ in group.buckets)
        point = flow_hash(pkt.five_tuple()) % total
        for weight, actions in group.buckets:
            if point < weight:
                return (weight, actions)
            point -= weight
        raise AssertionError("unreachable")


@dataclass
class FakeNetwork:
    """Switches joined by links; follows a packet from an edge port to where it leaves."""

    switches: dict[str, FakeSwitch] = field(default_factory=dict)
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


# -- programming a fake network from the steering state ------------------------------


def program(st: Steering, down: set[tuple[str, int]] | None = None) -> FakeNetwork:
    routes = compute_routes(st.topology, down or set())
    net = FakeNetwork(down=set(down or ()))
    for name in st.topology.switches:
        sw = FakeSwitch(name)
        sw.apply(fl.diff(fl.Installed(), fl.desired_table(st, name, routes)))
        net.switches[name] = sw
    for link in st.topology.links:
        net.add_link(link.a, link.a_port, link.b, link.b_port)
    return net


def reprogram(net: FakeNetwork, st: Steering, down: set[tuple[str, int]] | None = None):
    routes = compute_routes(st.topology, down or set())
    net.down = set(down or ())
    plans = {}
    for name, sw in net.switches.items():
        plans[name] = fl.diff(sw.installed(), fl.desired_table(st, name, routes))
        sw.apply(plans[name])
    return plans
