"""`nfsteer controller`: its options, and the steering app run under an os-ken AppManager
driven here.

os-ken 4 uses native threads by default, and ``AppManager.run_apps()`` calls ``kill()`` on
threads that have none; so the AppManager is driven step by step. The OpenFlow listener and
its connections are :mod:`controller.ofp.listener` and :mod:`controller.ofp.connection`,
put in place of os-ken's own handler. The listen address (and TLS files, echo timers) are
also written to os-ken's CONF (``ofp_listen_host``, ``ofp_tcp_listen_port`` or
``ofp_ssl_listen_port``, ``ctl_privkey``, ``ctl_cert``, ``ca_certs``,
``echo_request_interval``) for anything that reads them there.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
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
    LinkError,
    LinkTimers,
)
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
from controller.ofp.tls import TlsConfigError, TlsFiles, server_context

if TYPE_CHECKING:
    from controller.ofp.app import SteeringApp

LOG = logging.getLogger("nfsteer.controller")
APP_MODULE = "controller.ofp.app"
OFP_HANDLER_MODULE = "os_ken.controller.ofp_handler"
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

    from controller.ofp.listener import LinkConfig, Listener

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

    link = LinkConfig(listener, tls, options.switch_link, on_fatal)
    manager = app_manager.AppManager()  # not the singleton: tests start several in turn
    try:
        manager.load_apps([APP_MODULE])
        manager.applications_cls[OFP_HANDLER_MODULE] = Listener
        contexts = manager.create_contexts()
        manager.instantiate_apps(nfsteer_options=options, nfsteer_link=link, **contexts)
    except BaseException:
        listener.close()
        manager.close()
        raise
    app = next(a for a in manager.applications.values() if type(a).__name__ == "SteeringApp")
    handler = next(a for a in manager.applications.values() if isinstance(a, Listener))
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
