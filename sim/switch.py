"""An OpenFlow 1.3 switch as a pure model: no sockets, threads or clocks.

It holds what Open vSwitch holds for one bridge and answers as it does: a flow table keyed
by (table, priority, match) with cookies; adds that replace, strict and non-strict
modifies and deletes filtered by cookie mask and out port/group; select and all groups
(deleting a group deletes the flows that use it); ports that go up and down; and the
OpenFlow 1.3 roles of each controller connection. Requests come in as typed values
(:class:`FlowMod`, :class:`GroupMod`, a role request), or as the controller's pure steps
(:meth:`Switch.apply`); each returns the messages the switch sends, addressed to a
connection. :mod:`sim.ofcodec` puts it on the wire. :meth:`Switch.process` walks a packet
through the tables and says which ports it leaves by.

Roles follow OVS (``ofproto/connmgr.c``): a MASTER or SLAVE request whose generation id
is behind the switch's by the signed 64-bit distance is refused as stale, an equal one is
accepted; a new MASTER demotes the old one to SLAVE and tells it with a role-status; a
SLAVE's flow and group changes are refused with IS_SLAVE.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from controller.core import flows as fl
from controller.core.hashing import flow_hash, slot_of
from sim.packet import FIELD_BITS, Packet, field_matches

OFPP_ANY = 0xFFFF_FFFF
OFPG_ANY = 0xFFFF_FFFF
OFPG_ALL = 0xFFFF_FFFC
OFPTT_ALL = 0xFF
OFPFC_ADD, OFPFC_MODIFY, OFPFC_MODIFY_STRICT, OFPFC_DELETE, OFPFC_DELETE_STRICT = range(5)
OFPGC_ADD, OFPGC_MODIFY, OFPGC_DELETE = range(3)
OFPGT_ALL, OFPGT_SELECT = 0, 1
ROLE_NOCHANGE, ROLE_EQUAL, ROLE_MASTER, ROLE_SLAVE = range(4)
OFPCRR_MASTER_REQUEST = 0
OFPPR_ADD, OFPPR_DELETE, OFPPR_MODIFY = range(3)
UINT64 = 1 << 64

# (error type, code) pairs, as OpenFlow 1.3 numbers them
BAD_REQUEST_IS_SLAVE = (1, 10)
BAD_ACTION_BAD_OUT_GROUP = (2, 9)
GROUP_EXISTS = (6, 0)
UNKNOWN_GROUP = (6, 8)
ROLE_STALE = (11, 0)

LOCAL = -1  # the connection id of changes made on the switch itself (ovs-ofctl, steps)


# -- requests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowMod:
    command: int
    table: int
    priority: int = 0
    match: fl.MatchT = ()
    instructions: tuple[fl.Instruction, ...] = ()
    cookie: int = 0
    cookie_mask: int = 0
    out_port: int = OFPP_ANY
    out_group: int = OFPG_ANY
    wire: Any = None  # what a codec needs to send the entry back as it came (opaque here)


@dataclass(frozen=True)
class GroupMod:
    command: int
    group_id: int
    kind: int = OFPGT_SELECT
    buckets: tuple[fl.Bucket, ...] = ()
    wire: Any = None


# -- what the switch sends ----------------------------------------------------------------


@dataclass(frozen=True)
class Error:
    type: int
    code: int


@dataclass(frozen=True)
class RoleReply:
    role: int
    generation: int


@dataclass(frozen=True)
class RoleStatus:
    role: int
    reason: int
    generation: int


@dataclass(frozen=True)
class PortStatus:
    reason: int
    port: int
    up: bool


Message = Error | RoleReply | RoleStatus | PortStatus
Out = tuple[int, Message]  # (connection, message)


# -- what the switch holds ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    flow: fl.Flow
    cookie: int
    wire: Any = None

    @property
    def key(self) -> fl.FlowKey:
        return self.flow.key


@dataclass(frozen=True)
class GroupEntry:
    group: fl.Group
    kind: int = OFPGT_SELECT
    wire: Any = None


def int64(value: int) -> int:
    """``value`` read as a two's complement signed 64-bit integer."""
    value %= UINT64
    return value - UINT64 if value >= 1 << 63 else value


def unparsed_match(raw: bytes) -> fl.MatchT:
    """The key part of a match the model cannot express (kept by its wire bytes, as the
    controller's read-back keys it)."""
    return (("unparsed_match", raw.hex()),)


def _is_unparsed(match: fl.MatchT) -> bool:
    return bool(match) and match[0][0] == "unparsed_match"


