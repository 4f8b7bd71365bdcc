"""Load-aware rebalancing in Mininet: a skewed workload through a 4-instance pool.

The network is topologies/single.yaml (one switch, firewall pool fw1..fw4) with the pool in
``rebalance: {mode: load}`` and equal capacities; the controller, Redis and four real
firewall NF processes (state in Redis) run as in the demo. Traffic:

- ``udpzipf`` on c1: 64 steady UDP flows to sv1 whose rates follow a Zipf law (flow k gets a
  share proportional to 1/k): a few elephants, many mice;
- ``client`` on c2: long-lived TCP connections through the same pool, which must all
  survive the slot moves (they check every echoed byte).

Measured:

- per-slot packet rates over a steady window, from the switch's own slot-table counters
  (``ovs-ofctl dump-flows`` of table 1, read by this script, not by the controller);
- the imbalance (max over instances of load / capacity share, divided by the mean) of those
  slot rates under the hash-only assignment (the one before any load move) and under the
  final one, and the best possible for those slot rates (LPT, with a lower bound);
- the same imbalance from the instances' switch port counters (packets sent to each);
- time from the first to the last load move, in intervals; slots moved; load moves during
  the steady window; long-lived connections broken.

Usage (root, Mininet; one network at a time)::

    flock /work/ovs-mininet.lock .venv/bin/python bench/rebalance.py --json

``--steady-s`` sets the steady window (120 s by default), ``--interval-s`` the policy's
interval, ``--rate`` the total datagrams per second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mininet"))
sys.path.insert(0, str(REPO))

import elephants  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=64)
    p.add_argument("--rate", type=float, default=1500.0, help="datagrams per second, all flows")
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--interval-s", type=float, default=5.0)
    p.add_argument("--threshold", type=float, default=1.15)
    p.add_argument("--max-moves", type=int, default=8)
    p.add_argument("--steady-s", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    args = p.parse_args(argv)
    from mininet.log import setLogLevel

    setLogLevel("warning")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = elephants.run(args, say)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        imb = result["imbalance"]
        print(
            f"imbalance: hash-only {imb['hash_only']}, load-aware {imb['load_aware']} "
            f"(ports {imb['load_aware_from_ports']}), best {imb['best_possible_lpt']}; "
            f"{result['converge']['slots_moved']} slots moved, "
            f"{result['moves_in_steady_window']} moves in {args.steady_s:g} s steady, "
            f"{result['broken']}/{result['long_connections']} broken"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
