"""What to do about one instance, given its registration, liveness, port and current state.

Pure: the membership service (:mod:`controller.store.membership`) reads Redis and the switch
ports, calls :func:`decide`, and carries out the :class:`Decision` through the app's loop.
The rules, in order:

1. No registration: a registered instance is removed (it deregistered); others are left
   to whoever manages them (the topology file, the API).
2. Registration in state ``draining``: a registered, active instance is drained.
3. Not alive (heartbeat lost): nothing here — the heartbeat poll fails it.
4. Its switch port is down: nothing — port status decides, and it rejoins when the port
   is back up.
5. A registration that cannot be placed or parsed is ignored (and said once).
6. Otherwise the instance is managed by its registration from now on: a draining one
   keeps draining, an active one takes a new capacity, any other joins.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.core.state import InstanceInfo, InstanceState


class Action(StrEnum):
    NOTHING = "nothing"
    REMOVE = "remove"
    DRAIN = "drain"
    IGNORE = "ignore"  # the registration is invalid
    JOIN = "join"
    SET_CAPACITY = "set_capacity"


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str = ""
    info: InstanceInfo | None = None  # JOIN: the instance as registered
    capacity: float | None = None  # SET_CAPACITY
    adopt: bool = False  # from now on its registration (heartbeat) manages the instance


NOTHING = Decision(Action.NOTHING)


def decide(
    registration: dict[str, str] | None,
    *,
    alive: bool,
    current: InstanceInfo | None,
    source: str | None,
    port_down: bool,
    parsed: InstanceInfo | str | None,
) -> Decision:
    """The decision for one instance. ``parsed`` is the registration turned into an
    InstanceInfo, or the reason it could not be (None when there is no registration)."""
    registered = source == "registered"
    if not registration:
        if current is not None and registered:
            return Decision(Action.REMOVE, "deregistered")
        return NOTHING
    if registration.get("state") == InstanceState.DRAINING:
        if registered and current is not None and current.state is InstanceState.ACTIVE:
            return Decision(Action.DRAIN, "drain")
        return NOTHING  # retired, taken over through the API, or not serving
    if not alive or port_down:
        return NOTHING
    if not isinstance(parsed, InstanceInfo):
        return Decision(Action.IGNORE, parsed or "no registration")
    if current is not None and current.state is InstanceState.DRAINING:
        return Decision(Action.NOTHING, adopt=True)  # until it deregisters or time is up
    if current is not None and current.state is InstanceState.ACTIVE:
        if current.capacity != parsed.capacity:
            return Decision(Action.SET_CAPACITY, "capacity", capacity=parsed.capacity, adopt=True)
        return Decision(Action.NOTHING, adopt=True)
    return Decision(Action.JOIN, "join", info=parsed, adopt=True)
