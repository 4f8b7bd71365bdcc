"""`nfsteer status`, `nfsteer pool ...`, `nfsteer instance ...`: the REST API from a shell.

Every command takes ``--api URL`` (default http://127.0.0.1:8080) and the token from
``--api-token-file FILE``, ``$NFSTEER_API_TOKEN`` or ``--api-token TOKEN``. An unreachable
controller or a refused request prints one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from contract.secrets import add_api_token_arguments, api_token

DEFAULT_API_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 10.0


class ApiError(Exception):
    """One line for the user."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api",
        default=DEFAULT_API_URL,
        metavar="URL",
        help="controller REST API (default %(default)s)",
    )
    add_api_token_arguments(p, "bearer token for changes (default $NFSTEER_API_TOKEN)")


MAX_REDIRECTS = 3


def _request(
    args: argparse.Namespace, method: str, path: str, ok: tuple[int, ...] = (), **kw: Any
) -> Any:
    import httpx

    token = api_token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = args.api.rstrip("/") + path
    for _ in range(MAX_REDIRECTS + 1):
        try:
            r = httpx.request(method, url, headers=headers, timeout=TIMEOUT_S, **kw)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the controller at {url}: {e}") from None
        # A standby sends changes to the leader (307): follow it with the same method, body
        # and token (httpx would drop the token for another host or port).
        location = r.headers.get("location", "")
        if r.status_code not in (307, 308) or not location.startswith(("http://", "https://")):
            break
        url = location
    if r.status_code >= 400 and r.status_code not in ok:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text.strip() or r.reason_phrase
        raise ApiError(f"{r.status_code} {r.reason_phrase}: {detail}")
    try:
        return r.json()
    except ValueError:
        raise ApiError(f"{url} did not answer with JSON: is it an nfsteer controller?") from None


def _run(args: argparse.Namespace, fn) -> int:
    try:
        fn(args)
    except ApiError as e:
        print(f"nfsteer {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _traffic(t: dict[str, int] | None) -> str:
    if not t:
        return "-"
    rx, tx = t.get("rx_packets"), t.get("tx_packets")
    return f"{rx if rx is not None else '-'}/{tx if tx is not None else '-'} pkts"


def _age(ts: float | None) -> str:
    return "-" if ts is None else f"{max(0.0, time.time() - ts):.1f}s ago"


def _instance_rows(detail: dict[str, Any], with_pool: bool) -> list[list[str]]:
    rows = []
    for m in detail["members"]:
        where = f"{m['switch']}:{m['port']}" if m["switch"] else "-"
        row = [
            m["name"],
            m["state"],
            f"{m['capacity']:g}",
            str(m["slots"]),
            where,
            _traffic(m.get("traffic")),
            "-" if m.get("load") is None else f"{m['load']:.0f}/s",
            _age(m.get("last_heartbeat")),
            m.get("source", "-"),
        ]
        rows.append([detail["name"], *row] if with_pool else row)
    return rows


_HEAD = [
    "INSTANCE", "STATE", "CAPACITY", "SLOTS", "PORT", "RX/TX", "LOAD", "HEARTBEAT", "SOURCE"
]  # fmt: skip
MOVES_SHOWN = 5


def load_lines(detail: dict[str, Any]) -> list[str]:
    """A pool's load mode, imbalance and its last changes with their reasons."""
    load = detail.get("load")
    if not load:
        return []
    name = detail["name"]
    if load["mode"] != "load":
        return [f"pool {name}: flows mode ({load['why_flows']})"] if load["why_flows"] else []
    imb = load["imbalance"]
    totals = ", ".join(f"{k} {v}" for k, v in sorted(load["moves_total"].items())) or "none"
    lines = [
        f"pool {name}: load mode, imbalance "
        f"{'-' if imb is None else f'{imb:.2f}'}, slots moved: {totals}"
    ]
    for m in load["moves"][-MOVES_SHOWN:]:
        when = time.strftime("%H:%M:%S", time.localtime(m["time"]))
        lines.append(
            f"  {when} epoch {m['epoch']}: {m['slots']} slots ({m['kind']}): {m['reason']}"
        )
    return lines


# --- nfsteer status ------------------------------------------------------------------------


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)


