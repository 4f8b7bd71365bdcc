"""The switch model (sim/) against Open vSwitch: the same OpenFlow 1.3 message traces go to a
real bridge (userspace datapath, two controller connections that OVS opens to listening
sockets here) and to the model, and what comes back must be the same.

Eight traces are compared: the controller's own tables for triangle.yaml's s1 (multipath,
and select groups) with a state change applied by its diff; hand-made flows with cookies,
priorities, cookie-masked, strict, non-strict and out-port deletes, replacing adds and
modifies (the cookie kept; one that matches nothing adds nothing);
group semantics (exists, unknown, a flow naming a missing group, deleting a group removes
its flows, an all group); role requests with generation ids (equal, older, newer, int64
wrap-around, the 2**63 distance, the reply before any id is set); two connections where one
becomes MASTER and the other is demoted (role-status) and then has its flow-mods and
group-mods refused; and a SLAVE's changes refused. After each trace both answer a
barrier on every connection; compared are the replies each connection received (barrier,
role reply role and generation, error type/code/xid, role-status role/reason/generation)
and the tables: flow stats and group desc read back over OpenFlow (table, priority,
cookie, match, instructions; group type and buckets) and ``ovs-ofctl dump-flows``
(cookie, table, priority) against the model's entries.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import unique_name
from ovs_support import Bridge, ofctl, vsctl

from contract.topology import parse_topology
from controller.core import flows as fl
from controller.core.state import InstanceState, Steering
from controller.core.topology import compute_routes
from controller.ofp import ofmsg
from sim import ofcodec
from sim import switch as sm

pytestmark = [pytest.mark.ovs, pytest.mark.usefixtures("ovs")]

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
DP = ofcodec.DP
P = DP.ofproto_parser
OFP = ofcodec.OFP
MASTER, SLAVE, EQUAL, NOCHANGE = sm.ROLE_MASTER, sm.ROLE_SLAVE, sm.ROLE_EQUAL, sm.ROLE_NOCHANGE
U64 = 1 << 64

Step = tuple[int, Any]  # (connection index, os-ken message)


class OvsConn:
    """One controller connection OVS opened to us."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        sock.settimeout(5)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes:
        while True:
            msgs, rest = ofcodec.split_messages(self.buf)
            if msgs:
                self.buf = self.buf[len(msgs[0]) :]
                msg = msgs[0]
                if msg[1] == OFP.OFPT_ECHO_REQUEST:
                    self.send(ofcodec.message(OFP.OFPT_ECHO_REPLY, msg[8:], _xid(msg)))
                    continue
                return msg
            del rest
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("OVS closed the controller connection")
            self.buf += chunk


def _xid(msg: bytes) -> int:
    return struct.unpack_from("!I", msg, 4)[0]


@pytest.fixture
def ovs_pair() -> Iterator[tuple[Bridge, list[OvsConn]]]:
    listeners = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        s.settimeout(15)
        listeners.append(s)
    br = Bridge(unique_name("mdl"), 0x5A, [])
    conns: list[OvsConn] = []
    try:
        targets = [f"tcp:127.0.0.1:{s.getsockname()[1]}" for s in listeners]
        vsctl("set-controller", br.name, *targets)
        for s in listeners:
            c = OvsConn(s.accept()[0])
            c.send(ofcodec.hello())
            conns.append(c)
        yield br, conns
    finally:
        br.delete()
        for c in conns:
            c.sock.close()
        for s in listeners:
            s.close()


class Model:
    def __init__(self) -> None:
        self.wire = ofcodec.WireSwitch(sm.Switch("model", 0x5A))
        self.conns = [self.wire.connect()[0] for _ in range(2)]
        self.inbox: dict[int, list[bytes]] = {c: [] for c in self.conns}

    def send(self, index: int, data: bytes) -> None:
        for to, reply in self.wire.receive(self.conns[index], data):
            self.inbox[to].append(reply)


def normalise(msg: bytes) -> tuple | None:
    """What is compared of one message a connection received."""
    kind, xid = msg[1], _xid(msg)
    if kind == OFP.OFPT_BARRIER_REPLY:
        return ("barrier", xid)
    if kind == OFP.OFPT_ERROR:
        return ("error", *struct.unpack_from("!HH", msg, 8), xid)
    if kind == OFP.OFPT_ROLE_REPLY:
        return ("role", *struct.unpack_from("!I4xQ", msg, 8), xid)
    if kind == OFP.OFPT_EXPERIMENTER:
        exp, exp_type, role, reason, gen = struct.unpack_from("!IIIB3xQ", msg, 8)
        return ("role_status", exp, exp_type, role, reason, gen)
    if kind == OFP.OFPT_MULTIPART_REPLY:
        return ("multipart", xid)
    return None  # port-status and the like: not part of the traces


