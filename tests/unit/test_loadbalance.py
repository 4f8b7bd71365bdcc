"""Load-aware slot moves (controller/core/loadbalance.py): the planner, the smoothed readings
fed with fake counters, and the pool policy in the topology file. The same behaviour on a
real OVS bridge: tests/integration/test_load_ovs.py."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.topology import ConfigError, parse_topology
from controller.core import slots
from controller.core.loadbalance import (
    MIN_GAIN,
    NO_LOAD,
    LoadWatch,
    Policy,
    PoolLoad,
    best_imbalance,
    imbalance,
    instance_loads,
    plan_moves,
)
from controller.core.state import InstanceState, PoolChange, Steering, SteeringError

REPO = Path(__file__).resolve().parents[2]
EQUAL4 = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


def apply_moves(assignment, moves):
    out = list(assignment)
    for slot, old, new in moves:
        assert out[slot] == old
        out[slot] = new
    return out


# -- the planner: a table of cases -----------------------------------------------------------

CASES = [
    # (name, slot loads, assignment, capacities, threshold, max_moves, expected moves count,
    #  imbalance at most after)
    ("even: nothing to do", [1] * 8, list("aabbccdd"), EQUAL4, 1.15, 8, 0, 1.0),
    ("no load: nothing to do", [0] * 8, list("aabbccdd"), EQUAL4, 1.15, 8, 0, 1.0),
    # a=10 b=c=d=2: one 5 goes to b, then b's small slots go on to c and d (best: 1.25).
    ("one hot slot pair", [5, 5, 1, 1, 1, 1, 1, 1], list("aabbccdd"), EQUAL4, 1.15, 8, 3, 1.25),
    (
        "an elephant alone: it cannot be split, nothing helps",
        [10, 0, 0, 0, 0, 0, 0, 0],
        list("aabbccdd"),
        EQUAL4,
        1.15,
        8,
        0,
        4.0,
    ),
    (
        "max_moves caps the plan",
        [4, 4, 4, 4, 0, 0, 0, 0],
        list("aaaabcdd"),
        EQUAL4,
        1.15,
        1,
        1,
        3.0,
    ),
    (
        "weights: b has twice the capacity and gets twice the load",
        [3, 3, 3, 3, 0, 0],
        list("aaaabb"),
        {"a": 1.0, "b": 2.0},
        1.15,
        8,
        3,
        1.15,
    ),
    (
        "slots of an instance that may not own slots are left alone",
        [9, 1, 1, 1],
        ["x", "a", "b", "b"],
        {"a": 1.0, "b": 1.0},
        1.15,
        8,
        0,
        1.34,
    ),
]


@pytest.mark.parametrize(
    "loads,assignment,caps,threshold,max_moves,n,worst",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan_cases(loads, assignment, caps, threshold, max_moves, n, worst):
    moves = plan_moves(loads, assignment, caps, threshold, max_moves)
    assert len(moves) == n
    after = apply_moves(assignment, moves)
    assert imbalance(instance_loads(loads, after, caps), caps) <= worst + 1e-9
    assert all(new in caps for _, _, new in moves)


def test_moves_the_fewest_hot_slots():
    # a holds one slot of 6 and six of 1 (12), b holds 0: one move of the 6 evens them.
    loads = [6, 1, 1, 1, 1, 1, 1, 0]
    assignment = list("aaaaaaab")
    moves = plan_moves(loads, assignment, {"a": 1.0, "b": 1.0}, 1.15, 8)
    assert moves == [(0, "a", "b")]


# -- properties ------------------------------------------------------------------------------

slot_loads = st.lists(
    st.one_of(st.just(0.0), st.floats(0.0, 1000.0, allow_nan=False)), min_size=4, max_size=64
)
caps_st = st.dictionaries(
    st.sampled_from(list("abcdef")), st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=5
)


@st.composite
def pools(draw):
    caps = draw(caps_st)
    loads = draw(slot_loads)
    n = 1 << (len(loads) - 1).bit_length()
    loads = loads + [0.0] * (n - len(loads))
    failed = draw(st.sets(st.sampled_from(sorted(caps)), max_size=len(caps) - 1))
    # Start from the capacity layer's assignment over every instance, then some fail: their
    # slots are not the planner's to move, and nothing may be given to them.
    assignment = slots.assign(n, caps)
    eligible = {k: v for k, v in caps.items() if k not in failed}
    return loads, assignment, eligible, failed


@settings(max_examples=300, deadline=None)
@given(pools(), st.floats(1.01, 2.0), st.integers(1, 16))
def test_plan_properties(pool, threshold, max_moves):
    loads, assignment, caps, failed = pool
    before = imbalance(instance_loads(loads, assignment, caps), caps)
    moves = plan_moves(loads, assignment, caps, threshold, max_moves)
    assert len(moves) <= max_moves
    assert len({s for s, _, _ in moves}) == len(moves)  # a slot moves at most once
    for _, old, new in moves:
        assert new in caps and new not in failed and old in caps and old != new
    after = apply_moves(assignment, moves)
    assert imbalance(instance_loads(loads, after, caps), caps) <= before + 1e-9
    # Weights honoured: the evenness measure is per unit of capacity, so a pool already
    # within the threshold by it is left alone.
    if before <= threshold:
        assert moves == []


@settings(max_examples=150, deadline=None)
@given(pools(), st.integers(1, 8))
def test_repeated_planning_converges_and_stops(pool, max_moves):
    loads, assignment, caps, _ = pool
    threshold = 1.15
    rounds = 0
    while True:
        moves = plan_moves(loads, assignment, caps, threshold, max_moves)
        if not moves:
            break
        assignment = apply_moves(assignment, moves)
        rounds += 1
        assert rounds <= len(loads), "planning did not converge"
    # Converged: within the threshold, or no slot of the hottest instance can go to the
    # coldest without overshooting, which bounds the hottest by the coldest plus one slot.
    reached = imbalance(instance_loads(loads, assignment, caps), caps)
    total = sum(loads[s] for s, o in enumerate(assignment) if o in caps)
    if total > NO_LOAD:
        mean = total / sum(caps.values())
        slack = MIN_GAIN + max(loads) / (min(caps.values()) * mean)
        assert reached <= max(threshold, 1 + slack) + 1e-9


# -- readings from a fake counter feed -------------------------------------------------------


class FakeSwitches:
    """Cumulative packet counters of two classifying switches for steady per-slot rates."""

    def __init__(self, rates: list[float]):
        self.rates = rates
        self.counts = {"s1": [0.0] * len(rates), "s2": [0.0] * len(rates)}

    def advance(self, dt: float) -> None:
        for i, r in enumerate(self.rates):
            self.counts["s1"][i] += r * dt * 0.75
            self.counts["s2"][i] += r * dt * 0.25

    def reading(self, switch: str) -> dict[int, int]:
        return {i: int(c) for i, c in enumerate(self.counts[switch])}


def zipf(n: int, s: float = 1.1, top: float = 10000.0) -> list[float]:
    return [top / (k + 1) ** s for k in range(n)]


def run_controller_rounds(pl: PoolLoad, feed: FakeSwitches, assignment, caps, rounds: int):
    history = []
    now = 0.0
    for _ in range(rounds):
        for sw in ("s1", "s2"):
            pl.feed_switch(sw, feed.reading(sw), now)
        moves = pl.decide(assignment, caps) if pl.commit() else []
        assignment = apply_moves(assignment, moves)
        history.append(moves)
        feed.advance(pl.policy.interval_s)
        now += pl.policy.interval_s
    return assignment, history


def test_fake_feed_converges_within_three_readings_and_then_stays():
    n = 64
    # Zipf rates spread over slots as a hash would: the heavy ones land unevenly.
    rates = [0.0] * n
    for k, r in enumerate(zipf(48)):
        rates[(k * 37) % n] += r
    caps = dict(EQUAL4)
    assignment = slots.assign(n, caps)
    pl = PoolLoad(n, Policy(threshold=1.15, interval_s=5.0, max_moves=8))
    feed = FakeSwitches(rates)
    start = imbalance(instance_loads(rates, assignment, caps), caps)
    assert start > 1.15  # the hash alone leaves it uneven
    final, history = run_controller_rounds(pl, feed, assignment, caps, 30)
    first_move = next(i for i, m in enumerate(history) if m)
    last_move = max(i for i, m in enumerate(history) if m)
    # A baseline reading, two readings above the threshold, then moves: converged within
    # three intervals of the first move, and no move afterwards.
    assert first_move == 2
    assert last_move - first_move < 3
    reached = imbalance(instance_loads(rates, final, caps), caps)
    best = best_imbalance(rates, caps)
    # Moving goes on past the threshold to the aim (1.05 for 1.15), where the slots allow.
    assert reached <= max(1.05, best * 1.10) + 1e-9
    assert sum(len(m) for m in history) <= 8 * 3


def test_between_aim_and_threshold_nothing_starts_moving():
    pl = PoolLoad(8, Policy(threshold=1.15, interval_s=1.0, max_moves=8))
    caps = {"a": 1.0, "b": 1.0}
    assignment = list("aaaabbbb")
    pl.rates = [11.0, 1, 1, 1, 1, 1, 1, 1]  # a 14, b 4... far above: moves after two readings
    assert pl.decide(assignment, caps) == []
    moves = pl.decide(assignment, caps)
    assert moves and pl.moving
    assignment = apply_moves(assignment, moves)
    # a reading between the aim and the threshold: no new run of moves starts
    pl.moving, pl.above = False, 0
    pl.rates = [1.1, 1.1, 1, 1, 1, 1, 1, 1]  # a 4.2, b 4.0: 1.02 (below the aim)
    for _ in range(5):
        assert pl.decide(list("aaaabbbb"), caps) == []
    pl.rates = [1.5, 1.5, 1, 1, 1, 1, 1, 1]  # a 5, b 4: 1.11, above the aim, below 1.15
    for _ in range(5):
        assert pl.decide(list("aaaabbbb"), caps) == []
    assert not pl.moving


def test_counter_reset_and_one_noisy_reading():
    pl = PoolLoad(4, Policy(threshold=1.15, interval_s=1.0, max_moves=4))
    pl.feed_switch("s1", {0: 100, 1: 100}, 0.0)
    assert not pl.commit()  # a baseline only
    pl.feed_switch("s1", {0: 200, 1: 200}, 1.0)
    assert pl.commit() and pl.rates[:2] == [100.0, 100.0]
    pl.feed_switch("s1", {0: 50, 1: 300}, 2.0)  # slot 0's entry was replaced: reset
    assert pl.commit() and pl.rates[:2] == [75.0, 100.0]
    # One reading above the threshold is not enough to move.
    assert pl.decide(list("aabb"), {"a": 1.0, "b": 1.0}) == []
    assert pl.above == 1


def test_watch_rounds_switch_gone_and_unable():
    watch = LoadWatch(
        {"fw": Policy(1.15, 5.0, 4)}, {"fw": 4, "nat": 4}, {"fw": 1, "nat": 2}, unable={}
    )
    assert watch.due(0.0) == ["fw"]
    watch.start_round(["fw"], 0.0)
    watch.asked("s1", 7)
    watch.asked("s2", 8)
    assert watch.due(1.0) == []  # a round is open and not stale
    assert watch.reply("s1", [(1, 0, 10), (2, 0, 99)], False, 0.0) == []
    assert watch.switch_gone("s2") == []  # first readings: no rate yet
    watch.start_round(["fw"], 5.0)
    watch.asked("s1", 9)
    assert watch.reply("s1", [(1, 0, 60)], True, 5.0) == []  # more parts to come
    assert watch.reply("s1", [(1, 1, 0)], False, 5.0) == ["fw"]
    assert watch.pools["fw"].rates[:2] == [10.0, 0.0]
    assert watch.switch_unable("s3", "error type=1 code=2") == ["fw"]
    assert watch.active() == [] and "s3" in watch.off["fw"]
    assert watch.switch_unable("s3", "again") == []  # said once


def test_watch_records_moves_by_reason_and_reports():
    watch = LoadWatch({"fw": Policy()}, {"fw": 4}, {"fw": 1})
    watch.record([PoolChange("fw", 2, ((0, "a", "b"),))], "load: pool fw: ...", 1.0)
    watch.record([PoolChange("fw", 3, ((1, None, "a"), (2, "b", "a")))], "instance up", 2.0)
    watch.record([PoolChange("fw", 3, ())], "heartbeat", 3.0)
    watch.publish({"fw": (list("aabb"), {"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 1.0})})
    rep = watch.reports["fw"]
    assert rep.mode == "load" and rep.imbalance is None
    assert rep.moves_total == {"load": 1, "membership": 2}
    assert [m.kind for m in rep.moves] == ["load", "membership"]


# -- the state's move mutation --------------------------------------------------------------


def test_move_slots_checks_everything_first():
    from contract.topology import load_topology

    st_ = Steering(load_topology(REPO / "topologies" / "single.yaml"))
    ps = st_.pools["fw"]
    for name in ps.instances:
        st_.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    owner = ps.assignment[0]
    other = next(n for n in ps.instances if n != owner)
    before, epoch = list(ps.assignment), ps.epoch
    with pytest.raises(SteeringError):
        st_.move_slots("fw", [(0, owner, other), (1, "nobody", other)])
    st_.set_state("fw", other, InstanceState.DRAINING, 0.0)
    before, epoch = list(ps.assignment), ps.epoch
    with pytest.raises(SteeringError, match="cannot take slots"):
        st_.move_slots("fw", [(0, owner, other)])
    assert ps.assignment == before and ps.epoch == epoch
    third = next(n for n in ps.active_capacities() if n != owner)
    change = st_.move_slots("fw", [(0, owner, third)])
    assert change.moved == ((0, owner, third),) and ps.epoch == epoch + 1


# -- the policy in the topology file ---------------------------------------------------------


def base() -> dict:
    return yaml.safe_load((REPO / "topologies" / "single.yaml").read_text())


def test_policy_parsed_with_defaults():
    data = base()
    data["pools"]["fw"]["rebalance"] = {"mode": "load", "threshold": 1.2, "max_moves": 4}
    pool = parse_topology(data).pools["fw"]
    assert pool.rebalance.mode == "load" and pool.rebalance.threshold == 1.2
    assert pool.rebalance.interval_s == 5.0 and pool.rebalance.max_moves == 4
    assert parse_topology(base()).pools["fw"].rebalance.mode == "flows"


@pytest.mark.parametrize(
    "policy,field",
    [
        ({"mode": "bytes"}, "mode"),
        ({"threshold": 1.0}, "threshold"),
        ({"threshold": 0.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"threshold": float("inf")}, "threshold"),
        ({"threshold": "1.2"}, "threshold"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 10_000}, "interval_s"),
        ({"max_moves": 0}, "max_moves"),
        ({"max_moves": 1.5}, "max_moves"),
        ({"max_moves": True}, "max_moves"),
        ({"speed": 3}, "speed"),
    ],
)
def test_bad_policy_is_one_line_naming_file_and_field(policy, field):
    data = copy.deepcopy(base())
    data["pools"]["fw"]["rebalance"] = policy
    with pytest.raises(ConfigError) as e:
        parse_topology(data, "t.yaml")
    text = str(e.value)
    assert text.startswith(f"t.yaml: pools.fw.rebalance.{field}")
    assert "\n" not in text


# -- the capacity layer after load moves ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=64, max_size=64),
    st.sampled_from(["fw1", "fw2", "fw3", "fw4"]),
    st.booleans(),
)
def test_failure_or_join_after_load_moves_moves_few_slots(loads, victim, join):
    """Load moves are on top of the capacity layer: an instance failing (or coming back)
    afterwards moves its own slots and at most one slot per load move and per instance
    (quota rounding) besides, never the whole pool."""
    from contract.topology import load_topology

    topo = load_topology(REPO / "topologies" / "single.yaml")
    data = topo.model_dump()
    data["pools"]["fw"]["slots"] = 64
    steering = Steering(parse_topology(data))
    ps = steering.pools["fw"]
    for name in ps.instances:
        steering.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    if join:
        steering.set_state("fw", victim, InstanceState.FAILED, 0.0)
    caps = ps.active_capacities()
    moves = plan_moves(loads, ps.assignment, caps, 1.05, 16)
    steering.move_slots("fw", moves)
    held = ps.slot_counts()[victim]
    state = InstanceState.ACTIVE if join else InstanceState.FAILED
    change = steering.set_state("fw", victim, state, 0.0)
    assert len(change.moved) <= held + len(moves) + len(ps.instances) + (
        # a join takes its quota
        slots.quotas(64, ps.active_capacities())[victim] if join else 0
    )
    assert len(change.moved) < 64 or not any(loads)
    assert victim not in ps.assignment or join


def test_registering_again_keeps_load_moves():
    from contract.topology import load_topology

    steering = Steering(load_topology(REPO / "topologies" / "single.yaml"))
    ps = steering.pools["fw"]
    for name in ps.instances:
        steering.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    owner = ps.assignment[0]
    other = next(n for n in ps.instances if n != owner)
    steering.move_slots("fw", [(0, owner, other)])
    after = list(ps.assignment)
    # The same instance registered again, its state set again: nothing moves.
    assert steering.add_instance(copy.copy(ps.instances[owner]), 0.0).moved == ()
    assert steering.set_state("fw", owner, InstanceState.ACTIVE, 0.0).moved == ()
    assert ps.assignment == after
    # A capacity change re-applies the quotas with the fewest moves.
    change = steering.set_capacity("fw", owner, 3.0, 0.0)
    assert 0 < len(change.moved) < ps.n_slots // 2


def test_an_elephant_alone_does_not_stop_the_others_from_evening_out():
    # a holds an elephant (10) alone; b is hot with small slots; c and d are cold.
    loads = [10, 2, 2, 2, 2, 2, 2, 1, 1]
    assignment = list("abbbbbbcd")
    caps = dict(EQUAL4)
    moves = plan_moves(loads, assignment, caps, 1.05, 16)
    after = instance_loads(loads, apply_moves(assignment, moves), caps)
    mean = sum(loads) / 4
    assert after["a"] == 10  # nothing helps the elephant
    assert all(after[n] <= 1.05 * mean + 2 for n in "bcd")  # within one slot of the aim
    assert after["b"] <= 1.05 * mean
    # ... and with the others even, the elephant alone does not keep the pool moving.
    pl = PoolLoad(9, Policy(threshold=1.15, interval_s=1.0, max_moves=8))
    pl.rates = [float(x) for x in loads]
    final = apply_moves(assignment, moves)
    for _ in range(6):
        assert pl.decide(final, caps) == []


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["s1", "s2"]),
            st.dictionaries(st.integers(-5, 20), st.integers(-(2**64), 2**64), max_size=20),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.sampled_from([0.0, 1e-300, 0.005, 0.011, 1.0, 2.0]),
            ),
        ),
        max_size=12,
    )
)
def test_any_counter_feed_gives_finite_non_negative_rates(readings):
    """Whatever the switches report (slots out of range, counters going down, clocks
    going backwards), rates stay finite and non-negative and decisions stay valid."""
    pl = PoolLoad(16, Policy(threshold=1.15, interval_s=1.0, max_moves=4))
    assignment = slots.assign(16, EQUAL4)
    for switch, counters, now in readings:
        pl.feed_switch(switch, counters, now)
        pl.commit()
        assert all(math.isfinite(r) and r >= 0 for r in pl.rates)
        for _, _, new in pl.decide(assignment, EQUAL4):
            assert new in EQUAL4
