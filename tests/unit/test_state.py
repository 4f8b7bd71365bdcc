"""Pool state: validation, minimal moves, epochs, no half-applied changes."""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path

import pytest

from contract.topology import load_topology, parse_topology
from controller.core.hashing import FiveTuple, slot_of
from controller.core.state import (
    InstanceInfo,
    InstanceState,
    PoolChange,
    Steering,
    SteeringError,
)

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"


def static_single() -> Steering:
    data = load_topology(SINGLE).model_dump()
    data["pools"]["fw"]["membership"] = "static"
    return Steering(parse_topology(data))


def snapshot(st: Steering):
    return copy.deepcopy(st.pools)


def info(name: str, port: int | None = 15, **kw) -> InstanceInfo:
    base = dict(
        name=name,
        pool="fw",
        mac="02:00:00:00:01:0f",
        ip="10.0.0.215",
        switch="s1" if port is not None else None,
        port=port,
        capacity=1.0,
        state=InstanceState.ACTIVE,
    )
    base.update(kw)
    return InstanceInfo(**base)


def test_static_pools_start_active_registered_pools_start_down():
    st = static_single()
    ps = st.pools["fw"]
    assert {i.state for i in ps.instances.values()} == {InstanceState.ACTIVE}
    counts = ps.slot_counts()
    assert sum(counts.values()) == 4096
    for name, cap in (("fw1", 1), ("fw2", 1), ("fw3", 1), ("fw4", 2)):
        assert abs(counts[name] - 4096 * cap / 5) < 1  # floor or ceil of its share
    assert ps.epoch == 1
    reg = Steering(load_topology(SINGLE))
    assert {i.state for i in reg.pools["fw"].instances.values()} == {InstanceState.DOWN}
    assert reg.pools["fw"].assignment == [None] * 4096
    assert reg.pools["fw"].epoch == 0
    assert reg.lookup("fw", FiveTuple("10.0.0.1", "10.0.0.129", 6, 1, 80)) is None


def test_failure_moves_only_the_failed_instances_slots():
    st = static_single()
    before = list(st.pools["fw"].assignment)
    change = st.set_state("fw", "fw2", InstanceState.FAILED, 1.0)
    assert isinstance(change, PoolChange)
    assert change.epoch == 2
    assert {s for s, _, _ in change.moved} == {s for s, o in enumerate(before) if o == "fw2"}
    assert all(old == "fw2" and new != "fw2" for _, old, new in change.moved)
    counts = st.pools["fw"].slot_counts()
    assert counts["fw2"] == 0
    assert (counts["fw1"], counts["fw3"], counts["fw4"]) == (1024, 1024, 2048)
    # coming back moves the minimum again: exactly its share
    back = st.set_state("fw", "fw2", InstanceState.ACTIVE, 2.0)
    assert len(back.moved) == st.pools["fw"].slot_counts()["fw2"]
    assert back.epoch == 3


def test_add_and_capacity_changes_move_the_minimum():
    st = static_single()
    n = st.pools["fw"].n_slots
    change = st.add_instance(info("fw5"), 1.0)
    share = st.pools["fw"].slot_counts()["fw5"]
    assert abs(share - n * 1 / 6) <= 1
    assert len(change.moved) == share  # only slots that go to the newcomer move
    change = st.set_capacity("fw", "fw1", 3.0, 2.0)
    gained = st.pools["fw"].slot_counts()["fw1"]
    assert abs(gained - n * 3 / 8) <= 1
    assert all(new == "fw1" for _, _, new in change.moved)
    unchanged = st.set_capacity("fw", "fw1", 3.0, 3.0)
    assert unchanged.moved == () and unchanged.epoch == change.epoch


def test_remove_instance():
    st = static_single()
    change = st.remove_instance("fw", "fw3", 1.0)
    assert "fw3" not in st.pools["fw"].instances
    assert "fw3" not in st.pools["fw"].assignment
    assert all(old == "fw3" for _, old, _ in change.moved)


def test_lookup_is_the_slot_owner():
    st = static_single()
    rng = random.Random(2)
    ps = st.pools["fw"]
    for _ in range(200):
        ft = FiveTuple(f"10.0.0.{rng.randrange(1, 127)}", "10.0.0.129", 6, rng.randrange(65536), 80)
        assert st.lookup("fw", ft) == ps.assignment[slot_of(ft, ps.n_slots, ps.basis)]
        assert st.lookup("fw", ft) == st.lookup("fw", ft.reversed())


