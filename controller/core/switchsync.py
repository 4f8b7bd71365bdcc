"""One switch's programming, as a state machine. Pure: parsed replies and ``now`` in, steps out.

A switch that connects is read back before it is programmed::

    READING --(port-desc, flow-stats and group-desc replies complete)--> PROGRAMMED
       ^                                                                     |
       +------------------------ reconnect (a new SwitchSync) ---------------+

While READING it gets nothing. The read-back gives what the switch holds
(:class:`controller.core.flows.Installed`); from then on :meth:`SwitchSync.program` computes the
difference to the desired table and records what the switch will hold once the steps are
applied. Entries the controller did not compute (a foreign flow, one whose match cannot be
parsed) are deleted by the match as read; a reply that cannot be understood at all wipes the
switch (:class:`controller.core.flows.WipeAll`) and programs it from scratch.

Barriers are tracked here too: which were sent and when, which are answered. A switch is
in sync once it answered the barrier that follows its first programming; :meth:`problem`
says why a switch is not healthy (read-back or a barrier overdue), for ``/healthz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller.core import flows as fl
from controller.core.state import Steering
from controller.core.topology import Routes

READBACK_TIMEOUT_S = 10.0  # a switch that has not answered its read-back by then is unhealthy
BARRIER_TIMEOUT_S = 5.0  # nor one that leaves a barrier unanswered that long
READBACK_PARTS = frozenset({"ports", "flows", "groups"})


class Phase(StrEnum):
    READING = "reading"
    PROGRAMMED = "programmed"


@dataclass
class ReadBack:
    """A switch's answers to the read-back requests, parsed (see :mod:`controller.ofp.ofmsg`)."""

    ports: dict[int, bool] = field(default_factory=dict)
    flows: dict[fl.FlowKey, int] = field(default_factory=dict)
    raw_matches: dict[fl.FlowKey, bytes] = field(default_factory=dict)
    groups: dict[int, tuple[fl.Bucket, ...]] = field(default_factory=dict)
    doubtful: bool = False  # some part could not be understood: wipe and start over


@dataclass
class SwitchSync:
    name: str
    connected_at: float
    phase: Phase = Phase.READING
    waiting: set[str] = field(default_factory=lambda: set(READBACK_PARTS))
    readback: ReadBack = field(default_factory=ReadBack)
    ports: dict[int, bool] = field(default_factory=dict)  # port -> up
    installed: fl.Installed | None = None  # None until the read-back finished
    desired: fl.Desired | None = None  # what it was last programmed to hold
    barriers: dict[int, float] = field(default_factory=dict)  # xid -> sent at
    first_barrier: int | None = None  # the barrier that confirms the first programming
    synced: bool = False  # the first programming is confirmed

    # -- read-back -------------------------------------------------------------------------

    def part_received(self, part: str, more: bool) -> bool:
        """One reply of the read-back arrived (its bodies already merged into
        :attr:`readback`); True when it was the last one needed."""
        if self.phase is not Phase.READING or part not in self.waiting:
            return False
        if not more:
            self.waiting.discard(part)
        return not self.waiting

    def finish_readback(self) -> None:
        """The read-back is complete: what the switch holds is known."""
        rb = self.readback
        self.ports = dict(rb.ports)
        if rb.doubtful:
            self.installed = None  # program() wipes first
        else:
            self.installed = fl.Installed(dict(rb.flows), dict(rb.groups), dict(rb.raw_matches))
        self.readback = ReadBack()
        self.phase = Phase.PROGRAMMED
        self.desired = None

    # -- programming -----------------------------------------------------------------------

    def program(self, steering: Steering, routes: Routes) -> list[fl.Step]:
        """Steps that bring the switch to the desired table; records what it then holds.
        The first time (after the read-back) the whole table is computed and compared; from
        then on only what the change touched."""
        if self.phase is not Phase.PROGRAMMED:
            return []
        steps: list[fl.Step] = []
        if self.installed is None:
            steps = [fl.WipeAll(), fl.Barrier()]
            self.installed = fl.Installed()
            self.desired = None
        if self.desired is None:
            self.desired = fl.desired(steering, self.name, routes)
            steps += fl.diff(self.installed, self.desired.table)
        else:
            self.desired, keys = fl.update(self.desired, steering, self.name, routes)
            steps += fl.diff(self.installed, self.desired.table, keys)
        self.installed = fl.apply_steps(self.installed, steps)
        return steps

    # -- barriers --------------------------------------------------------------------------

    def barrier_sent(self, xid: int, now: float) -> None:
        self.barriers[xid] = now
        if self.first_barrier is None and not self.synced:
            self.first_barrier = xid

    def barrier_answered(self, xid: int) -> float | None:
        """A barrier reply; returns when its request was sent (None: not ours)."""
        sent = self.barriers.pop(xid, None)
        if xid == self.first_barrier:
            self.synced = True
        return sent

    def first_programming_done(self) -> None:
        """The first programming sent nothing (the switch already held the table)."""
        if self.first_barrier is None:
            self.synced = True

    # -- health ----------------------------------------------------------------------------

    def problem(self, now: float) -> str | None:
        """Why this switch is not in sync, or None when it is."""
        if self.phase is Phase.READING:
            if now - self.connected_at > READBACK_TIMEOUT_S:
                return (
                    f"switch {self.name}: table read-back unanswered after {READBACK_TIMEOUT_S:g} s"
                )
            return None
        if self.barriers:
            oldest = min(self.barriers.values())
            if now - oldest > BARRIER_TIMEOUT_S:
                return (
                    f"switch {self.name}: barrier unanswered for {now - oldest:.1f} s "
                    "(changes not confirmed)"
                )
        return None
