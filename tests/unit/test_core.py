"""The control core on its own: typed inputs in, outputs out, time as an argument.

Switch sync (read back, program, barrier confirmation), changes and their confirmation,
port decisions, roles and fencing with several controllers, membership decisions, and that
the same inputs give the same outputs. The real-OVS tests check the same behaviour end to end.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from contract.topology import load_topology
from controller.core import events as ev
from controller.core import flows as fl
from controller.core.control import Core
from controller.core.state import InstanceState
from controller.core.switchsync import ReadBack

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = load_topology(REPO / "tests" / "data" / "triangle.yaml")
SINGLE = load_topology(REPO / "topologies" / "single.yaml")
DPIDS = {"s1": 0x101, "s2": 0x102, "s3": 0x103}
TRIANGLE_PORTS = {"s1": [1, 11, 21, 23], "s2": [11, 21, 23], "s3": [1, 11, 21, 22]}


class Driver:
    """Feeds one core, with a clock that only moves when told."""

    def __init__(self, topology=TRIANGLE):
        self.core = Core(topology, wall=1000.0)
        self.now = 10.0
        self.conns: dict[str, int] = {}
        self.next_conn = 1

    def feed(self, event: ev.Input) -> list[ev.Output]:
        return self.core.handle(event, self.now, 1000.0 + self.now)

    def connect(self, name: str, dpid: int | None = None) -> list[ev.Output]:
        conn = self.next_conn
        self.next_conn += 1
        self.conns[name] = conn
        live = frozenset(self.conns.values())
        return self.feed(ev.SwitchConnected(conn, dpid or DPIDS[name], f"peer-{conn}", live))

    def read_back(self, name: str, ports: dict[int, bool]) -> list[ev.Output]:
        conn = self.conns[name]
        out = self.feed(ev.ReadBackPart(conn, "ports", ReadBack(ports=dict(ports)), False))
        out += self.feed(ev.ReadBackPart(conn, "flows", ReadBack(), False))
        out += self.feed(ev.ReadBackPart(conn, "groups", ReadBack(), False))
        return out

    def answer_barriers(self, outputs: list[ev.Output]) -> list[ev.Output]:
        out: list[ev.Output] = []
        for send in sends(outputs):
            for xid, req in send.messages:
                if isinstance(req, fl.Barrier):
                    out += self.feed(ev.BarrierReply(send.conn, xid))
        return out

    def sync(self, name: str) -> list[ev.Output]:
        self.connect(name)
        programmed = self.read_back(name, dict.fromkeys(TRIANGLE_PORTS[name], True))
        return programmed + self.answer_barriers(programmed)


def sends(outputs: list[ev.Output], conn: int | None = None) -> list[ev.Send]:
    return [o for o in outputs if isinstance(o, ev.Send) and conn in (None, o.conn)]


def requests(outputs: list[ev.Output], conn: int | None = None) -> list[ev.Request]:
    return [req for s in sends(outputs, conn) for _, req in s.messages]


def of_type(outputs: list[ev.Output], kind: type) -> list:
    return [o for o in outputs if isinstance(o, kind)]


def test_a_switch_is_read_back_then_programmed_then_confirmed():
    d = Driver()
    out = d.connect("s1")
    assert requests(out) == [ev.ReadPorts(), ev.ReadFlows(), ev.ReadGroups()]
    programmed = d.read_back("s1", dict.fromkeys(TRIANGLE_PORTS["s1"], True))
    reqs = requests(programmed)
    want = fl.desired_table(d.core.steering, "s1", d.core.routes)
    assert {r.flow.cookie for r in reqs if isinstance(r, fl.FlowAdd)} == {
        f.cookie for f in want.flows.values()
    }
    assert isinstance(reqs[-1], fl.Barrier)
    assert of_type(programmed, ev.SyncChanged) == [], "not in sync before the barrier reply"
    confirmed = d.answer_barriers(programmed)
    assert of_type(confirmed, ev.SyncChanged) == [ev.SyncChanged("s1", True)]
    assert d.core.view(d.now).switch_problems == ()


def test_xids_are_numbered_per_connection_and_unique():
    d = Driver()
    d.sync("s1")
    d.sync("s2")
    out = d.feed(ev.Change(lambda s: s.set_capacity("fw", "fw1", 3, 0.0), "test"))
    for send in sends(out):
        xids = [x for x, _ in send.messages]
        assert len(set(xids)) == len(xids) and min(xids) > 3  # after the read-back's


def test_a_change_is_confirmed_once_every_switch_answered_its_barrier():
    d = Driver()
    for name in ("s1", "s2", "s3"):
        d.sync(name)
    d.now += 1
    out = d.feed(ev.Change(lambda s: s.set_capacity("fw", "fw1", 3, 0.0), "more for fw1"))
    [applied] = of_type(out, ev.Applied)
    assert applied.error is None and applied.changes[0].moved
    assert not of_type(out, ev.Confirmed)
    barriers = [(s.conn, x) for s in sends(out) for x, r in s.messages if isinstance(r, fl.Barrier)]
    assert len(barriers) >= 2  # every switch whose table the change touches
    d.now += 0.25
    for conn, xid in barriers[:-1]:
        assert not of_type(d.feed(ev.BarrierReply(conn, xid)), ev.Confirmed)
    last = d.feed(ev.BarrierReply(*barriers[-1]))
    assert of_type(last, ev.Confirmed) == [ev.Confirmed(applied.change, d.now)]
    assert d.core.counters.change_latency[-1] == pytest.approx(0.25)


def test_a_switch_that_goes_away_does_not_hold_a_change_forever():
    d = Driver()
    d.sync("s1")
    out = d.feed(ev.Change(lambda s: s.set_capacity("fw", "fw1", 3, 0.0), "test"))
    [applied] = of_type(out, ev.Applied)
    gone = d.feed(ev.SwitchGone(d.conns["s1"]))
    assert of_type(gone, ev.Confirmed) == [ev.Confirmed(applied.change, None)]
    assert ev.SyncChanged("s1", False) in gone
    assert d.core.view(d.now).switches == ()


def test_a_failed_mutation_is_answered_with_its_error_and_changes_nothing():
    d = Driver()
    d.sync("s1")
    before = list(d.core.steering.pools["fw"].assignment)

    def boom(_s):
        raise ValueError("bad change")

    out = d.feed(ev.Change(boom, "test"))
    [applied] = of_type(out, ev.Applied)
    assert isinstance(applied.error, ValueError)
    assert d.core.steering.pools["fw"].assignment == before
    assert not requests(out)


def test_an_instance_port_going_down_fails_the_instance_and_moves_its_slots():
    d = Driver()
    d.sync("s1")
    out = d.feed(ev.PortStatus(d.conns["s1"], 11, False))
    fw1 = d.core.steering.pools["fw"].instances["fw1"]
    assert fw1.state is InstanceState.FAILED
    assert "fw1" not in d.core.steering.pools["fw"].assignment
    assert any(isinstance(r, fl.FlowAdd) for r in requests(out))
    # a static pool's instance comes back with its port
    d.feed(ev.PortStatus(d.conns["s1"], 11, True))
    assert d.core.steering.pools["fw"].instances["fw1"].state is InstanceState.ACTIVE


def test_a_second_connection_for_a_live_switch_is_refused():
    d = Driver()
    d.sync("s1")
    first = d.conns["s1"]
    out = d.feed(ev.SwitchConnected(99, DPIDS["s1"], "impostor", frozenset({first, 99})))
    assert of_type(out, ev.Disconnect) == [
        ev.Disconnect(99, "a second connection for a connected switch")
    ]
    assert d.core.connections() == {"s1": first}
    assert d.core.counters.switch_refused == 1


def test_a_switch_not_in_the_topology_is_ignored():
    d = Driver()
    assert d.connect("s1", dpid=0x999) == []
    assert d.core.connections() == {}


# -- several controllers ------------------------------------------------------------------------


def leader(term: int = 5) -> Driver:
    d = Driver()
    d.feed(ev.LeaseConfigured("c1", 3.0))
    out = d.feed(ev.LeaseGranted(term, d.now))
    assert of_type(out, ev.NewTerm) == [ev.NewTerm(term)]
    return d


def test_a_leader_asks_for_master_with_its_term_and_reads_back_once_master():
    d = leader(term=5)
    out = d.connect("s1")
    assert requests(out) == [ev.RoleRequest(ev.Role.MASTER, 5)]
    out = d.feed(ev.RoleReply(d.conns["s1"], ev.Role.MASTER, 5))
    assert requests(out) == [ev.ReadPorts(), ev.ReadFlows(), ev.ReadGroups()]


def test_a_controller_without_a_term_sends_nothing_to_a_switch():
    d = Driver()
    d.feed(ev.LeaseConfigured("c1", 3.0))
    assert requests(d.connect("s1")) == []


def test_a_standby_asks_for_slave_and_keeps_its_copy_warm_without_programming():
    d = Driver()
    d.feed(ev.LeaseConfigured("c2", 3.0))
    d.feed(ev.LeaseRefused(7, "c1"))
    out = d.connect("s1")
    assert requests(out) == [ev.RoleRequest(ev.Role.SLAVE, 7)]
    d.feed(ev.RoleReply(d.conns["s1"], ev.Role.SLAVE, 7))
    programmed = d.read_back("s1", dict.fromkeys(TRIANGLE_PORTS["s1"], True))
    assert requests(programmed) == []
    # a port going down is noted, not acted on
    d.feed(ev.PortStatus(d.conns["s1"], 11, False))
    assert d.core.steering.pools["fw"].instances["fw1"].state is InstanceState.ACTIVE


def test_role_status_naming_another_master_steps_the_leader_down():
    d = leader(term=5)
    d.connect("s1")
    d.feed(ev.RoleReply(d.conns["s1"], ev.Role.MASTER, 5))
    d.feed(ev.RoleStatus(d.conns["s1"], ev.Role.SLAVE, 6))
    assert not d.core.leading(d.now)
    assert d.core.counters.fenced == 1


def test_a_stale_error_steps_down_and_learns_the_generation():
    d = leader(term=5)
    d.connect("s1")
    out = d.feed(ev.ErrorReply(d.conns["s1"], 1, 11, 0, "role request refused as stale"))
    assert not d.core.leading(d.now)
    assert requests(out) == [ev.RoleRequest(ev.Role.NOCHANGE, 0)]
    # the switch's generation id becomes the floor the next term must exceed
    d.feed(ev.RoleReply(d.conns["s1"], ev.Role.SLAVE, 9))
    assert d.core.view(d.now).lease.floor == 9


def test_the_lease_ends_when_it_cannot_be_renewed_in_time():
    d = leader(term=5)
    d.now += 2.0
    d.feed(ev.LeaseUnknown())
    assert d.core.leading(d.now)  # still within the lease
    d.now += 1.5
    d.feed(ev.LeaseUnknown())
    assert not d.core.leading(d.now)


def test_a_takeover_completes_when_every_switch_is_master_and_programmed():
    d = leader(term=5)
    d.connect("s1")
    d.feed(ev.RoleReply(d.conns["s1"], ev.Role.MASTER, 5))
    programmed = d.read_back("s1", dict.fromkeys(TRIANGLE_PORTS["s1"], True))
    d.now += 0.5
    d.answer_barriers(programmed)
    assert list(d.core.counters.takeover_seconds) == [pytest.approx(0.5)]


# -- membership ----------------------------------------------------------------------------------

REG = {"kind": "firewall", "state": "active", "capacity": "1"}


def registered_pool() -> Driver:
    d = Driver(SINGLE)
    pool = next(p for p, t in SINGLE.pools.items() if t.membership == "registered")
    d.pool = pool  # type: ignore[attr-defined]
    d.feed(ev.LivenessRestart(grace=True))
    return d


def test_a_registration_joins_its_instance_and_a_lost_heartbeat_fails_it():
    d = registered_pool()
    pool = d.pool  # type: ignore[attr-defined]
    name = next(iter(SINGLE.pools[pool].instances))
    d.feed(ev.RegistrationRead(pool, name, REG, "register"))
    info = d.core.steering.pools[pool].instances[name]
    assert info.state is InstanceState.ACTIVE and name in d.core.steering.pools[pool].assignment
    assert d.core.view(d.now).registered == ((pool, name),)
    d.now += 5  # past the grace period, no heartbeat key
    out = d.feed(ev.HeartbeatsRead({(pool, name): (None, None)}))
    assert of_type(out, ev.CheckRegistered) == [ev.CheckRegistered(pool, name)]
    d.feed(ev.HeartbeatLost(pool, name, registered=True))
    assert d.core.steering.pools[pool].instances[name].state is InstanceState.FAILED
    assert d.core.roster.heartbeat_failures == 1


def test_changes_are_saved_under_the_leaders_term():
    d = registered_pool()
    pool = d.pool  # type: ignore[attr-defined]
    name = next(iter(SINGLE.pools[pool].instances))
    out = d.feed(ev.RegistrationRead(pool, name, REG, "register"))
    [save] = of_type(out, ev.SavePool)
    assert save.snapshot.name == pool and save.snapshot.term == 0
    assert save.snapshot.sources[name] == "registered"


def test_a_registration_that_cannot_be_placed_is_ignored():
    d = registered_pool()
    pool = d.pool  # type: ignore[attr-defined]
    d.feed(ev.RegistrationRead(pool, "stranger", REG, "register"))
    assert "stranger" not in d.core.steering.pools[pool].instances


# -- determinism and purity ------------------------------------------------------------------


def script(d: Driver) -> list[ev.Output]:
    out = d.sync("s1") + d.sync("s2")
    out += d.feed(ev.Change(lambda s: s.set_capacity("fw", "fw2", 2, 0.0), "x"))
    out += d.feed(ev.PortStatus(d.conns["s1"], 11, False))
    d.now += 3
    out += d.feed(ev.Tick())
    return out


def test_the_same_inputs_give_the_same_outputs():
    assert repr(script(Driver())) == repr(script(Driver()))


def test_the_core_imports_no_io():
    forbidden = {"threading", "time", "socket", "os_ken", "redis", "fastapi", "uvicorn", "httpx"}
    for path in (REPO / "controller" / "core").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
