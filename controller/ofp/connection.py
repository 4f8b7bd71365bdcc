"""One switch connection, served by its own thread, which reads and parses messages itself
rather than with os-ken's reader, so that

- a connection that breaks the protocol (bad length, wrong version, framing os-ken's parser
  would loop on, a message it cannot parse) is dropped with one log line naming the peer,
  and nothing else is affected (:mod:`controller.ofp.wire` checks framing first);
- before its features reply a connection gets no further than the handshake: no other
  message of it reaches the app;
- its send thread is told to stop when the connection ends (os-ken's is never woken).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from os_ken.controller import controller as ofc
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER
from os_ken.lib import hub

from controller.ofp import wire

LOG = logging.getLogger("nfsteer.controller")
READ_SIZE = 64 * 1024
OFP_HEADER = struct.Struct("!BBHI")  # version, type, length, xid


class Owner(Protocol):
    """The listener in charge of the connections (:class:`controller.ofp.listener.Listener`)."""

    def claim(self, dp: Connection, dpid: int) -> None: ...


def address(addr: Any) -> str:
    """``host:port`` of a peer address tuple."""
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Dropped(Exception):
    """A connection is closed on purpose; the message says why (one log line)."""


class Connection(ofc.Datapath):
    """One switch connection, read and parsed by its own thread (see the module doc)."""

    def __init__(self, stream: Any, address: Any, owner: Owner):
        super().__init__(stream, address)
        self.raw_socket: socket.socket = getattr(stream, "raw", stream)
        self.owner = owner
        self.claimed_dpid: int | None = None  # set once its features reply is accepted
        # since when the reader has been waiting for the peer with nothing received;
        # None while it handles what it read (busy, so the peer is not silent)
        self.waiting_since: float | None = time.monotonic()
        self.echo_sent: float | None = None
        self.aborted = False
        # since when one message has been in hand (parsing, handlers); None: none
        self.handling_since: float | None = None

    def silent_since(self, now: float) -> float:
        waiting = self.waiting_since
        return now if waiting is None else waiting

    @property
    def peer(self) -> str:
        name = address(self.address)
        return name if self.claimed_dpid is None else f"{name} (dpid {self.claimed_dpid:#x})"

    def serve(self) -> None:
        send_thread = spawn_daemon(self._send_then_shutdown)
        try:
            self.send_msg(self.ofproto_parser.OFPHello(self))
            self._read_messages()
        finally:
            self._stop_sending()
            hub.joinall([send_thread])
            self.is_active = False

    def abort(self) -> None:
        """End the connection from another thread: its reader and writer wake up."""
        self.aborted = True
        with contextlib.suppress(OSError):
            self.raw_socket.shutdown(socket.SHUT_RDWR)

    def _send_then_shutdown(self) -> None:
        try:
            self._send_loop()
        finally:
            # A connection that can no longer be written is over: end its reader too,
            # so that the switch reconnects and is read back, rather than being kept
            # as a switch that silently gets nothing.
            self.abort()

    def _try_send(self, buf: bytes, close_socket: bool = False) -> bool:
        """Queue ``buf`` unless the send queue is full (never blocks)."""
        if not self._send_q_sem.acquire(blocking=False):
            return False
        queue = self.send_q
        if queue is None:
            self._send_q_sem.release()
            return False
        queue.put((buf, close_socket))
        return True

    def _stop_sending(self) -> None:
        # Wake the send thread (blocked on its queue) with an empty message that asks
        # it to stop; if its queue is full it is stuck writing: cut the socket.
        if not self._try_send(b"", close_socket=True):
            self.abort()

    def send_echo(self, now: float) -> None:
        msg = self.ofproto_parser.OFPEchoRequest(self)
        msg.set_xid(0)  # not set_xid(): the app's thread numbers the other messages
        msg.serialize()
        if self._try_send(bytes(msg.buf)):
            self.echo_sent = now

    def _read_messages(self) -> None:
        buf = bytearray()
        while self.state != DEAD_DISPATCHER:
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            try:
                data = self.socket.recv(READ_SIZE)
            except TimeoutError:
                continue
            except OSError as e:  # reset, TLS error, or shut down by abort()
                LOG.debug("connection from %s: %s", self.peer, e)
                return
            if not data:
                return
            self.waiting_since = None
            buf += data
            start = 0
            while len(buf) - start >= OFP_HEADER.size:
                version, msg_type, msg_len, xid = OFP_HEADER.unpack_from(buf, start)
                if msg_len < OFP_HEADER.size:
                    raise Dropped(f"message length {msg_len} is shorter than a header")
                if len(buf) - start < msg_len:
                    break
                self.handling_since = time.monotonic()
                self._handle(version, msg_type, msg_len, xid, bytes(buf[start : start + msg_len]))
                self.handling_since = None
                start += msg_len
            del buf[:start]

    def _handle(self, version: int, msg_type: int, msg_len: int, xid: int, raw: bytes):
        ofp = self.ofproto
        if msg_type != ofp.OFPT_HELLO and version != ofp.OFP_VERSION:
            raise Dropped(
                f"message type {msg_type} in OpenFlow version {version:#x}, "
                f"not {ofp.OFP_VERSION:#x}"
            )
        if self.claimed_dpid is None and msg_type not in (
            ofp.OFPT_HELLO,
            ofp.OFPT_ERROR,
            ofp.OFPT_ECHO_REQUEST,
            ofp.OFPT_ECHO_REPLY,
            ofp.OFPT_FEATURES_REPLY,
        ):
            LOG.debug("connection from %s: type %d before features", self.peer, msg_type)
            return
        if msg_type not in wire.PARSED:
            LOG.debug("connection from %s: message type %d ignored", self.peer, msg_type)
            return
        problem = wire.check(msg_type, raw)
        if problem is not None:
            raise Dropped(f"malformed message type {msg_type} ({msg_len} bytes): {problem}")
        try:
            msg = self.ofproto_parser.msg_parser(self, version, msg_type, msg_len, xid, raw)
        except Exception as e:
            raise Dropped(
                f"malformed or unknown message type {msg_type} ({msg_len} bytes): "
                f"{type(e).__name__}: {str(e)[:200]}"
            ) from None
        if msg is None:
            return
        if isinstance(msg, self.ofproto_parser.OFPSwitchFeatures):
            if self.state != CONFIG_DISPATCHER:
                return  # not asked for: os-ken and the app take it in CONFIG only
            if self.claimed_dpid is not None:
                if msg.datapath_id != self.claimed_dpid:
                    raise Dropped(f"a second features reply, for dpid {msg.datapath_id:#x}")
                return
            self.owner.claim(self, msg.datapath_id)
        ev = ofp_event.ofp_msg_to_ev(msg)
        brick = self.ofp_brick
        if brick is None:
            return
        brick.send_event_to_observers(ev, self.state)
        for handler in brick.get_handlers(ev):
            if self.state in handler.callers[ev.__class__].dispatchers:
                handler(ev)


def spawn_daemon(target: Callable[..., None], *args: Any) -> threading.Thread:
    """A daemon thread: a connection's threads must never keep the process from exiting."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def describe_error(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
