"""Load-aware slot moves: per-slot traffic in, the few slot moves that even out load. Pure.

A hash spreads flows in proportion to capacity, not load: a few heavy flows land where
they land. Instances hold no connection state (it is in the store), so a slot can change
owner without breaking its connections, and a pool in ``rebalance: {mode: load}`` moves
its hot slots.

Input: the cumulative packet counters of each pool's slot entries, per switch (the flow
statistics of table 1), read every ``interval_s``. :class:`PoolLoad` turns them into a
smoothed rate per slot (packets/s: an NF's work is per packet), sums them per instance
and, when the most loaded instance's load per unit of capacity exceeds the pool mean by
``threshold`` for two readings in a row, plans moves with :func:`plan_moves`.

The capacity layer (:mod:`controller.core.slots`) stays in charge of who may own slots and of
the minimal moves on joins, failures and capacity changes; load moves are made on top of
the assignment it leaves, by the same kind of change (a new epoch, saved like any other).
A join or a failure re-applies the quotas with the fewest moves, which undoes only what
it must of earlier load moves; the next readings move hot slots again if needed.

Hysteresis, so steady traffic converges and then stops moving:
- moves start only after two readings above ``threshold`` (one noisy reading does not),
  and then go on, at most ``max_moves`` per reading, until every instance is within the
  *aim* ``1 + (threshold - 1) * AIM`` (1.05 for 1.15) or no move helps; then they stop
  until the threshold is crossed again;
- a move is made only if it lowers the higher load per capacity of the two instances (so a
  plan never swaps load back and forth, and ends when the hottest instance cannot shed a
  slot without making the receiver hotter than it was: an elephant alone);
- slot rates are smoothed (EWMA), and a slot keeps its rate when it moves (the load is
  the slot's, not the instance's), so the next reading does not see a change that is
  only a move.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contract.topology import Topology

ALPHA = 0.5  # weight of the newest reading in the smoothed rate
# A move must lower the pair's higher load by more than this share of the mean (rounding).
# Not more: with thousands of slots each is small, and only many small moves even out.
MIN_GAIN = 1e-6
MIN_DT = 0.01  # s: readings closer than this give no rate
NO_LOAD = 1e-9  # packets/s: a pool with less than this in all has no load to even out
ABOVE_READINGS = 2  # readings in a row above the threshold before moving
# Once moving, aim this far from perfectly even towards the threshold: well below the
# threshold, so ordinary noise does not cross it again and restart moving.
AIM = 1 / 3


@dataclass(frozen=True)
class Policy:
    threshold: float = 1.15
    interval_s: float = 5.0
    max_moves: int = 8

    @property
    def aim(self) -> float:
        """Where moving stops once started (see the module docstring)."""
        return 1 + (self.threshold - 1) * AIM


Move = tuple[int, str, str]  # (slot, from instance, to instance)


def instance_loads(
    slot_loads: Sequence[float], assignment: Sequence[str | None], instances: Mapping[str, float]
) -> dict[str, float]:
    """Load of each instance in ``instances`` (name -> capacity): the sum of its slots'."""
    out = dict.fromkeys(instances, 0.0)
    for load, owner in zip(slot_loads, assignment, strict=True):
        if owner in out:
            out[owner] += load
    return out


def imbalance(loads: Mapping[str, float], capacities: Mapping[str, float]) -> float:
    """Max over instances of load per unit of capacity, divided by the pool's mean load per
    unit of capacity (1.0 = perfectly even; 1.0 also when there is no load)."""
    total_cap = sum(capacities.values())
    total = sum(loads.get(n, 0.0) for n in capacities)
    if not capacities or total <= NO_LOAD or total_cap <= 0:
        return 1.0
    mean = total / total_cap
    return max(loads.get(n, 0.0) / c for n, c in capacities.items()) / mean


