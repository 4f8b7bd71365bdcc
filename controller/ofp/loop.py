"""The controller's one loop: a thread that owns the control core and feeds it.

OpenFlow events (from os-ken's thread), functions to run (API changes, membership
decisions, from their threads) and the loop's own timer all go through one queue; the
loop turns each into the core's inputs, carries out the outputs (messages to switches,
answers to waiting callers, the store's work) and publishes an immutable view for readers
in other threads. No lock guards the core: only this thread touches it.

No failure ends the loop: it is logged with the event that caused it and contained to that
event, or to its switch, whose connection is dropped (it reconnects and is read back and
re-synced). If the loop ends anyway, :meth:`Loop.fatal` is called with one line saying
why (the process then ends with a non-zero status; crash-only: the state in the store makes
a restart lossless).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.core import events as ev
from controller.core.control import Core, View
from controller.core.state import PoolChange
from controller.ofp.links import Links

LOG = logging.getLogger("nfsteer.controller")
TICK_S = 0.5  # the loop is woken at least this often (timers, liveness)
LOOP_STALL_S = 3.0  # health fails when the loop has not turned for this long
FAILURE_WINDOW_S = 30.0  # ... and for this long after a handler failed
CALL_TIMEOUT_S = 30.0  # a caller waits this long for the loop to run its function
RECENT_CHANGES = 1000

T = TypeVar("T")


class ApplyResult:
    """The outcome of one change: which slots moved, and when the switches confirmed it."""

    def __init__(self, number: int, changes: list[PoolChange], started: float):
        self.number = number
        self.changes = changes
        self.started = started
        self.barrier_done: float | None = None  # when the last switch confirmed it
        self._done = threading.Event()

    def confirm(self, at: float | None) -> None:
        self.barrier_done = at
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """True once every connected switch answered the barrier that follows the change."""
        return self._done.wait(timeout)


@dataclass(frozen=True)
class _Input:
    event: ev.Input


@dataclass
class _Call:
    fn: Callable[[], Any]
    waited: bool  # a caller waits for the value (else: a failure is contained and logged)
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: BaseException | None = None


class Loop:
    def __init__(self, core: Core, on_fatal: Callable[[str], None]):
        self.core = core
        self.links = Links(core)
        self.on_fatal = on_fatal
        self.loop_turned = time.monotonic()
        self.last_failure: tuple[float, str] | None = None  # (when, what)
        self.store_sink: Callable[[ev.StoreOutput], None] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._results: dict[int, ApplyResult] = {}  # changes not yet confirmed
        # (reason, result) of the latest changes, whatever made them (tools, benchmarks)
        self.recent_changes: deque[tuple[str, ApplyResult]] = deque(maxlen=RECENT_CHANGES)
        self._synced = {n: threading.Event() for n in core.steering.topology.switches}
        self._answered = threading.Condition()  # after each turn: barriers may be answered
        self._datapaths: dict[str, Any] = {}
        self._view: View = core.view(time.monotonic())

    # -- from any thread ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nfsteer-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(CALL_TIMEOUT_S)

    def post_event(self, event: Any) -> None:
        """An os-ken event, to be translated and handled in the loop."""
        self._queue.put(event)

    def submit(self, event: ev.Input) -> None:
        """An input for the core, handled in the loop later (at once before it starts)."""
        if self._thread is None:
            self.feed(event)
            return
        self._queue.put(_Input(event))

    def tell(self, event: ev.Input) -> list[ev.Output]:
        """An input for the core, handled in the loop now; returns its outputs."""
        return self.call(lambda: self.feed(event))

    def in_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run ``fn`` in the loop and return its result (or raise its exception). Runs it
        at once when called from the loop, or before the loop has started."""
        if self._thread is None or self.in_loop():
            return fn()
        item = _Call(fn, waited=True)
        self._queue.put(item)
        deadline = time.monotonic() + timeout
        while not item.done.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
            if self._stopping.is_set() or not self._thread.is_alive():
                raise TimeoutError("the controller's event loop is stopping or has ended")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the controller's event loop did not answer in {timeout:g} s")
        if item.error is not None:
            raise item.error
        return item.value

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the loop later; its failure is logged there."""
        if self._thread is None:
            fn()
            return
        self._queue.put(_Call(fn, waited=False))

    def view(self) -> View:
        return self._view

    def datapaths(self) -> dict[str, Any]:
        return self._datapaths

    def wait_synced(self, switch: str, timeout: float) -> bool:
        return self._synced[switch].wait(timeout)

    def wait_confirmed(self, timeout: float) -> bool:
        self.call(lambda: None, timeout)  # the loop finished what it was doing (and sent it)
        with self._answered:
            return self._answered.wait_for(lambda: self._view.unconfirmed == 0, timeout)

    def health(self) -> list[str]:
        problems = []
        stalled = time.monotonic() - self.loop_turned
        if self._thread is not None and stalled > LOOP_STALL_S:
            problems.append(f"event loop has not turned for {stalled:.1f} s")
        elif self._thread is not None and not self._thread.is_alive():
            problems.append("event loop is not running")
        if self.last_failure is not None:
            when, what = self.last_failure
            ago = time.monotonic() - when
            if ago < FAILURE_WINDOW_S:
                problems.append(f"{what} {ago:.0f} s ago (contained)")
        return problems + list(self._view.switch_problems)

    # -- in the loop --------------------------------------------------------------------------

    def feed(self, event: ev.Input, now: float | None = None) -> list[ev.Output]:
        """Hand the core one input and carry out what it returns."""
        now = time.monotonic() if now is None else now
        outputs = self.core.handle(event, now, time.time())
        for out in outputs:
            self._carry_out(out)
        if self._thread is None:
            self._publish()
        return outputs

    def apply(self, change: ev.Change) -> ApplyResult:
        outputs = self.feed(change)
        applied = next(o for o in outputs if isinstance(o, ev.Applied))
        if applied.error is not None:
            raise applied.error
        return next(r for _, r in reversed(self.recent_changes) if r.number == applied.change)

    def _carry_out(self, out: ev.Output) -> None:
        match out:
            case ev.Send():
                try:
                    self.links.send(out)
                except Exception as e:  # e.g. the connection is closing: it ends anyway
                    LOG.debug("sending to connection %d failed: %s", out.conn, e)
            case ev.Disconnect():
                self.links.drop(out.conn)
            case ev.Applied() if out.error is None:
                result = ApplyResult(out.change, list(out.changes), out.started)
                self._results[out.change] = result
                self.recent_changes.append((out.reason, result))
            case ev.Confirmed():
                result = self._results.pop(out.change, None)
                if result is not None:
                    result.confirm(out.at)
            case ev.SyncChanged():
                event = self._synced[out.switch]
                event.set() if out.synced else event.clear()
            case ev.Applied() | ev.NewTerm():
                pass  # a refused change (its caller raises it); a new term (the election's)
            case _:
                if self.store_sink is not None:
                    self.store_sink(out)

    def _run(self) -> None:
        try:
            next_tick = 0.0
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._turn(_Input(ev.Tick()))
                try:
                    item = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
                except queue.Empty:
                    continue
                if item is not None:
                    self._turn(item)
        except BaseException as e:
            if not self._stopping.is_set():
                self.fatal(f"event loop ended: {type(e).__name__}: {e}")
            raise

    def _turn(self, item: Any) -> None:
        self.loop_turned = time.monotonic()
        if isinstance(item, _Call):
            try:
                self._run_call(item)
            finally:
                self._publish()  # before the caller goes on: it may read the view
                item.done.set()
            return
        if isinstance(item, _Input):
            self._input(item.event)
        else:
            self._os_ken_event(item)
        self._publish()

    def _run_call(self, item: _Call) -> None:
        try:
            item.value = item.fn()
        except Exception as e:
            if not item.waited:
                self._failed(f"function {getattr(item.fn, '__name__', item.fn)}", None)
            item.error = e
        except BaseException as e:
            item.error = e
            raise

    def _input(self, event: ev.Input) -> None:
        try:
            self.feed(event)
        except Exception:
            self._failed(f"input {type(event).__name__} failed", getattr(event, "conn", None))

    def _os_ken_event(self, event: Any) -> None:
        try:
            event_input = self.links.translate(event)
            if event_input is not None:
                self.feed(event_input)
        except Exception:
            msg = getattr(event, "msg", None)
            dp = getattr(msg, "datapath", None) or getattr(event, "datapath", None)
            self._failed(f"handler failed on {_describe(event)}", self.links.conn_of(dp))

    def _failed(self, what: str, conn: int | None) -> None:
        self.core.counters.handler_errors += 1
        self.last_failure = (time.monotonic(), what)
        LOG.exception("%s: contained", what)
        name = None if conn is None else self.core.switch_of(conn)
        if conn is not None and name is not None:
            # Its state may be half-updated: start it over from a fresh read-back.
            LOG.warning("switch %s: dropping its connection to re-sync it", name)
            self.links.drop(conn)
            self.feed(ev.SwitchGone(conn))

    def _publish(self) -> None:
        if self.core.take_changed():
            self._view = self.core.view(time.monotonic())
            self._datapaths = self.links.by_name()
        with self._answered:
            self._answered.notify_all()

    def fatal(self, reason: str) -> None:
        """The loop cannot go on: one line, then ``on_fatal`` (which ends the process)."""
        LOG.critical("nfsteer controller: %s: exiting", reason)
        self.on_fatal(reason)


def _describe(event: Any) -> str:
    msg = getattr(event, "msg", None)
    if msg is None:
        return type(event).__name__
    dpid = getattr(getattr(msg, "datapath", None), "id", None)
    return f"{type(event).__name__} (xid {getattr(msg, 'xid', '?')}, dpid {dpid})"