class Runner:
    def __init__(self, conns: list[OvsConn]):
        self.ovs = conns
        self.model = Model()
        self.xid = 100
        self.seen: dict[str, list[list[tuple]]] = {"ovs": [[], []], "model": [[], []]}

    def run(self, steps: list[Step]) -> None:
        """Send the steps in order; before the next step goes to another connection, the
        previous connection's barrier is answered (OVS serves connections in no fixed
        order, so only this makes the order of a trace the order it is applied in)."""
        for i, (index, msg) in enumerate(steps):
            self.xid += 1
            if isinstance(msg, bytes):
                data = msg[:4] + struct.pack("!I", self.xid) + msg[8:]
            else:
                msg.xid = self.xid
                msg.serialize()
                data = bytes(msg.buf)
            self.ovs[index].send(data)
            self.model.send(index, data)
            if i + 1 < len(steps) and steps[i + 1][0] != index:
                self.barrier(index)
        if steps:
            self.barrier(steps[-1][0])  # first: what it sent may change what others hear
        self.sync()

    def sync(self) -> None:
        for index in range(2):
            self.barrier(index)

    def barrier(self, index: int) -> None:
        """A barrier on one connection; collect what it received up to the reply."""
        self.xid += 1
        barrier = ofcodec.message(OFP.OFPT_BARRIER_REQUEST, b"", self.xid)
        self.ovs[index].send(barrier)
        self.model.send(index, barrier)
        while True:
            got = normalise(self.ovs[index].read())
            if got is not None:
                self.seen["ovs"][index].append(got)
            if got == ("barrier", self.xid):
                break
        inbox = self.model.inbox[self.model.conns[index]]
        self.seen["model"][index] += [n for m in inbox if (n := normalise(m)) is not None]
        inbox.clear()

    def multipart(self, request: Any) -> tuple[list[Any], list[Any]]:
        """Bodies of one multipart request's replies: (OVS's, the model's)."""
        self.xid += 1
        request.xid = self.xid
        request.serialize()
        data = bytes(request.buf)
        self.ovs[0].send(data)
        ovs_bodies: list[Any] = []
        while True:
            msg = self.ovs[0].read()
            if msg[1] != OFP.OFPT_MULTIPART_REPLY:
                continue
            reply = ofcodec.decode(msg)
            ovs_bodies += reply.body
            if not reply.flags & OFP.OFPMPF_REPLY_MORE:
                break
        model_bodies: list[Any] = []
        for _, reply in self.model.wire.exchange(self.model.conns[0], [request]):
            model_bodies += reply.body
        return ovs_bodies, model_bodies


def flow_rows(bodies: list[Any]) -> set[tuple]:
    return {
        (
            s.table_id,
            s.priority,
            s.cookie,
            ofcodec.match_key(s.match, ofmsg.serialize_match(s.match)),
            ofcodec.describe_instructions(s.instructions),
        )
        for s in bodies
    }


def group_rows(bodies: list[Any]) -> set[tuple]:
    return {
        (
            g.group_id,
            g.type,
            tuple((b.weight, ofcodec.describe_actions(b.actions)) for b in g.buckets),
        )
        for g in bodies
    }


_DUMP = re.compile(r"cookie=(0x[0-9a-f]+)")


def ofctl_rows(bridge: Bridge) -> set[tuple[int, int, int]]:
    """(cookie, table, priority) of each entry ``ovs-ofctl dump-flows`` lists."""
    rows = set()
    for line in ofctl("--no-stats", "dump-flows", bridge.name).splitlines():
        cookie = _DUMP.search(line)
        if cookie is None:
            continue
        table = re.search(r"table=(\d+)", line)
        prio = re.search(r"priority=(\d+)", line)
        rows.add(
            (
                int(cookie.group(1), 16),
                int(table.group(1)) if table else 0,
                int(prio.group(1)) if prio else 0x8000,
            )
        )
    return rows


def compare(bridge: Bridge, runner: Runner) -> tuple[int, int]:
    """Replies and tables of both must be equal; returns (flows, groups) OVS holds."""
    assert runner.seen["model"] == runner.seen["ovs"]
    ovs_flows, model_flows = runner.multipart(ofmsg.flow_stats_request(DP))
    assert flow_rows(model_flows) == flow_rows(ovs_flows)
    ovs_groups, model_groups = runner.multipart(ofmsg.group_desc_request(DP))
    assert group_rows(model_groups) == group_rows(ovs_groups)
    entries = runner.model.wire.switch.flows.values()
    assert {(e.cookie, e.flow.table, e.flow.priority) for e in entries} == ofctl_rows(bridge)
    return len(ovs_flows), len(ovs_groups)


# -- traces ---------------------------------------------------------------------------------