def plan_moves(
    slot_loads: Sequence[float],
    assignment: Sequence[str | None],
    capacities: Mapping[str, float],
    threshold: float,
    max_moves: int,
) -> list[Move]:
    """The slot moves (at most ``max_moves``) that bring the load per unit of capacity of
    every instance within ``threshold`` x the mean, or as close as the slot loads allow.

    ``capacities`` names the instances that may own slots (active, reachable); slots of
    others are left alone (the capacity layer reassigns them). Greedy: take the most
    loaded instance, give the least loaded one the slot whose load comes closest to
    evening out the two, repeat; a move that does not lower the higher of the two is not
    made. An instance that cannot shed any slot that way (one elephant) is left as it is
    and the next most loaded one is evened out, so every instance that can be brought
    within ``threshold`` is."""
    if len(capacities) < 2 or max_moves < 1:
        return []
    owners = list(assignment)
    loads = instance_loads(slot_loads, owners, capacities)
    total = sum(loads.values())
    total_cap = sum(capacities.values())
    if total <= NO_LOAD:
        return []
    mean = total / total_cap  # load per unit of capacity when perfectly even
    # Each instance's loaded slots, built once: a move then looks at the hot one's only.
    owned: dict[str, dict[int, float]] = {n: {} for n in capacities}
    for slot, (load, owner) in enumerate(zip(slot_loads, owners, strict=True)):
        if load > 0 and owner in owned:
            owned[owner][slot] = load
    moves: list[Move] = []
    stuck: set[str] = set()  # instances none of whose slots can go anywhere useful
    while len(moves) < max_moves:
        util = {n: loads[n] / c for n, c in capacities.items()}
        candidates = [n for n in util if n not in stuck]
        if not candidates:
            break
        hot = max(candidates, key=lambda n: (util[n], n))
        if util[hot] <= threshold * mean:
            break
        best: tuple[float, float, int, str] | None = None
        # Receivers from the least loaded up: the first that can take a useful slot wins.
        for cold in sorted(util, key=lambda n: (util[n], n)):
            if cold == hot:
                continue
            ch, cc = capacities[hot], capacities[cold]
            for slot, load in owned[hot].items():
                after = max((loads[hot] - load) / ch, (loads[cold] + load) / cc)
                if util[hot] - after < MIN_GAIN * mean:
                    continue
                # The evenest result; then the hotter slot (fewer moves), then the lowest.
                key = (after, -load, slot, cold)
                if best is None or key < best:
                    best = key
            if best is not None:
                break
        if best is None:
            # Its slots cannot even out further (an elephant): the next hottest may.
            stuck.add(hot)
            continue
        _, _, slot, cold = best
        load = owned[hot].pop(slot)
        # A moved slot stays put for the rest of this plan (no slot moves twice).
        loads[hot] -= load
        loads[cold] += load
        moves.append((slot, hot, cold))
    return moves


def best_imbalance(slot_loads: Sequence[float], capacities: Mapping[str, float]) -> float:
    """A near-optimal imbalance for these slot loads whatever the assignment (LPT: heaviest
    slot first, to the instance whose load per capacity would be lowest after taking it).
    A lower bound is ``max(1, heaviest slot / (mean x largest capacity))``; LPT is within
    4/3 of the optimum and usually at it for many small slots."""
    loads = dict.fromkeys(capacities, 0.0)
    for load in sorted((x for x in slot_loads if x > 0), reverse=True):
        name = min(loads, key=lambda n: ((loads[n] + load) / capacities[n], n))
        loads[name] += load
    return imbalance(loads, capacities)


