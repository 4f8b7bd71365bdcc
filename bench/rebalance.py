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
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "mininet"))
sys.path.insert(0, str(REPO))

import nfnet  # noqa: E402
import scaleout  # noqa: E402

from controller.loadbalance import best_imbalance, imbalance, instance_loads  # noqa: E402

POOL = "fw"
SWITCH = "s1"
INSTANCES = ["fw1", "fw2", "fw3", "fw4"]


def slot_counters(bridge: str) -> dict[int, int]:
    """slot -> packets of the fw pool's slot entries, as the switch counts them."""
    out = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, "table=1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[int, int] = {}
    for line in out.splitlines():
        # one pool in this topology: every slot entry is fw's
        packets = re.search(r"n_packets=(\d+)", line)
        slot = re.search(r"reg0=(0x[0-9a-f]+|\d+)", line)
        if packets and slot:
            counts[int(slot.group(1), 0)] = int(packets.group(1))
    return counts


def write_topology(workdir: Path, interval_s: float, threshold: float, max_moves: int) -> Path:
    data = yaml.safe_load((REPO / "topologies" / "single.yaml").read_text())
    pool = data["pools"][POOL]
    for inst in pool["instances"].values():
        inst["capacity"] = 1
    pool["rebalance"] = {
        "mode": "load",
        "threshold": threshold,
        "interval_s": interval_s,
        "max_moves": max_moves,
    }
    path = workdir / "rebalance.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def pool_load(emu: nfnet.Emulation) -> dict[str, Any]:
    return emu.api("GET", f"/api/v1/pools/{POOL}")["load"]


def run(args: argparse.Namespace, say) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rb-nfsteer-"))
    topo = write_topology(workdir, args.interval_s, args.threshold, args.max_moves)
    result: dict[str, Any] = {
        "flows": args.flows,
        "rate_pps": args.rate,
        "zipf_s": args.zipf,
        "interval_s": args.interval_s,
        "threshold": args.threshold,
        "max_moves": args.max_moves,
        "steady_s": args.steady_s,
    }
    with nfnet.Emulation(topo, workdir=workdir, controller_log_level="INFO") as emu:
        for name in INSTANCES:
            emu.start_nf(name)
        for name in INSTANCES:
            if scaleout.wait_member(emu, POOL, name, ("active",), 30) is None:
                raise RuntimeError(f"{name} did not become active")
        hash_only = emu.api("GET", f"/api/v1/pools/{POOL}/assignment")["assignment"]
        sv1 = emu.topology.hosts["sv1"].ip_address
        # Long-lived TCP connections from both clients, light (5 messages/s each) so that
        # the load is the skewed UDP's.
        timing = scaleout.Timing(long_per_client=8, interval=0.2, short_rate=0.0)
        clients = scaleout.Clients(emu, [f"{sv1}:5001"], timing)
        if not clients.wait_established(20):
            raise RuntimeError("the long-lived connections were not established")
        udp = emu.host("c1").popen(
            emu.traffic_cmd(
                "udpzipf", "--dst", sv1, "--flows", str(args.flows), "--rate", str(args.rate),
                "--zipf", str(args.zipf), "--seed", str(args.seed),
            ),
            cwd=str(nfnet.REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        t_start = time.monotonic()
        say(f"traffic on: {args.flows} UDP flows, {args.rate:g} pkt/s in all, Zipf s={args.zipf}")

        # Converged: no load move for 3 intervals after the last one (or none at all within
        # 8 intervals: the hash alone was within the threshold).
        moves_seen, last_change = 0, time.monotonic()
        first_move = last_move = None
        while True:
            time.sleep(0.25)
            load = pool_load(emu)
            n = load["moves_total"].get("load", 0)
            now = time.monotonic()
            if n != moves_seen:
                moves_seen, last_change, last_move = n, now, now
                first_move = first_move or now
                say(f"load moves so far: {n} slots, imbalance {load['imbalance']}")
            quiet = now - last_change
            if first_move is not None and quiet >= 3 * args.interval_s:
                break
            if first_move is None and now - t_start >= 8 * args.interval_s:
                break
            if now - t_start > 40 * args.interval_s + 60:
                raise RuntimeError("load moves did not stop")
        moves = [m for m in load["moves"] if m["kind"] == "load"]
        result["converge"] = {
            "first_move_after_s": None if first_move is None else round(first_move - t_start, 1),
            "first_to_last_move_s": (
                None if first_move is None else round(last_move - first_move, 1)
            ),
            "load_changes": len(moves),
            "slots_moved": moves_seen,
            "reasons": [m["reason"] for m in moves],
        }

        # The steady window: the switch's counters at both ends, load moves in between.
        before_slots = slot_counters(SWITCH)
        before_ports = emu.port_counters([SWITCH])
        moves_before = moves_seen
        say(f"steady window: {args.steady_s:g} s")
        time.sleep(args.steady_s)
        after_slots = slot_counters(SWITCH)
        after_ports = emu.port_counters([SWITCH])
        final_load = pool_load(emu)
        final = emu.api("GET", f"/api/v1/pools/{POOL}/assignment")["assignment"]
        result["moves_in_steady_window"] = final_load["moves_total"].get("load", 0) - moves_before
        udp.terminate()
        udp_out, _ = udp.communicate(timeout=15)
        finals = clients.stop()

    rates = [0.0] * len(final)
    resets = 0
    for slot, count in after_slots.items():
        old = before_slots.get(slot, 0)
        if count < old:
            resets += 1
        rates[slot] = max(0, count - old) / args.steady_s
    caps = dict.fromkeys(INSTANCES, 1.0)
    total = sum(rates)
    heaviest = max(rates) if rates else 0.0
    ports = {n: emu.topology.pools[POOL].instances[n].port for n in INSTANCES}
    port_rates = {
        n: (after_ports[(SWITCH, p)][1] - before_ports[(SWITCH, p)][1]) / args.steady_s
        for n, p in ports.items()
    }
    result["measured"] = {
        "slot_pkts_per_s_total": round(total, 1),
        "busy_slots": sum(1 for r in rates if r > 0),
        "heaviest_slot_share": round(heaviest / total, 3) if total else None,
        "counter_resets": resets,
        "instance_pkts_per_s_from_slots": {
            n: round(v, 1) for n, v in instance_loads(rates, final, caps).items()
        },
        "instance_pkts_per_s_from_ports": {n: round(v, 1) for n, v in port_rates.items()},
    }
    lower = max(1.0, heaviest / (total / len(caps))) if total else 1.0
    result["imbalance"] = {
        "hash_only": round(imbalance(instance_loads(rates, hash_only, caps), caps), 3),
        "load_aware": round(imbalance(instance_loads(rates, final, caps), caps), 3),
        "load_aware_from_ports": round(imbalance(port_rates, caps), 3),
        "best_possible_lpt": round(best_imbalance(rates, caps), 3),
        "lower_bound": round(lower, 3),
        "controller_estimate": final_load["imbalance"],
    }
    conns = [c for f in finals.values() for c in f.get("conns", [])]
    result["long_connections"] = len(conns)
    result["broken"] = sum(1 for c in conns if c["state"] == "broken")
    try:
        result["udp_sender"] = {k: v for k, v in json.loads(udp_out).items() if k != "ports"}
    except ValueError:
        result["udp_sender"] = None
    return result


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

    result = run(args, say)
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