def _as_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    if "." in value:
        return int.from_bytes(bytes(int(p) for p in value.split(".")), "big")
    return int(value.replace(":", ""), 16)


def _value_mask(value: Any, bits: int = 128) -> tuple[int, int]:
    if isinstance(value, tuple):
        return _as_int(value[0]), _as_int(value[1])
    return _as_int(value), (1 << bits) - 1


def loose_match(entry: fl.MatchT, criteria: fl.MatchT) -> bool:
    """An entry is selected by a non-strict request when it is at least as specific on every
    field the request names, and agrees with it there."""
    if not criteria:
        return True
    if _is_unparsed(entry) or _is_unparsed(criteria):
        return entry == criteria
    have = dict(entry)
    for name, want in criteria:
        if name not in have:
            return False
        hv, hm = _value_mask(have[name])
        wv, wm = _value_mask(want)
        if hm & wm != wm or hv & wm != wv & wm:
            return False
    return True


def _outputs(instructions: Iterable[fl.Instruction]) -> tuple[set[int], set[int]]:
    ports: set[int] = set()
    groups: set[int] = set()
    for ins in instructions:
        for act in ins[1] if ins[0] == "apply" else ():
            if act[0] == "output":
                ports.add(act[1])
            elif act[0] == "group":
                groups.add(act[1])
    return ports, groups


