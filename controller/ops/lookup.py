"""`nfsteer lookup`: which NF instance serves a 5-tuple.

Offline (``--topology FILE``): computes the answer from the file alone, taking every listed
instance as active at its configured capacity: the switch's hash (controller.core.hashing) picks
the slot, a fresh slot assignment (controller.core.slots) gives the owner. A running controller
may differ after joins, failures or capacity changes; ask it with ``--api URL``.

Online (``--api URL``): asks a running controller,
``GET {URL}/api/v1/pools/{pool}/lookup?src=&dst=&proto=&sport=&dport=``.

``--service NAME`` instead of ``--pool`` answers for each hop of the service's chain, in the
order the 5-tuple visits them (:mod:`controller.core.chain`; online:
``GET {URL}/api/v1/services/{service}/lookup?...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from contract.errors import UsageError
from contract.secrets import add_api_token_arguments, api_token

EXIT_UNREACHABLE = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--topology", metavar="FILE", help="compute from this topology file")
    where.add_argument(
        "--api", metavar="URL", help="ask a running controller, e.g. http://127.0.0.1:8080"
    )
    add_api_token_arguments(parser, "bearer token for --api (default $NFSTEER_API_TOKEN)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pool", help="pool name")
    which.add_argument(
        "--service", help="service name: one answer per pool of its chain, in the order visited"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=5.0, help="--api timeout, seconds")
    parser.add_argument("src", metavar="SRC", help="source IPv4 address")
    parser.add_argument("dst", metavar="DST", help="destination IPv4 address")
    parser.add_argument("proto", metavar="PROTO", help="tcp, udp, icmp or a protocol number")
    parser.add_argument("sport", metavar="SPORT", nargs="?", default="0", help="source port")
    parser.add_argument("dport", metavar="DPORT", nargs="?", default="0", help="dest. port")


def run(args: argparse.Namespace) -> int:
    from controller.core.hashing import FiveTuple

    try:
        ft = FiveTuple.parse(args.src, args.dst, args.proto, args.sport, args.dport)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.api:
        if not args.timeout > 0:
            raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout}")
        return _ask_controller(args, ft)
    if args.api_token or args.api_token_file:
        raise UsageError("--api-token needs --api")
    if args.service:
        chain = offline_service_lookup(args.topology, args.service, ft)
        if args.json:
            print(json.dumps(chain, sort_keys=True))
        else:
            _print_hops(chain)
        return 0
    answer = offline_lookup(args.topology, args.pool, ft)
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    else:
        print(
            f"{answer['instance']}  (pool {answer['pool']}, slot {answer['slot']} of "
            f"{answer['n_slots']}, hash 0x{answer['hash']:08x}, basis {answer['basis']})"
        )
    return 0


def offline_lookup(topology_path: str, pool: str, ft: Any) -> dict[str, Any]:
    """The answer computed from a topology file; raises ConfigError/UsageError."""
    from contract.topology import load_topology

    return _pool_answer(load_topology(topology_path), topology_path, pool, ft)


def _pool_answer(topology: Any, topology_path: str, pool: str, ft: Any) -> dict[str, Any]:
    from controller.core.hashing import flow_hash
    from controller.core.slots import assign

    if pool not in topology.pools:
        known = ", ".join(sorted(topology.pools)) or "none"
        raise UsageError(f"pool {pool!r} is not in {topology_path} (pools: {known})")
    p = topology.pools[pool]
    if not p.instances:
        raise UsageError(f"pool {pool!r} in {topology_path} lists no instances")
    h = flow_hash(ft, p.basis)
    slot = h % p.slots
    owners = assign(p.slots, {n: i.capacity_fraction for n, i in p.instances.items()})
    return {
        "pool": pool,
        "instance": owners[slot],
        "slot": slot,
        "hash": h,
        "n_slots": p.slots,
        "basis": p.basis,
        "src": ft.src,
        "dst": ft.dst,
        "proto": ft.proto,
        "sport": ft.sport,
        "dport": ft.dport,
    }


def offline_service_lookup(topology_path: str, service: str, ft: Any) -> dict[str, Any]:
    """One answer per hop of ``service``, computed from a topology file."""
    from contract.topology import load_topology
    from controller.core.chain import hops_of

    topology = load_topology(topology_path)
    svc = topology.services.get(service)
    if svc is None:
        known = ", ".join(sorted(topology.services)) or "none"
        raise UsageError(f"service {service!r} is not in {topology_path} (services: {known})")
    direction, hops = hops_of(topology, svc, ft)
    out = []
    for hop in hops:
        if hop.five_tuple is None:
            out.append({"pool": hop.pool, "instance": None, "slot": None, "five_tuple": None})
            continue
        answer = _pool_answer(topology, topology_path, hop.pool, hop.five_tuple)
        out.append(
            {
                "pool": hop.pool,
                "instance": answer["instance"],
                "slot": answer["slot"],
                "five_tuple": dataclasses.asdict(hop.five_tuple),
            }
        )
    return {"service": service, "direction": direction, "hops": out}


def _print_hops(chain: dict[str, Any]) -> None:
    print(f"service {chain['service']}, {chain['direction']} direction:")
    for i, hop in enumerate(chain["hops"], start=1):
        if hop["five_tuple"] is None:
            print(f"  {i}. {hop['pool']}: after the NAT (look up the translated 5-tuple)")
        else:
            epoch = f", epoch {hop['epoch']}" if "epoch" in hop else ""
            print(f"  {i}. {hop['pool']}: {hop['instance']}  (slot {hop['slot']}{epoch})")


def _ask_controller(args: argparse.Namespace, ft: Any) -> int:
    from urllib.parse import quote

    import httpx

    base = args.api.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--api {args.api!r} must be an http:// or https:// URL")
    token = api_token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"src": ft.src, "dst": ft.dst, "proto": ft.proto, "sport": ft.sport}
    params["dport"] = ft.dport
    if args.service:
        url = f"{base}/api/v1/services/{quote(args.service, safe='')}/lookup"
    else:
        url = f"{base}/api/v1/pools/{quote(args.pool, safe='')}/lookup"
    try:
        r = httpx.get(url, params=params, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        reason = str(e) or type(e).__name__
        print(f"nfsteer lookup: cannot reach the controller at {base}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if r.status_code != 200:
        detail = _detail(r)
        hint = " (check --api-token)" if r.status_code in (401, 403) else ""
        message = f"the controller answered {r.status_code}: {detail}{hint}"
        if 400 <= r.status_code < 500:
            raise UsageError(message)
        print(f"nfsteer lookup: {message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.service:
        try:
            chain = r.json()
            ok = isinstance(chain["hops"], list) and isinstance(chain["direction"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            print(
                f"nfsteer lookup: unexpected answer from {url}: {r.text[:200]!r}", file=sys.stderr
            )
            return EXIT_UNREACHABLE
        if args.json:
            print(json.dumps(chain, sort_keys=True))
        else:
            _print_hops(chain)
        return 0
    try:
        answer = r.json()
        instance, slot, epoch = answer["instance"], answer["slot"], answer["epoch"]
    except (ValueError, KeyError, TypeError):
        print(f"nfsteer lookup: unexpected answer from {url}: {r.text[:200]!r}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(answer, sort_keys=True))
    else:
        print(f"{instance}  (pool {answer.get('pool', args.pool)}, slot {slot}, epoch {epoch})")
    return 0


def _detail(r: Any) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text.strip()[:200] or r.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return json.dumps(body)[:200]