def triangle(mode: str) -> Steering:
    data = yaml.safe_load(TRIANGLE.read_text())
    for sw in data["switches"].values():
        sw["steering"] = mode
    st = Steering(parse_topology(data))
    for pool in st.pools.values():
        for name in pool.instances:
            st.set_state(pool.name, name, InstanceState.ACTIVE, 0)
    return st


def controller_table(mode: str) -> list[list[Step]]:
    """s1's whole table as the controller programs it, then the diff after an instance
    leaves and another's capacity changes."""
    st = triangle(mode)
    routes = compute_routes(st.topology)
    first = fl.desired_table(st, "s1", routes)
    pool = sorted(st.pools)[0]
    names = sorted(st.pools[pool].instances)
    st.remove_instance(pool, names[0], 0)
    if len(names) > 1:
        st.set_capacity(pool, names[1], 3, 0)
    second = fl.desired_table(st, "s1", routes)
    steps1 = fl.diff(fl.Installed(), first)
    steps2 = fl.diff(fl.Installed.of(first), second)
    assert any(isinstance(s, fl.FlowDelete | fl.GroupModify) for s in steps2)
    return [
        [(0, m) for m in ofmsg.messages(DP, steps1)],
        [(0, m) for m in ofmsg.messages(DP, steps2)],
    ]


def _flow(table: int, priority: int, cookie: int, port: int, **match: Any) -> Any:
    flow = fl.Flow(table, priority, fl.make_match(**match), (("apply", (("output", port),)),))
    msg = ofmsg.flow_add(DP, flow)
    msg.cookie = cookie
    return msg


def _delete(command: int, table: int = 0, priority: int = 0, cookie: int = 0, mask: int = 0,
            out_port: int = sm.OFPP_ANY, **match: Any) -> Any:  # fmt: skip
    return P.OFPFlowMod(
        DP, cookie=cookie, cookie_mask=mask, table_id=table, command=command,
        priority=priority, out_port=out_port, out_group=OFP.OFPG_ANY, match=P.OFPMatch(**match),
    )  # fmt: skip