@dataclass
class PoolLoad:
    """One pool's smoothed slot rates and the state of its move decision."""

    n_slots: int
    policy: Policy
    rates: list[float] = field(default_factory=list)  # packets/s per slot, smoothed
    last: dict[str, tuple[float, dict[int, int]]] = field(default_factory=dict)
    pending: dict[str, dict[int, float]] = field(default_factory=dict)  # switch -> rates
    above: int = 0  # readings in a row above the threshold
    readings: int = 0
    moving: bool = False  # between crossing the threshold and reaching the aim

    def __post_init__(self) -> None:
        if not self.rates:
            self.rates = [0.0] * self.n_slots

    def feed_switch(self, switch: str, counters: Mapping[int, int], now: float) -> None:
        """One switch's cumulative packet counters (slot -> packets) read at ``now``; its
        first reading only sets its baseline. A counter that went down was reset (the
        entry was replaced, the switch restarted): what it holds now is what it counted
        since. :meth:`commit` turns the switches' readings into the pool's rates."""
        clean = {
            s: int(c)
            for s, c in counters.items()
            if isinstance(s, int) and 0 <= s < self.n_slots and c >= 0
        }
        if not math.isfinite(now):
            return
        prev = self.last.get(switch)
        if prev is not None and now - prev[0] < MIN_DT:
            return  # the same moment again (or the clock went back): keep the baseline
        self.last[switch] = (now, clean)
        if prev is None:
            return
        then, before = prev
        dt = now - then
        rates = {}
        for slot, count in clean.items():
            old = before.get(slot, 0)
            rates[slot] = (count - old if count >= old else count) / dt
        self.pending[switch] = rates

    def commit(self) -> bool:
        """Sum the switches' rates read since the last commit into the smoothed slot rates;
        False when no switch gave a rate (first readings)."""
        if not self.pending:
            return False
        total = [0.0] * self.n_slots
        for rates in self.pending.values():
            for slot, rate in rates.items():
                total[slot] += rate
        self.pending = {}
        first = self.readings == 0
        self.readings += 1
        for slot, rate in enumerate(total):
            self.rates[slot] = rate if first else ALPHA * rate + (1 - ALPHA) * self.rates[slot]
        return True

    def forget(self, switch: str) -> None:
        self.last.pop(switch, None)

    def decide(
        self, assignment: Sequence[str | None], capacities: Mapping[str, float]
    ) -> list[Move]:
        """After a reading: the moves to make now (often none)."""
        # Above the threshold *and* something can be done about it: an instance that holds
        # only an elephant is above for good, and must not keep the pool moving.
        if plan_moves(self.rates, assignment, capacities, self.policy.threshold, 1):
            self.above += 1
        else:
            self.above = 0
        if self.above >= ABOVE_READINGS:
            self.moving = True
        if not self.moving:
            return []
        moves = plan_moves(
            self.rates, assignment, capacities, self.policy.aim, self.policy.max_moves
        )
        if not moves:
            # At the aim, or nothing useful to move (elephants): wait for a fresh run of
            # readings above the threshold.
            self.moving = False
            self.above = 0
        return moves

    def loads(
        self, assignment: Sequence[str | None], capacities: Mapping[str, float]
    ) -> dict[str, float]:
        return instance_loads(self.rates, assignment, capacities)


# -- the controller's side: rounds of readings, what readers see ---------------------------

MOVE_LOG = 50  # recent changes kept per pool, with their reason
LOAD_REASON = "load"  # the reason of every load move starts with this word


@dataclass(frozen=True)
class MoveRecord:
    when: float  # time.time()
    epoch: int
    slots: int
    kind: str  # "load" or "membership" (joins, failures, drains, capacity)
    reason: str


@dataclass(frozen=True)
class PoolReport:
    """What the REST API, metrics and ``nfsteer status`` show of one pool's load."""

    mode: str  # "load" or "flows"
    why_flows: str | None  # why a pool configured for load is held in flows mode
    loads: Mapping[str, float]  # instance -> packets/s
    imbalance: float | None  # None before the first reading
    readings: int
    moves: tuple[MoveRecord, ...]
    moves_total: Mapping[str, int]  # kind -> slots moved


def reason_kind(reason: str) -> str:
    return "load" if reason.startswith(LOAD_REASON) else "membership"