def _status(args: argparse.Namespace) -> None:
    health = _request(args, "GET", "/healthz", ok=(503,))
    pools = _request(args, "GET", "/api/v1/pools")
    switches = health.get("switches", [])
    print(
        f"controller {args.api}: {len(switches)} switch(es) connected"
        f"{' (' + ', '.join(switches) + ')' if switches else ''}, redis {health.get('redis')}"
    )
    rows = [["POOL", *_HEAD]]
    notes = []
    for pool in pools:
        detail = _request(args, "GET", f"/api/v1/pools/{pool['name']}")
        rows += _instance_rows(detail, with_pool=True)
        notes += load_lines(detail)
    print(_table(rows))
    for line in notes:
        print(line)
    for pool in pools:
        if not pool["instances"].get("active"):
            print(f"pool {pool['name']}: no active instance, its service traffic is dropped")
    if health.get("role") not in (None, "single"):
        print(
            f"role {health['role']} (id {health.get('id')}), term {health.get('term')}, "
            f"leader {health.get('leader') or 'unknown'}"
        )
    for problem in health.get("problems", []):
        print(f"unhealthy: {problem}")
    for warning in health.get("warnings", []):
        print(f"warning: {warning}")


def run_status(args: argparse.Namespace) -> int:
    return _run(args, _status)


# --- nfsteer pool list|show ----------------------------------------------------------------


def add_pool_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    _common(sub.add_parser("list", help="pools with instance counts and epochs"))
    show = sub.add_parser("show", help="one pool's instances")
    show.add_argument("pool")
    _common(show)


def _pool(args: argparse.Namespace) -> None:
    if args.action == "list":
        rows = [["POOL", "KIND", "MEMBERSHIP", "SLOTS", "EPOCH", "ACTIVE", "DRAINING", "FAILED"]]
        for p in _request(args, "GET", "/api/v1/pools"):
            n = p["instances"]
            rows.append(
                [
                    p["name"],
                    p["kind"],
                    p["membership"],
                    str(p["n_slots"]),
                    str(p["epoch"]),
                    str(n.get("active", 0)),
                    str(n.get("draining", 0)),
                    str(n.get("failed", 0)),
                ]
            )
        print(_table(rows))
        return
    detail = _request(args, "GET", f"/api/v1/pools/{args.pool}")
    print(
        f"pool {detail['name']}: {detail['kind']}, {detail['membership']} membership, "
        f"{detail['n_slots']} slots, epoch {detail['epoch']}, "
        f"{detail['unserved_slots']} unserved"
    )
    print(_table([_HEAD, *_instance_rows(detail, with_pool=False)]))
    for line in load_lines(detail):
        print(line)


def run_pool(args: argparse.Namespace) -> int:
    return _run(args, _pool)


# --- nfsteer instance add|remove|drain|capacity -------------------------------------------


def add_instance_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add an instance (listed in the topology, or explicit)")
    add.add_argument("pool")
    add.add_argument("name")
    add.add_argument("--switch", help="switch name (instances not in the topology)")
    add.add_argument("--port", type=int, help="switch port (instances not in the topology)")
    add.add_argument("--mac", help="MAC address (instances not in the topology)")
    add.add_argument("--ip", help="IPv4 address (instances not in the topology)")
    add.add_argument("--capacity", type=float, help="relative capacity")
    remove = sub.add_parser("remove", help="remove an instance now")
    drain = sub.add_parser("drain", help="move an instance's slots away, then remove it")
    drain.add_argument("--force", action="store_true", help="even the last active instance")
    capacity = sub.add_parser("capacity", help="set an instance's capacity")
    for q in (remove, drain, capacity):
        q.add_argument("pool")
        q.add_argument("name")
    capacity.add_argument("capacity", type=float)
    for q in (add, remove, drain, capacity):
        q.add_argument(
            "--no-wait", action="store_true", help="do not wait for the switches' barrier replies"
        )
        _common(q)


def _instance(args: argparse.Namespace) -> None:
    base = f"/api/v1/pools/{args.pool}/instances"
    params = {"wait": "false" if args.no_wait else "true"}
    if args.action == "add":
        body = {"name": args.name}
        for field in ("switch", "port", "mac", "ip", "capacity"):
            if getattr(args, field) is not None:
                body[field] = getattr(args, field)
        out = _request(args, "POST", base, json=body, params=params)
    elif args.action == "remove":
        out = _request(args, "DELETE", f"{base}/{args.name}", params=params)
    elif args.action == "drain":
        params["force"] = "true" if args.force else "false"
        out = _request(args, "POST", f"{base}/{args.name}/drain", params=params)
    else:
        out = _request(
            args,
            "PUT",
            f"{base}/{args.name}/capacity",
            json={"capacity": args.capacity},
            params=params,
        )
    confirmed = {True: "confirmed by the switches", False: "NOT confirmed by every switch"}
    note = confirmed.get(out.get("confirmed"), "not waited for")
    print(f"{out['reason']}: {out['moved']} slots moved, epoch {out['epoch']} ({note})")


def run_instance(args: argparse.Namespace) -> int:
    return _run(args, _instance)
