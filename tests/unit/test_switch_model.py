"""The switch model (sim/switch.py) and its OpenFlow 1.3 codec (sim/ofcodec.py) on their own:
flow-table, group, port and role semantics, and the bytes the codec answers with. The same
behaviour on Open vSwitch is checked in tests/integration/test_switch_model_ovs.py."""

from __future__ import annotations

import struct

import pytest

from controller.core import flows as fl
from controller.core.switchsync import ReadBack
from controller.ofp import ofmsg
from sim import ofcodec
from sim import switch as sm
from sim.packet import Packet

DP = ofcodec.DP
P = DP.ofproto_parser
OFP = ofcodec.OFP
U64 = 1 << 64


def out(port: int) -> tuple[fl.Instruction, ...]:
    return (("apply", (("output", port),)),)


def add(table: int, priority: int, cookie: int, port: int, **match: object) -> sm.FlowMod:
    return sm.FlowMod(sm.OFPFC_ADD, table, priority, fl.make_match(**match), out(port), cookie)


def two_controllers() -> tuple[sm.Switch, int, int]:
    s = sm.Switch()
    return s, s.connect(), s.connect()


# -- roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "stale"),
    [
        (10, 10, False),  # an equal id is accepted
        (10, 9, True),
        (10, 11, False),
        (U64 - 2, 1, False),  # ahead across the wrap-around
        (1, U64 - 1, True),  # behind across the wrap-around
        (1, 1 + (1 << 63), True),  # a distance of exactly 2**63 reads as negative
        (1, (1 << 63), False),
    ],
)
def test_generation_ids_are_compared_by_signed_64_bit_distance(first, second, stale):
    s, a, _ = two_controllers()
    assert s.role_request(a, sm.ROLE_MASTER, first) == [(a, sm.RoleReply(sm.ROLE_MASTER, first))]
    answer = s.role_request(a, sm.ROLE_SLAVE, second)
    if stale:
        assert answer == [(a, sm.Error(*sm.ROLE_STALE))]
        assert s.generation == first and s.roles[a] == sm.ROLE_MASTER
    else:
        assert answer == [(a, sm.RoleReply(sm.ROLE_SLAVE, second))]


def test_equal_and_nochange_ignore_the_generation_and_report_it_unset_as_all_ones():
    s, a, _ = two_controllers()
    assert s.role_request(a, sm.ROLE_NOCHANGE, 5) == [(a, sm.RoleReply(sm.ROLE_EQUAL, U64 - 1))]
    s.role_request(a, sm.ROLE_MASTER, 7)
    assert s.role_request(a, sm.ROLE_EQUAL, 1) == [(a, sm.RoleReply(sm.ROLE_EQUAL, 7))]


def test_a_new_master_demotes_the_old_one_and_tells_it():
    s, a, b = two_controllers()
    s.role_request(a, sm.ROLE_MASTER, 1)
    answer = s.role_request(b, sm.ROLE_MASTER, 2)
    status = sm.RoleStatus(sm.ROLE_SLAVE, sm.OFPCRR_MASTER_REQUEST, 2)
    assert answer == [(a, status), (b, sm.RoleReply(sm.ROLE_MASTER, 2))]
    assert s.roles == {a: sm.ROLE_SLAVE, b: sm.ROLE_MASTER}
    # asking again for the role it already has tells nobody
    assert s.role_request(b, sm.ROLE_MASTER, 2) == [(b, sm.RoleReply(sm.ROLE_MASTER, 2))]


def test_a_slave_cannot_change_flows_or_groups_but_others_can():
    s, a, b = two_controllers()
    s.role_request(a, sm.ROLE_SLAVE, 1)
    assert s.flow_mod(a, add(0, 1, 1, 1, in_port=1)) == [(a, sm.Error(*sm.BAD_REQUEST_IS_SLAVE))]
    assert s.group_mod(a, sm.GroupMod(sm.OFPGC_ADD, 1)) == [(a, sm.Error(*sm.BAD_REQUEST_IS_SLAVE))]
    assert s.flows == {} and s.groups == {}
    assert s.flow_mod(b, add(0, 1, 1, 1, in_port=1)) == []
    assert len(s.flows) == 1


# -- flows ----------------------------------------------------------------------------------


