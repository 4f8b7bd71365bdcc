"""The OpenFlow listener: accepts switch connections on a socket this module owns (so it can
be closed, and port 0 gives an ephemeral port), admits at most ``max_pending`` into the
handshake, gives each dpid to one live connection, and runs one watchdog that closes
connections without a handshake in time, sends echo requests to silent ones, closes the
dead, and stops the controller if one message is in hand too long.

The accept loop and the watchdog never end silently: an unexpected failure of either
calls ``on_fatal`` (``nfsteer controller`` then exits with status 1 and one line).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_handler
from os_ken.controller.handler import DEAD_DISPATCHER

from controller.core.switchlink import (
    CLAIM_GRACE_S,
    LinkTimers,
    Verdict,
    handshake_verdict,
    idle_verdict,
    is_alive,
)
from controller.ofp.connection import Connection, Dropped, address, describe_error, spawn_daemon
from controller.ofp.tls import TlsStream, peer_name

LOG = logging.getLogger("nfsteer.controller")
STOP_TIMEOUT = 5.0
MESSAGE_BUDGET_S = 10.0  # one message parsed and handled in more than this: a bug, stop
# accept() errors that concern one connection or a passing shortage, not the listener
# (accept(2): "Linux accept() passes already-pending network errors on the new socket").
ACCEPT_RETRY = {
    errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
    errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
    errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT,
}  # fmt: skip


@dataclass(frozen=True)
class LinkConfig:
    listener: socket.socket
    tls: ssl.SSLContext | None
    timers: LinkTimers
    on_fatal: Callable[[str], None] | None


class Listener(ofp_handler.OFPHandler):
    """os-ken's OpenFlow handler, serving our listening socket with contained, timed
    connections; configured by the ``nfsteer_link`` keyword (:class:`LinkConfig`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        config: LinkConfig = kwargs.pop("nfsteer_link")
        super().__init__(*args, **kwargs)
        self.config = config
        self._listener = config.listener
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)  # a dpid's owner went away
        self._connections: dict[Connection, threading.Thread] = {}
        # accepted sockets not yet past their features reply -> (accepted at, peer)
        self._pending: OrderedDict[socket.socket, tuple[float, Any]] = OrderedDict()
        self._owners: dict[int, Connection] = {}  # dpid -> the connection in charge
        self._stopping = threading.Event()
        self._watchdog: Any = None
        self._fatal_reported = False
        self._last_eviction_log = 0.0

    def start(self) -> Any:
        app_manager.OSKenApp.start(self)
        self._watchdog = spawn_daemon(self._watch)
        return spawn_daemon(self._accept_loop)

    # -- failures that end the listener ------------------------------------------

    def _fatal(self, reason: str) -> None:
        if self._stopping.is_set() or self._fatal_reported:
            return
        self._fatal_reported = True
        LOG.critical("%s", reason)
        if self.config.on_fatal is not None:
            self.config.on_fatal(reason)

    def _accept_loop(self) -> None:
        try:
            while True:
                try:
                    sock, addr = self._listener.accept()
                except OSError as e:
                    if self._stopping.is_set():
                        return
                    if e.errno not in ACCEPT_RETRY:
                        raise
                    LOG.warning("OpenFlow accept: %s: retrying", e.strerror or e)
                    time.sleep(0.1)  # e.g. out of file descriptors: let some close
                    continue
                self._admit(sock, addr)
        except BaseException as e:
            self._fatal(f"OpenFlow accept loop failed: {type(e).__name__}: {e}")

    def _admit(self, sock: socket.socket, addr: Any) -> None:
        now = time.monotonic()
        evicted = None
        with self._lock:
            self._pending[sock] = (now, addr)
            if len(self._pending) > self.config.timers.max_pending:
                evicted, (_, evicted_addr) = self._pending.popitem(last=False)
        if evicted is not None:
            if now - self._last_eviction_log > 10:
                self._last_eviction_log = now
                LOG.warning(
                    "more than %d connections in the OpenFlow handshake: closing the oldest (%s)",
                    self.config.timers.max_pending,
                    address(evicted_addr),
                )
            with contextlib.suppress(OSError):
                evicted.shutdown(socket.SHUT_RDWR)
        try:
            spawn_daemon(self._serve, sock, addr)
        except Exception as e:  # e.g. no thread can be started: this one goes
            LOG.error("connection from %s dropped: %s", address(addr), e)
            with self._lock:
                self._pending.pop(sock, None)
            sock.close()

    # -- one connection ---------------------------------------------------------

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        dp = None
        try:
            stream: Any = sock
            if self.config.tls is not None:
                stream = TlsStream(sock, self.config.tls)
                try:
                    stream.handshake(self.config.timers.handshake_s)
                except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                    LOG.warning(
                        "TLS handshake with %s failed: %s", address(addr), describe_error(e)
                    )
                    return
                LOG.info(
                    "TLS connection from %s: certificate %r",
                    address(addr),
                    peer_name(stream.peer_certificate()),
                )
            dp = Connection(stream, addr, self)
            with self._lock:
                self._connections[dp] = threading.current_thread()
            dp.serve()
        except Dropped as e:
            name = dp.peer if dp is not None else address(addr)
            LOG.warning("connection from %s dropped: %s", name, e)
        except OSError as e:
            LOG.info("connection from %s closed: %s", address(addr), describe_error(e))
        except Exception:
            name = dp.peer if dp is not None else address(addr)
            LOG.exception("connection from %s failed", name)
        finally:
            with self._lock:
                self._pending.pop(sock, None)
                if dp is not None:
                    self._connections.pop(dp, None)
                    if dp.claimed_dpid is not None and self._owners.get(dp.claimed_dpid) is dp:
                        del self._owners[dp.claimed_dpid]
                        self._released.notify_all()
            if dp is not None:
                dp.close()  # DEAD_DISPATCHER: apps learn the switch is gone
            with contextlib.suppress(OSError):
                sock.close()

    def claim(self, dp: Connection, dpid: int) -> None:
        """Make ``dp`` the connection in charge of ``dpid``, or raise Dropped."""
        replaced = None
        deadline = time.monotonic() + CLAIM_GRACE_S
        with self._lock:
            while True:
                held = self._owners.get(dpid)
                now = time.monotonic()
                if held is None or held is dp:
                    break
                if not is_alive(self.config.timers, now, held.silent_since(now)):
                    LOG.warning(
                        "dpid %#x: connection from %s silent for %.1f s: replaced by %s",
                        dpid,
                        address(held.address),
                        now - held.silent_since(now),
                        address(dp.address),
                    )
                    replaced = held
                    break
                if now >= deadline or self._stopping.is_set():
                    raise Dropped(
                        f"it claims dpid {dpid:#x}, which is connected from "
                        f"{address(held.address)}: refused, the connected one stays"
                    )
                # a reconnecting switch: its old connection may be ending right now
                self._released.wait(deadline - now)
            self._owners[dpid] = dp
            dp.claimed_dpid = dpid
            self._pending.pop(dp.raw_socket, None)
        if replaced is not None:
            replaced.abort()

    # -- timers ------------------------------------------------------------------

    def _watch(self) -> None:
        try:
            while not self._stopping.wait(self.config.timers.tick_s):
                self._watch_once(time.monotonic())
        except BaseException as e:
            self._fatal(f"OpenFlow connection watchdog failed: {type(e).__name__}: {e}")

    def _watch_once(self, now: float) -> None:
        expired = []
        with self._lock:
            for sock, (accepted_at, addr) in self._pending.items():
                if handshake_verdict(self.config.timers, now, accepted_at) is Verdict.CLOSE:
                    expired.append((sock, addr))
            for sock, _ in expired:
                del self._pending[sock]
            claimed = [dp for dp in self._connections if dp.claimed_dpid is not None]
        for sock, addr in expired:
            LOG.info(
                "connection from %s: no OpenFlow handshake in %.1f s: closed",
                address(addr),
                self.config.timers.handshake_s,
            )
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            busy = [dp for dp in self._connections if dp.handling_since is not None]
        for dp in busy:
            since = dp.handling_since
            if since is not None and now - since > MESSAGE_BUDGET_S:
                # A parser that never returns: say so and stop (crash-only), rather
                # than spin on silently with one connection's thread.
                self._fatal(
                    f"connection from {dp.peer}: one message has been in hand for "
                    f"{now - since:.0f} s"
                )
        for dp in claimed:
            if dp.aborted:
                continue
            silent_since = dp.silent_since(now)
            verdict = idle_verdict(self.config.timers, now, silent_since, dp.echo_sent)
            if verdict is Verdict.ECHO:
                dp.send_echo(now)
            elif verdict is Verdict.CLOSE:
                LOG.warning(
                    "connection from %s: nothing received for %.1f s: closed",
                    dp.peer,
                    now - silent_since,
                )
                dp.abort()

    # -- stopping ----------------------------------------------------------------

    def stop_serving(self) -> None:
        self._stopping.set()
        for close in (lambda: self._listener.shutdown(socket.SHUT_RDWR), self._listener.close):
            with contextlib.suppress(OSError):
                close()
        with self._lock:
            connections = dict(self._connections)
            pending = list(self._pending)
            self._released.notify_all()
        for sock in pending:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for dp, thread in connections.items():
            dp.set_state(DEAD_DISPATCHER)
            dp.abort()
            thread.join(STOP_TIMEOUT)
        for thread in (self.main_thread, self._watchdog):
            if thread is not None:
                thread.join(STOP_TIMEOUT)
