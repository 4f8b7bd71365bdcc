"""The election service: claims and renews the leader's lease in Redis (one thread).

The thread only does the Redis I/O (:data:`controller.core.leadership.ACQUIRE_LUA` every renewal
interval); what a grant or a refusal means is decided by the control core
(:mod:`controller.core.roles`), to which the answers go as typed inputs.
When this controller wins a new term, the takeover is: load the pool state from Redis into
the app and write it back under the new term (which fences an older leader's writes), then
claim MASTER on every switch, read back and diff (:class:`~controller.core.events.ClaimSwitches`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Protocol

import redis

from controller.core import events as ev
from controller.core import leadership
from controller.store.pools import Store, StoreUnavailable

if TYPE_CHECKING:
    from controller.core.control import View
    from controller.store.membership import Membership

log = logging.getLogger("nfsteer.election")


class Controller(Protocol):
    """What the election needs of the running controller."""

    def view(self) -> View: ...
    def tell(self, event: ev.Input) -> list[ev.Output]: ...
    def fatal(self, reason: str) -> None: ...


def default_id() -> str:
    """This controller's id when ``--id`` is not given: unique per host and process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ElectionError(Exception):
    """This controller cannot take part (e.g. another running controller has its id)."""


class Election:
    def __init__(
        self,
        app: Controller,
        store: Store,
        membership: Membership | None,
        *,
        controller_id: str | None,
        lease_ms: int,
        renew_ms: int | None = None,
        api_url: str | None = None,
    ):
        self.app = app
        self.store = store
        self.membership = membership
        self.controller_id = controller_id or default_id()
        self.lease_s = lease_ms / 1000
        renew_ms = renew_ms or lease_ms // leadership.RENEWALS_PER_LEASE
        self.renew_s = renew_ms / 1000
        self.api_url = api_url
        self._acquire = store.client.register_script(leadership.ACQUIRE_LUA)
        self._release = store.client.register_script(leadership.RELEASE_LUA)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        app.tell(ev.LeaseConfigured(self.controller_id, self.lease_s))

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Take this controller's id (refused while another live controller holds it),
        then run the election thread."""
        self._claim_id()
        self._thread = threading.Thread(target=self._run, name="nfsteer-election", daemon=True)
        self._thread.start()

    def _claim_id(self) -> None:
        key = leadership.id_key(self.controller_id)
        ttl_ms = int(self.lease_s * 1000)
        deadline = time.monotonic() + self.lease_s + 0.5  # a dead predecessor's key expires
        while True:
            try:
                if self.store.call(lambda r: r.set(key, str(time.time()), nx=True, px=ttl_ms)):
                    return
            except StoreUnavailable:
                return  # Redis is down: the election waits for it like everything else
            if time.monotonic() > deadline:
                raise ElectionError(
                    f"another controller with id {self.controller_id!r} is running "
                    "(give each controller its own --id)"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
        lease = self.app.view().lease
        with contextlib.suppress(StoreUnavailable, redis.RedisError):
            if lease is not None and lease.leading_as_of_holder():
                args = [self.controller_id, lease.term]
                self.store.call(lambda r: self._release(keys=[leadership.LEASE_KEY], args=args))
            self.store.call(lambda r: r.delete(leadership.id_key(self.controller_id)))

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.round()
                self._stop.wait(max(0.0, self.renew_s - (time.monotonic() - started)))
        except BaseException as e:
            if not self._stop.is_set():
                self.app.fatal(f"election thread ended: {type(e).__name__}: {e}")
            raise

    def round(self) -> None:
        """One claim or renewal, and what follows from its answer."""
        lease = self.app.view().lease
        assert lease is not None
        asked_at = time.monotonic()
        ttl_ms = int(self.lease_s * 1000)
        mine = lease.term if lease.leading_as_of_holder() else 0
        try:
            granted, term, holder = self.store.call(
                lambda r: self._acquire(
                    keys=[leadership.LEASE_KEY, leadership.TERM_KEY],
                    args=[self.controller_id, ttl_ms, mine, lease.floor],
                )
            )
            self.store.call(lambda r: self._heartbeat(r, ttl_ms))
        except StoreUnavailable:
            self.app.tell(ev.LeaseUnknown())
            return
        except Exception:
            log.exception("election round failed")
            self.app.tell(ev.LeaseUnknown())
            return
        holder = holder.decode() if isinstance(holder, bytes) else str(holder)
        answer = (
            ev.LeaseGranted(int(term), asked_at) if granted else ev.LeaseRefused(int(term), holder)
        )
        if any(isinstance(out, ev.NewTerm) for out in self.app.tell(answer)):
            self.takeover()

    def _heartbeat(self, r: redis.Redis, ttl_ms: int) -> None:
        p = r.pipeline(transaction=False)
        p.set(leadership.id_key(self.controller_id), str(time.time()), px=ttl_ms)
        if self.api_url:
            p.set(leadership.api_key(self.controller_id), self.api_url, px=ttl_ms)
        p.execute()

    def takeover(self) -> None:
        """A new term: the pool state from Redis, written back under our term, then the
        switches."""
        if self.membership is not None:
            self.membership.take_over()
        self.app.tell(ev.ClaimSwitches())

    # -- for the API ----------------------------------------------------------------------------

    def leader_api(self) -> str | None:
        """The REST API URL of the current leader, if known."""
        lease = self.app.view().lease
        if lease is None or not lease.holder:
            return None
        holder = lease.holder
        try:
            return self.store.call(lambda r: r.get(leadership.api_key(holder)))
        except StoreUnavailable:
            return None
