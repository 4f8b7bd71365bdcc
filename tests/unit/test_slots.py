"""Slot assignment: proportional shares, minimal moves, determinism (property tests)."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.core.slots import assign, moved, quotas

NAMES = [f"n{i}" for i in range(7)]
capacity = st.one_of(
    st.integers(1, 20),
    st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.5, 2.25, 3.7, 0.001]),
    st.fractions(min_value=Fraction(1, 50), max_value=10),
)
capacities = st.dictionaries(st.sampled_from(NAMES), capacity, min_size=1, max_size=7)
n_slots = st.sampled_from([1, 2, 4, 8, 16, 64, 256, 1024])


def exact_share(n: int, caps: dict, name: str) -> Fraction:
    as_fraction = {
        k: Fraction(str(v)) if isinstance(v, float) else Fraction(v) for k, v in caps.items()
    }
    return n * as_fraction[name] / sum(as_fraction.values())


def check_shares(n: int, caps: dict, new: list) -> None:
    assert len(new) == n
    assert set(new) <= set(caps)  # every slot has an owner among the given instances
    counts = Counter(new)
    for name in caps:
        share = exact_share(n, caps, name)
        assert counts.get(name, 0) in (math.floor(share), math.ceil(share)), (name, share)


def least_moves(n: int, caps: dict, prev: list) -> int:
    """Brute force over every quota vector allowed by the share property."""
    held = Counter(prev)
    orphans = sum(c for owner, c in held.items() if owner not in caps)
    names = sorted(caps)
    options = [
        sorted({math.floor(exact_share(n, caps, k)), math.ceil(exact_share(n, caps, k))})
        for k in names
    ]
    best = None
    for q in itertools.product(*options):
        if sum(q) != n:
            continue
        cost = orphans + sum(max(0, held.get(k, 0) - qk) for k, qk in zip(names, q, strict=True))
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@settings(max_examples=300, deadline=None)
@given(n=n_slots, caps=capacities)
def test_fresh_assignment_is_proportional(n, caps):
    check_shares(n, caps, assign(n, caps))


@settings(max_examples=300, deadline=None)
@given(n=n_slots, before=capacities, after=capacities, data=st.data())
def test_any_change_moves_the_fewest_slots(n, before, after, data):
    # Arbitrary history: a proportional assignment, or any jumble of owners (even unknown
    # names and empty slots, e.g. state restored from an older configuration).
    if data.draw(st.booleans()):
        prev = assign(n, before)
    else:
        prev = data.draw(st.lists(st.sampled_from([*NAMES, "gone", None]), min_size=n, max_size=n))
    new = assign(n, after, prev)
    check_shares(n, after, new)
    assert moved(prev, new) == least_moves(n, after, prev)


operation = st.tuples(
    st.sampled_from(["join", "leave", "capacity"]), st.sampled_from(NAMES), capacity
)


@settings(max_examples=200, deadline=None)
@given(n=n_slots, start=capacities, ops=st.lists(operation, min_size=1, max_size=8))
def test_sequence_of_joins_leaves_and_reweights(n, start, ops):
    caps = dict(start)
    current = assign(n, caps)
    for kind, name, cap in ops:
        if kind == "leave":
            if name not in caps or len(caps) == 1:
                continue
            del caps[name]  # leave, fail or drain: no longer among the active instances
        else:
            caps[name] = cap  # join, or capacity change of a member
        new = assign(n, caps, current)
        check_shares(n, caps, new)
        assert moved(current, new) == least_moves(n, caps, current)
        if kind == "leave":
            # Survivors' shares only grow: one may lose at most a slot, to rounding.
            lost = Counter(a for a, b in zip(current, new, strict=True) if a != b and a != name)
            assert all(c == 1 for c in lost.values())
        current = new


@settings(max_examples=100, deadline=None)
@given(n=n_slots, caps=capacities, seed=st.integers(0, 2**32))
def test_deterministic_and_independent_of_dict_order(n, caps, seed):
    prev = assign(n, caps)
    items = list(caps.items())
    random.Random(seed).shuffle(items)
    shuffled = dict(items)
    assert assign(n, shuffled) == prev
    grown = {**caps, "x": 1}
    assert assign(n, grown, prev) == assign(n, dict(reversed(list(grown.items()))), list(prev))


def test_join_takes_slots_only_from_others_and_the_joiner_gets_its_share():
    before = assign(4096, {f"i{k}": 1 for k in range(8)})
    after = assign(4096, {**{f"i{k}": 1 for k in range(8)}, "new": 1}, before)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(b == "new" for _, b in changed)
    assert len(changed) == Counter(after)["new"] in (455, 456)


def test_doubling_one_capacity_moves_only_onto_it():
    caps = {f"i{k}": 1 for k in range(8)}
    before = assign(4096, caps)
    after = assign(4096, {**caps, "i3": 2}, before)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(b == "i3" for _, b in changed)
    assert Counter(after)["i3"] in (910, 911)  # 4096 * 2/9 = 910.2


def test_float_capacities_are_exact():
    # 8 * 0.1 / 0.4 is 2.0000000000000004 in floats; its ceil would break the share rule.
    counts = Counter(assign(8, {"a": 0.1, "b": 0.3}))
    assert counts == {"a": 2, "b": 6}
    counts = Counter(assign(16, {"a": 0.1, "b": 0.2, "c": 0.1}))
    assert counts == {"a": 4, "b": 8, "c": 4}


def test_more_instances_than_slots():
    caps = {f"i{k}": 1 for k in range(10)}
    new = assign(4, caps)
    assert len(set(new)) == 4 and set(new) <= set(caps)
    assert sum(quotas(4, caps).values()) == 4


def test_empty_pool_and_moved():
    assert assign(8, {}) == [None] * 8
    prev = assign(8, {"a": 1})
    assert assign(8, {}, prev) == [None] * 8
    assert moved(prev, [None] * 8) == 8
    assert moved(["a", "b"], ["a", "c"]) == 1
    with pytest.raises(ValueError, match="length"):
        moved(["a"], ["a", "b"])


@pytest.mark.parametrize(
    ("n", "caps", "prev", "match"),
    [
        (6, {"a": 1}, None, "power of two"),
        (0, {"a": 1}, None, "power of two"),
        (True, {"a": 1}, None, "power of two"),
        (8, {"a": 0}, None, "positive"),
        (8, {"a": -1.5}, None, "positive"),
        (8, {"a": float("nan")}, None, "finite"),
        (8, {"a": float("inf")}, None, "finite"),
        (8, {"a": "1"}, None, "number"),
        (8, {"a": True}, None, "number"),
        (8, {"a": 1}, ["a"] * 4, "4 slots, expected 8"),
    ],
)
def test_bad_input_is_rejected(n, caps, prev, match):
    with pytest.raises(ValueError, match=match):
        assign(n, caps, prev)
