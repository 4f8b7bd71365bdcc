"""Pure flow descriptions (:mod:`controller.core.flows`) to os-ken OpenFlow 1.3 messages, and
stats replies back to descriptions. No I/O: messages are built for a datapath object (a
connected ``Datapath``, or ``os_ken.ofproto.ofproto_protocol.ProtocolDesc`` in tests) and
returned; the app sends them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from os_ken.ofproto import nicira_ext, ofproto_v1_3

from controller.core import events as ev
from controller.core import flows as fl
from controller.core.switchsync import ReadBack

OFP = ofproto_v1_3


def _actions(parser: Any, actions: Iterable[fl.Action]) -> list[Any]:
    out = []
    for act in actions:
        kind = act[0]
        if kind == "output":
            out.append(parser.OFPActionOutput(act[1], 0))
        elif kind == "push_vlan":
            out.append(parser.OFPActionPushVlan(act[1]))
        elif kind == "pop_vlan":
            out.append(parser.OFPActionPopVlan())
        elif kind == "set_field":
            out.append(parser.OFPActionSetField(**{act[1]: act[2]}))
        elif kind == "group":
            out.append(parser.OFPActionGroup(act[1]))
        elif kind == "move":
            _, src, dst, n_bits = act
            out.append(parser.NXActionRegMove(src_field=src, dst_field=dst, n_bits=n_bits))
        elif kind == "multipath":
            _, fields, basis, algorithm, max_link, arg, dst, start, end = act
            out.append(
                parser.NXActionMultipath(
                    fields=fields,
                    basis=basis,
                    algorithm=algorithm,
                    max_link=max_link,
                    arg=arg,
                    ofs_nbits=nicira_ext.ofs_nbits(start, end),
                    dst=dst,
                )
            )
        else:  # pragma: no cover - flows.py only produces the kinds above
            raise ValueError(f"unknown action {act!r}")
    return out


def parse_actions(actions: Iterable[Any]) -> tuple[fl.Action, ...]:
    """os-ken action objects back to descriptions (the kinds flows.py produces)."""
    out: list[fl.Action] = []
    for a in actions:
        name = type(a).__name__
        if name == "OFPActionOutput":
            out.append(("output", a.port))
        elif name == "OFPActionPushVlan":
            out.append(("push_vlan", a.ethertype))
        elif name == "OFPActionPopVlan":
            out.append(("pop_vlan",))
        elif name == "OFPActionSetField":
            value = a.value.lower() if isinstance(a.value, str) else a.value
            out.append(("set_field", a.key, value))
        elif name == "OFPActionGroup":
            out.append(("group", a.group_id))
        elif name == "NXActionRegMove" and a.src_ofs == 0 and a.dst_ofs == 0:
            out.append(("move", a.src_field, a.dst_field, a.n_bits))
        elif name == "NXActionMultipath":
            start = a.ofs_nbits >> 6
            end = start + (a.ofs_nbits & 0x3F)
            out.append(
                ("multipath", a.fields, a.basis, a.algorithm, a.max_link, a.arg, a.dst, start, end)
            )
        else:
            out.append(("unknown", name))
    return tuple(out)


# Building os-ken match and instruction objects is most of the cost of a flow-mod. The
# same matches (a slot's) and instructions (delivery to an instance) recur across changes,
# and serializing does not change these objects, so messages share them. An os-ken match
# takes about 3 KB: the match cache holds two pools of the default 4,096 slots.
MATCH_CACHE = 8192
INSTRUCTION_CACHE = 4096


@functools.lru_cache(maxsize=INSTRUCTION_CACHE)
def _cached_instructions(parser: Any, instructions: tuple[fl.Instruction, ...]) -> list[Any]:
    return ofp_instructions(parser, instructions)


@functools.lru_cache(maxsize=MATCH_CACHE)
def _cached_match(parser: Any, match: fl.MatchT) -> Any:
    return ofp_match(parser, match)


def ofp_instructions(parser: Any, instructions: Iterable[fl.Instruction]) -> list[Any]:
    out = []
    for ins in instructions:
        if ins[0] == "apply":
            out.append(
                parser.OFPInstructionActions(OFP.OFPIT_APPLY_ACTIONS, _actions(parser, ins[1]))
            )
        elif ins[0] == "write_metadata":
            out.append(parser.OFPInstructionWriteMetadata(ins[1], ins[2]))
        elif ins[0] == "goto":
            out.append(parser.OFPInstructionGotoTable(ins[1]))
        else:  # pragma: no cover
            raise ValueError(f"unknown instruction {ins!r}")
    return out


def ofp_match(parser: Any, match: fl.MatchT) -> Any:
    return parser.OFPMatch(**dict(match))


def flow_add(dp: Any, flow: fl.Flow) -> Any:
    parser = dp.ofproto_parser
    return parser.OFPFlowMod(
        dp,
        cookie=flow.cookie,
        cookie_mask=0,
        table_id=flow.table,
        command=OFP.OFPFC_ADD,
        idle_timeout=0,
        hard_timeout=0,
        priority=flow.priority,
        buffer_id=OFP.OFP_NO_BUFFER,
        out_port=OFP.OFPP_ANY,
        out_group=OFP.OFPG_ANY,
        flags=0,
        match=_cached_match(parser, flow.match),
        instructions=_cached_instructions(parser, flow.instructions),
    )


def flow_delete(dp: Any, key: fl.FlowKey, raw_match: bytes | None = None) -> Any:
    """Strict delete of one entry: by the match as the switch reported it when known (an
    entry the controller did not write may have a match it cannot express), else by key."""
    table, priority, match = key
    parser = dp.ofproto_parser
    ofp_m = (
        parser.OFPMatch.parser(raw_match, 0)
        if raw_match is not None
        else _cached_match(parser, match)
    )
    return parser.OFPFlowMod(
        dp,
        table_id=table,
        command=OFP.OFPFC_DELETE_STRICT,
        priority=priority,
        buffer_id=OFP.OFP_NO_BUFFER,
        out_port=OFP.OFPP_ANY,
        out_group=OFP.OFPG_ANY,
        match=ofp_m,
    )


def wipe_all(dp: Any) -> list[Any]:
    """Delete every flow of every table, then every group."""
    parser = dp.ofproto_parser
    flows = parser.OFPFlowMod(
        dp,
        table_id=OFP.OFPTT_ALL,
        command=OFP.OFPFC_DELETE,
        buffer_id=OFP.OFP_NO_BUFFER,
        out_port=OFP.OFPP_ANY,
        out_group=OFP.OFPG_ANY,
        match=parser.OFPMatch(),
    )
    groups = parser.OFPGroupMod(dp, OFP.OFPGC_DELETE, OFP.OFPGT_SELECT, OFP.OFPG_ALL, [])
    return [flows, groups]


def ofp_buckets(parser: Any, group: fl.Group) -> list[Any]:
    # os-ken's OFPBucket defaults to weight=0, which OVS never selects: always pass it.
    return [
        parser.OFPBucket(
            weight=max(1, weight),
            watch_port=OFP.OFPP_ANY,
            watch_group=OFP.OFPG_ANY,
            actions=_actions(parser, actions),
        )
        for weight, actions in group.buckets
    ]


def group_mod(dp: Any, group: fl.Group, command: int) -> Any:
    parser = dp.ofproto_parser
    return parser.OFPGroupMod(
        dp, command, OFP.OFPGT_SELECT, group.group_id, ofp_buckets(parser, group)
    )


def group_delete(dp: Any, group_id: int) -> Any:
    return dp.ofproto_parser.OFPGroupMod(dp, OFP.OFPGC_DELETE, OFP.OFPGT_SELECT, group_id, [])


def barrier(dp: Any) -> Any:
    return dp.ofproto_parser.OFPBarrierRequest(dp)


def messages(dp: Any, steps: Iterable[fl.Step]) -> list[Any]:
    """One os-ken message per step, in order."""
    out = []
    for s in steps:
        if isinstance(s, fl.FlowAdd):
            out.append(flow_add(dp, s.flow))
        elif isinstance(s, fl.FlowDelete):
            out.append(flow_delete(dp, s.key, s.raw_match))
        elif isinstance(s, fl.WipeAll):
            out.extend(wipe_all(dp))
        elif isinstance(s, fl.GroupAdd):
            out.append(group_mod(dp, s.group, OFP.OFPGC_ADD))
        elif isinstance(s, fl.GroupModify):
            out.append(group_mod(dp, s.group, OFP.OFPGC_MODIFY))
        elif isinstance(s, fl.GroupDelete):
            out.append(group_delete(dp, s.group_id))
        elif isinstance(s, fl.Barrier):
            out.append(barrier(dp))
    return out


# -- requests and replies ---------------------------------------------------------------------


def flow_stats_request(dp: Any) -> Any:
    parser = dp.ofproto_parser
    return parser.OFPFlowStatsRequest(
        dp, 0, OFP.OFPTT_ALL, OFP.OFPP_ANY, OFP.OFPG_ANY, 0, 0, parser.OFPMatch()
    )


def slot_stats_request(dp: Any) -> Any:
    """Counters of the slot table's entries (the load of each pool's hash slots)."""
    parser = dp.ofproto_parser
    return parser.OFPFlowStatsRequest(
        dp, 0, fl.T_SLOTS, OFP.OFPP_ANY, OFP.OFPG_ANY, 0, 0, parser.OFPMatch()
    )


def parse_slot_counters(bodies: Iterable[Any]) -> list[tuple[int, int, int]]:
    """Flow-stats reply bodies -> (pool id, slot, packets) of each slot entry."""
    out = []
    for st in bodies:
        if st.table_id != fl.T_SLOTS:
            continue
        fields = dict(st.match.items())
        pool_id, slot = fields.get("metadata"), fields.get("reg0")
        if isinstance(pool_id, int) and isinstance(slot, int):
            out.append((pool_id, slot, int(st.packet_count)))
    return out


def group_desc_request(dp: Any) -> Any:
    return dp.ofproto_parser.OFPGroupDescStatsRequest(dp, 0)


def port_desc_request(dp: Any) -> Any:
    return dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0)


def port_stats_request(dp: Any) -> Any:
    return dp.ofproto_parser.OFPPortStatsRequest(dp, 0, OFP.OFPP_ANY)


def parse_match(match: Any) -> fl.MatchT:
    return fl.make_match(**dict(match.items()))


def serialize_match(match: Any) -> bytes:
    buf = bytearray()
    match.serialize(buf, 0)
    return bytes(buf)


def parse_flow_stats(bodies: Iterable[Any], into: ReadBack) -> None:
    """Flow-stats reply bodies -> ``into.flows`` {key: cookie} and the raw match of each.

    The switch may hold entries the controller never wrote, with matches it cannot express
    (a non-contiguous IPv4 mask, fields it does not use): such an entry gets a key of its
    own, made from its raw match, so the diff deletes it like any other stranger. An entry
    whose match cannot even be re-serialized marks the read-back doubtful (wipe it all)."""
    for st in bodies:
        try:
            raw = serialize_match(st.match)
        except Exception:
            into.doubtful = True
            continue
        try:
            match = parse_match(st.match)
        except (ValueError, TypeError, KeyError):
            match = (("unparsed_match", raw.hex()),)
        key = (st.table_id, st.priority, match)
        into.flows[key] = st.cookie
        into.raw_matches[key] = raw


def parse_group_desc(bodies: Iterable[Any], into: ReadBack) -> None:
    for g in bodies:
        try:
            into.groups[g.group_id] = tuple((b.weight, parse_actions(b.actions)) for b in g.buckets)
        except Exception:
            into.doubtful = True


def parse_port_desc(bodies: Iterable[Any], into: ReadBack) -> None:
    for p in bodies:
        if p.port_no <= OFP.OFPP_MAX:
            into.ports[p.port_no] = port_is_up(p)


def port_is_up(port: Any) -> bool:
    """A port carries traffic: not administratively down and link not down."""
    return not (port.config & OFP.OFPPC_PORT_DOWN) and not (port.state & OFP.OFPPS_LINK_DOWN)


def describe(msg: Any) -> str:
    """A one-line description of a message we sent, for error logs."""
    name = type(msg).__name__
    if name == "OFPFlowMod":
        cmd = {
            OFP.OFPFC_ADD: "add",
            OFP.OFPFC_MODIFY: "modify",
            OFP.OFPFC_MODIFY_STRICT: "modify_strict",
            OFP.OFPFC_DELETE: "delete",
            OFP.OFPFC_DELETE_STRICT: "delete_strict",
        }.get(msg.command, str(msg.command))
        match = ",".join(f"{k}={v}" for k, v in msg.match.items())
        acts = []
        for ins in msg.instructions:
            acts.append(str(ins))
        return (
            f"flow_mod {cmd} table={msg.table_id} priority={msg.priority} match=[{match}] "
            f"cookie={msg.cookie:#x} instructions={acts}"
        )
    if name == "OFPGroupMod":
        return (
            f"group_mod command={msg.command} group_id={msg.group_id} "
            f"buckets={[(b.weight, parse_actions(b.actions)) for b in msg.buckets]}"
        )
    return name


# -- roles (several controllers) --------------------------------------------------------------

ONF_EXPERIMENTER_ID = 0x4F4E4600
ONFT_ROLE_STATUS = 1911  # OpenFlow 1.3 extension: the switch tells a controller its new role


def role_request(dp: Any, role: int, generation_id: int) -> Any:
    return dp.ofproto_parser.OFPRoleRequest(dp, role, generation_id)


def parse_role_status(msg: Any) -> tuple[int, int] | None:
    """(role, generation id) of an ONF role-status message; None for other experimenters."""
    if msg.experimenter != ONF_EXPERIMENTER_ID or msg.exp_type != ONFT_ROLE_STATUS:
        return None
    data = bytes(msg.data or b"")
    if len(data) < 16:
        return None
    role = int.from_bytes(data[0:4], "big")
    generation = int.from_bytes(data[8:16], "big")
    return role, generation


def fencing_error(err_type: int, code: int) -> str | None:
    """Why an error message means this controller is no longer the master, or None."""
    if err_type == OFP.OFPET_ROLE_REQUEST_FAILED and code == OFP.OFPRRFC_STALE:
        return "role request refused as stale (another controller has a newer term)"
    if err_type == OFP.OFPET_BAD_REQUEST and code == OFP.OFPBRC_IS_SLAVE:
        return "a change was refused: this controller is SLAVE on the switch"
    return None


# -- the core's requests ----------------------------------------------------------------------

_READS: dict[type, Any] = {
    ev.ReadPorts: port_desc_request,
    ev.ReadFlows: flow_stats_request,
    ev.ReadGroups: group_desc_request,
    ev.ReadPortStats: port_stats_request,
    ev.ReadSlotCounters: slot_stats_request,
}


def request_messages(dp: Any, request: ev.Request) -> list[Any]:
    """The os-ken messages of one request of the core (a wipe is two)."""
    read = _READS.get(type(request))
    if read is not None:
        return [read(dp)]
    if isinstance(request, ev.RoleRequest):
        return [role_request(dp, request.role, request.generation)]
    return messages(dp, [request])