class Switch:
    def __init__(self, name: str = "s1", dpid: int = 1, ports: Iterable[int] = ()):
        self.name = name
        self.dpid = dpid
        self.flows: dict[fl.FlowKey, Entry] = {}
        self.groups: dict[int, GroupEntry] = {}
        self.ports: dict[int, bool] = {p: True for p in ports}
        self.roles: dict[int, int] = {}
        self.generation: int | None = None  # kept while the switch lives, as OVS does
        self.changes = 0  # flow and group changes applied; the lookup index follows it
        self._next_conn = 0
        self._indexed: tuple[int, dict] | None = None

    # -- connections and roles --------------------------------------------------------

    def connect(self) -> int:
        """A new controller connection (role EQUAL); returns its id."""
        self._next_conn += 1
        self.roles[self._next_conn] = ROLE_EQUAL
        return self._next_conn

    def disconnect(self, conn: int) -> None:
        self.roles.pop(conn, None)

    def _generation_or(self, undefined: int) -> int:
        return undefined if self.generation is None else self.generation

    def role_request(self, conn: int, role: int, generation: int) -> list[Out]:
        """A role request; the reply goes to ``conn``, role-status to a demoted master."""
        out: list[Out] = []
        if role in (ROLE_MASTER, ROLE_SLAVE):
            if self.generation is not None and int64(generation - self.generation) < 0:
                return [(conn, Error(*ROLE_STALE))]
            self.generation = generation % UINT64
        if role != ROLE_NOCHANGE:
            if role == ROLE_MASTER and self.roles[conn] != ROLE_MASTER:
                for other, other_role in self.roles.items():
                    if other_role == ROLE_MASTER:
                        self.roles[other] = ROLE_SLAVE
                        gen = self._generation_or(UINT64 - 1)
                        status = RoleStatus(ROLE_SLAVE, OFPCRR_MASTER_REQUEST, gen)
                        out.append((other, status))
            self.roles[conn] = role
        out.append((conn, RoleReply(self.roles[conn], self._generation_or(UINT64 - 1))))
        return out

    def _refused_to_slave(self, conn: int) -> list[Out]:
        if self.roles.get(conn) == ROLE_SLAVE:
            return [(conn, Error(*BAD_REQUEST_IS_SLAVE))]
        return []

    # -- flows ---------------------------------------------------------------------------

    def flow_mod(self, conn: int, mod: FlowMod) -> list[Out]:
        refused = self._refused_to_slave(conn)
        if refused:
            return refused
        if mod.command == OFPFC_ADD:
            return [(conn, e) for e in self._add(mod)]
        chosen = self._select(mod, strict=mod.command in (OFPFC_MODIFY_STRICT, OFPFC_DELETE_STRICT))
        if mod.command in (OFPFC_DELETE, OFPFC_DELETE_STRICT):
            for key in chosen:
                del self.flows[key]
        elif mod.command in (OFPFC_MODIFY, OFPFC_MODIFY_STRICT):
            missing = self._missing_group(mod.instructions)
            if missing:
                return [(conn, missing)]
            for key in chosen:
                old = self.flows[key]
                flow = replace(old.flow, instructions=mod.instructions)
                self.flows[key] = Entry(flow, old.cookie, mod.wire)
        self.changes += 1
        return []

    def _missing_group(self, instructions: Iterable[fl.Instruction]) -> Error | None:
        _, groups = _outputs(instructions)
        if any(g not in self.groups for g in groups):
            return Error(*BAD_ACTION_BAD_OUT_GROUP)
        return None

    def _add(self, mod: FlowMod) -> list[Error]:
        missing = self._missing_group(mod.instructions)
        if missing:
            return [missing]
        flow = fl.Flow(mod.table, mod.priority, mod.match, mod.instructions)
        self.flows[flow.key] = Entry(flow, mod.cookie, mod.wire)
        self.changes += 1
        return []

    def _select(self, mod: FlowMod, strict: bool) -> list[fl.FlowKey]:
        """Keys of the entries a modify or delete request names (OpenFlow 1.3 6.4)."""
        out = []
        for key, entry in self.flows.items():
            table, priority, match = key
            if mod.table != OFPTT_ALL and table != mod.table:
                continue
            if (entry.cookie ^ mod.cookie) & mod.cookie_mask:
                continue
            if strict and (priority != mod.priority or match != mod.match):
                continue
            if not strict and not loose_match(match, mod.match):
                continue
            ports, groups = _outputs(entry.flow.instructions)
            if mod.out_port != OFPP_ANY and mod.out_port not in ports:
                continue
            if mod.out_group != OFPG_ANY and mod.out_group not in groups:
                continue
            out.append(key)
        return out

    def flow_stats(self, query: FlowMod) -> list[Entry]:
        """Entries a flow-stats request names: its table, match, cookie and out port/group
        select them as a non-strict delete's do."""
        return [self.flows[k] for k in self._select(query, strict=False)]

    # -- groups --------------------------------------------------------------------------

    def group_mod(self, conn: int, mod: GroupMod) -> list[Out]:
        refused = self._refused_to_slave(conn)
        if refused:
            return refused
        entry = GroupEntry(fl.Group(mod.group_id, mod.buckets), mod.kind, mod.wire)
        if mod.command == OFPGC_ADD:
            if mod.group_id in self.groups:
                return [(conn, Error(*GROUP_EXISTS))]
            self.groups[mod.group_id] = entry
        elif mod.command == OFPGC_MODIFY:
            if mod.group_id not in self.groups:
                return [(conn, Error(*UNKNOWN_GROUP))]
            self.groups[mod.group_id] = entry
        elif mod.command == OFPGC_DELETE:
            gone = set(self.groups) if mod.group_id == OFPG_ALL else {mod.group_id}
            for gid in gone & set(self.groups):
                del self.groups[gid]
                # OpenFlow 1.3 7.3.4.2: the flows that forward to a deleted group go too
                for key in self._select(FlowMod(OFPFC_DELETE, OFPTT_ALL, out_group=gid), False):
                    del self.flows[key]
        self.changes += 1
        return []

    # -- ports ---------------------------------------------------------------------------

    def set_port(self, port: int, up: bool) -> list[Out]:
        """Add a port or change its state; every connection hears a port-status."""
        reason = OFPPR_MODIFY if port in self.ports else OFPPR_ADD
        if self.ports.get(port) == up:
            return []
        self.ports[port] = up
        return [(c, PortStatus(reason, port, up)) for c in self.roles]

    def remove_port(self, port: int) -> list[Out]:
        if self.ports.pop(port, None) is None:
            return []
        return [(c, PortStatus(OFPPR_DELETE, port, False)) for c in self.roles]

    # -- the controller's pure steps -----------------------------------------------------

    def apply(self, steps: Iterable[fl.Step], conn: int = LOCAL) -> None:
        """Program the switch with :mod:`controller.core.flows` steps; a step the switch
        refuses is an AssertionError (the steps are wrong)."""
        for step in steps:
            for _, msg in self._step(step, conn):
                raise AssertionError(f"{self.name} refused {step!r}: {msg!r}")

    def _step(self, step: fl.Step, conn: int) -> list[Out]:
        if isinstance(step, fl.FlowAdd):
            f = step.flow
            mod = FlowMod(OFPFC_ADD, f.table, f.priority, f.match, f.instructions, f.cookie)
            return self.flow_mod(conn, mod)
        if isinstance(step, fl.FlowDelete):
            table, priority, match = step.key
            return self.flow_mod(conn, FlowMod(OFPFC_DELETE_STRICT, table, priority, match))
        if isinstance(step, fl.WipeAll):
            out = self.flow_mod(conn, FlowMod(OFPFC_DELETE, OFPTT_ALL))
            return out + self.group_mod(conn, GroupMod(OFPGC_DELETE, OFPG_ALL))
        if isinstance(step, fl.GroupAdd | fl.GroupModify):
            command = OFPGC_ADD if isinstance(step, fl.GroupAdd) else OFPGC_MODIFY
            g = step.group
            return self.group_mod(conn, GroupMod(command, g.group_id, buckets=g.buckets))
        if isinstance(step, fl.GroupDelete):
            return self.group_mod(conn, GroupMod(OFPGC_DELETE, step.group_id))
        return []  # a barrier: the model applies everything at once

    def installed(self) -> fl.Installed:
        """The table as the controller reads it back."""
        return fl.Installed(
            {k: e.cookie for k, e in self.flows.items()},
            {g: e.group.buckets for g, e in self.groups.items()},
        )

    # -- packets -------------------------------------------------------------------------

    def _index(self) -> dict[int, list[tuple[int, tuple[str, ...], dict | list]]]:
        """Per table, groups of entries with one priority and one set of match fields, in
        priority order; a group whose values are all exact is a hash table (fast lookups
        in the 4096-entry slot table)."""
        if self._indexed is not None and self._indexed[0] == self.changes:
            return self._indexed[1]
        groups: dict[tuple[int, int, tuple[str, ...]], list[fl.Flow]] = {}
        for entry in self.flows.values():
            flow = entry.flow
            if _is_unparsed(flow.match):
                continue  # a match the model cannot express never matches a packet here
            names = tuple(n for n, _ in flow.match)
            groups.setdefault((flow.table, flow.priority, names), []).append(flow)
        index: dict[int, list[tuple[int, tuple[str, ...], dict | list]]] = {}
        for (table, prio, names), members in sorted(groups.items(), key=lambda g: -g[0][1]):
            exact = all(not isinstance(v, tuple) for f in members for _, v in f.match)
            found: dict | list = (
                {tuple(v for _, v in f.match): f for f in members} if exact else members
            )
            index.setdefault(table, []).append((prio, names, found))
        self._indexed = (self.changes, index)
        return index

    def lookup(self, table: int, pkt: Packet, regs: dict[str, int], in_port: int) -> fl.Flow | None:
        found: list[fl.Flow] = []
        for prio, names, entries in self._index().get(table, []):
            if found and prio < found[0].priority:
                break
            if isinstance(entries, dict):
                values = tuple(pkt.field(n, regs, in_port) for n in names)
                if values in entries:
                    found.append(entries[values])
                continue
            for flow in entries:
                if all(field_matches(pkt.field(n, regs, in_port), v) for n, v in flow.match):
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
                assert FIELD_BITS[src] == FIELD_BITS[dst] == n_bits, act
                if pkt.field(src, regs, in_port) is None or pkt.field(dst, regs, in_port) is None:
                    raise AssertionError(f"{act!r} on a packet without those fields")
                pkt = replace(pkt, **{dst: getattr(pkt, src)})
            elif kind == "multipath":
                _, _fields, basis, _alg, max_link, _arg, dst, start, _end = act
                assert dst == "reg0" and start == 0
                regs["reg0"] = slot_of(pkt.five_tuple(), max_link + 1, basis)
            elif kind == "group":
                pkt = self._group(act[1], pkt, regs, in_port, out)
            else:
                raise ValueError(f"the switch model does not execute action {act!r}")
        return pkt

    def _group(
        self, gid: int, pkt: Packet, regs: dict[str, int], in_port: int, out: list
    ) -> Packet:
        entry = self.groups.get(gid)
        if entry is None or not entry.group.buckets:
            return pkt
        if entry.kind == OFPGT_ALL:
            for _, actions in entry.group.buckets:  # each bucket acts on its own copy
                self._actions(actions, copy.copy(pkt), dict(regs), in_port, out)
            return pkt
        bucket = select_bucket(entry.group, pkt)
        return self._actions(bucket[1], pkt, dict(regs), in_port, out)


def select_bucket(group: fl.Group, pkt: Packet) -> fl.Bucket:
    """Weighted choice by flow hash (not OVS's dp_hash choice, only its proportions)."""
    total = sum(w for w, _ in group.buckets)
    point = flow_hash(pkt.five_tuple()) % total
    for weight, actions in group.buckets:
        if point < weight:
            return (weight, actions)
        point -= weight
    raise AssertionError("unreachable")
