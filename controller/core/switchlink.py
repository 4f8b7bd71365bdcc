"""The rules of a switch connection: when to probe it, when to give up on it, who owns a dpid.

Pure decisions over monotonic times; :mod:`controller.ofp.launcher` applies them to sockets.

- A connection that has not completed the OpenFlow handshake (hello, features reply) within
  ``handshake_s`` of being accepted is closed. At most ``max_pending`` connections may be in
  the handshake at once; a new one beyond that closes the oldest.
- After the handshake a connection that has sent nothing for ``echo_interval_s`` gets an echo
  request, and another every ``echo_interval_s`` while it stays silent; one that has sent
  nothing (no echo reply, no message at all) for ``echo_misses`` intervals is dead and closed.
  Silence is time spent waiting for the peer: while the controller is still busy with what
  the peer sent (e.g. a backlog of events for the app), the peer is not silent, so a slow
  controller never takes its own backlog for a dead switch.
- A connection claiming the dpid of a live connection is refused: the live one stays in
  charge. A dead one (silent past the limit) is replaced. A newcomer waits up to
  ``CLAIM_GRACE_S`` for the current owner to go away first: a switch that reconnects may open
  its new connection before the end of the old one has been read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

DEFAULT_HANDSHAKE_S = 10.0
DEFAULT_ECHO_INTERVAL_S = 5.0
DEFAULT_ECHO_MISSES = 3
DEFAULT_MAX_PENDING = 64
CLAIM_GRACE_S = 1.0


class LinkError(ValueError):
    """A timer or limit is out of range; the message names it."""


@dataclass(frozen=True)
class LinkTimers:
    handshake_s: float = DEFAULT_HANDSHAKE_S
    echo_interval_s: float = DEFAULT_ECHO_INTERVAL_S
    echo_misses: int = DEFAULT_ECHO_MISSES
    max_pending: int = DEFAULT_MAX_PENDING

    def __post_init__(self) -> None:
        for name, low, high in (("handshake_s", 0.1, 3600), ("echo_interval_s", 0.05, 3600)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LinkError(f"{name} must be a number of seconds, not {value!r}")
            if not low <= value <= high:  # also refuses NaN
                raise LinkError(f"{name} must be between {low} and {high} s, not {value!r}")
        for name, low, high in (("echo_misses", 1, 100), ("max_pending", 1, 100_000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise LinkError(f"{name} must be an integer from {low} to {high}, not {value!r}")

    @property
    def dead_after_s(self) -> float:
        """Silence after which a connection is dead."""
        return self.echo_interval_s * self.echo_misses

    @property
    def tick_s(self) -> float:
        """How often the watchdog looks: a fraction of the shortest timer."""
        return min(self.handshake_s, self.echo_interval_s) / 5


class Verdict(enum.Enum):
    OK = "ok"
    ECHO = "echo"  # send an echo request
    CLOSE = "close"


def handshake_verdict(timers: LinkTimers, now: float, accepted_at: float) -> Verdict:
    """A connection still in the handshake."""
    return Verdict.CLOSE if now - accepted_at >= timers.handshake_s else Verdict.OK


def idle_verdict(
    timers: LinkTimers, now: float, silent_since: float, echo_sent: float | None
) -> Verdict:
    """A connection past its handshake whose peer has sent nothing since ``silent_since``
    and that was last sent an echo request at ``echo_sent``."""
    idle = now - silent_since
    if idle >= timers.dead_after_s:
        return Verdict.CLOSE
    if idle < timers.echo_interval_s:
        return Verdict.OK
    if echo_sent is None or echo_sent < silent_since or now - echo_sent >= timers.echo_interval_s:
        return Verdict.ECHO
    return Verdict.OK


def is_alive(timers: LinkTimers, now: float, silent_since: float) -> bool:
    """Whether a connection that owns a dpid still does (a newcomer for it is refused)."""
    return now - silent_since < timers.dead_after_s
