"""`nfsteer store up|down|status`: a replicated store (1 primary, 2 replicas, 3 Sentinels)
for development, tests and the demo, with its files under one run directory."""

from __future__ import annotations

import argparse
import json
import sys

from controller.ops.storenodes import (
    DEFAULT_PORTS,
    DEFAULT_SENTINEL_PORTS,
    DOWN_AFTER_MS,
    SERVICE,
    StoreError,
    StoreLayout,
)

DEFAULT_RUN_DIR = "run/store"


def _ports(text: str) -> list[int]:
    try:
        ports = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not three ports like 6380,6381,6382"
        ) from None
    if len(ports) != 3 or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"{text!r} is not three ports like 6380,6381,6382")
    return ports


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--run-dir", default=DEFAULT_RUN_DIR, help="where configs, AOFs, logs and pids live"
    )
    p.add_argument("--ports", type=_ports, help="data node ports (default 6380,6381,6382)")
    p.add_argument(
        "--sentinel-ports", type=_ports, help="Sentinel ports (default 26380,26381,26382)"
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="comma-separated addresses to listen on; the first is the one handed out",
    )
    p.add_argument("--service", default=SERVICE, help="the name Sentinel monitors")
    p.add_argument("--password", help="password of every node (default: a random one)")
    p.add_argument(
        "--down-after-ms",
        type=int,
        default=DOWN_AFTER_MS,
        help="Sentinel declares the primary down after this silence (production: 5000)",
    )
    p.add_argument("--json", action="store_true", help="status as JSON")


def run(args: argparse.Namespace) -> int:
    from contract.errors import UsageError
    from controller.ops.storenodes import down, status, up

    try:
        if args.action == "up":
            try:
                layout = StoreLayout.load(args.run_dir)
            except StoreError:
                bind = [b for b in args.bind.split(",") if b]
                if not 100 <= args.down_after_ms <= 600_000:
                    raise UsageError("--down-after-ms must be between 100 and 600000") from None
                layout = StoreLayout(
                    run_dir=args.run_dir,
                    ports=args.ports or list(DEFAULT_PORTS),
                    sentinel_ports=args.sentinel_ports or list(DEFAULT_SENTINEL_PORTS),
                    bind=bind,
                    announce_ip=bind[0],
                    service=args.service,
                    password=args.password or "",
                    down_after_ms=args.down_after_ms,
                )
            started = up(layout)
            print(f"store up ({', '.join(started) or 'all running already'})", file=sys.stderr)
            print(layout.url())
            return 0
        layout = StoreLayout.load(args.run_dir)
        if args.action == "down":
            stopped = down(layout)
            print(f"store down ({', '.join(stopped) or 'nothing was running'})", file=sys.stderr)
            return 0
        st = status(layout)
    except StoreError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        print(f"service {st['service']}: primary {st['primary'] or 'UNKNOWN'}")
        for n in st["nodes"]:
            extra = ""
            if n.get("role") == "replica":
                extra = f" of {n['of']} link {n['link']}"
            elif n.get("role") == "primary":
                extra = f" with {n['replicas']} replicas"
            state = f"{n['role']}{extra} offset {n['offset']}" if n["up"] else "DOWN"
            print(f"  {n['name']} :{n['port']} {state}")
        for s in st["sentinels"]:
            state = (
                f"primary {s['primary']}, {s['sentinels']} sentinels, {s['replicas']} replicas, "
                f"replica INFO every {s['info_period_ms']} ms, ping every {s['ping_period_ms']} ms"
                if s["up"]
                else "DOWN"
            )
            print(f"  {s['name']} :{s['port']} {state}")
        print(f"url {st['url']}")
    ok = (
        st["primary"] and st["replicas_in_sync"] >= 1 and sum(s["up"] for s in st["sentinels"]) >= 2
    )
    return 0 if ok else 1
