"""The elephants scenario: a skewed workload through a 4-instance pool, hash-only vs load-aware.

topologies/single.yaml (one switch, firewall pool fw1..fw4 with equal capacities) with the
pool in ``rebalance: {mode: load}``; Redis, the controller and four real firewall NF
processes (state in Redis) run as in the scale-out demo. c1 sends 64 steady UDP flows whose
rates follow a Zipf law (a few elephants, many mice); c2 keeps long-lived TCP connections
through the same pool, which must all survive the slot moves. The controller reads the slot
table's counters and moves hot slots until the pool is within its threshold.

The imbalance (max over instances of load / capacity share, divided by the mean) is computed
from the switch's own slot counters over a steady window, for the hash-only assignment (the
one before any load move) and for the final one, next to the best possible for those slot
rates. Used by ``nfsteer demo --scenario elephants`` (report and a side-by-side plot) and by
``bench/rebalance.py`` (figures).
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

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import nfnet  # noqa: E402
import scaleout  # noqa: E402

from controller.core.loadbalance import best_imbalance, imbalance, instance_loads  # noqa: E402

POOL = "fw"
SWITCH = "s1"
INSTANCES = ["fw1", "fw2", "fw3", "fw4"]


def options(**overrides: Any) -> argparse.Namespace:
    """The scenario's settings (the bench's defaults), with overrides."""
    base = {"flows": 64, "rate": 1500.0, "zipf": 1.0, "seed": 1, "interval_s": 5.0,
            "threshold": 1.15, "max_moves": 8, "steady_s": 120.0}  # fmt: skip
    base.update(overrides)
    return argparse.Namespace(**base)


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
    data = yaml.safe_load((nfnet.REPO / "topologies" / "single.yaml").read_text())
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
        "instance_share_hash_only": _shares(instance_loads(rates, hash_only, caps)),
        "instance_share_load_aware": _shares(instance_loads(rates, final, caps)),
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


def _shares(loads: dict[str, float]) -> dict[str, float]:
    total = sum(loads.values()) or 1.0
    return {n: round(v / total, 3) for n, v in loads.items()}


def plot(result: dict[str, Any], path: Path) -> None:
    """Each instance's share of the load, hash-only and load-aware side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["measured"]
    hash_only, aware = per["instance_share_hash_only"], per["instance_share_load_aware"]
    names = list(hash_only)
    fig, ax = plt.subplots(figsize=(9, 5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [hash_only[n] for n in names], 0.4, label="hash only")
    ax.bar([i + 0.2 for i in x], [aware[n] for n in names], 0.4, label="load-aware")
    ax.axhline(1 / len(names), color="gray", linestyle="--", linewidth=0.8, label="fair share")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("share of the pool's packets")
    imb = result["imbalance"]
    ax.set_title(
        f"{result['flows']} UDP flows, Zipf s={result['zipf_s']}: imbalance hash-only "
        f"{imb['hash_only']}, load-aware {imb['load_aware']} (best {imb['best_possible_lpt']}); "
        f"{result['broken']}/{result['long_connections']} TCP broken",
        fontsize=9,
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1))
    png_path = out_dir / f"{stem}.png"
    plot(result, png_path)
    return json_path, png_path
