"""A fake OpenFlow 1.3 switch (and network of them) for unit tests of flow programming.

It consumes the same steps the controller sends (:mod:`controller.core.flows`) and answers
"which port does this packet leave by". The Nicira multipath action is computed with
:mod:`controller.core.hashing`, i.e. the switch's own hash. Only the match fields and actions
that :mod:`controller.core.flows` produces are modelled; the real-switch tests in
``test_ovs_controller.py`` check the same behaviour on Open vSwitch.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from controller.core import flows as fl
from controller.core.hashing import FiveTuple, flow_hash, slot_of
from controller.core.state import Steering
from controller.core.topology import compute_routes

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


# -- a fake switch that speaks OpenFlow bytes -------------------------------------------------


class FakeOFSwitch:
    """A :class:`FakeSwitch` driven by the real OpenFlow 1.3 messages the controller sends
    (:mod:`controller.ofp.ofmsg`), answering with os-ken reply messages:
    read-back (port-desc, flow-stats, group-desc), barriers, and errors for what a switch
    refuses (a flow that names a group it does not have). Entries it holds keep the cookie
    and the raw match they were added with, as a switch does."""

    def __init__(self, name: str = "s1", ports: Iterable[int] = (), dpid: int = 1):
        from os_ken.ofproto import ofproto_protocol, ofproto_v1_3

        self.ofp = ofproto_v1_3
        self.dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
        self.parser = self.dp.ofproto_parser
        self.switch = FakeSwitch(name)
        self.dpid = dpid
        self.ports = {p: True for p in ports}
        self.cookies: dict[fl.FlowKey, int] = {}
        self.raw: dict[fl.FlowKey, Any] = {}  # key -> os-ken match as received
        self.received: list[Any] = []

    # -- what the switch is told --------------------------------------------------------------

    def receive(self, msgs: Iterable[Any]) -> list[Any]:
        """Handle messages as the controller sends them; returns the replies (os-ken
        message objects, as the app's handlers receive them). Each message is serialized;
        a flow-mod is then parsed back from its bytes, so what the fake holds is what went
        over the wire. (os-ken has no parsers for the other controller-to-switch messages,
        nor serializers for multipart replies.)"""
        from os_ken.ofproto import ofproto_parser

        replies: list[Any] = []
        for msg in msgs:
            msg.serialize()
            data = bytes(msg.buf)
            if type(msg).__name__ == "OFPFlowMod":
                msg = ofproto_parser.msg(self.dp, *ofproto_parser.header(data), data)
            self.received.append(msg)
            for reply in self._handle(msg):
                reply.xid = msg.xid
                replies.append(reply)
        return replies

    def add_foreign(self, table: int, priority: int, match: Any) -> None:
        """An entry someone else wrote (any os-ken match, even one the controller cannot
        express)."""
        key = (table, priority, (("foreign", id(match)),))
        self.cookies[key] = 0
        self.raw[key] = match

    def _handle(self, msg: Any) -> list[Any]:
        p, ofp = self.parser, self.ofp
        name = type(msg).__name__
        if name == "OFPFlowMod":
            return self._flow_mod(msg)
        if name == "OFPGroupMod":
            if msg.command == ofp.OFPGC_DELETE:
                if msg.group_id == ofp.OFPG_ALL:
                    self.switch.groups.clear()
                else:
                    self.switch.groups.pop(msg.group_id, None)
            else:
                buckets = tuple((b.weight, ofmsg_parse_actions(b.actions)) for b in msg.buckets)
                self.switch.groups[msg.group_id] = fl.Group(msg.group_id, buckets)
            self.switch.flow_mods += 1
            return []
        if name == "OFPBarrierRequest":
            return [p.OFPBarrierReply(self.dp)]
        if name == "OFPPortDescStatsRequest":
            body = [
                p.OFPPort(n, "00:00:00:00:00:01", f"p{n}", 0, 0 if up else 1, 0, 0, 0, 0, 0, 0)
                for n, up in sorted(self.ports.items())
            ]
            return [p.OFPPortDescStatsReply(self.dp, flags=0, body=body)]
        if name == "OFPFlowStatsRequest":
            body = []
            for key, cookie in self.cookies.items():
                flow = self.switch.flows.get(key)
                instructions = [] if flow is None else _ofp_instructions(p, flow.instructions)
                body.append(
                    p.OFPFlowStats(
                        table_id=key[0], duration_sec=0, duration_nsec=0, priority=key[1],
                        idle_timeout=0, hard_timeout=0, flags=0, cookie=cookie,
                        packet_count=0, byte_count=0, match=self.raw[key],
                        instructions=instructions,
                    )
                )  # fmt: skip
            return [p.OFPFlowStatsReply(self.dp, flags=0, body=body)]
        if name == "OFPGroupDescStatsRequest":
            from controller.ofp import ofmsg

            body = [
                p.OFPGroupDescStats(ofp.OFPGT_SELECT, g.group_id, ofmsg.ofp_buckets(p, g))
                for g in self.switch.groups.values()
            ]
            return [p.OFPGroupDescStatsReply(self.dp, flags=0, body=body)]
        return []

    def _flow_mod(self, msg: Any) -> list[Any]:
        from controller.ofp import ofmsg

        ofp = self.ofp
        if msg.command == ofp.OFPFC_DELETE and msg.table_id == ofp.OFPTT_ALL:
            self.switch.flows.clear()
            self.cookies.clear()
            self.raw.clear()
            self.switch.flow_mods += 1
            return []
        if msg.command == ofp.OFPFC_DELETE_STRICT:
            wire = ofmsg.serialize_match(msg.match)
            for key in [
                k
                for k, m in self.raw.items()
                if k[0] == msg.table_id
                and k[1] == msg.priority
                and ofmsg.serialize_match(m) == wire
            ]:
                self.switch.flows.pop(key, None)
                self.cookies.pop(key, None)
                self.raw.pop(key, None)
            self.switch.flow_mods += 1
            return []
        instructions = _parse_instructions(msg.instructions)
        for ins in instructions:
            for act in ins[1] if ins[0] == "apply" else ():
                if act[0] == "group" and act[1] not in self.switch.groups:
                    return [
                        self.parser.OFPErrorMsg(
                            self.dp, type_=ofp.OFPET_BAD_ACTION, code=ofp.OFPBAC_BAD_OUT_GROUP
                        )
                    ]
        flow = fl.Flow(msg.table_id, msg.priority, ofmsg.parse_match(msg.match), instructions)
        self.switch.flows[flow.key] = flow
        self.cookies[flow.key] = msg.cookie
        self.raw[flow.key] = msg.match
        self.switch.flow_mods += 1
        return []

    # -- what the controller learns ------------------------------------------------------

    def table(self) -> fl.Installed:
        return fl.Installed(
            dict(self.cookies), {g: grp.buckets for g, grp in self.switch.groups.items()}
        )


def ofmsg_parse_actions(actions: Any) -> tuple:
    from controller.ofp import ofmsg

    return ofmsg.parse_actions(actions)


def _parse_instructions(instructions: Iterable[Any]) -> tuple:
    out: list[tuple] = []
    for ins in instructions:
        name = type(ins).__name__
        if name == "OFPInstructionActions":
            out.append(("apply", ofmsg_parse_actions(ins.actions)))
        elif name == "OFPInstructionWriteMetadata":
            out.append(("write_metadata", ins.metadata, ins.metadata_mask))
        elif name == "OFPInstructionGotoTable":
            out.append(("goto", ins.table_id))
    return tuple(out)


def _ofp_instructions(parser: Any, instructions: Iterable[Any]) -> list[Any]:
    from controller.ofp import ofmsg

    return ofmsg.ofp_instructions(parser, instructions)
