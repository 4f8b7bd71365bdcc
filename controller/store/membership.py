"""Pool membership, the store side: NF registrations and heartbeats read, pool state written.

The controller side of the registration contract in ``contract/keys.py``:

- a pub/sub listener on ``nfsteer:{*}:events`` reacts at once to ``register``, ``update``,
  ``drain`` and ``deregister`` messages;
- a sync loop polls the heartbeat keys of every registered instance in one pipeline every
  ``POLL_INTERVAL_S`` (an instance whose heartbeat key expired or has not changed for the
  heartbeat TTL is failed: at most TTL + poll interval after its last heartbeat, 500 + 50 ms
  by default), compares all registrations with the pool state every ``SCAN_INTERVAL_S`` (a
  backstop for missed messages, and how registrations made while the store was unreachable
  are found), saves every changed pool, writes the whole state back when the store returns
  and restores registrations that an emptied store lost.

The two threads only read and write the store. What they read goes to the controller's
loop as typed inputs; every decision is the control core's (:mod:`controller.core.roster`),
and what it asks of the store (saves, reads, retired registrations) comes back as outputs,
carried out by :class:`~controller.store.outbox.StoreOutbox`. While the store is unreachable
nothing is failed for a missing heartbeat: the switch keeps its flows (fail-static) and
port-status failover keeps working from memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import redis

from contract import keys
from contract.values import is_name, short
from controller.core import events as ev
from controller.core.control import View
from controller.core.liveness import Liveness, Member
from controller.core.roster import Roster
from controller.core.snapshot import PoolSnapshot
from controller.store.outbox import StoreOutbox
from controller.store.pools import Store, StoreUnavailable

__all__ = ["POLL_INTERVAL_S", "Liveness", "Membership"]

log = logging.getLogger("nfsteer.membership")

POLL_INTERVAL_S = 0.05
SCAN_INTERVAL_S = 1.0
MAX_BACKOFF_S = 1.0


class Controller(Protocol):
    """What membership needs of the running controller (:class:`controller.ofp.app.SteeringApp`)."""

    @property
    def roster(self) -> Roster: ...
    def view(self) -> View: ...
    def leading(self) -> bool: ...
    def submit(self, event: ev.Input) -> None: ...
    def tell(self, event: ev.Input) -> list[ev.Output]: ...
    def set_store_sink(self, sink: Callable[[ev.StoreOutput], None]) -> None: ...
    def fatal(self, reason: str) -> None: ...


class Membership:
    """Reads registrations and heartbeats of one controller's pools and keeps the store in
    line with its pool state (two threads, store I/O only)."""

    def __init__(
        self,
        app: Controller,
        store: Store,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        scan_interval_s: float = SCAN_INTERVAL_S,
    ):
        self.app = app
        self.store = store
        self.poll_interval_s = poll_interval_s
        self.scan_interval_s = scan_interval_s
        self.pools = list(app.view().pools)
        self.restored = False  # state was loaded from the store (or the store was empty)
        self._wake = threading.Event()
        self.outbox = StoreOutbox(app, store, self._read_registration, self._wake)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pubsub: redis.client.PubSub | None = None
        app.set_store_sink(self.outbox.accept)

    # -- the core's state, for the API, metrics and tests -------------------------------------

    @property
    def sources(self) -> dict[Member, str]:
        """How each instance joined: "topology", "registered" or "api" (loop-owned)."""
        return self.app.roster.sources

    @property
    def liveness(self) -> Liveness:
        return self.app.roster.liveness

    @property
    def heartbeat_failures(self) -> int:
        return self.app.roster.heartbeat_failures

    @property
    def drain_grace_s(self) -> float:
        return self.app.roster.drain_grace_s

    @drain_grace_s.setter
    def drain_grace_s(self, seconds: float) -> None:
        self.app.roster.drain_grace_s = seconds

    # -- life cycle ---------------------------------------------------------------------------

    def restore(self) -> bool:
        """Load every pool's saved state (before switches are programmed and before the
        loop runs). False when the store is unreachable (the sync loop reconciles later)."""
        try:
            snapshots = self._load_pools()
        except StoreUnavailable:
            return False
        except ValueError as e:
            log.warning("ignoring saved state: %s", e)
            snapshots = ()
        self.restored = True
        self.app.tell(ev.PoolsRead(snapshots, startup=True))
        self.outbox.carry_out(flush=False)  # saves wait for the term
        return True

    def start(self) -> None:
        self.app.tell(ev.LivenessRestart(grace=True))
        for target, name in ((self._events_loop, "events"), (self._sync_loop, "sync")):
            t = threading.Thread(
                target=self._crash_only, args=(target, name), name=f"nfsteer-membership-{name}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)

    def _crash_only(self, target: Callable[[], None], name: str) -> None:
        """A membership thread contains its own failures; one that ends anyway while the
        controller runs ends the process (a supervisor restarts it, the store has the state)."""
        try:
            target()
        except BaseException as e:
            if not self._stop.is_set():
                self.app.fatal(f"membership {name} thread ended: {type(e).__name__}: {e}")
            raise

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=3)
        self._threads.clear()

    def health(self) -> list[str]:
        """Problems for /healthz: pool state that could not be saved."""
        return self.outbox.health()

    # -- from the loop ------------------------------------------------------------------------

    def take_over(self) -> None:
        """This controller leads a new term: adopt the pool state as the last leader left
        it, and write it back under the new term (an older leader's writes are refused
        from then on). Liveness starts without grace."""
        try:
            snapshots = self._load_pools()
        except StoreUnavailable:
            return  # the next round decides again
        self.app.tell(ev.PoolsRead(snapshots))
        self.app.tell(ev.LivenessRestart(grace=False))
        self.restored = True
        self.app.tell(ev.SaveAll())

    def retire(self, pool: str, name: str) -> None:
        """The controller drained or removed an instance: mark its registration draining so
        that neither the scan nor its heartbeat brings it back."""
        self.app.tell(ev.Retire(pool, name))
        with contextlib.suppress(StoreUnavailable):
            self.outbox.carry_out()

    # -- the pub/sub thread -------------------------------------------------------------------

    def _events_loop(self) -> None:
        backoff = POLL_INTERVAL_S
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
                self._pubsub = pubsub
                pubsub.psubscribe(keys.events_pattern())
                backoff = POLL_INTERVAL_S
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg is not None:
                        self._on_message(msg)
            except (redis.ConnectionError, redis.TimeoutError, OSError, StoreUnavailable):
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:  # a bug must not end membership: log it and carry on
                log.exception("event handling failed")
                self._stop.wait(backoff)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _on_message(self, msg: Mapping[str, Any]) -> None:
        channel, data = msg.get("channel"), msg.get("data")
        if not isinstance(channel, str) or not isinstance(data, str):
            return
        pool = channel.removeprefix(f"{keys.PREFIX}:{{").removesuffix("}:events")
        verb, _, name = data.partition(" ")
        if pool not in self.pools:
            return
        if not self.app.leading():
            return  # the leader acts on it
        if verb not in ("register", "update", "drain", "deregister") or not is_name(name):
            # Not UTF-8 (decoded with U+FFFD), unknown verb, bad name: counted, said once.
            self.store.reject(pool, "events", f"malformed event {short(data)}")
            return
        self._read_registration(pool, name, verb)

    def _read_registration(self, pool: str, name: str, reason: str) -> None:
        """Hand one instance's registration to the core (raises StoreUnavailable)."""
        reg = self.store.registration(pool, name)
        if reg is None:
            return  # unreadable: counted and logged by the store; the scan skips it too
        self.app.tell(ev.RegistrationRead(pool, name, reg, reason))

    # -- the sync thread ----------------------------------------------------------------------

    def _sync_loop(self) -> None:
        next_poll = next_scan = 0.0
        backoff = POLL_INTERVAL_S
        was_up = self.restored
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if not self.app.leading():
                    # A standby acts on nothing: it keeps its copy of the pools warm.
                    if now >= next_scan:
                        self.app.tell(ev.PoolsRead(self._load_pools()))
                        next_scan = now + self.scan_interval_s
                    was_up = True
                    self._wake.wait(max(0.0, next_scan - time.monotonic()))
                    self._wake.clear()
                    continue
                if not was_up:
                    if not self.store.ping():
                        raise StoreUnavailable("ping failed")
                    self._recovered()
                    was_up = True
                    next_scan = 0.0
                self.outbox.carry_out()
                if now >= next_poll:
                    members = self.app.view().registered
                    self.app.tell(ev.HeartbeatsRead(self.store.heartbeats(members)))
                    self.outbox.carry_out()
                    next_poll = now + self.poll_interval_s
                if now >= next_scan:
                    self._scan()
                    next_scan = now + self.scan_interval_s
                backoff = POLL_INTERVAL_S
                timeout = max(0.0, min(next_poll, next_scan) - time.monotonic())
            except StoreUnavailable as e:
                was_up = False
                self.outbox.save_error = f"redis unreachable ({e})"
                timeout = backoff
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:
                log.exception("membership sync failed")
                timeout = MAX_BACKOFF_S
            self._wake.wait(timeout)
            self._wake.clear()

    def _load_pools(self) -> tuple[PoolSnapshot, ...]:
        return tuple(s for s in (self.store.load_pool(p) for p in self.pools) if s is not None)

    def _scan(self) -> None:
        """Every registration against the pool state (backstop for missed events)."""
        regs, unreadable = self.store.members(self.pools)
        listed = [(p, n) for p, ms in regs.items() for n in ms]
        beats = self.store.heartbeats(listed)
        self.app.tell(ev.ScanRead(regs, beats, frozenset(unreadable)))
        self.outbox.carry_out()

    def _recovered(self) -> None:
        """The store is reachable (again): load or write back state, restore lost data."""
        if not self.restored:
            epochs = {pool: self.store.stored_epoch(pool) for pool in self.pools}
            self.app.tell(ev.StoredEpochs(epochs))
            self.restored = True
        # Saved before but gone now: the store restarted empty (not merely unreachable).
        saved = sorted(self.outbox.saved)
        lost = tuple(p for p in saved if self.store.stored_epoch(p) is None)
        if lost:
            self.app.tell(ev.StoreEmptied(lost))
        self.app.tell(ev.LivenessRestart(grace=True))
        self.app.tell(ev.SaveAll())
        self.outbox.carry_out()
