"""The control core's vocabulary: what happened (inputs), what to ask a switch (requests) and
what to do about it (outputs). Frozen values only, so every decision can be replayed.

A switch connection is named by ``conn``, a number the adapter gives each connection; the
core numbers the messages it sends on it (``xid``), so barrier replies, errors and stats
replies are matched without asking the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from controller.core import flows as fl
from controller.core.snapshot import PoolSnapshot
from controller.core.state import PoolChange, Steering
from controller.core.switchsync import ReadBack


class Role(IntEnum):
    """OpenFlow controller roles, with their wire values (``ofp_controller_role``)."""

    NOCHANGE = 0
    EQUAL = 1
    MASTER = 2
    SLAVE = 3


# -- inputs: from switches --------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchConnected:
    conn: int
    dpid: int
    address: str
    live: frozenset[int] = frozenset()  # connections the adapter still has open


@dataclass(frozen=True)
class SwitchGone:
    conn: int


@dataclass(frozen=True)
class ReadBackPart:
    """One reply of the read-back (ports, flows or groups), parsed."""

    conn: int
    part: str
    data: ReadBack
    more: bool


@dataclass(frozen=True)
class SlotCounters:
    """A reply to a slot-counter request: (pool id, slot, packets) of each slot entry."""

    conn: int
    xid: int
    entries: tuple[tuple[int, int, int], ...]
    more: bool


@dataclass(frozen=True)
class PortStatus:
    conn: int
    port: int
    up: bool


@dataclass(frozen=True)
class PortStats:
    conn: int
    stats: Mapping[int, Mapping[str, int]]


@dataclass(frozen=True)
class BarrierReply:
    conn: int
    xid: int


@dataclass(frozen=True)
class ErrorReply:
    conn: int
    xid: int
    type: int
    code: int
    fenced: str | None  # why this error means another controller leads, or None


@dataclass(frozen=True)
class RoleReply:
    conn: int
    role: int
    generation: int


@dataclass(frozen=True)
class RoleStatus:
    """The switch made another controller MASTER (or changed our role)."""

    conn: int
    role: int
    generation: int


# -- inputs: leadership, changes, time --------------------------------------------------------


@dataclass(frozen=True)
class LeaseConfigured:
    """Several controllers share the store: this one takes part in the election."""

    controller_id: str
    lease_s: float


@dataclass(frozen=True)
class LeaseGranted:
    term: int
    asked_at: float


@dataclass(frozen=True)
class LeaseRefused:
    term: int
    holder: str


@dataclass(frozen=True)
class LeaseUnknown:
    """The store could not be asked: the lease may have run out."""


@dataclass(frozen=True)
class Fenced:
    """A write was refused as stale (switch or store); ``term`` is the newer one seen."""

    reason: str
    term: int = 0


@dataclass(frozen=True)
class ClaimSwitches:
    """A new term: become MASTER on every switch, then read back and diff."""


@dataclass(frozen=True)
class BelieveLeader:
    """A test hook: believe we lead with our known term shifted by ``term_delta`` and claim
    the switches, as a partitioned leader would."""

    term_delta: int


@dataclass(frozen=True)
class Change:
    """Change the pool state (API, membership, load moves) and program the difference."""

    mutation: Callable[[Steering], PoolChange | list[PoolChange]]
    reason: str


@dataclass(frozen=True)
class Tick:
    """Time passed: timers (port stats, load readings), health ages."""


# -- inputs: membership, read from the store ---------------------------------------------------

Member = tuple[str, str]  # (pool, instance name)
Beat = tuple[Any, int | None]  # a heartbeat key's value and its TTL in ms


@dataclass(frozen=True)
class PoolsRead:
    """Saved pool state, read at start (``startup``) or to keep a standby warm."""

    snapshots: tuple[PoolSnapshot, ...]
    startup: bool = False


@dataclass(frozen=True)
class RegistrationRead:
    """An instance's registration (None: it has none), read because of ``reason``."""

    pool: str
    name: str
    registration: Mapping[str, str] | None
    reason: str


@dataclass(frozen=True)
class HeartbeatsRead:
    beats: Mapping[Member, Beat]


@dataclass(frozen=True)
class HeartbeatLost:
    """A live instance's heartbeat is gone; ``registered``: its registration is still there."""

    pool: str
    name: str
    registered: bool