def test_draining_last_active_instance_needs_force():
    st = static_single()
    for name in ("fw1", "fw2", "fw3"):
        st.set_state("fw", name, InstanceState.DRAINING, 1.0)
    before = snapshot(st)
    with pytest.raises(SteeringError, match="last active"):
        st.set_state("fw", "fw4", InstanceState.DRAINING, 2.0)
    assert st.pools == before
    change = st.set_state("fw", "fw4", InstanceState.DRAINING, 2.0, force=True)
    assert st.pools["fw"].assignment == [None] * 4096
    assert len(change.moved) == 4096
    # failing the last one is not refused: it is gone either way
    st2 = static_single()
    for name in ("fw1", "fw2", "fw3"):
        st2.set_state("fw", name, InstanceState.FAILED, 1.0)
    st2.set_state("fw", "fw4", InstanceState.FAILED, 1.0)
    assert Counter(st2.pools["fw"].assignment) == Counter({None: 4096})


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda st: st.set_state("nope", "fw1", InstanceState.FAILED, 0), "unknown pool"),
        (lambda st: st.set_state("fw", "fw9", InstanceState.FAILED, 0), "no instance"),
        (lambda st: st.set_state("fw", "fw1", "sleeping", 0), "unknown state"),
        (lambda st: st.set_capacity("fw", "fw1", 0, 0), "capacity"),
        (lambda st: st.set_capacity("fw", "fw1", -1, 0), "capacity"),
        (lambda st: st.set_capacity("fw", "fw1", float("nan"), 0), "capacity"),
        (lambda st: st.set_capacity("fw", "fw1", True, 0), "capacity"),
        (lambda st: st.set_capacity("fw", "fw1", "2", 0), "capacity"),
        (lambda st: st.remove_instance("fw", "ghost", 0), "no instance"),
        (lambda st: st.add_instance(info("fw5", mac="zz"), 0), "MAC"),
        (lambda st: st.add_instance(info("fw5", ip="10.0.0.300"), 0), "IPv4"),
        (lambda st: st.add_instance(info("fw5", port=11), 0), "already used"),
        (lambda st: st.add_instance(info("fw5", port=1), 0), "used by 'c1'"),
        (lambda st: st.add_instance(info("fw5", switch="s9"), 0), "unknown switch"),
        (lambda st: st.add_instance(info("fw5", capacity=0), 0), "capacity"),
        (lambda st: st.add_instance(info("bad name!"), 0), "invalid instance name"),
        (lambda st: st.add_instance(info("fw5", pool="nope"), 0), "unknown pool"),
        (lambda st: st.add_instance(info("fw5", switch=None), 0), "both switch and port"),
        (lambda st: st.restore_pool("fw", {}, ["fw1"] * 4096, 3), "unknown instances"),
        (lambda st: st.restore_pool("fw", {}, [None] * 16, 3), "slots"),
        (lambda st: st.restore_pool("fw", {}, [None] * 4096, -1), "epoch"),
    ],
)
def test_invalid_requests_raise_and_change_nothing(call, message):
    st = static_single()
    before = snapshot(st)
    with pytest.raises(SteeringError, match=message):
        call(st)
    assert st.pools == before


def test_unlocated_instance_owns_no_slots_until_it_has_a_port():
    st = static_single()
    change = st.add_instance(info("fw5", port=None), 1.0)
    assert change.moved == ()
    assert st.pools["fw"].slot_counts()["fw5"] == 0
    change = st.add_instance(info("fw5", port=15), 2.0)
    assert st.pools["fw"].slot_counts()["fw5"] == len(change.moved) > 0


def test_restore_pool_keeps_the_saved_assignment():
    st = Steering(load_topology(SINGLE))
    source = static_single()
    source.set_state("fw", "fw1", InstanceState.FAILED, 0.0)
    saved = source.pools["fw"]
    st.restore_pool("fw", copy.deepcopy(saved.instances), list(saved.assignment), saved.epoch)
    assert st.pools["fw"].assignment == saved.assignment
    assert st.pools["fw"].epoch == saved.epoch
    # the next change starts from the restored assignment and moves the minimum
    change = st.set_state("fw", "fw1", InstanceState.ACTIVE, 1.0)
    assert len(change.moved) == st.pools["fw"].slot_counts()["fw1"]


def test_instance_at():
    st = Steering(load_topology(TRIANGLE))
    assert st.instance_at("s2", 11) == ("fw", "fw2")
    assert st.instance_at("s2", 12) is None
    assert st.instance_at("s1", 1) is None  # a host, not an instance
