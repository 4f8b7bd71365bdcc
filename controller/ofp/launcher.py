"""`nfsteer controller`: run the steering app under an os-ken AppManager driven here.

os-ken 4 uses native threads by default, and two of its parts never stop with them:
``AppManager.run_apps()`` calls ``kill()`` on threads that have none, and a switch
connection's send thread is never woken when the switch goes away (``hub.kill`` is a no-op),
so its threads outlive the connection. Here the AppManager is driven step by step, the
OpenFlow listener is a socket this module owns (so it can be closed, and port 0 gives an
ephemeral port), and each connection's send thread is told to stop when the connection
ends. The listen address (and TLS files, echo timers) are also written to os-ken's CONF
(``ofp_listen_host``, ``ofp_tcp_listen_port`` or ``ofp_ssl_listen_port``, ``ctl_privkey``,
``ctl_cert``, ``ca_certs``, ``echo_request_interval``) for anything that reads them there.

Switch connections (see :mod:`controller.core.switchlink` for the rules): each is served by its
own thread, which reads and parses messages itself rather than with os-ken's reader, so that

- a connection that breaks the protocol (bad length, wrong version, a message os-ken cannot
  parse) is dropped with one log line naming the peer, and nothing else is affected;
- before its features reply a connection gets no further than the handshake: no other
  message of it reaches the app;
- a features reply claiming the dpid of a live connection is refused and the connection
  closed; the live one stays in charge;
- one watchdog thread closes connections that do not complete the handshake in time, sends
  echo requests to silent ones and closes the dead.

The accept loop and the watchdog never end silently: an unexpected failure of either stops
the controller, and ``nfsteer controller`` exits with status 1 and one line saying why.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from contract.secrets import (
    add_api_token_arguments,
    add_redis_url_arguments,
    api_token,
    redis_url,
)
from controller.core.leadership import DEFAULT_LEASE_MS
from controller.core.switchlink import (
    CLAIM_GRACE_S,
    LinkError,
    LinkTimers,
    Verdict,
    handshake_verdict,
    idle_verdict,
    is_alive,
)
from controller.ofp import wire
from controller.ofp.options import (
    DEFAULT_API,
    DEFAULT_HEARTBEAT_TTL_MS,
    DEFAULT_LISTEN,
    LOG_LEVELS,
    Options,
    OptionsError,
    parse_api,
    parse_listen,
)
from controller.ofp.tls import TlsConfigError, TlsFiles, TlsStream, peer_name, server_context

if TYPE_CHECKING:
    from controller.ofp.app import SteeringApp

LOG = logging.getLogger("nfsteer.controller")
APP_MODULE = "controller.ofp.app"
OFP_HANDLER_MODULE = "os_ken.controller.ofp_handler"
STOP_TIMEOUT = 5.0
MESSAGE_BUDGET_S = 10.0  # one message parsed and handled in more than this: a bug, stop
READ_SIZE = 64 * 1024
OFP_HEADER = struct.Struct("!BBHI")  # version, type, length, xid
# accept() errors that concern one connection or a passing shortage, not the listener
# (accept(2): "Linux accept() passes already-pending network errors on the new socket").
ACCEPT_RETRY = {
    errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
    errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
    errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT,
}  # fmt: skip
LINK_OPTIONS = {
    "handshake_s": "--handshake-timeout",
    "echo_interval_s": "--echo-interval",
    "echo_misses": "--echo-misses",
    "max_pending": "--max-handshakes",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", required=True, metavar="FILE", help="topology YAML file")
    add_redis_url_arguments(p, "Redis URL for pool state (redis://...; default $NFSTEER_REDIS)")
    p.add_argument(
        "--listen",
        default="{}:{}".format(*DEFAULT_LISTEN),
        metavar="[tcp:|ssl:]HOST:PORT",
        help="OpenFlow listen address; ssl: for OpenFlow over TLS, which needs --ca-cert, "
        "--cert and --private-key (default %(default)s)",
    )
    p.add_argument(
        "--ca-cert", metavar="FILE", help="TLS: CA certificate that switch certificates must have"
    )
    p.add_argument("--cert", metavar="FILE", help="TLS: the controller's certificate")
    p.add_argument("--private-key", metavar="FILE", help="TLS: the controller's private key")
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=LinkTimers().handshake_s,
        metavar="S",
        help="close a switch connection without hello and features reply after S seconds "
        "(default %(default)s)",
    )
    p.add_argument(
        "--echo-interval",
        type=float,
        default=LinkTimers().echo_interval_s,
        metavar="S",
        help="send an echo request to a switch silent for S seconds (default %(default)s)",
    )
    p.add_argument(
        "--echo-misses",
        type=int,
        default=LinkTimers().echo_misses,
        metavar="N",
        help="close a switch connection silent for N echo intervals (default %(default)s)",
    )
    p.add_argument(
        "--max-handshakes",
        type=int,
        default=LinkTimers().max_pending,
        metavar="N",
        help="connections allowed in the OpenFlow handshake at once; a new one beyond "
        "closes the oldest (default %(default)s)",
    )
    p.add_argument(
        "--api",
        default="{}:{}".format(*DEFAULT_API),
        metavar="HOST:PORT",
        help="REST API and metrics address, or 'off' for none (default %(default)s); "
        "an address that is not loopback needs --api-token",
    )
    add_api_token_arguments(p, "token required by changing API calls (default $NFSTEER_API_TOKEN)")
    p.add_argument(
        "--heartbeat-ttl-ms",
        type=int,
        default=DEFAULT_HEARTBEAT_TTL_MS,
        metavar="N",
        help="an instance whose heartbeat is older than this is failed (default %(default)s)",
    )
    p.add_argument(
        "--id",
        dest="controller_id",
        metavar="NAME",
        help="this controller's name among several sharing one Redis (default: host name "
        "and pid); two running controllers may not share a name",
    )
    p.add_argument(
        "--lease-ms",
        type=int,
        default=DEFAULT_LEASE_MS,
        metavar="N",
        help="the leader's lease in Redis (default %(default)s; renewed every lease / 4): "
        "after the leader dies, another takes over within about this long",
    )
    p.add_argument(
        "--lease-renew-ms",
        type=int,
        metavar="N",
        help="renewal interval of the lease (default lease / 4; must be under lease / 3)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level (default %(default)s)",
    )


def options_from_args(args: argparse.Namespace) -> Options:
    from contract.errors import UsageError

    try:
        tls, listen = parse_listen(args.listen, "--listen")
        files = (args.ca_cert, args.cert, args.private_key)
        if tls and None in files:
            raise OptionsError("--listen ssl:... needs --ca-cert, --cert and --private-key")
        if not tls and any(f is not None for f in files):
            raise OptionsError("--ca-cert, --cert and --private-key need --listen ssl:HOST:PORT")
        try:
            timers = LinkTimers(
                handshake_s=args.handshake_timeout,
                echo_interval_s=args.echo_interval,
                echo_misses=args.echo_misses,
                max_pending=args.max_handshakes,
            )
        except LinkError as e:
            name, _, rest = str(e).partition(" ")
            raise OptionsError(f"{LINK_OPTIONS.get(name, name)} {rest}") from None
        return Options(
            topology=args.topology,
            redis_url=redis_url(args),
            listen=listen,
            api=parse_api(args.api, "--api"),
            api_token=api_token(args),
            heartbeat_ttl_ms=args.heartbeat_ttl_ms,
            log_level=args.log_level,
            controller_id=args.controller_id,
            lease_ms=args.lease_ms,
            lease_renew_ms=args.lease_renew_ms,
            listen_tls=TlsFiles(*files) if tls else None,  # type: ignore[arg-type]
            switch_link=timers,
        )
    except OptionsError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from contract.errors import UsageError
    from contract.topology import load_topology

    options = options_from_args(args)
    load_topology(options.topology)  # a bad file is reported before anything starts
    if options.redis_url:
        check_store(options.redis_url)
    stopping = threading.Event()
    fatal: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    from controller.ofp.service import ServiceError

    try:
        app, stop = start_in_thread(options, on_fatal=on_fatal)
    except (ServiceError, TlsConfigError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        host, port = options.listen
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    LOG.info(
        "OpenFlow%s listening on %s:%d",
        " over TLS" if options.listen_tls else "",
        *app.options.listen,
    )
    while not stopping.wait(1.0):
        pass
    LOG.info("stopping")
    stop()
    if fatal:
        # crash-only: a supervisor restarts the controller, which resumes from Redis
        LOG.critical("exiting: %s", fatal[0])
        return 1
    return 0


def check_store(url: str) -> None:
    """A wrong Sentinel address, service name or password stops the start (one line, exit
    2). A store that is merely down is not an error: the controller runs from the topology
    until it is back."""
    from contract.errors import UsageError
    from contract.storeurl import StoreURLError, check_reachable, close_client
    from controller.store.pools import connect

    client = connect(url)
    try:
        check_reachable(client, url)
    except StoreURLError as e:
        if not str(e).startswith("store unreachable"):
            raise UsageError(str(e)) from None
    finally:
        close_client(client)


def start_in_thread(
    options: Options, on_fatal: Callable[[str], None] | None = None
) -> tuple[SteeringApp, Callable[[], None]]:
    """Run the app under its own AppManager in this process; returns (app, stop).

    ``options.listen`` may give port 0: the app's options then carry the port chosen.
    ``on_fatal(reason)`` is called (once) if the OpenFlow accept loop or the connection
    watchdog fails; the controller no longer accepts switches then and must be stopped.
    """
    from os_ken.base import app_manager

    tls = server_context(options.listen_tls) if options.listen_tls is not None else None
    host, port = options.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(64)
    except OSError:
        listener.close()
        raise
    options = replace(options, listen=(host, listener.getsockname()[1]))
    _mirror_conf(options)

    handler_cls = _handler_class(listener, tls, options.switch_link, on_fatal)
    manager = app_manager.AppManager()  # not the singleton: tests start several in turn
    try:
        manager.load_apps([APP_MODULE])
        manager.applications_cls[OFP_HANDLER_MODULE] = handler_cls
        contexts = manager.create_contexts()
        manager.instantiate_apps(nfsteer_options=options, **contexts)
    except BaseException:
        listener.close()
        manager.close()
        raise
    app = next(a for a in manager.applications.values() if type(a).__name__ == "SteeringApp")
    handler = next(a for a in manager.applications.values() if isinstance(a, handler_cls))
    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        handler.stop_serving()
        manager.close()

    return app, stop


def _mirror_conf(options: Options) -> None:
    """Write the listener's settings to os-ken's CONF, for apps that read them there."""
    from os_ken import cfg

    conf = cfg.CONF
    host, port = options.listen
    conf.set_override("ofp_listen_host", host)
    files = options.listen_tls
    conf.set_override("ofp_tcp_listen_port", None if files else port)
    conf.set_override("ofp_ssl_listen_port", port if files else None)
    conf.set_override("ctl_privkey", str(files.private_key) if files else None)
    conf.set_override("ctl_cert", str(files.cert) if files else None)
    conf.set_override("ca_certs", str(files.ca_cert) if files else None)
    conf.set_override("echo_request_interval", options.switch_link.echo_interval_s)
    conf.set_override("maximum_unreplied_echo_requests", options.switch_link.echo_misses)


def _address(addr: Any) -> str:
    """``host:port`` of a peer address tuple."""
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class Dropped(Exception):
    """A connection is closed on purpose; the message says why (one log line)."""


def _handler_class(
    listener: socket.socket,
    tls: ssl.SSLContext | None,
    timers: LinkTimers,
    on_fatal: Callable[[str], None] | None,
) -> type:
    """os-ken's OpenFlow handler, serving our listener with contained, timed connections."""
    from os_ken.controller import controller as ofc
    from os_ken.controller import ofp_event, ofp_handler
    from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER
    from os_ken.lib import hub

    class Datapath(ofc.Datapath):
        def __init__(self, stream: Any, address: Any, owner: Handler):
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
            name = _address(self.address)
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
                    self._handle(
                        version, msg_type, msg_len, xid, bytes(buf[start : start + msg_len])
                    )
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

    class Handler(ofp_handler.OFPHandler):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._listener = listener
            self._lock = threading.Lock()
            self._released = threading.Condition(self._lock)  # a dpid's owner went away
            self._connections: dict[Datapath, threading.Thread] = {}
            # accepted sockets not yet past their features reply -> (accepted at, peer)
            self._pending: OrderedDict[socket.socket, tuple[float, Any]] = OrderedDict()
            self._owners: dict[int, Datapath] = {}  # dpid -> the connection in charge
            self._stopping = threading.Event()
            self._watchdog: Any = None
            self._fatal_reported = False
            self._last_eviction_log = 0.0

        def start(self) -> Any:
            app_manager_start(self)
            self._watchdog = spawn_daemon(self._watch)
            return spawn_daemon(self._accept_loop)

        # -- failures that end the listener ------------------------------------------

        def _fatal(self, reason: str) -> None:
            if self._stopping.is_set() or self._fatal_reported:
                return
            self._fatal_reported = True
            LOG.critical("%s", reason)
            if on_fatal is not None:
                on_fatal(reason)

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
                if len(self._pending) > timers.max_pending:
                    evicted, (_, evicted_addr) = self._pending.popitem(last=False)
            if evicted is not None:
                if now - self._last_eviction_log > 10:
                    self._last_eviction_log = now
                    LOG.warning(
                        "more than %d connections in the OpenFlow handshake: closing the "
                        "oldest (%s)",
                        timers.max_pending,
                        _address(evicted_addr),
                    )
                with contextlib.suppress(OSError):
                    evicted.shutdown(socket.SHUT_RDWR)
            try:
                spawn_daemon(self._serve, sock, addr)
            except Exception as e:  # e.g. no thread can be started: this one goes
                LOG.error("connection from %s dropped: %s", _address(addr), e)
                with self._lock:
                    self._pending.pop(sock, None)
                sock.close()

        # -- one connection ---------------------------------------------------------

        def _serve(self, sock: socket.socket, addr: Any) -> None:
            dp = None
            try:
                stream: Any = sock
                if tls is not None:
                    stream = TlsStream(sock, tls)
                    try:
                        stream.handshake(timers.handshake_s)
                    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                        LOG.warning("TLS handshake with %s failed: %s", _address(addr), _reason(e))
                        return
                    LOG.info(
                        "TLS connection from %s: certificate %r",
                        _address(addr),
                        peer_name(stream.peer_certificate()),
                    )
                dp = Datapath(stream, addr, self)
                with self._lock:
                    self._connections[dp] = threading.current_thread()
                dp.serve()
            except Dropped as e:
                name = dp.peer if dp is not None else _address(addr)
                LOG.warning("connection from %s dropped: %s", name, e)
            except OSError as e:
                LOG.info("connection from %s closed: %s", _address(addr), _reason(e))
            except Exception:
                name = dp.peer if dp is not None else _address(addr)
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

        def claim(self, dp: Datapath, dpid: int) -> None:
            """Make ``dp`` the connection in charge of ``dpid``, or raise Dropped."""
            replaced = None
            deadline = time.monotonic() + CLAIM_GRACE_S
            with self._lock:
                while True:
                    held = self._owners.get(dpid)
                    now = time.monotonic()
                    if held is None or held is dp:
                        break
                    if not is_alive(timers, now, held.silent_since(now)):
                        LOG.warning(
                            "dpid %#x: connection from %s silent for %.1f s: replaced by %s",
                            dpid,
                            _address(held.address),
                            now - held.silent_since(now),
                            _address(dp.address),
                        )
                        replaced = held
                        break
                    if now >= deadline or self._stopping.is_set():
                        raise Dropped(
                            f"it claims dpid {dpid:#x}, which is connected from "
                            f"{_address(held.address)}: refused, the connected one stays"
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
                while not self._stopping.wait(timers.tick_s):
                    self._watch_once(time.monotonic())
            except BaseException as e:
                self._fatal(f"OpenFlow connection watchdog failed: {type(e).__name__}: {e}")

        def _watch_once(self, now: float) -> None:
            expired = []
            with self._lock:
                for sock, (accepted_at, addr) in self._pending.items():
                    if handshake_verdict(timers, now, accepted_at) is Verdict.CLOSE:
                        expired.append((sock, addr))
                for sock, _ in expired:
                    del self._pending[sock]
                claimed = [dp for dp in self._connections if dp.claimed_dpid is not None]
            for sock, addr in expired:
                LOG.info(
                    "connection from %s: no OpenFlow handshake in %.1f s: closed",
                    _address(addr),
                    timers.handshake_s,
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
                verdict = idle_verdict(timers, now, silent_since, dp.echo_sent)
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

    def app_manager_start(app: Any) -> None:
        from os_ken.base import app_manager

        app_manager.OSKenApp.start(app)

    return Handler


def spawn_daemon(target: Callable[..., None], *args: Any) -> threading.Thread:
    """A daemon thread: a connection's threads must never keep the process from exiting."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
