"""The switch model (:mod:`sim.switch`) on the OpenFlow 1.3 wire: bytes from a controller
in, the bytes the switch answers with out, per connection.

Flow-mods and group-mods are decoded with os-ken's parsers, the rest with ``struct``; the
match, instructions and buckets of what the switch holds are kept as they came, so a
read-back returns them byte for byte. Replies: hello, echo, features, barrier, role
(errors carry the offending xid and its first 64 bytes), multipart flow stats, group desc,
port desc and port stats (split into parts below 64 KiB), port-status, and role-status as
the ONF experimenter message (type 1911) that OVS sends on OpenFlow 1.3.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from os_ken.ofproto import (
    nicira_ext,
    ofproto_parser,
    ofproto_protocol,
    ofproto_v1_3,
    ofproto_v1_3_parser,
)

from controller.core import flows as fl
from sim import switch as sw

OFP = ofproto_v1_3
PARSER = ofproto_v1_3_parser
DP = ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)
HEADER = struct.Struct("!BBHI")
ONF_EXPERIMENTER_ID = 0x4F4E4600
ONFT_ROLE_STATUS = 1911
NX_VENDOR_ID = 0x00002320
NXT_SET_ASYNC_CONFIG2 = 27
MAX_PART = 60000  # body bytes per multipart reply message (the length field is 16 bits)
BAD_TYPE = (OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_TYPE)
BAD_MULTIPART = (OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_MULTIPART)
BAD_LENGTH = (OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_LEN)
BAD_EXPERIMENTER = (OFP.OFPET_BAD_REQUEST, OFP.OFPBRC_BAD_EXPERIMENTER)
ERROR_DATA = 64  # bytes of the offending request an error carries, as OVS sends

Sent = tuple[int, bytes]  # (connection, one message)


def message(msg_type: int, body: bytes, xid: int = 0) -> bytes:
    return HEADER.pack(OFP.OFP_VERSION, msg_type, 8 + len(body), xid) + body


def hello() -> bytes:
    return message(OFP.OFPT_HELLO, b"")


def split_messages(data: bytes) -> tuple[list[bytes], bytes]:
    """Whole messages in ``data``, and the incomplete rest."""
    out = []
    while len(data) >= 8:
        length = HEADER.unpack_from(data)[2]
        if length < 8 or len(data) < length:
            break
        out.append(data[:length])
        data = data[length:]
    return out, data


def decode(data: bytes) -> Any:
    """One message as os-ken parses it (what the controller's handlers receive)."""
    return ofproto_parser.msg(DP, *ofproto_parser.header(data), data)


# -- actions: os-ken objects <-> the descriptions of controller.core.flows ---------------


def describe_actions(actions: Iterable[Any]) -> tuple[fl.Action, ...]:
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


def build_actions(actions: Iterable[fl.Action]) -> list[Any]:
    out = []
    for act in actions:
        kind, args = act[0], act[1:]
        if kind == "output":
            out.append(PARSER.OFPActionOutput(args[0], 0))
        elif kind == "push_vlan":
            out.append(PARSER.OFPActionPushVlan(args[0]))
        elif kind == "pop_vlan":
            out.append(PARSER.OFPActionPopVlan())
        elif kind == "set_field":
            out.append(PARSER.OFPActionSetField(**{args[0]: args[1]}))
        elif kind == "group":
            out.append(PARSER.OFPActionGroup(args[0]))
        elif kind == "move":
            out.append(PARSER.NXActionRegMove(src_field=args[0], dst_field=args[1], n_bits=args[2]))
        elif kind == "multipath":
            fields, basis, algorithm, max_link, arg, dst, start, end = args
            out.append(
                PARSER.NXActionMultipath(
                    fields=fields, basis=basis, algorithm=algorithm, max_link=max_link,
                    arg=arg, ofs_nbits=nicira_ext.ofs_nbits(start, end), dst=dst,
                )
            )  # fmt: skip
        else:
            raise ValueError(f"the codec cannot encode action {act!r}")
    return out


def describe_instructions(instructions: Iterable[Any]) -> tuple[fl.Instruction, ...]:
    out: list[fl.Instruction] = []
    for ins in instructions:
        name = type(ins).__name__
        if name == "OFPInstructionActions":
            out.append(("apply", describe_actions(ins.actions)))
        elif name == "OFPInstructionWriteMetadata":
            out.append(("write_metadata", ins.metadata, ins.metadata_mask))
        elif name == "OFPInstructionGotoTable":
            out.append(("goto", ins.table_id))
    return tuple(out)


def _instructions_wire(instructions: Iterable[fl.Instruction]) -> bytes:
    buf = bytearray()
    for ins in instructions:
        if ins[0] == "apply":
            obj = PARSER.OFPInstructionActions(OFP.OFPIT_APPLY_ACTIONS, build_actions(ins[1]))
        elif ins[0] == "write_metadata":
            obj = PARSER.OFPInstructionWriteMetadata(ins[1], ins[2])
        else:
            obj = PARSER.OFPInstructionGotoTable(ins[1])
        obj.serialize(buf, len(buf))
    return bytes(buf)


def _match_wire(match: fl.MatchT) -> bytes:
    buf = bytearray()
    length = PARSER.OFPMatch(**dict(match)).serialize(buf, 0)
    return bytes(buf[: (length + 7) // 8 * 8])


def _buckets_wire(buckets: Iterable[fl.Bucket]) -> bytes:
    buf = bytearray()
    for weight, actions in buckets:
        PARSER.OFPBucket(weight, OFP.OFPP_ANY, OFP.OFPG_ANY, build_actions(actions)).serialize(
            buf, len(buf)
        )
    return bytes(buf)


def match_key(match: Any, raw: bytes) -> fl.MatchT:
    """The canonical match, or one keyed by its bytes when the model cannot express it."""
    try:
        return fl.make_match(**dict(match.items()))
    except (ValueError, TypeError, KeyError):
        return sw.unparsed_match(raw)


# -- decoding requests ---------------------------------------------------------------------


def flow_mod(data: bytes) -> sw.FlowMod:
    msg = decode(data)
    match_len = struct.unpack_from("!H", data, 50)[0]
    end = 48 + (match_len + 7) // 8 * 8
    wire = (data[48:end], data[end:])
    return sw.FlowMod(
        msg.command, msg.table_id, msg.priority, match_key(msg.match, wire[0]),
        describe_instructions(msg.instructions), msg.cookie, msg.cookie_mask,
        msg.out_port, msg.out_group, wire,
    )  # fmt: skip


def group_mod(data: bytes) -> sw.GroupMod:
    command, kind, group_id = struct.unpack_from("!HBxI", data, 8)
    buckets = []
    offset = 16
    while offset < len(data):
        bucket = PARSER.OFPBucket.parser(data, offset)
        buckets.append((bucket.weight, describe_actions(bucket.actions)))
        offset += bucket.len
    return sw.GroupMod(command, group_id, kind, tuple(buckets), data[16:])


def flow_stats_query(body: bytes) -> sw.FlowMod:
    table, out_port, out_group, cookie, cookie_mask = struct.unpack_from("!B3xII4xQQ", body)
    match = PARSER.OFPMatch.parser(body, 32)
    raw = body[32:]
    return sw.FlowMod(
        sw.OFPFC_DELETE, table, 0, match_key(match, raw), (), cookie, cookie_mask,
        out_port, out_group,
    )  # fmt: skip


# -- encoding replies ----------------------------------------------------------------------


def error(xid: int, err: sw.Error, request: bytes) -> bytes:
    return message(
        OFP.OFPT_ERROR, struct.pack("!HH", err.type, err.code) + request[:ERROR_DATA], xid
    )


def role_status(status: sw.RoleStatus) -> bytes:
    body = struct.pack(
        "!IIIB3xQ", ONF_EXPERIMENTER_ID, ONFT_ROLE_STATUS, status.role, status.reason,
        status.generation,
    )  # fmt: skip
    return message(OFP.OFPT_EXPERIMENTER, body)


def port_wire(switch: sw.Switch, port: int) -> bytes:
    up = switch.ports.get(port, False)
    mac = bytes([0x02, 0, (switch.dpid >> 8) & 0xFF, switch.dpid & 0xFF]) + port.to_bytes(2, "big")
    name = f"{switch.name}p{port}".encode()[:15]
    state = 0 if up else OFP.OFPPS_LINK_DOWN
    speed = 10_000_000  # kbps, as OVS reports an internal port
    return struct.pack("!I4x6s2x16sIIIIIIII", port, mac, name, 0, state, 0, 0, 0, 0, speed, speed)


def port_status(switch: sw.Switch, status: sw.PortStatus) -> bytes:
    body = struct.pack("!B7x", status.reason) + port_wire(switch, status.port)
    return message(OFP.OFPT_PORT_STATUS, body)


def features_reply(switch: sw.Switch, xid: int) -> bytes:
    capabilities = 0x4F  # flow, table, port, group and queue stats, as OVS
    body = struct.pack("!QIBB2xII", switch.dpid, 0, 254, 0, capabilities, 0)
    return message(OFP.OFPT_FEATURES_REPLY, body, xid)


def flow_stats_entry(entry: sw.Entry) -> bytes:
    flow = entry.flow
    if entry.wire is not None:
        match, instructions = entry.wire
    elif flow.match and flow.match[0][0] == "unparsed_match":
        match, instructions = bytes.fromhex(flow.match[0][1]), b""
    else:
        match, instructions = _match_wire(flow.match), _instructions_wire(flow.instructions)
    head = struct.pack(
        "!HBxIIHHHH4xQQQ", 48 + len(match) + len(instructions), flow.table, 0, 0,
        flow.priority, 0, 0, 0, entry.cookie, 0, 0,
    )  # fmt: skip
    return head + match + instructions


def group_desc_entry(entry: sw.GroupEntry) -> bytes:
    buckets = entry.wire if entry.wire is not None else _buckets_wire(entry.group.buckets)
    return struct.pack("!HBxI", 8 + len(buckets), entry.kind, entry.group.group_id) + buckets


def port_stats_entry(port: int) -> bytes:
    return struct.pack("!I4x12QII", port, *([0] * 12), 0, 0)


def multipart_replies(kind: int, entries: Iterable[bytes], xid: int) -> list[bytes]:
    """Entries packed into as many reply messages as they need, all but the last flagged
    REPLY_MORE."""
    parts: list[bytes] = []
    body = b""
    for entry in entries:
        if body and len(body) + len(entry) > MAX_PART:
            parts.append(body)
            body = b""
        body += entry
    parts.append(body)
    return [
        message(
            OFP.OFPT_MULTIPART_REPLY,
            struct.pack("!HH4x", kind, OFP.OFPMPF_REPLY_MORE if i < len(parts) - 1 else 0) + b,
            xid,
        )
        for i, b in enumerate(parts)
    ]


# -- the switch on the wire ----------------------------------------------------------------


class WireSwitch:
    """A :class:`sim.switch.Switch` that takes OpenFlow 1.3 bytes per connection."""

    def __init__(self, switch: sw.Switch):
        self.switch = switch
        self._pending: dict[int, bytes] = {}

    def connect(self) -> tuple[int, bytes]:
        """A new connection: its id and the switch's hello."""
        conn = self.switch.connect()
        self._pending[conn] = b""
        return conn, hello()

    def disconnect(self, conn: int) -> None:
        self.switch.disconnect(conn)
        self._pending.pop(conn, None)

    def receive(self, conn: int, data: bytes) -> list[Sent]:
        """Bytes from ``conn`` (any split into messages); the messages the switch sends."""
        msgs, self._pending[conn] = split_messages(self._pending.get(conn, b"") + data)
        out: list[Sent] = []
        for msg in msgs:
            out += self._handle(conn, msg)
        return out

    def set_port(self, port: int, up: bool) -> list[Sent]:
        return self._encode(self.switch.set_port(port, up), 0, b"")

    def _encode(self, outs: list[sw.Out], xid: int, request: bytes) -> list[Sent]:
        sent: list[Sent] = []
        for conn, msg in outs:
            if isinstance(msg, sw.Error):
                sent.append((conn, error(xid, msg, request)))
            elif isinstance(msg, sw.RoleReply):
                body = struct.pack("!I4xQ", msg.role, msg.generation)
                sent.append((conn, message(OFP.OFPT_ROLE_REPLY, body, xid)))
            elif isinstance(msg, sw.RoleStatus):
                sent.append((conn, role_status(msg)))
            else:
                sent.append((conn, port_status(self.switch, msg)))
        return sent

    def _handle(self, conn: int, data: bytes) -> list[Sent]:
        _, msg_type, _, xid = HEADER.unpack_from(data)
        body = data[8:]
        s = self.switch
        if msg_type == OFP.OFPT_HELLO:
            return []
        if msg_type == OFP.OFPT_ECHO_REQUEST:
            return [(conn, message(OFP.OFPT_ECHO_REPLY, body, xid))]
        if msg_type == OFP.OFPT_FEATURES_REQUEST:
            return [(conn, features_reply(s, xid))]
        if msg_type == OFP.OFPT_BARRIER_REQUEST:
            return [(conn, message(OFP.OFPT_BARRIER_REPLY, b"", xid))]
        if msg_type == OFP.OFPT_FLOW_MOD:
            return self._encode(s.flow_mod(conn, flow_mod(data)), xid, data)
        if msg_type == OFP.OFPT_GROUP_MOD:
            return self._encode(s.group_mod(conn, group_mod(data)), xid, data)
        if msg_type == OFP.OFPT_ROLE_REQUEST:
            if len(body) < 16:
                return self._encode([(conn, sw.Error(*BAD_LENGTH))], xid, data)
            role, generation = struct.unpack_from("!I4xQ", body)
            return self._encode(s.role_request(conn, role, generation), xid, data)
        if msg_type == OFP.OFPT_SET_ASYNC:
            return []  # accepted; see _experimenter
        if msg_type == OFP.OFPT_EXPERIMENTER:
            return self._experimenter(conn, data, xid)
        if msg_type == OFP.OFPT_MULTIPART_REQUEST:
            return [(conn, m) for m in self._multipart(conn, data, xid)]
        return self._encode([(conn, sw.Error(*BAD_TYPE))], xid, data)

    def _experimenter(self, conn: int, data: bytes, xid: int) -> list[Sent]:
        vendor, subtype = struct.unpack_from("!II", data, 8) if len(data) >= 16 else (0, 0)
        if (vendor, subtype) == (NX_VENDOR_ID, NXT_SET_ASYNC_CONFIG2):
            return []  # accepted and ignored: the model does not filter what it sends
        return self._encode([(conn, sw.Error(*BAD_EXPERIMENTER))], xid, data)

    def _multipart(self, conn: int, data: bytes, xid: int) -> list[bytes]:
        kind = struct.unpack_from("!H", data, 8)[0]
        body = data[16:]
        s = self.switch
        entries: Iterable[bytes]
        if kind == OFP.OFPMP_FLOW:
            entries = [flow_stats_entry(e) for e in s.flow_stats(flow_stats_query(body))]
        elif kind == OFP.OFPMP_GROUP_DESC:
            entries = [group_desc_entry(g) for _, g in sorted(s.groups.items())]
        elif kind == OFP.OFPMP_PORT_DESC:
            entries = [port_wire(s, p) for p in sorted(s.ports)]
        elif kind == OFP.OFPMP_PORT_STATS:
            wanted = struct.unpack_from("!I", body)[0]
            entries = [port_stats_entry(p) for p in sorted(s.ports) if wanted in (p, OFP.OFPP_ANY)]
        else:
            return [error(xid, sw.Error(*BAD_MULTIPART), data)]
        return multipart_replies(kind, entries, xid)

    # -- os-ken objects in and out (tests and the simulator speak them) -----------------

    def exchange(self, conn: int, msgs: Iterable[Any]) -> list[tuple[int, Any]]:
        """os-ken messages as the controller sends them (serialized here); what the switch
        sends back, parsed by os-ken."""
        out: list[tuple[int, Any]] = []
        for msg in msgs:
            msg.serialize()
            for to, data in self.receive(conn, bytes(msg.buf)):
                out.append((to, decode(data)))
        return out
