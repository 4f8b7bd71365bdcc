"""What the control core asks of the store, carried out by the membership service's threads:
pool saves (fenced by the term they were taken under; a newer snapshot of a pool replaces
an older one not yet written), registration reads and writes, records of bad data."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from controller.core import events as ev
from controller.core.control import View
from controller.core.snapshot import PoolSnapshot
from controller.store.pools import Fenced, Store, StoreUnavailable

log = logging.getLogger("nfsteer.membership")


class Controller(Protocol):
    def view(self) -> View: ...
    def submit(self, event: ev.Input) -> None: ...
    def tell(self, event: ev.Input) -> list[ev.Output]: ...


class StoreOutbox:
    def __init__(
        self,
        app: Controller,
        store: Store,
        read_registration: Callable[[str, str, str], None],
        wake: threading.Event,
    ):
        self.app = app
        self.store = store
        self.read_registration = read_registration
        self._wake = wake
        self._queue: queue.SimpleQueue[ev.StoreOutput] = queue.SimpleQueue()
        self._lock = threading.Lock()  # one thread carries out at a time; guards _dirty
        self._dirty: dict[str, PoolSnapshot] = {}
        self.save_error: str | None = None
        self.saved: set[str] = set()  # pools written to the store at least once

    def accept(self, out: ev.StoreOutput) -> None:
        """An output of the core for the store (in the loop: must not block)."""
        self._queue.put(out)
        self._wake.set()

    def health(self) -> list[str]:
        """Problems for /healthz: pool state that could not be saved."""
        with self._lock:
            pending, error = sorted(self._dirty), self.save_error
        if pending and error:
            return [f"pool state of {', '.join(pending)} not saved to redis: {error}"]
        return []

    def carry_out(self, flush: bool = True) -> None:
        """Do what the core asked of the store, in order; then save the changed pools."""
        with self._lock:
            while True:
                try:
                    out = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._one(out)
            if flush:
                self._flush()

    def _one(self, out: ev.StoreOutput) -> None:
        match out:
            case ev.SavePool():
                self._dirty[out.snapshot.name] = out.snapshot  # a newer snapshot wins
            case ev.ReadRegistration():
                self.read_registration(out.pool, out.name, out.reason)
            case ev.CheckRegistered():
                # {}: none (it deregistered); None: unreadable, which is not a deregistration
                registered = self.store.registration(out.pool, out.name) != {}
                self.app.tell(ev.HeartbeatLost(out.pool, out.name, registered))
            case ev.Reject():
                self.store.reject(out.pool, out.field, out.why)
            case ev.RetireRegistration():
                with contextlib.suppress(StoreUnavailable):
                    self.store.retire_registration(out.pool, out.name)
            case ev.RestoreRegistrations():
                n = self.store.restore_registrations(out.registrations)
                log.warning(
                    "redis holds no state for pools %s: writing it back (%d registrations)",
                    ", ".join(out.pools), n,
                )  # fmt: skip

    def _flush(self) -> None:
        """Save the changed pools, each fenced by the term it was taken under (lock held)."""
        dirty, self._dirty = self._dirty, {}
        lease = self.app.view().lease
        term = 0 if lease is None else lease.term
        try:
            for pool, snap in list(dirty.items()):
                if snap.term != term:  # taken under another term: not ours to write
                    del dirty[pool]
                    continue
                newer = self.store.save_pool(snap)
                self.saved.add(pool)
                if newer is not None:
                    self.app.submit(ev.PoolSaved(pool, snap.epoch, newer))
                del dirty[pool]
        except Fenced as e:
            # A newer leader wrote this pool: we are stale. Nothing of ours is written.
            dirty.clear()
            self.app.submit(ev.Fenced(f"the store refused a save: {e}", e.term))
            return
        except Exception as e:
            self.save_error = str(e) or type(e).__name__
            raise
        finally:
            for pool, snap in dirty.items():  # keep what was not written
                self._dirty.setdefault(pool, snap)
        self.save_error = None
