"""The switch programming state machine against the switch model fed real OpenFlow bytes.

Connect, read-back, first programming, barrier tracking, reconnect (in sync: nothing
sent; damaged or holding strangers: exactly the difference), a read-back that cannot be
understood (wipe), and a refused flow-mod answered with an error — without OVS. The same
paths on Open vSwitch are in tests/integration/test_ovs_controller.py and test_loop.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from contract.topology import load_topology
from controller.core import flows as fl
from controller.core.state import InstanceState, Steering
from controller.core.switchsync import BARRIER_TIMEOUT_S, READBACK_TIMEOUT_S, Phase, SwitchSync
from controller.core.topology import compute_routes
from controller.ofp import ofmsg
from sim.ofcodec import DP, WireSwitch
from sim.switch import LOCAL, Switch

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]


def steering() -> Steering:
    st = Steering(load_topology(SINGLE))
    for name in st.pools["fw"].instances:
        st.set_state("fw", name, InstanceState.ACTIVE, 0)
    return st


READERS = {
    "OFPPortDescStatsReply": ("ports", ofmsg.parse_port_desc),
    "OFPFlowStatsReply": ("flows", ofmsg.parse_flow_stats),
    "OFPGroupDescStatsReply": ("groups", ofmsg.parse_group_desc),
}


class Driver:
    """What the app does for one switch, minus the socket: one connection to the model."""

    def __init__(self, switch: WireSwitch, st: Steering):
        self.switch, self.st = switch, st
        self.conn, _ = switch.connect()
        self.routes = compute_routes(st.topology)
        self.sync = SwitchSync("s1", time.monotonic())
        self.sent: list[fl.Step] = []
        self.errors: list = []
        self.xid = 0

    def send(self, msgs: list) -> list:
        for m in msgs:
            self.xid += 1
            m.xid = self.xid
        return [r for to, r in self.switch.exchange(self.conn, msgs) if to == self.conn]

    def connect(self) -> None:
        dp = DP
        replies = self.send(
            [
                ofmsg.port_desc_request(dp),
                ofmsg.flow_stats_request(dp),
                ofmsg.group_desc_request(dp),
            ]
        )
        done = False
        for r in replies:
            part, read = READERS[type(r).__name__]
            read(r.body, self.sync.readback)
            done = self.sync.part_received(part, bool(r.flags & 1))
        assert done and self.sync.phase is Phase.READING
        self.sync.finish_readback()
        self.program()
        self.sync.first_programming_done()

    def program(self) -> list[fl.Step]:
        steps = self.sync.program(self.st, self.routes)
        self.sent += steps
        msgs = ofmsg.messages(DP, steps)
        replies = []
        for step, msg in zip(steps, msgs, strict=False):
            for r in self.send([msg]):
                replies.append(r)
                if isinstance(step, fl.Barrier):
                    self.sync.barrier_sent(msg.xid, time.monotonic())
                    self.sync.barrier_answered(r.xid)
        self.errors += [r for r in replies if type(r).__name__ == "OFPErrorMsg"]
        return steps


def desired(st: Steering) -> fl.Installed:
    return fl.Installed.of(fl.desired_table(st, "s1", compute_routes(st.topology)))


def add_foreign(sw: WireSwitch, table: int, priority: int, match: object) -> None:
    """An entry someone else wrote on the switch (any os-ken match, even one the controller
    cannot express)."""
    mod = DP.ofproto_parser.OFPFlowMod(DP, table_id=table, priority=priority, match=match)
    assert sw.exchange(LOCAL, [mod]) == []


def test_first_connect_programs_the_whole_table_and_confirms_it():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    d = Driver(sw, st)
    d.connect()
    assert sw.switch.installed().flows == desired(st).flows
    assert d.sync.synced and not d.sync.barriers and d.sync.problem(time.monotonic()) is None


def test_reconnect_in_sync_sends_nothing():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    Driver(sw, st).connect()
    again = Driver(sw, st)
    again.connect()
    assert again.sent == []
    assert again.sync.synced


def test_reconnect_after_damage_sends_exactly_the_difference_and_removes_strangers():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    Driver(sw, st).connect()
    # while away: an entry lost, a stranger the controller cannot express, and a change
    lost = next(k for k in sw.switch.flows if k[0] == fl.T_FORWARD)
    del sw.switch.flows[lost]
    p = DP.ofproto_parser
    add_foreign(sw, 0, 5, p.OFPMatch(eth_type=0x0800, ipv4_src=("10.0.0.1", "255.0.255.0")))
    add_foreign(sw, 7, 1, p.OFPMatch())
    st.set_capacity("fw", "fw1", 3, 0)
    again = Driver(sw, st)
    again.connect()
    assert sw.switch.installed().flows == desired(st).flows
    deletes = [s for s in again.sent if isinstance(s, fl.FlowDelete)]
    assert len(deletes) == 2 and all(s.raw_match for s in deletes)
    adds = [s for s in again.sent if isinstance(s, fl.FlowAdd)]
    assert lost in {s.flow.key for s in adds}
    assert len(adds) < 4096  # only what changed, not the table


def test_incremental_change_sends_only_the_moved_slots():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    d = Driver(sw, st)
    d.connect()
    change = st.set_state("fw", "fw2", InstanceState.FAILED, 0)
    steps = d.program()
    adds = [s for s in steps if isinstance(s, fl.FlowAdd) and s.flow.table == fl.T_SLOTS]
    assert len(adds) == len(change.moved)
    assert sw.switch.installed().flows == desired(st).flows


def test_read_back_that_cannot_be_understood_wipes_and_programs_from_scratch():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    Driver(sw, st).connect()
    d = Driver(sw, st)
    d.sync.readback.doubtful = True  # as when a reply part cannot be parsed
    d.sync.waiting.clear()
    d.sync.finish_readback()
    steps = d.program()
    assert isinstance(steps[0], fl.WipeAll)
    assert sw.switch.installed().flows == desired(st).flows


def test_unanswered_read_back_or_barrier_is_a_problem_after_its_timeout():
    sync = SwitchSync("s1", connected_at=100.0)
    assert sync.problem(100.0 + READBACK_TIMEOUT_S - 1) is None
    assert "read-back" in (sync.problem(100.0 + READBACK_TIMEOUT_S + 1) or "")
    sync.waiting.clear()
    sync.finish_readback()
    sync.barrier_sent(7, 200.0)
    assert sync.problem(200.0 + BARRIER_TIMEOUT_S - 1) is None
    assert "barrier" in (sync.problem(200.0 + BARRIER_TIMEOUT_S + 1) or "")
    assert sync.barrier_answered(7) == 200.0 and sync.synced
    assert sync.problem(500.0) is None


def test_a_refused_flow_mod_comes_back_as_an_error():
    st = steering()
    sw = WireSwitch(Switch("s1", 1, PORTS))
    d = Driver(sw, st)
    d.connect()
    bad = fl.Flow(0, 7, fl.make_match(in_port=3), (("apply", (("group", 777),)),))
    replies = d.send([ofmsg.flow_add(DP, bad)])
    assert [type(r).__name__ for r in replies] == ["OFPErrorMsg"]
    assert bad.key not in sw.switch.flows