def loaded() -> sm.Switch:
    s = sm.Switch()
    for mod in [
        add(0, 10, 0x1100, 1, in_port=1),
        add(0, 20, 0x1200, 2, in_port=1, eth_type=0x0800, ipv4_dst="10.0.0.1"),
        add(0, 20, 0x2200, 3, in_port=2, eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.255.255.0")),
        add(1, 30, 0x1300, 4, eth_dst="02:00:00:00:00:01"),
    ]:
        assert s.flow_mod(sm.LOCAL, mod) == []
    return s


def delete(strict: bool, table: int, **kw: object) -> sm.FlowMod:
    return sm.FlowMod(sm.OFPFC_DELETE_STRICT if strict else sm.OFPFC_DELETE, table, **kw)


def cookies(s: sm.Switch) -> set[int]:
    return {e.cookie for e in s.flows.values()}


def test_an_add_with_the_same_key_replaces_the_entry_and_its_cookie():
    s = loaded()
    s.flow_mod(sm.LOCAL, add(0, 10, 0x9, 7, in_port=1))
    entry = s.flows[(0, 10, fl.make_match(in_port=1))]
    assert entry.cookie == 0x9 and entry.flow.instructions == out(7) and len(s.flows) == 4


def test_cookie_masked_delete_takes_the_entries_whose_masked_cookie_agrees():
    s = loaded()
    s.flow_mod(sm.LOCAL, delete(False, sm.OFPTT_ALL, cookie=0x1000, cookie_mask=0xF000))
    assert cookies(s) == {0x2200}


def test_strict_delete_needs_priority_and_match_exactly():
    s = loaded()
    match = fl.make_match(in_port=1)
    s.flow_mod(sm.LOCAL, delete(True, 0, priority=11, match=match))
    assert len(s.flows) == 4
    s.flow_mod(sm.LOCAL, delete(True, 0, priority=10, match=match, cookie=1, cookie_mask=0xFF))
    assert len(s.flows) == 4  # the cookie filter applies to strict deletes too
    s.flow_mod(sm.LOCAL, delete(True, 0, priority=10, match=match))
    assert cookies(s) == {0x1200, 0x2200, 0x1300}


def test_non_strict_delete_takes_entries_at_least_as_specific():
    s = loaded()
    s.flow_mod(sm.LOCAL, delete(False, 0, match=fl.make_match(in_port=1)))
    assert cookies(s) == {0x2200, 0x1300}
    wide = fl.make_match(eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.255.0.0"))
    s.flow_mod(sm.LOCAL, delete(False, 0, match=wide))
    assert cookies(s) == {0x1300}


def test_out_port_narrows_a_delete():
    s = loaded()
    s.flow_mod(sm.LOCAL, delete(False, sm.OFPTT_ALL, out_port=3))
    assert 0x2200 not in cookies(s) and len(s.flows) == 3


# -- groups ---------------------------------------------------------------------------------


def test_group_errors_and_deleting_a_group_deletes_its_flows():
    s = sm.Switch()
    group = sm.GroupMod(sm.OFPGC_ADD, 1, buckets=((1, (("output", 1),)),))
    assert s.group_mod(sm.LOCAL, group) == []
    assert s.group_mod(sm.LOCAL, group) == [(sm.LOCAL, sm.Error(*sm.GROUP_EXISTS))]
    missing = sm.GroupMod(sm.OFPGC_MODIFY, 2)
    assert s.group_mod(sm.LOCAL, missing) == [(sm.LOCAL, sm.Error(*sm.UNKNOWN_GROUP))]
    to_group = sm.FlowMod(
        sm.OFPFC_ADD, 0, 5, fl.make_match(in_port=5), (("apply", (("group", 1),)),)
    )
    to_none = sm.FlowMod(
        sm.OFPFC_ADD, 0, 6, fl.make_match(in_port=6), (("apply", (("group", 9),)),)
    )
    assert s.flow_mod(sm.LOCAL, to_group) == []
    assert s.flow_mod(sm.LOCAL, to_none) == [(sm.LOCAL, sm.Error(*sm.BAD_ACTION_BAD_OUT_GROUP))]
    s.flow_mod(sm.LOCAL, add(0, 7, 7, 1, in_port=7))
    s.group_mod(sm.LOCAL, sm.GroupMod(sm.OFPGC_DELETE, 1))
    assert s.groups == {} and [k[1] for k in s.flows] == [7]


def test_an_all_group_sends_through_every_bucket_and_a_select_group_through_one():
    s = sm.Switch()
    buckets = tuple((1, (("output", p),)) for p in (2, 3, 4))
    s.group_mod(sm.LOCAL, sm.GroupMod(sm.OFPGC_ADD, 1, sm.OFPGT_ALL, buckets))
    s.group_mod(sm.LOCAL, sm.GroupMod(sm.OFPGC_ADD, 2, sm.OFPGT_SELECT, buckets))
    for port, gid in ((1, 1), (5, 2)):
        ins = (("apply", (("group", gid),)),)
        s.flow_mod(sm.LOCAL, sm.FlowMod(sm.OFPFC_ADD, 0, 1, fl.make_match(in_port=port), ins))
    assert sorted(p for p, _ in s.process(1, Packet())) == [2, 3, 4]
    assert len(s.process(5, Packet.l4(6, "10.0.0.1", "10.0.0.2", 1, 2))) == 1


def test_steps_the_switch_refuses_are_an_error():
    s = sm.Switch("s9")
    group = fl.Group(3, ((1, (("output", 1),)),))
    s.apply([fl.GroupAdd(group)])
    with pytest.raises(AssertionError, match="s9 refused"):
        s.apply([fl.GroupAdd(group)])


# -- ports ----------------------------------------------------------------------------------


def test_a_port_change_is_told_to_every_connection_and_read_back_as_down():
    s, a, b = two_controllers()
    s.ports = {1: True, 2: True}
    wire = ofcodec.WireSwitch(s)
    assert wire.set_port(2, True) == []
    sent = wire.set_port(2, False)
    assert [to for to, _ in sent] == [a, b]
    status = ofcodec.decode(sent[0][1])
    assert status.reason == OFP.OFPPR_MODIFY and not ofmsg.port_is_up(status.desc)
    readback = ReadBack()
    ((_, reply),) = wire.exchange(a, [ofmsg.port_desc_request(DP)])
    ofmsg.parse_port_desc(reply.body, readback)
    assert readback.ports == {1: True, 2: False}
    gone = s.remove_port(1)
    assert gone == [(c, sm.PortStatus(sm.OFPPR_DELETE, 1, False)) for c in (a, b)]
    assert s.remove_port(1) == [] and s.ports == {2: False}


# -- the codec ------------------------------------------------------------------------------


def test_errors_carry_the_offending_xid_and_request():
    wire = ofcodec.WireSwitch(sm.Switch())
    conn, _ = wire.connect()
    wire.switch.role_request(conn, sm.ROLE_SLAVE, 1)
    msg = ofmsg.flow_add(DP, fl.Flow(0, 1, fl.make_match(in_port=1), out(2)))
    msg.xid = 4242
    ((to, err),) = wire.exchange(conn, [msg])
    assert (to, err.xid, err.type, err.code) == (conn, 4242, OFP.OFPET_BAD_REQUEST, 10)
    assert ofmsg.fencing_error(err.type, err.code) is not None
    assert bytes(err.data) == bytes(msg.buf)[: ofcodec.ERROR_DATA]


def test_role_status_is_the_onf_experimenter_the_controller_parses():
    wire = ofcodec.WireSwitch(sm.Switch())
    a, _ = wire.connect()
    b, _ = wire.connect()
    wire.exchange(a, [ofmsg.role_request(DP, OFP.OFPCR_ROLE_MASTER, 5)])
    sent = wire.exchange(b, [ofmsg.role_request(DP, OFP.OFPCR_ROLE_MASTER, 6)])
    told = [m for to, m in sent if to == a]
    assert [ofmsg.parse_role_status(m) for m in told] == [(OFP.OFPCR_ROLE_SLAVE, 6)]
    reply = next(m for to, m in sent if to == b)
    assert (reply.role, reply.generation_id) == (OFP.OFPCR_ROLE_MASTER, 6)


def test_a_big_table_is_read_back_in_parts_and_whole():
    s = sm.Switch()
    for slot in range(2000):
        s.flow_mod(sm.LOCAL, add(1, 100, slot + 1, 1, metadata=1, reg0=slot))
    wire = ofcodec.WireSwitch(s)
    conn, _ = wire.connect()
    replies = [m for _, m in wire.exchange(conn, [ofmsg.flow_stats_request(DP)])]
    assert len(replies) > 1
    assert [r.flags for r in replies] == [OFP.OFPMPF_REPLY_MORE] * (len(replies) - 1) + [0]
    readback = ReadBack()
    for r in replies:
        ofmsg.parse_flow_stats(r.body, readback)
    assert readback.flows == s.installed().flows and not readback.doubtful


def test_bytes_split_anywhere_are_the_same_messages():
    wire = ofcodec.WireSwitch(sm.Switch(dpid=0xABC))
    conn, hello = wire.connect()
    assert hello == ofcodec.message(OFP.OFPT_HELLO, b"")
    data = b"".join(
        ofcodec.message(t, body, xid)
        for t, body, xid in [
            (OFP.OFPT_ECHO_REQUEST, b"ping", 1),
            (OFP.OFPT_FEATURES_REQUEST, b"", 2),
            (OFP.OFPT_BARRIER_REQUEST, b"", 3),
            (99, b"", 4),  # no such message type
        ]
    )
    sent = [m for i in range(0, len(data), 5) for _, m in wire.receive(conn, data[i : i + 5])]
    parsed = [ofcodec.decode(m) for m in sent]
    assert [type(m).__name__ for m in parsed] == [
        "OFPEchoReply", "OFPSwitchFeatures", "OFPBarrierReply", "OFPErrorMsg",
    ]  # fmt: skip
    assert bytes(parsed[0].data) == b"ping" and parsed[1].datapath_id == 0xABC
    assert [m.xid for m in parsed] == [1, 2, 3, 4]
    assert (parsed[3].type, parsed[3].code) == ofcodec.BAD_TYPE


def test_group_desc_returns_the_buckets_as_sent():
    wire = ofcodec.WireSwitch(sm.Switch())
    conn, _ = wire.connect()
    group = fl.Group(7, ((3, (("output", 1),)), (1, (("set_field", "vlan_vid", 0x1005),))))
    assert wire.exchange(conn, [ofmsg.group_mod(DP, group, OFP.OFPGC_ADD)]) == []
    ((_, reply),) = wire.exchange(conn, [ofmsg.group_desc_request(DP)])
    readback = ReadBack()
    ofmsg.parse_group_desc(reply.body, readback)
    assert readback.groups == {7: group.buckets}
    assert struct.unpack_from("!B", ofcodec.group_desc_entry(wire.switch.groups[7]), 2) == (1,)
