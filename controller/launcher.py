"""`nfsteer controller`: run the steering app under an os-ken AppManager driven here.

os-ken 4 uses native threads by default, and two of its parts never stop with them:
``AppManager.run_apps()`` calls ``kill()`` on threads that have none, and a switch
connection's send thread is never woken when the switch goes away (``hub.kill`` is a no-op),
so its threads outlive the connection. Here the AppManager is driven step by step, the
OpenFlow listener is a socket this module owns (so it can be closed, and port 0 gives an
ephemeral port), and each connection's send thread is told to stop when the connection
ends. The listen address is also written to os-ken's CONF (``ofp_listen_host``,
``ofp_tcp_listen_port``) for anything that reads it there.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from controller.options import (
    DEFAULT_API,
    DEFAULT_HEARTBEAT_TTL_MS,
    DEFAULT_LISTEN,
    LOG_LEVELS,
    Options,
    OptionsError,
    parse_api,
    parse_hostport,
)

if TYPE_CHECKING:
    from controller.app import SteeringApp

LOG = logging.getLogger("nfsteer.controller")
APP_MODULE = "controller.app"
OFP_HANDLER_MODULE = "os_ken.controller.ofp_handler"
STOP_TIMEOUT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", required=True, metavar="FILE", help="topology YAML file")
    p.add_argument("--redis", metavar="URL", help="Redis URL for pool state (redis://...)")
    p.add_argument(
        "--listen",
        default="{}:{}".format(*DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help="OpenFlow listen address (default %(default)s)",
    )
    p.add_argument(
        "--api",
        default="{}:{}".format(*DEFAULT_API),
        metavar="HOST:PORT",
        help="REST API and metrics address, or 'off' for none (default %(default)s); "
        "an address that is not loopback needs --api-token",
    )
    p.add_argument("--api-token", metavar="TOKEN", help="token required by changing API calls")
    p.add_argument(
        "--heartbeat-ttl-ms",
        type=int,
        default=DEFAULT_HEARTBEAT_TTL_MS,
        metavar="N",
        help="an instance whose heartbeat is older than this is failed (default %(default)s)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level (default %(default)s)",
    )


def options_from_args(args: argparse.Namespace) -> Options:
    from controller.cli import UsageError

    try:
        return Options(
            topology=args.topology,
            redis_url=args.redis,
            listen=parse_hostport(args.listen, DEFAULT_LISTEN, "--listen"),
            api=parse_api(args.api, "--api"),
            api_token=args.api_token,
            heartbeat_ttl_ms=args.heartbeat_ttl_ms,
            log_level=args.log_level,
        )
    except OptionsError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from controller.cli import UsageError
    from controller.config import load_topology

    options = options_from_args(args)
    load_topology(options.topology)  # a bad file is reported before anything starts
    if options.redis_url:
        check_store(options.redis_url)
    logging.basicConfig(
        level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        app, stop = start_in_thread(options)
    except OSError as e:
        host, port = options.listen
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    LOG.info("OpenFlow listening on %s:%d", *app.options.listen)
    while not stopping.wait(1.0):
        pass
    LOG.info("stopping")
    stop()
    return 0


def check_store(url: str) -> None:
    """A wrong Sentinel address, service name or password stops the start (one line, exit
    2). A store that is merely down is not an error: the controller runs from the topology
    until it is back."""
    from controller.cli import UsageError
    from controller.store import connect
    from controller.storeurl import StoreURLError, check_reachable, close_client

    client = connect(url)
    try:
        check_reachable(client, url)
    except StoreURLError as e:
        if not str(e).startswith("store unreachable"):
            raise UsageError(str(e)) from None
    finally:
        close_client(client)


def start_in_thread(options: Options) -> tuple[SteeringApp, Callable[[], None]]:
    """Run the app under its own AppManager in this process; returns (app, stop).

    ``options.listen`` may give port 0: the app's options then carry the port chosen.
    """
    from os_ken import cfg
    from os_ken.base import app_manager

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
    cfg.CONF.set_override("ofp_listen_host", host)
    cfg.CONF.set_override("ofp_tcp_listen_port", options.listen[1])

    handler_cls = _handler_class(listener)
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


def _handler_class(listener: socket.socket) -> type:
    """os-ken's OpenFlow handler, serving our listener with stoppable connections."""
    from os_ken.controller import controller as ofc
    from os_ken.controller import ofp_handler
    from os_ken.controller.handler import DEAD_DISPATCHER
    from os_ken.lib import hub

    class Datapath(ofc.Datapath):
        def serve(self) -> None:
            send_thread = hub.spawn(self._send_loop)
            self.send_msg(self.ofproto_parser.OFPHello(self))
            echo_thread = hub.spawn(self._echo_request_loop)
            try:
                self._recv_loop()
            finally:
                # Wake the send thread (blocked on its queue) with an empty message that
                # asks it to stop; os-ken's own serve() would wait for it forever.
                self.send(b"", close_socket=True)
                hub.joinall([send_thread, echo_thread])
                self.is_active = False

    class Handler(ofp_handler.OFPHandler):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._listener = listener
            self._connections: dict[Datapath, threading.Thread] = {}
            self._conn_lock = threading.Lock()

        def start(self) -> Any:
            app_manager_start(self)
            return hub.spawn(self._accept_loop)

        def _accept_loop(self) -> None:
            while True:
                try:
                    sock, addr = self._listener.accept()
                except OSError:
                    return  # listener closed: stopping
                hub.spawn(self._serve, sock, addr)

        def _serve(self, sock: socket.socket, addr: Any) -> None:
            dp = Datapath(sock, addr)
            with self._conn_lock:
                self._connections[dp] = threading.current_thread()
            try:
                dp.serve()
            except Exception:
                LOG.exception("connection from %s failed", addr)
            finally:
                dp.close()  # DEAD_DISPATCHER: apps learn the switch is gone
                with self._conn_lock:
                    self._connections.pop(dp, None)

        def stop_serving(self) -> None:
            for close in (lambda: self._listener.shutdown(socket.SHUT_RDWR), self._listener.close):
                with contextlib.suppress(OSError):
                    close()
            with self._conn_lock:
                connections = dict(self._connections)
            for dp, thread in connections.items():
                dp.set_state(DEAD_DISPATCHER)
                with contextlib.suppress(OSError):
                    dp.socket.shutdown(socket.SHUT_RDWR)
                thread.join(STOP_TIMEOUT)
            if self.main_thread is not None:
                self.main_thread.join(STOP_TIMEOUT)

    def app_manager_start(app: Any) -> None:
        from os_ken.base import app_manager

        app_manager.OSKenApp.start(app)

    return Handler
