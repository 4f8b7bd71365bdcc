"""OpenFlow 1.3 framing, checked before os-ken parses a message.

os-ken's parsers walk lists of elements by the length each element states, and some loop
forever on a length of 0: ``OFPHello.parser`` (hello elements), ``OFPMultipartReply.parser``
(stats entries), ``OFPFlowStats.parser`` (instructions), ``OFPInstructionActions.parser`` and
``OFPBucket.parser`` (actions), ``NXActionCT.parser`` (the actions inside a Nicira ``ct``).
One such message from anything that reaches the OpenFlow port would pin a thread at 100 %
CPU forever. So every message the controller parses is walked here first, with ``struct``
and nothing else: each length must be at least its element's header, fit inside its parent
and (where OpenFlow says so) be a multiple of 8. Only the message types the controller
uses are parsed at all (:data:`PARSED`); the walk is linear in the message's length.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!BBHI")  # version, type, length, xid
U16 = struct.Struct("!H")
PAIR = struct.Struct("!HH")  # type, length of an element

OFPT_HELLO, OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY, OFPT_EXPERIMENTER = 0, 1, 2, 3, 4
OFPT_FEATURES_REPLY, OFPT_PORT_STATUS, OFPT_MULTIPART_REPLY = 6, 12, 19
OFPT_BARRIER_REPLY, OFPT_ROLE_REPLY = 21, 25
# The types the controller (and os-ken's own handler) act on; any other is not parsed.
PARSED = frozenset({
    OFPT_HELLO, OFPT_ERROR, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY, OFPT_EXPERIMENTER,
    OFPT_FEATURES_REPLY, OFPT_PORT_STATUS, OFPT_MULTIPART_REPLY, OFPT_BARRIER_REPLY,
    OFPT_ROLE_REPLY,
})  # fmt: skip

OFPMP_FLOW, OFPMP_PORT_STATS, OFPMP_GROUP_DESC, OFPMP_PORT_DESC = 1, 4, 7, 13
MULTIPART_PARSED = frozenset({OFPMP_FLOW, OFPMP_PORT_STATS, OFPMP_GROUP_DESC, OFPMP_PORT_DESC})
MULTIPART_HEADER = 16  # header, type, flags, pad
FLOW_STATS_FIXED = 48  # an ofp_flow_stats up to its match
MATCH_HEADER = 4
INSTRUCTION_HEADER = 8
ACTION_HEADER = 8
GROUP_DESC_FIXED = 8
BUCKET_FIXED = 16
PORT_SIZE = 64
PORT_STATS_SIZE = 112
OFPIT_WRITE_ACTIONS, OFPIT_APPLY_ACTIONS, OFPIT_CLEAR_ACTIONS = 3, 4, 5
OFPAT_EXPERIMENTER = 0xFFFF
NX_VENDOR = 0x00002320
NXAST_CT = 35
NX_CT_ACTIONS = 24  # offset of a ct action's own actions: header 8, subtype 2, fields 14


class Malformed(ValueError):
    """Why a message cannot be parsed safely."""


def check(msg_type: int, data: bytes) -> str | None:
    """Why a whole message (header included) of a type in :data:`PARSED` is malformed, or
    None when os-ken may parse it."""
    try:
        if len(data) < HEADER.size or HEADER.unpack_from(data)[2] != len(data):
            raise Malformed("the length in the header is not the message's")
        if msg_type == OFPT_HELLO:
            _elements(data, HEADER.size, len(data), "hello element", minimum=4)
        elif msg_type == OFPT_MULTIPART_REPLY:
            _multipart(data)
    except Malformed as e:
        return str(e)
    return None


def _elements(
    data: bytes, start: int, end: int, what: str, minimum: int, multiple: int = 1
) -> list[tuple[int, int, int]]:
    """(type, offset, length) of the type-length elements filling ``data[start:end]``."""
    out = []
    offset = start
    while offset < end:
        if end - offset < PAIR.size:
            raise Malformed(f"{what} at byte {offset}: {end - offset} bytes, shorter than a header")
        kind, length = PAIR.unpack_from(data, offset)
        if length < minimum or length % multiple or offset + length > end:
            raise Malformed(f"{what} at byte {offset}: length {length}")
        out.append((kind, offset, length))
        offset += length
    return out


def _multipart(data: bytes) -> None:
    if len(data) < MULTIPART_HEADER:
        raise Malformed("multipart reply shorter than its header")
    kind = U16.unpack_from(data, HEADER.size)[0]
    if kind not in MULTIPART_PARSED:
        return  # not parsed by the controller (see Connection); nothing to walk
    end = len(data)
    if kind == OFPMP_FLOW:
        for offset, length in _entries(data, end, "flow stats entry", FLOW_STATS_FIXED + 8):
            _flow_stats(data, offset, offset + length)
    elif kind == OFPMP_GROUP_DESC:
        for offset, length in _entries(data, end, "group desc entry", GROUP_DESC_FIXED):
            _buckets(data, offset + GROUP_DESC_FIXED, offset + length)
    else:
        size = PORT_SIZE if kind == OFPMP_PORT_DESC else PORT_STATS_SIZE
        if (end - MULTIPART_HEADER) % size:
            raise Malformed(f"multipart body of {end - MULTIPART_HEADER} bytes, not entries")


def _entries(data: bytes, end: int, what: str, minimum: int) -> list[tuple[int, int]]:
    """Stats entries that start with their own 16-bit length."""
    out = []
    offset = MULTIPART_HEADER
    while offset < end:
        if end - offset < 2:
            raise Malformed(f"{what} at byte {offset}: truncated")
        length = U16.unpack_from(data, offset)[0]
        if length < minimum or offset + length > end:
            raise Malformed(f"{what} at byte {offset}: length {length}")
        out.append((offset, length))
        offset += length
    return out


def _flow_stats(data: bytes, start: int, end: int) -> None:
    match_at = start + FLOW_STATS_FIXED
    match_length = PAIR.unpack_from(data, match_at)[1]
    padded = (match_length + 7) // 8 * 8
    if match_length < MATCH_HEADER or match_at + padded > end:
        raise Malformed(f"flow stats entry at byte {start}: match length {match_length}")
    for kind, offset, length in _elements(
        data, match_at + padded, end, "instruction", INSTRUCTION_HEADER, 8
    ):
        if kind in (OFPIT_WRITE_ACTIONS, OFPIT_APPLY_ACTIONS, OFPIT_CLEAR_ACTIONS):
            _actions(data, offset + INSTRUCTION_HEADER, offset + length)


def _buckets(data: bytes, start: int, end: int) -> None:
    offset = start
    while offset < end:
        if end - offset < BUCKET_FIXED:
            raise Malformed(f"bucket at byte {offset}: truncated")
        length = U16.unpack_from(data, offset)[0]
        if length < BUCKET_FIXED or length % 8 or offset + length > end:
            raise Malformed(f"bucket at byte {offset}: length {length}")
        _actions(data, offset + BUCKET_FIXED, offset + length)
        offset += length


def _actions(data: bytes, start: int, end: int) -> None:
    for kind, offset, length in _elements(data, start, end, "action", ACTION_HEADER, 8):
        if kind != OFPAT_EXPERIMENTER or length < NX_CT_ACTIONS:
            continue
        vendor, subtype = struct.unpack_from("!IH", data, offset + 4)
        if (vendor, subtype) == (NX_VENDOR, NXAST_CT):
            _actions(data, offset + NX_CT_ACTIONS, offset + length)
