"""`nfsteer nf`: run one NF instance (firewall, nat or lb) on one interface."""

from __future__ import annotations

import argparse
import os

from contract import keys
from contract.secrets import add_redis_url_arguments

KINDS = ("firewall", "nat", "lb")


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
    from nf.heartbeat import Heartbeat, default_interval_ms, interval_error

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
    from nf.runtime import PacketLoop, Processor, interface_addresses, open_socket
    from nf.state import LocalStore, redis_client, redis_store

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
    try:
        store = (
            redis_store(client, [nf.script], sync_args) if args.state == "redis" else LocalStore()
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        sock = open_socket(args.interface)
    except PermissionError:
        raise UsageError("opening a packet socket needs root (CAP_NET_RAW)") from None
    except OSError as e:
        raise UsageError(f"cannot open a packet socket on {args.interface}: {e}") from None
    processor = Processor(nf, store, args.fail_open)
    reg = heartbeat = beats_store = None
    if client is not None:
        ident = Identity(name, args.pool, args.kind, mac, ip, args.interface, capacity)
        reg = Registration(client, ident, args.heartbeat_ttl_ms)
        # Beats ride along with the state batches; with local state they need a store
        # connection of their own.
        channel = store
        if args.state != "redis":
            channel = beats_store = redis_store(client)
        heartbeat = Heartbeat(
            channel, keys.heartbeat(args.pool, name), args.heartbeat_ttl_ms, hb_interval_ms
        )
    loop = PacketLoop(processor, sock, args.batch, heartbeat)
    describe = {
        "name": name,
        "pool": args.pool,
        "kind": args.kind,
        "interface": args.interface,
        "state_store": args.state,
        "batch": args.batch,
        "fail_open": processor.fail_open,
        "store_sync": list(sync_args) if sync_args else None,
        "pid": os.getpid(),
    }
    log.info(
        "%s instance %s in pool %s on %s (state: %s, batch %d, fail %s)",
        args.kind, name, args.pool, args.interface, args.state, args.batch,
        "open" if processor.fail_open else "closed",
    )  # fmt: skip
    inst = Instance(loop, reg, args.stats_file, args.stats_interval, args.drain_grace, describe)
    try:
        return inst.run()
    finally:
        sock.close()
        store.close()
        if beats_store is not None:
            beats_store.close()
        if client is not None:
            client.close()
