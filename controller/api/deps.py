"""What the REST API and the metrics exporter use of the controller, as protocols.

The API runs in its own thread: it reads the snapshot the event loop publishes
(``view()``), changes state only through ``apply``/``call`` (run in the loop), and reads a
few values the loop replaces whole (``port_stats``, ``loads.reports``, ``counters``). The
concrete classes live in the OpenFlow and store layers, which this package does not import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, Protocol, TypeVar

from contract.topology import Topology
from controller.core.loadbalance import PoolReport
from controller.core.state import PoolChange, PoolState, Steering

T = TypeVar("T")

Mutation = Callable[[Steering], PoolChange | list[PoolChange]]
PortKey = tuple[str, int]  # (switch, port)
Member = tuple[str, str]  # (pool, instance)


class PublishedView(Protocol):
    """The immutable snapshot the loop publishes after each change."""

    @property
    def topology(self) -> Topology: ...
    @property
    def pools(self) -> Mapping[str, PoolState]: ...
    @property
    def switches(self) -> tuple[str, ...]: ...  # connected, sorted


class ChangeResult(Protocol):
    """One applied change: the slots it moved, and the switches' confirmation."""

    @property
    def changes(self) -> Sequence[PoolChange]: ...
    def wait(self, timeout: float) -> bool: ...


class ApiOptions(Protocol):
    @property
    def api_token(self) -> str | None: ...


class LoadReports(Protocol):
    @property
    def reports(self) -> Mapping[str, PoolReport]: ...  # replaced whole by the loop


class CounterReadings(Protocol):
    """The app's plain counters and its bounded sample queues (seconds)."""

    @property
    def rebalances(self) -> int: ...
    @property
    def slots_moved(self) -> int: ...
    @property
    def flow_mods_sent(self) -> int: ...
    @property
    def group_mods_sent(self) -> int: ...
    @property
    def barriers_sent(self) -> int: ...
    @property
    def switch_errors(self) -> int: ...
    @property
    def switch_connects(self) -> int: ...
    @property
    def port_events(self) -> int: ...
    @property
    def switch_refused(self) -> int: ...
    @property
    def handler_errors(self) -> int: ...
    @property
    def takeovers(self) -> int: ...
    @property
    def fenced(self) -> int: ...
    @property
    def change_latency(self) -> Iterable[float]: ...
    @property
    def takeover_seconds(self) -> Iterable[float]: ...


class SteeringHost(Protocol):
    """The running controller app, as the API and the metrics see it."""

    @property
    def options(self) -> ApiOptions: ...
    @property
    def loads(self) -> LoadReports: ...
    @property
    def port_stats(self) -> Mapping[PortKey, Mapping[str, int]]: ...  # values replaced whole
    @property
    def counters(self) -> CounterReadings: ...
    def view(self) -> PublishedView: ...
    def apply(self, mutation: Mutation, reason: str) -> ChangeResult: ...
    def call(self, fn: Callable[[], T]) -> T: ...
    def leading(self) -> bool: ...
    def health(self) -> list[str]: ...
    def role_status(self) -> dict[str, Any]: ...
    def believe_leader(self, term_delta: int) -> dict[str, Any]: ...


class MembershipService(Protocol):
    """Registrations and heartbeats in Redis; ``sources`` belongs to the loop."""

    @property
    def sources(self) -> MutableMapping[Member, str]: ...  # "topology", "registered", "api"
    @property
    def heartbeat_failures(self) -> int: ...
    def health(self) -> list[str]: ...
    def retire(self, pool: str, name: str) -> None: ...


class PoolStore(Protocol):
    @property
    def up(self) -> bool: ...
    @property
    def rejected(self) -> Mapping[tuple[str, str], int]: ...  # (pool, key) -> values refused


class LeaderElection(Protocol):
    def leader_api(self) -> str | None: ...
