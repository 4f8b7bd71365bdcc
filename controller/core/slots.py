"""Hash slots → instances: proportional to capacity, changed with the fewest moves.

A pool has ``n_slots`` hash slots (a power of two). Every slot belongs to one active
instance, and each instance holds ``floor`` or ``ceil`` of its exact share
``n_slots * c / sum(c)``. When the set of instances or their capacities change, the new
assignment keeps every slot it can: a slot changes owner only if its owner left or now holds
more than its quota.

Why this is the minimum: with quotas ``q`` (summing to ``n_slots``), an instance that held
``p`` slots keeps ``min(p, q)`` of them, so ``orphans + sum(max(0, p - q))`` slots must move
(orphans = slots of instances no longer active). Only the choice of which instances round
their share up is free, and rounding up instance ``i`` saves one move exactly when
``p_i > floor_i``; so round-ups go first to those instances. Ties are broken by the larger
fractional remainder, then by name, so the result is a pure function of the inputs.

Capacities are exact fractions (floats via ``Fraction(str(x))``), so ``0.1 + 0.2`` style
rounding never shifts a slot.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction


def _fraction(name: str, value: float | int | Fraction) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        raise ValueError(f"capacity of {name!r} must be a number, not {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"capacity of {name!r} must be finite, not {value!r}")
        value = Fraction(str(value))
    frac = Fraction(value)
    if frac <= 0:
        raise ValueError(f"capacity of {name!r} must be positive, not {value!r}")
    return frac


def _check_n_slots(n_slots: int) -> None:
    if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots < 1:
        raise ValueError(f"n_slots must be a positive power of two, not {n_slots!r}")
    if n_slots & (n_slots - 1):
        raise ValueError(f"n_slots must be a power of two, not {n_slots}")


def _weights(capacities: Mapping[str, float | int | Fraction]) -> dict[str, int]:
    """Integer weights in the exact ratio of the capacities (so that shares and their
    remainders are compared as integers, which is both exact and fast)."""
    caps = {name: _fraction(name, c) for name, c in capacities.items()}
    scale = math.lcm(*(c.denominator for c in caps.values())) if caps else 1
    return {name: c.numerator * (scale // c.denominator) for name, c in caps.items()}


def quotas(
    n_slots: int,
    capacities: Mapping[str, float | int | Fraction],
    held: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Slots per instance: floor or ceil of its share, summing to n_slots, rounded up where
    that saves moves given ``held`` (slots each instance holds now)."""
    _check_n_slots(n_slots)
    held = held or {}
    weights = _weights(capacities)
    if not weights:
        return {}
    total = sum(weights.values())
    base: dict[str, int] = {}
    candidates = []  # instances whose share is not whole: they may round up
    for name, w in weights.items():
        floor, remainder = divmod(n_slots * w, total)
        base[name] = floor
        if remainder:
            saves = held.get(name, 0) > floor
            candidates.append((not saves, -remainder, name))
    spare = n_slots - sum(base.values())
    candidates.sort()
    for _, _, name in candidates[:spare]:
        base[name] += 1
    return base


def assign(
    n_slots: int,
    capacities: Mapping[str, float | int | Fraction],
    previous: Sequence[str | None] | None = None,
) -> list[str | None]:
    """Owner of every slot; see the module docstring for the guarantees.

    ``capacities`` lists only the instances that may own slots. ``previous`` is the current
    assignment (same length), or None for a fresh pool. Raises ValueError on bad input.
    """
    _check_n_slots(n_slots)
    if previous is not None and len(previous) != n_slots:
        raise ValueError(f"previous assignment has {len(previous)} slots, expected {n_slots}")
    if not capacities:
        return [None] * n_slots
    prev: Sequence[str | None] = previous if previous is not None else [None] * n_slots
    held = Counter(prev) if previous is not None else Counter()
    quota = quotas(n_slots, capacities, held)

    # Keep each instance's lowest-numbered slots up to its quota; free the rest.
    keep = {name: q for name, q in quota.items() if q}
    new = list(prev)
    free: list[int] = []
    for slot, owner in enumerate(prev):
        k = keep.get(owner, 0)  # type: ignore[arg-type]
        if k:
            keep[owner] = k - 1  # type: ignore[index]
        else:
            free.append(slot)

    # Fill freed slots in slot order, instances in name order (what is left in keep is
    # exactly each instance's shortfall, and the shortfalls add up to len(free)).
    pos = 0
    for name in sorted(keep):
        need = keep[name]
        for slot in free[pos : pos + need]:
            new[slot] = name
        pos += need
    return new


def moved(previous: Sequence[str | None], new: Sequence[str | None]) -> int:
    """Number of slots whose owner differs between two assignments of the same length."""
    if len(previous) != len(new):
        raise ValueError(f"assignments differ in length: {len(previous)} vs {len(new)}")
    return sum(1 for a, b in zip(previous, new, strict=True) if a != b)
