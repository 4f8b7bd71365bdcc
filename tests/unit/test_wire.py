"""OpenFlow framing checked before os-ken parses (controller.ofp.wire).

Zero and out-of-bounds lengths at every level os-ken walks by length are refused; what a
real switch sends (built by the switch model's codec) passes; random bytes never raise;
and os-ken's parser always ends on a message the check passes (under a timer).
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_protocol, ofproto_v1_3, ofproto_v1_3_parser

from controller.core import flows as fl
from controller.ofp import wire
from sim import ofcodec
from sim import switch as sw

OFP = ofproto_v1_3
DP = ofproto_protocol.ProtocolDesc(OFP.OFP_VERSION)


def message(msg_type: int, body: bytes, xid: int = 7) -> bytes:
    return struct.pack("!BBHI", 4, msg_type, 8 + len(body), xid) + body


def multipart(kind: int, body: bytes) -> bytes:
    return message(wire.OFPT_MULTIPART_REPLY, struct.pack("!HH4x", kind, 0) + body)


def flow_entry(instructions: bytes, match: bytes = struct.pack("!HH4x", 1, 4)) -> bytes:
    fixed = struct.pack("!HBxIIHHHH4xQQQ", 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0)
    entry = fixed + match + instructions
    return struct.pack("!H", len(entry)) + entry[2:]


def apply_actions(actions: bytes) -> bytes:
    return struct.pack("!HH4x", wire.OFPIT_APPLY_ACTIONS, 8 + len(actions)) + actions


OUTPUT = struct.pack("!HHIH6x", 0, 16, 1, 0xFFFF)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(*_):
        raise TimeoutError("os-ken's parser did not return")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse(data: bytes):
    version, msg_type, length, xid = struct.unpack_from("!BBHI", data)
    return ofproto_v1_3_parser.msg_parser(DP, version, msg_type, length, xid, data)


def model_replies() -> list[bytes]:
    """What a switch holding the controller's kind of table answers to a read-back."""
    model = sw.Switch("s1", 1, [1, 2, 11])
    flow = fl.Flow(1, 10, fl.make_match(in_port=1), (("apply", (("output", 11),)),))
    group = fl.Group(5, ((1, (("output", 11),)), (2, (("output", 2),))))
    model.apply([fl.GroupAdd(group), fl.FlowAdd(flow)])
    wired = ofcodec.WireSwitch(model)
    conn, _ = wired.connect()
    out = []
    for req in (
        ofproto_v1_3_parser.OFPFlowStatsRequest(DP),
        ofproto_v1_3_parser.OFPGroupDescStatsRequest(DP),
        ofproto_v1_3_parser.OFPPortDescStatsRequest(DP),
        ofproto_v1_3_parser.OFPPortStatsRequest(DP, 0, OFP.OFPP_ANY),
    ):
        req.set_xid(1)
        req.serialize()
        out += [data for _, data in wired.receive(conn, bytes(req.buf))]
    return out


# -- what os-ken would loop on forever ------------------------------------------------------


def test_a_hello_element_of_length_zero_is_refused():
    bad = message(wire.OFPT_HELLO, struct.pack("!HH", 1, 0))
    assert "hello element at byte 8: length 0" in wire.check(wire.OFPT_HELLO, bad)


def test_a_hello_with_a_version_bitmap_passes_and_parses():
    good = message(wire.OFPT_HELLO, struct.pack("!HHI", 1, 8, 1 << 4))
    assert wire.check(wire.OFPT_HELLO, good) is None
    assert parse(good).elements[0].versions == [4]


@pytest.mark.parametrize(
    "bad",
    [
        multipart(wire.OFPMP_FLOW, b"\0\0" + b"\0" * 60),  # entry length 0
        multipart(wire.OFPMP_FLOW, flow_entry(apply_actions(struct.pack("!HH4x", 0, 0)))),
        multipart(wire.OFPMP_FLOW, flow_entry(struct.pack("!HH4x", 4, 0))),  # instruction 0
        multipart(wire.OFPMP_FLOW, flow_entry(b"", match=struct.pack("!HH4x", 1, 0))),
        multipart(wire.OFPMP_GROUP_DESC, struct.pack("!HBxI", 24, 0, 1) + b"\0" * 16),
        multipart(
            wire.OFPMP_FLOW,
            flow_entry(
                apply_actions(
                    struct.pack("!HHIH14x", 0xFFFF, 32, wire.NX_VENDOR, wire.NXAST_CT)
                    + struct.pack("!HH4x", 0, 0)  # an action of length 0 inside ct
                )
            ),
        ),
        multipart(wire.OFPMP_PORT_DESC, b"\0" * 63),
    ],
    ids=["entry", "action", "instruction", "match", "bucket", "ct-action", "port"],
)
def test_zero_and_overlong_lengths_are_refused(bad):
    assert wire.check(wire.OFPT_MULTIPART_REPLY, bad) is not None


def test_a_flow_entry_with_an_output_action_passes_and_parses():
    good = multipart(wire.OFPMP_FLOW, flow_entry(apply_actions(OUTPUT)))
    assert wire.check(wire.OFPT_MULTIPART_REPLY, good) is None
    [entry] = parse(good).body
    assert entry.instructions[0].actions[0].port == 1


def test_what_a_switch_sends_on_a_read_back_passes():
    replies = model_replies()
    assert len(replies) == 4
    for data in replies:
        assert wire.check(data[1], data) is None, data[:24].hex()
        parse(data)


def test_types_the_controller_does_not_use_are_not_parsed():
    assert 10 not in wire.PARSED  # packet-in
    assert 11 not in wire.PARSED  # flow removed
    assert wire.OFPT_HELLO in wire.PARSED and wire.OFPT_MULTIPART_REPLY in wire.PARSED


# -- fuzzing ----------------------------------------------------------------------------------

MUTATIONS = st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(wire.PARSED)), st.binary(max_size=600))
def test_random_bytes_never_raise(msg_type, body):
    data = message(msg_type, body)
    assert wire.check(msg_type, data) is None or isinstance(wire.check(msg_type, data), str)
    assert isinstance(wire.check(msg_type, body), str | None)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 3), MUTATIONS)
def test_os_ken_ends_on_every_message_the_check_passes(which, mutations):
    """Bytes of real replies changed at random: the check refuses, or os-ken's parser
    returns (or raises) within a second, never loops."""
    data = bytearray(model_replies()[which])
    for at, value in mutations:
        if 8 <= at < len(data):
            data[at] = value
    data = bytes(data)
    if wire.check(data[1], data) is not None:
        return
    with time_limit(1.0):
        try:
            parse(data)
        except TimeoutError:
            raise
        except Exception:
            pass  # refused by os-ken: the launcher drops the connection