@dataclass(frozen=True)
class ScanRead:
    """Every registration of the pools (backstop for missed events), with heartbeats."""

    registrations: Mapping[str, Mapping[str, Mapping[str, str]]]
    beats: Mapping[Member, Beat]
    unreadable: frozenset[Member]


@dataclass(frozen=True)
class LivenessRestart:
    grace: bool


@dataclass(frozen=True)
class SaveAll:
    """Save every pool (the store was empty, came back, or a new term began)."""


@dataclass(frozen=True)
class StoredEpochs:
    """The epochs the store holds, read when it is reached for the first time."""

    epochs: Mapping[str, int | None]


@dataclass(frozen=True)
class PoolSaved:
    pool: str
    epoch: int
    newer: int | None  # the store held a newer epoch than ours


@dataclass(frozen=True)
class StoreEmptied:
    """These pools were saved before and are gone: the store restarted empty."""

    pools: tuple[str, ...]


@dataclass(frozen=True)
class Retire:
    """The controller drained or removed an instance: its registration is retired."""

    pool: str
    name: str


Input = (
    SwitchConnected | SwitchGone | ReadBackPart | SlotCounters | PortStatus | PortStats
    | BarrierReply | ErrorReply | RoleReply | RoleStatus | LeaseConfigured | LeaseGranted
    | LeaseRefused
    | LeaseUnknown | Fenced | ClaimSwitches | BelieveLeader | Change | Tick | PoolsRead
    | RegistrationRead | HeartbeatsRead | HeartbeatLost | ScanRead | LivenessRestart | SaveAll
    | StoredEpochs | PoolSaved | StoreEmptied | Retire
)  # fmt: skip


# -- requests: what the core asks a switch (beside the flow steps of controller.core.flows) ---


@dataclass(frozen=True)
class ReadPorts:
    pass


@dataclass(frozen=True)
class ReadFlows:
    pass


@dataclass(frozen=True)
class ReadGroups:
    pass


@dataclass(frozen=True)
class ReadPortStats:
    pass


@dataclass(frozen=True)
class ReadSlotCounters:
    pass


@dataclass(frozen=True)
class RoleRequest:
    role: int
    generation: int


Request = (
    fl.Step | ReadPorts | ReadFlows | ReadGroups | ReadPortStats | ReadSlotCounters | RoleRequest
)


# -- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send these requests, in order, each with its xid."""

    conn: int
    messages: tuple[tuple[int, Request], ...]


@dataclass(frozen=True)
class Disconnect:
    conn: int
    reason: str


@dataclass(frozen=True)
class Applied:
    """A :class:`Change` was made (``error`` None) or refused; ``change`` numbers it,
    ``started`` is the time of the input that made it."""

    change: int
    changes: tuple[PoolChange, ...]
    error: Exception | None = None
    reason: str = ""
    started: float = 0.0


@dataclass(frozen=True)
class Confirmed:
    """Every switch answered the barriers that follow change ``change`` (``at`` None: some
    switch went away instead)."""

    change: int
    at: float | None


@dataclass(frozen=True)
class SyncChanged:
    """A switch became (or stopped being) in sync: programmed, confirmed, ours to program."""

    switch: str
    synced: bool


@dataclass(frozen=True)
class NewTerm:
    """A lease answer made this controller the leader of a new term: load the pool state
    and claim the switches."""

    term: int


# -- outputs for the store --------------------------------------------------------------------


@dataclass(frozen=True)
class SavePool:
    """Write a pool's state, fenced by the term it was taken under."""

    snapshot: PoolSnapshot


@dataclass(frozen=True)
class RetireRegistration:
    pool: str
    name: str


@dataclass(frozen=True)
class RestoreRegistrations:
    """Write back registrations an emptied store lost."""

    pools: tuple[str, ...]
    registrations: Mapping[Member, Mapping[str, str]]


@dataclass(frozen=True)
class ReadRegistration:
    """Read an instance's registration and answer with :class:`RegistrationRead`."""

    pool: str
    name: str
    reason: str


@dataclass(frozen=True)
class CheckRegistered:
    """Read whether an instance is still registered; answer with :class:`HeartbeatLost`."""

    pool: str
    name: str


@dataclass(frozen=True)
class Reject:
    """Record bad data found in the store (counted and said once by the store)."""

    pool: str
    field: str
    why: str


StoreOutput = (
    SavePool | RetireRegistration | RestoreRegistrations | ReadRegistration | CheckRegistered
    | Reject
)  # fmt: skip
Output = Send | Disconnect | Applied | Confirmed | SyncChanged | NewTerm | StoreOutput