class LoadWatch:
    """The load side of the controller loop, without I/O: which switches to ask for slot
    counters and when, their answers, and the decisions. Used from the loop only; other
    threads read :attr:`reports`, replaced whole after each change."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        n_slots: Mapping[str, int],
        pool_ids: Mapping[str, int],
        unable: Mapping[str, str] | None = None,
    ):
        self.pools = {p: PoolLoad(n_slots[p], pol) for p, pol in policies.items()}
        self.off: dict[str, str] = {}  # pool -> why it is held in flows mode
        self._names = {i: p for p, i in pool_ids.items()}
        self._n_slots = dict(n_slots)
        self._next: dict[str, float] = dict.fromkeys(self.pools, 0.0)
        self._round: set[str] = set()  # pools read in the current round
        self._waiting: dict[str, int] = {}  # switch -> xid of its request
        self._parts: dict[str, dict[str, dict[int, int]]] = {}
        self._started = 0.0
        self._moves: dict[str, list[MoveRecord]] = {p: [] for p in n_slots}
        self._totals: dict[str, dict[str, int]] = {p: {} for p in n_slots}
        self.reports: Mapping[str, PoolReport] = {}
        for switch, why in (unable or {}).items():
            self.switch_unable(switch, why)

    @classmethod
    def for_topology(cls, topology: Topology, pool_ids: Mapping[str, int]) -> LoadWatch:
        """Pools in ``rebalance: {mode: load}``; a switch that steers by select group has no
        slot entries to read, so it holds them in flows mode."""
        policies = {
            name: Policy(p.rebalance.threshold, p.rebalance.interval_s, p.rebalance.max_moves)
            for name, p in topology.pools.items()
            if p.rebalance.mode == "load"
        }
        unable = {
            name: "it steers by select group (no slot entries)"
            for name, sw in topology.switches.items()
            if sw.steering != "multipath"
        }
        n_slots = {name: p.slots for name, p in topology.pools.items()}
        return cls(policies, n_slots, pool_ids, unable)

    def active(self) -> list[str]:
        return [p for p in self.pools if p not in self.off]

    def due(self, now: float) -> list[str]:
        """Pools whose interval is over, when no round is open (or the open one is stale)."""
        if self._waiting and now - self._started < min(
            (self.pools[p].policy.interval_s for p in self._round), default=0.0
        ):
            return []
        return [p for p in self.active() if now >= self._next[p]]

    def start_round(self, pools: list[str], now: float) -> None:
        self._round = set(pools)
        self._waiting = {}
        self._parts = {}
        self._started = now
        for p in pools:
            self._next[p] = now + self.pools[p].policy.interval_s

    def asked(self, switch: str, xid: int) -> None:
        self._waiting[switch] = xid

    def waits_for(self, switch: str, xid: int) -> bool:
        return self._waiting.get(switch) == xid

    def reply(
        self, switch: str, entries: list[tuple[int, int, int]], more: bool, now: float
    ) -> list[str]:
        """Part of a switch's answer: (pool id, slot, packets) of its slot entries. Returns
        the pools whose reading completed with it (then call :meth:`decide` for each)."""
        parts = self._parts.setdefault(switch, {})
        for pool_id, slot, packets in entries:
            pool = self._names.get(pool_id)
            if pool in self._round:
                parts.setdefault(pool, {})[slot] = packets
        if more:
            return []
        self._waiting.pop(switch, None)
        for pool in self._round:
            self.pools[pool].feed_switch(switch, parts.get(pool, {}), now)
        if self._waiting:
            return []
        return [p for p in sorted(self._round) if self.pools[p].commit()]

    def switch_gone(self, switch: str) -> list[str]:
        """A switch disconnected: forget its baseline; the round may complete without it."""
        for pl in self.pools.values():
            pl.forget(switch)
        if self._waiting.pop(switch, None) is None or self._waiting:
            return []
        return [p for p in sorted(self._round) if self.pools[p].commit()]

    def switch_unable(self, switch: str, why: str) -> list[str]:
        """``switch`` cannot report slot counters: pools that read it stay in flows mode.
        Returns the pools newly held (to be said once)."""
        newly = [p for p in self.pools if p not in self.off]
        for p in newly:
            self.off[p] = f"switch {switch} cannot report flow statistics: {why}"
        self._waiting.pop(switch, None)
        return newly

    def decide(
        self, pool: str, assignment: Sequence[str | None], capacities: Mapping[str, float]
    ) -> list[Move]:
        if pool in self.off:
            return []
        return self.pools[pool].decide(assignment, capacities)

    def record(self, changes: Sequence[object], reason: str, now: float) -> None:
        """A change was applied (any reason): keep it for the move log and the totals."""
        kind = reason_kind(reason)
        for c in changes:
            pool, moved = getattr(c, "pool", None), getattr(c, "moved", ())
            if pool not in self._moves or not moved:
                continue
            log = self._moves[pool]
            log.append(MoveRecord(now, c.epoch, len(moved), kind, reason))  # type: ignore[attr-defined]
            del log[:-MOVE_LOG]
            totals = self._totals[pool]
            totals[kind] = totals.get(kind, 0) + len(moved)

    def publish(
        self,
        pools: Mapping[str, tuple[Sequence[str | None], Mapping[str, float], Mapping[str, float]]],
    ) -> None:
        """Refresh :attr:`reports` from (assignment, capacity of every instance, capacity of
        those that may own slots) per pool; imbalance is over the latter."""
        out = {}
        for name, (assignment, caps, eligible) in pools.items():
            pl = self.pools.get(name)
            if pl is None:
                mode, why, loads, imb, readings = "flows", None, {}, None, 0
            else:
                loads = pl.loads(assignment, caps)
                readings = pl.readings
                imb = imbalance(loads, eligible) if readings else None
                mode, why = ("flows", self.off[name]) if name in self.off else ("load", None)
            out[name] = PoolReport(
                mode, why, loads, imb, readings,
                tuple(self._moves.get(name, ())), dict(self._totals.get(name, {})),
            )  # fmt: skip
        self.reports = out
