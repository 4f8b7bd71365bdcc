"""The heartbeat of an NF instance, sent by its packet loop.

A heartbeat proves that packets are being processed, not merely that the process exists,
so it comes from the packet loop itself: when one is due, the ``SET`` goes out in the same
pipelined round trip as the batch the loop is about to send to the store (no round trip of
its own under load), and on its own when there is no batch (idle wake-ups, or traffic that
needs no state). A loop that hangs stops beating, and its key expires after the TTL.
A side thread, as before, would share the interpreter lock with a saturated loop and be
late exactly when the instance is busiest.
"""

from __future__ import annotations

import time
from typing import Any

from contract import keys


def default_interval_ms(ttl_ms: int) -> int:
    """A beat every ``TTL / HEARTBEAT_INTERVAL_FRACTION``: several beats may be late or
    lost before the key expires."""
    return max(1, ttl_ms // keys.HEARTBEAT_INTERVAL_FRACTION)


def interval_error(ttl_ms: int, interval_ms: int | None) -> str | None:
    """Why a TTL/interval pair is unusable (None when it is fine)."""
    if ttl_ms < 10:
        return f"--heartbeat-ttl-ms must be at least 10, not {ttl_ms}"
    if interval_ms is None:
        return None
    if interval_ms < 1:
        return f"--heartbeat-interval-ms must be at least 1, not {interval_ms}"
    if 2 * interval_ms >= ttl_ms:
        return (
            f"--heartbeat-interval-ms {interval_ms} must be below half the heartbeat TTL "
            f"({ttl_ms} ms), so that one late beat does not let the key expire"
        )
    return None


class Heartbeat:
    """When the next beat is due, the command that makes it, and what was sent.

    ``channel`` is the store whose connection carries the beats: the packet loop's own
    store when state lives in Redis (then beats ride along with batches), else a store
    made for the beats alone. The loop only beats while ``enabled`` (set once the
    instance is registered)."""

    def __init__(self, channel: Any, key: str, ttl_ms: int, interval_ms: int):
        self.channel = channel
        self.key = key
        self.ttl_ms = ttl_ms
        self.interval_s = interval_ms / 1000
        self.enabled = False
        self.next_at = 0.0
        self.last_at: float | None = None
        self.with_batch = 0
        self.alone = 0
        self.failed = 0
        self.max_gap_ms = 0.0  # longest time between two beats the loop sent

    def due(self, now: float) -> bool:
        return self.enabled and now >= self.next_at

    def wait_s(self, now: float) -> float:
        """How long the loop may sleep before the next beat is due."""
        return max(0.0, self.next_at - now) if self.enabled else 1.0

    def loop_alive(self, now: float) -> bool:
        """Whether the loop has beaten within the TTL (or is not beating yet)."""
        if not self.enabled or self.last_at is None:
            return True
        return (now - self.last_at) * 1000 < self.ttl_ms

    def command(self) -> list[str]:
        return ["SET", self.key, f"{time.time():.3f}", "PX", str(self.ttl_ms)]

    def beat(self, now: float, with_batch: bool) -> None:
        """Record a beat handed to the store at ``now``."""
        if self.last_at is not None:
            self.max_gap_ms = max(self.max_gap_ms, round((now - self.last_at) * 1000, 1))
        self.last_at = now
        self.next_at = now + self.interval_s
        if with_batch:
            self.with_batch += 1
        else:
            self.alone += 1

    def send_alone(self, now: float) -> None:
        """One beat in a round trip of its own (nothing else may be in flight on the
        channel). A store that is unreachable fails at once (it backs off), so this never
        holds the loop for long."""
        from nf.state import NFStateUnavailable

        try:
            self.channel.command(self.command())
        except NFStateUnavailable:
            self.failed += 1
            self.next_at = now + self.interval_s
            return
        self.beat(now, with_batch=False)

    def stats(self) -> dict[str, Any]:
        return {
            "ttl_ms": self.ttl_ms,
            "interval_ms": round(self.interval_s * 1000, 3),
            "with_batch": self.with_batch,
            "alone": self.alone,
            "failed": self.failed,
            "max_gap_ms": self.max_gap_ms,
        }