def hand_cookies() -> list[list[Step]]:
    adds = [
        _flow(0, 10, 0x1100, 1, in_port=1),
        _flow(0, 20, 0x1200, 2, in_port=1, eth_type=0x0800, ipv4_dst="10.0.0.1"),
        _flow(0, 20, 0x2200, 3, in_port=2, eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.255.255.0")),
        _flow(1, 30, 0x1300, 4, eth_dst="02:00:00:00:00:01"),
        _flow(1, 40, 0xFF00, 5, in_port=3),
        _flow(2, 50, 0xAB00, 6, in_port=4),
    ]
    deletes = [
        # cookies 0x1100, 0x1200 and 0x1300, in every table
        _delete(OFP.OFPFC_DELETE, OFP.OFPTT_ALL, cookie=0x1000, mask=0xF000),
        _delete(OFP.OFPFC_DELETE_STRICT, 1, 41, in_port=3),  # wrong priority: nothing
        _delete(OFP.OFPFC_DELETE, 2, out_port=7),  # no entry outputs to 7: nothing
    ]
    again = [
        _flow(0, 10, 0x1101, 1, in_port=1),
        _flow(0, 10, 0x1102, 2, in_port=1),  # same key: replaces, new cookie
        _delete(OFP.OFPFC_DELETE_STRICT, 1, 40, cookie=0xFF00, mask=0xFFFF, in_port=3),
        _delete(OFP.OFPFC_DELETE, 0, eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.255.0.0")),
        _delete(OFP.OFPFC_DELETE, 2, out_port=6),
    ]
    modifies = [
        _modify(OFP.OFPFC_MODIFY, 0, 0, 0x5555, 9, in_port=1),  # keeps the cookie
        _modify(OFP.OFPFC_MODIFY_STRICT, 1, 30, 0x6666, 8, eth_dst="02:00:00:00:00:01"),
        _modify(OFP.OFPFC_MODIFY_STRICT, 1, 31, 0x7777, 8, in_port=9),  # no such entry
        _modify(OFP.OFPFC_MODIFY, 5, 0, 0x8888, 8, in_port=9),  # nothing to modify
    ]
    return [[(0, m) for m in part] for part in (adds, deletes, again, modifies)]


def _modify(command: int, table: int, priority: int, cookie: int, port: int, **match: Any) -> Any:
    flow = fl.Flow(table, priority, fl.make_match(**match), (("apply", (("output", port),)),))
    msg = ofmsg.flow_add(DP, flow)
    msg.command, msg.cookie = command, cookie
    return msg


def _group(command: int, gid: int, kind: int = OFP.OFPGT_SELECT, ports: tuple = (1, 2)) -> Any:
    buckets = [
        P.OFPBucket(weight=1 if kind == OFP.OFPGT_SELECT else 0, watch_port=OFP.OFPP_ANY,
                    watch_group=OFP.OFPG_ANY, actions=[P.OFPActionOutput(p, 0)])
        for p in ports
    ]  # fmt: skip
    return P.OFPGroupMod(DP, command, kind, gid, buckets)


def _to_group(priority: int, gid: int) -> Any:
    return ofmsg.flow_add(
        DP, fl.Flow(0, priority, fl.make_match(in_port=priority), (("apply", (("group", gid),)),))
    )


def group_semantics() -> list[list[Step]]:
    return [
        [
            (0, _group(OFP.OFPGC_ADD, 1)),
            (0, _group(OFP.OFPGC_ADD, 1, ports=(3,))),  # exists
            (0, _group(OFP.OFPGC_MODIFY, 2)),  # unknown
            (0, _group(OFP.OFPGC_ADD, 3, OFP.OFPGT_ALL, (4, 5, 6))),
            (0, _to_group(5, 1)),
            (0, _to_group(6, 3)),
            (0, _to_group(7, 9)),  # no such group
            (0, _group(OFP.OFPGC_MODIFY, 1, ports=(7, 8, 9))),
        ],
        [(0, _group(OFP.OFPGC_DELETE, 1, ports=())), (0, _group(OFP.OFPGC_DELETE, 42, ports=()))],
    ]


def _role(role: int, generation: int) -> Any:
    return ofmsg.role_request(DP, role, generation % U64)


def role_generations() -> list[list[Step]]:
    return [
        [(0, _role(NOCHANGE, 0)), (0, _role(EQUAL, 7))],  # before any id is set
        [(0, _role(MASTER, 10)), (0, _role(SLAVE, 10)), (0, _role(MASTER, 9))],
        [(0, _role(MASTER, 11)), (0, _role(NOCHANGE, 0)), (0, _role(EQUAL, 3))],
        [(0, _role(SLAVE, 11 + (1 << 63))), (0, _role(MASTER, 11 + (1 << 63) - 1))],
    ]


def role_wraparound() -> list[list[Step]]:
    return [
        [(0, _role(MASTER, U64 - 2)), (0, _role(MASTER, 1))],  # ahead across the wrap
        [(0, _role(MASTER, U64 - 1)), (0, _role(SLAVE, 1)), (0, _role(MASTER, 0))],
        [(0, _role(MASTER, 1 + (1 << 63))), (0, _role(MASTER, 2))],  # exactly 2**63: stale
    ]


def two_masters() -> list[list[Step]]:
    flow = _flow(0, 10, 0x77, 1, in_port=1)
    return [
        [(0, _role(MASTER, 1)), (1, _role(MASTER, 2))],  # 0 is demoted and told
        [(0, _flow(0, 11, 0x78, 1, in_port=2)), (0, _group(OFP.OFPGC_ADD, 5)), (1, flow)],
        [(0, _role(NOCHANGE, 0)), (0, _role(MASTER, 1)), (0, _role(MASTER, 3))],
        [(1, _delete(OFP.OFPFC_DELETE, OFP.OFPTT_ALL)), (0, _role(EQUAL, 0))],
        [(1, _role(MASTER, 3)), (0, _role(MASTER, 3))],  # equal id: accepted
    ]


def slave_changes() -> list[list[Step]]:
    return [
        [(0, _flow(0, 10, 0x10, 1, in_port=1)), (0, _role(SLAVE, 5))],
        [
            (0, _flow(0, 11, 0x11, 1, in_port=2)),
            (0, _delete(OFP.OFPFC_DELETE, OFP.OFPTT_ALL)),
            (0, _group(OFP.OFPGC_ADD, 1)),
            (1, _flow(0, 12, 0x12, 1, in_port=3)),
        ],
    ]


TRACES: dict[str, Callable[[], list[list[Step]]]] = {
    "controller_multipath": lambda: controller_table("multipath"),
    "controller_select_group": lambda: controller_table("select_group"),
    "hand_cookies": hand_cookies,
    "group_semantics": group_semantics,
    "role_generations": role_generations,
    "role_wraparound": role_wraparound,
    "two_masters": two_masters,
    "slave_changes": slave_changes,
}


@pytest.mark.parametrize("trace", sorted(TRACES))
def test_the_model_answers_as_ovs(trace: str, ovs_pair: tuple[Bridge, list[OvsConn]]) -> None:
    bridge, conns = ovs_pair
    runner = Runner(conns)
    sizes = []
    for part in TRACES[trace]():
        runner.run(part)
        sizes.append(compare(bridge, runner))
    if trace.startswith("controller"):
        assert sizes[0][0] > 20  # the whole table went through
    if trace == "controller_select_group":
        assert sizes[0][1] > 0
