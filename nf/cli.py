"""`nfsteer nf`: run one NF instance (firewall, nat or lb) on one interface."""

from __future__ import annotations

import argparse
import os

from contract import keys
from contract.secrets import add_redis_url_arguments
from nf.packetio import RX_MODES

KINDS = ("firewall", "nat", "lb")
MAX_WORKERS_PER_CPU = 4


def parse_workers(value: str, cpus: int) -> int | str:
    """``--workers``: a count from 1 to 4 x the CPUs available, or ``auto`` (the CPUs
    available). Returns the count, or the one-line reason it is unusable."""
    v = value.strip()
    if v == "auto":
        return cpus
    if not (v.isascii() and v.isdigit()) or len(v) > 9:
        return f"--workers must be a whole number or auto, not {value!r}"
    n = int(v)
    if n < 1:
        return "--workers must be at least 1"
    if n > MAX_WORKERS_PER_CPU * cpus:
        return (
            f"--workers {n} is more than {MAX_WORKERS_PER_CPU} x the {cpus} CPU(s) available "
            f"(at most {MAX_WORKERS_PER_CPU * cpus})"
        )
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--interface", required=True, metavar="IF", help="the one interface (one-arm)")
    p.add_argument("--pool", required=True, metavar="P", help="the pool this instance joins")
    p.add_argument(
        "--name", help='instance name (default: from the interface, "fw2-eth0" -> "fw2")'
    )
    p.add_argument(
        "--capacity",
        help="relative capacity (default: the topology's value for this instance, else 1)",
    )
    add_redis_url_arguments(
        p,
        "redis://[:password@]host:port/db, "
        "redis+sentinel://[:password@]host:port[,host:port...]/service (the primary found "
        "through Sentinel), or redis+cluster://[:password@]host:port (any node of a Redis "
        "Cluster); default $NFSTEER_REDIS",
    )
    p.add_argument(
        "--state",
        choices=("redis", "local"),
        default="redis",
        help="where connection state lives (local: in-process baseline)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="topology file: the pool's nf: settings come from it"
    )
    p.add_argument(
        "--fail-open",
        action="store_true",
        help="forward packets unchanged while the state store is unreachable (default: drop)",
    )
    p.add_argument(
        "--batch", type=int, default=64, help="max packets per batch (1: one round trip each)"
    )
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes sharing the interface (auto: one per CPU available; default 1)",
    )
    p.add_argument(
        "--rx",
        choices=RX_MODES,
        default="ring",
        help="ring: TPACKET_V2 receive ring (default); blocks: TPACKET_V3 ring, a little "
        "less CPU per frame but up to 1 ms added latency at low load; socket: one recvfrom "
        "per frame",
    )
    p.add_argument(
        "--in-flight",
        type=int,
        default=1,
        metavar="K",
        help="store batches in flight while the next is prepared (default 1)",
    )
    p.add_argument("--stats-file", metavar="PATH", help="JSON counters, rewritten periodically")
    p.add_argument("--stats-interval", type=float, default=1.0, metavar="S")
    p.add_argument(
        "--drain-grace",
        type=float,
        default=keys.DRAIN_GRACE_S,
        metavar="S",
        help="on SIGTERM, longest wait for the controller to move the slots away",
    )
    p.add_argument(
        "--heartbeat-ttl-ms",
        type=int,
        default=keys.HEARTBEAT_TTL_MS,
        metavar="MS",
        help="expiry of the heartbeat key (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        metavar="MS",
        help=f"time between heartbeats, below half the TTL (default: TTL / "
        f"{keys.HEARTBEAT_INTERVAL_FRACTION})",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def default_name(interface: str) -> str:
    """Mininet names a host's interfaces <host>-eth<N>: the host is the instance."""
    return interface.split("-")[0]


def run(args: argparse.Namespace) -> int:
    import logging

    from contract import logs
    from contract.errors import UsageError
    from contract.nf_settings import settings_for_kind
    from contract.secrets import redis_url
    from contract.topology import load_topology
    from contract.values import is_name, parse_capacity
    from nf.heartbeat import default_interval_ms, interval_error

    name = args.name or default_name(args.interface)
    if not is_name(name):
        raise UsageError(
            f"instance name {name!r} is not valid (a letter, then up to 9 letters, digits, _ -)"
        )
    if not is_name(args.pool):
        raise UsageError(f"pool name {args.pool!r} is not valid")
    args.redis = redis_url(args)
    if args.state == "redis" and not args.redis:
        raise UsageError("--state redis needs --redis URL (or $NFSTEER_REDIS, --redis-url-file)")
    if args.batch < 1 or args.batch > 4096:
        raise UsageError("--batch must be between 1 and 4096")
    if args.capacity is not None:
        try:
            args.capacity = parse_capacity(args.capacity)
        except ValueError as e:
            raise UsageError(f"--capacity: {e}") from None
    if not 1 <= args.in_flight <= 8:
        raise UsageError("--in-flight must be between 1 and 8")
    workers = parse_workers(args.workers, len(os.sched_getaffinity(0)))
    if isinstance(workers, str):
        raise UsageError(workers)
    if workers > 1 and args.state == "local" and args.kind != "firewall":
        # The fanout hash keeps a connection's own 5-tuple in one worker, but a NAT's or
        # LB's return traffic carries translated addresses and may reach another worker.
        raise UsageError(f"--workers above 1 needs --state redis for {args.kind}: its "
                         "return traffic may reach a worker without the local state")  # fmt: skip
    hb_error = interval_error(args.heartbeat_ttl_ms, args.heartbeat_interval_ms)
    if hb_error:
        raise UsageError(hb_error)
    hb_interval_ms = args.heartbeat_interval_ms
    if hb_interval_ms is None:
        hb_interval_ms = default_interval_ms(args.heartbeat_ttl_ms)
    if not os.path.exists(f"/sys/class/net/{args.interface}"):
        raise UsageError(f"interface {args.interface!r} does not exist")

    capacity = args.capacity
    listed = None
    if args.config:
        topo = load_topology(args.config)
        pool = topo.pools.get(args.pool)
        if pool is None:
            raise UsageError(f"{args.config}: pool {args.pool!r} is not defined")
        if pool.kind != args.kind:
            raise UsageError(f"{args.config}: pool {args.pool!r} is of kind {pool.kind}")
        settings = pool.settings
        listed = pool.instances.get(name)
        if capacity is None and listed is not None:
            capacity = listed.capacity
    else:
        settings = settings_for_kind(args.kind, {})
    capacity = 1.0 if capacity is None else capacity

    logs.bind(pool=args.pool, instance=name)  # on every line of this process
    log = logging.getLogger("nfsteer.nf")

    from contract.storeurl import StoreURLError, check_reachable
    from nf.instance import Instance, build_nf
    from nf.registration import Identity, Registration
    from nf.runtime import interface_addresses
    from nf.state import redis_client

    def check_store(client, url: str) -> str:
        try:
            check_reachable(client, url)
        except StoreURLError as e:
            if str(e).startswith("store unreachable"):
                return str(e)  # the store may come up later: not a start-up error
            raise UsageError(str(e)) from None
        return ""

    if args.state == "local" and args.kind == "firewall":
        # The in-process baseline keeps strict tracking: mid-stream pickup re-creates
        # entries a shared store lost, and would hide what in-process state costs.
        settings = settings.model_copy(update={"pickup": "off"})
    try:
        nf = build_nf(args.kind, args.pool, settings)
    except ValueError as e:
        raise UsageError(str(e)) from None
    mac, ip = interface_addresses(args.interface)
    if listed is not None and listed.mac != mac:
        log.warning("%s has MAC %s but the topology lists %s for %s", args.interface, mac,
                    listed.mac, name)  # fmt: skip
    client = redis_client(args.redis) if args.redis else None
    if client is not None:
        warning = check_store(client, args.redis)
        if warning:
            log.warning("%s (retrying in the background)", warning)
    sync = settings.store_sync
    sync_args = (sync.replicas, sync.timeout_ms) if sync and args.state == "redis" else None
    describe = {
        "name": name,
        "pool": args.pool,
        "kind": args.kind,
        "interface": args.interface,
        "state_store": args.state,
        "batch": args.batch,
        "rx": args.rx,
        "workers": workers,
        "fail_open": args.fail_open or nf.fail_open,
        "store_sync": list(sync_args) if sync_args else None,
        "pid": os.getpid(),
    }
    commit = f"{sync_args[0]} replica(s) within {sync_args[1]} ms" if sync_args else "off"
    log.info(
        "%s instance %s in pool %s on %s (state: %s, batch %d, %d worker(s), rx %s, fail %s, "
        "output commit %s)",
        args.kind, name, args.pool, args.interface, args.state, args.batch, workers, args.rx,
        "open" if describe["fail_open"] else "closed", commit,
    )  # fmt: skip
    reg = None
    if client is not None:
        ident = Identity(name, args.pool, args.kind, mac, ip, args.interface, capacity)
        reg = Registration(client, ident, args.heartbeat_ttl_ms)
    try:
        if workers > 1:
            return _run_workers(
                args, settings, workers, client, reg, hb_interval_ms, describe, sync_args
            )
        return _run_single(args, nf, client, reg, hb_interval_ms, describe, Instance, sync_args)
    finally:
        if client is not None:
            client.close()


def _packet_io(args: argparse.Namespace, sock=None):
    from contract.errors import UsageError
    from nf.packetio import PacketIO, open_socket

    try:
        if sock is None:
            sock = open_socket(args.interface)
        return PacketIO(args.interface, sock, args.rx)
    except PermissionError:
        raise UsageError("opening a packet socket needs root (CAP_NET_RAW)") from None
    except OSError as e:
        raise UsageError(f"cannot open a packet socket on {args.interface}: {e}") from None


def _run_single(args, nf, client, reg, hb_interval_ms, describe, instance_cls, sync_args) -> int:
    """One process: the packet loop beats for the instance (nf/heartbeat.py)."""
    from contract.errors import UsageError
    from nf.heartbeat import Heartbeat
    from nf.packetio import InterfaceGone
    from nf.runtime import PacketLoop, Processor
    from nf.state import LocalStore, redis_store

    try:
        store = (
            redis_store(client, [nf.script], sync_args) if args.state == "redis" else LocalStore()
        )
    except ValueError as e:  # e.g. output commit asked of a Redis Cluster
        raise UsageError(str(e)) from None
    io = _packet_io(args)
    processor = Processor(nf, store, args.fail_open)
    heartbeat = beats_store = None
    if client is not None:
        # Beats ride along with the state batches; with local state they need a store
        # connection of their own.
        channel = store
        if args.state != "redis":
            channel = beats_store = redis_store(client)
        heartbeat = Heartbeat(
            channel, keys.heartbeat(args.pool, reg.id.name), args.heartbeat_ttl_ms,
            hb_interval_ms,
        )  # fmt: skip
    loop = PacketLoop(processor, io, args.batch, heartbeat, args.in_flight)
    inst = instance_cls(loop, reg, args.stats_file, args.stats_interval, args.drain_grace,
                        describe)  # fmt: skip
    try:
        return inst.run()
    except InterfaceGone as e:
        raise UsageError(f"{e}: instance stopped and deregistered") from None
    finally:
        io.close()
        store.close()
        if beats_store is not None:
            beats_store.close()


def _run_workers(args, settings, workers, client, reg, hb_interval_ms, describe, sync_args) -> int:
    """Several processes in one fanout group; this one registers, beats and sums."""
    import logging
    import signal
    import threading

    from contract.errors import UsageError
    from nf.instance import build_nf
    from nf.packetio import InterfaceGone
    from nf.runtime import PacketLoop, Processor
    from nf.state import LocalStore, redis_client, redis_store
    from nf.workers import EXIT_INTERFACE_GONE, Supervisor, final_report, report_loop

    log = logging.getLogger("nfsteer.nf")
    # Reports well inside half the TTL: the parent calls a worker late after TTL / 2.
    report_s = min(hb_interval_ms / 1000, args.heartbeat_ttl_ms / 5000, args.stats_interval)

    def worker_main(index: int, sock, conn) -> int:
        wclient = redis_client(args.redis) if args.state == "redis" else None
        nf = build_nf(args.kind, args.pool, settings)
        store = (
            redis_store(wclient, [nf.script], sync_args) if wclient is not None else LocalStore()
        )
        io = _packet_io(args, sock)
        loop = PacketLoop(Processor(nf, store, args.fail_open), io, args.batch, None,
                          args.in_flight)  # fmt: skip
        signal.signal(signal.SIGTERM, lambda *_: loop.stop.set())
        done = threading.Event()
        side = threading.Thread(
            target=report_loop, args=(loop, conn, report_s, store, done), daemon=True
        )
        side.start()
        status = 0
        try:
            loop.run()
        except InterfaceGone as e:
            log.error("worker %d: %s", index, e)
            status = EXIT_INTERFACE_GONE
        except Exception:
            log.exception("worker %d failed", index)
            status = 1
        done.set()
        final_report(loop, conn, store)
        io.close()
        store.close()
        return status

    hb = None
    if client is not None:
        hb = (client, keys.heartbeat(args.pool, reg.id.name), args.heartbeat_ttl_ms,
              hb_interval_ms / 1000)  # fmt: skip
    sup = Supervisor(
        args.interface, workers, worker_main, reg, hb, args.stats_file, args.stats_interval,
        args.drain_grace, describe,
    )  # fmt: skip
    try:
        status = sup.run()
    except PermissionError:
        raise UsageError("opening a packet socket needs root (CAP_NET_RAW)") from None
    if status == EXIT_INTERFACE_GONE:
        raise UsageError(
            f"interface {args.interface} disappeared: instance stopped and deregistered"
        )
    return status
