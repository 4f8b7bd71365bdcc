"""Steering benchmark: how many flows change instance when the pool changes.

Sends one set of TCP flows (one SYN each, default 20,000) as real frames through a real Open
vSwitch userspace bridge with 8 instance ports, reads which port each flow leaves by, and
repeats after each of three changes:

- remove one of 8 instances,
- add a 9th instance,
- double one instance's capacity.

For each change it reports the share of flows that changed instance ("moved"), the least
share that must move ("ideal": the sum of the share increases), and the "collateral" share:
flows that moved although they need not have (on remove, flows that were not on the removed
instance; on add or a capacity change, flows that did not move onto the new or grown
instance), plus the traffic share of the new/doubled instance against its ideal. Three ways
of steering are measured side by side on the same bridge and flows:

- nfsteer: the real controller (controller.ofp.launcher.start_in_thread) programs the bridge
  over OpenFlow (multipath hash into 4,096 slots by default, slot table); changes go through
  ``app.apply``. Every observed flow's instance is also checked against the controller's own
  prediction (hash + assignment, as ``nfsteer lookup`` computes it).
- OVS select group, default selection method (dp_hash),
- OVS select group, ``selection_method=hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)`` (an
  OpenFlow 1.5 extension), both programmed with ovs-ofctl.

Finally it times the slot assignment alone for 1,000 instances x 65,536 (and 4,096) slots
(median of several runs of each change).

Run as root (veth pairs, an OVS bridge, raw sockets), with Open vSwitch running::

    .venv/bin/python bench/steering.py [--flows N] [--slots S] [--json]

``--json`` prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _rig import Capture, FlowSet, Observation, Rig, Sender, observe, require_root

from controller.core.hashing import FiveTuple, slot_of
from controller.core.slots import assign

N_BASE = 8
CLIENT_MAC, CLIENT_NET, SERVER_NET = "02:00:00:00:00:01", "10.1.0.0/16", "10.2.0.0/16"
SERVER_MAC = "02:00:00:00:00:02"
HASH_FIELDS = "hash,fields(ip_src,ip_dst,tcp_src,tcp_dst)"
TARGET = 3  # the instance removed / doubled
JOINER = N_BASE + 1

Caps = dict[int, int]  # instance number -> capacity
BASE: Caps = {k: 1 for k in range(1, N_BASE + 1)}
# (label, capacities, what is measured against the state before: None for a restore step)
PLAN: list[tuple[str, Caps, str | None]] = [
    ("start", BASE, None),
    ("remove", {k: 1 for k in BASE if k != TARGET}, "remove"),
    ("restore", BASE, None),
    ("add", {**BASE, JOINER: 1}, "add"),
    ("restore", BASE, None),
    ("double", {**BASE, TARGET: 2}, "double"),
]
CHANGES = {"remove": "remove 1 of 8", "add": "add 1 (8 to 9)", "double": "double 1 capacity"}


# -- ways of steering ----------------------------------------------------------------------


class SelectGroup:
    """An OVS select group, one bucket per instance, weight proportional to capacity."""

    def __init__(self, rig: Rig, name: str, selection: str | None):
        self.rig, self.name, self.selection = rig, name, selection

    def _group(self, caps: Caps) -> str:
        spec = "group_id=1,type=select"
        if self.selection:
            spec += f",selection_method={self.selection}"
        for k, cap in sorted(caps.items()):
            out = self.rig.instance_port(k)
            spec += f",bucket=bucket_id:{k},weight:{100 * cap},actions=output:{out}"
        return spec

    def start(self, caps: Caps) -> None:
        self.rig.reset_tables()
        self.rig.ofctl("add-group", self._group(caps))
        self.rig.ofctl("add-flow", "table=0,in_port=1,tcp,actions=group:1")
        self.rig.settle()

    def change(self, before: Caps, after: Caps) -> None:
        self.rig.ofctl("mod-group", self._group(after))
        self.rig.settle()

    def predict(self, key: bytes) -> int | None:
        return None

    def stop(self) -> None:
        self.rig.reset_tables()


TOPOLOGY = """\
name: bench
switches:
  s1: {{dpid: {dpid}}}
hosts:
  c1: {{switch: s1, port: 1, mac: "{client_mac}", ip: 10.1.0.1/16, role: client}}
pools:
  p:
    kind: firewall
    slots: {slots}
    membership: static
    instances:
{instances}
services:
  bench:
    pool: p
    bidirectional: false
    match:
      - {{proto: tcp, src: {client_net}, dst: {server_net}}}
"""


def _instance_yaml(k: int, cap: int, port: int) -> str:
    return (
        f'i{k}: {{switch: s1, port: {port}, mac: "02:00:00:00:01:{k:02x}", '
        f"ip: 10.3.0.{k}/16, capacity: {cap}}}"
    )


class Nfsteer:
    """The nfsteer controller, in this process, programming the rig's bridge."""

    name = "nfsteer"

    def __init__(self, rig: Rig, n_slots: int, workdir: Path):
        self.rig, self.n_slots, self.workdir = rig, n_slots, workdir
        self.app = None
        self.stop_controller: Callable[[], None] | None = None
        self.slot_owner: list[str | None] = []
        self.barrier_seconds: list[float] = []

    def start(self, caps: Caps) -> None:
        from controller.ofp.launcher import start_in_thread
        from controller.ofp.options import Options

        self.rig.reset_tables()
        instances = "\n".join(
            "      " + _instance_yaml(k, c, self.rig.instance_port(k)) for k, c in caps.items()
        )
        topo = self.workdir / "bench.yaml"
        topo.write_text(
            TOPOLOGY.format(
                dpid=self.rig.dpid,
                client_mac=CLIENT_MAC,
                slots=self.n_slots,
                instances=instances,
                client_net=CLIENT_NET,
                server_net=SERVER_NET,
            )
        )
        logging.getLogger("nfsteer").setLevel(logging.WARNING)
        self.app, self.stop_controller = start_in_thread(
            Options(
                topology=topo, listen=("127.0.0.1", 0), api=("127.0.0.1", 0), log_level="WARNING"
            )
        )
        port = self.app.options.listen[1]
        self.rig.set_controller(f"tcp:127.0.0.1:{port}")
        if not self.app.wait_synced("s1", 30):
            raise RuntimeError("the controller did not program the bridge within 30 s")
        self._snapshot()
        self.rig.settle()

    def change(self, before: Caps, after: Caps) -> None:
        from controller.core.state import InstanceInfo, InstanceState

        def mutation(s):
            changes = []
            for k in sorted(set(before) - set(after)):
                changes.append(s.remove_instance("p", f"i{k}", time.time()))
            for k in sorted(set(after) - set(before)):
                info = InstanceInfo(
                    name=f"i{k}",
                    pool="p",
                    mac=f"02:00:00:00:01:{k:02x}",
                    ip=f"10.3.0.{k}",
                    switch="s1",
                    port=self.rig.instance_port(k),
                    capacity=float(after[k]),
                    state=InstanceState.ACTIVE,
                )
                changes.append(s.add_instance(info, time.time()))
            for k in sorted(set(before) & set(after)):
                if before[k] != after[k]:
                    changes.append(s.set_capacity("p", f"i{k}", float(after[k]), time.time()))
            return changes

        result = self.app.apply(mutation, "benchmark")
        if not result.wait(30):
            raise RuntimeError("the switch did not confirm the change within 30 s")
        if result.barrier_done is not None:
            self.barrier_seconds.append(result.barrier_done - result.started)
        self._snapshot()
        self.rig.settle()

    def _snapshot(self) -> None:
        pool = self.app.steering.pools["p"]
        self.slot_owner, self.basis = list(pool.assignment), pool.basis

    def predict(self, key: bytes) -> int | None:
        src, dst, sport, dport = FlowSet.tuple_of(key)
        owner = self.slot_owner[
            slot_of(FiveTuple(src, dst, 6, sport, dport), self.n_slots, self.basis)
        ]
        return int(owner[1:]) if owner else None

    def stop(self) -> None:
        self.rig.set_controller(None)
        if self.stop_controller:
            self.stop_controller()
        self.rig.reset_tables()


# -- measuring ------------------------------------------------------------------------------


def shares(caps: Caps) -> dict[int, Fraction]:
    total = sum(caps.values())
    return {k: Fraction(c, total) for k, c in caps.items()}


def compare(kind: str, before: Observation, after: Observation, cb: Caps, ca: Caps) -> dict:
    keys = [k for k in before.instance if k in after.instance]
    sb, sa = shares(cb), shares(ca)
    ideal = sum(
        max(Fraction(0), sa.get(k, Fraction(0)) - sb.get(k, Fraction(0))) for k in set(sa) | set(sb)
    )
    target = TARGET if kind in ("remove", "double") else JOINER
    moved = collateral = 0
    for key in keys:
        b, a = before.instance[key], after.instance[key]
        if b == a:
            continue
        moved += 1
        # Needless moves: on remove, anything not leaving the removed instance; on add and
        # capacity growth, anything not moving onto the new or grown instance.
        if (kind == "remove" and b != target) or (kind != "remove" and a != target):
            collateral += 1
    n = len(keys)
    on_target = sum(1 for key in keys if after.instance[key] == target)
    return {
        "flows": n,
        "moved": moved / n,
        "ideal": float(ideal),
        "collateral": collateral / n,
        "target_instance": target,
        "target_share": on_target / n,
        "target_ideal_share": float(sa.get(target, Fraction(0))),
    }


def run_method(method, flows: FlowSet, sender: Sender, capture: Capture, log) -> dict:
    out: dict = {"changes": {}, "observations": []}
    previous: tuple[Caps, Observation] | None = None
    mismatches = 0
    try:
        for label, caps, measured in PLAN:
            if previous is None:
                method.start(caps)
            else:
                method.change(previous[0], caps)
            obs = observe(sender, capture, flows)
            log(
                f"  {method.name:>14} {label:<8} {len(obs.instance)} flows seen, "
                f"{len(obs.missing)} missing, {obs.rounds} round(s), {obs.seconds:.1f} s"
            )
            if label == "start":
                spread = Counter(obs.instance.values())
                out["start_shares"] = {k: spread[k] / len(obs.instance) for k in sorted(spread)}
            predicted = [(key, method.predict(key)) for key in obs.instance]
            mismatches += sum(1 for key, p in predicted if p is not None and p != obs.instance[key])
            out["observations"].append(
                {
                    "step": label,
                    "seen": len(obs.instance),
                    "missing": len(obs.missing),
                    "conflicts": obs.conflicts,
                    "rounds": obs.rounds,
                    "missing_examples": [FlowSet.tuple_of(k) for k in obs.missing[:5]],
                }
            )
            if measured and previous is not None:
                out["changes"][measured] = compare(measured, previous[1], obs, previous[0], caps)
            previous = (caps, obs)
    finally:
        method.stop()
    if isinstance(method, Nfsteer):
        out["prediction_mismatches"] = mismatches
        out["barrier_seconds"] = method.barrier_seconds
    return out


def compute_times(n_instances: int, n_slots: int, runs: int) -> dict:
    """Median wall time of assign() for one change of a pool of n_instances."""
    caps = {f"i{k:04d}": 1 + (k % 4) for k in range(n_instances)}
    prev = assign(n_slots, caps)
    cases = {
        "remove": {k: v for k, v in caps.items() if k != "i0003"},
        "add": {**caps, "new": 2},
        "double": {**caps, "i0003": 2 * caps["i0003"]},
    }
    out = {}
    for name, new in cases.items():
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            assign(n_slots, new, prev)
            samples.append(time.perf_counter() - t0)
        out[name] = statistics.median(samples) * 1000
    out["worst_median"] = max(out.values())
    return out


# -- report -----------------------------------------------------------------------------------


def table(results: dict, n_flows: int, n_slots: int, compute: dict, ovs_version: str) -> str:
    methods = list(results)
    width, label_width = 20, 34
    lines = [
        f"{n_flows} TCP flows through an OVS {ovs_version} userspace bridge, 8 instances; "
        f"nfsteer with {n_slots} slots" + (" (the default)" if n_slots == 4096 else ""),
        "",
        "change / figure".ljust(label_width) + "".join(m.rjust(width) for m in methods),
    ]
    for kind, title in CHANGES.items():
        lines.append(f"{title}:")
        ideal = results[methods[0]]["changes"][kind]["ideal"]
        tideal = results[methods[0]]["changes"][kind]["target_ideal_share"]
        rows = [
            (f"  moved (ideal {ideal:.3f})", "moved", "{:.3f}"),
            ("  collateral", "collateral", "{:.3f}"),
            (
                f"  instance {'share' if kind != 'remove' else 'left'} (ideal {tideal:.3f})",
                "target_share",
                "{:.3f}",
            ),
        ]
        for label, field, fmt in rows:
            cells = [fmt.format(results[m]["changes"][kind][field]) for m in methods]
            lines.append(label.ljust(label_width) + "".join(c.rjust(width) for c in cells))
    missing = {m: sum(o["missing"] for o in results[m]["observations"]) for m in methods}
    lines.append(
        "flows never seen (all steps)".ljust(label_width)
        + "".join(str(missing[m]).rjust(width) for m in methods)
    )
    if "nfsteer" in results:
        lines.append(
            f"nfsteer: flows on another instance than the controller predicts: "
            f"{results['nfsteer']['prediction_mismatches']}"
        )
    for slots_, figures in compute.items():
        lines.append(
            f"assignment compute, 1,000 instances x {slots_} slots (median ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in figures.items() if k != "worst_median")
        )
    return "\n".join(lines)


def acceptance(nf: dict) -> dict:
    ok = {}
    for kind, c in nf["changes"].items():
        ok[kind] = {
            "zero_collateral": c["collateral"] == 0,
            "moved_within_5pct_of_ideal": abs(c["moved"] - c["ideal"]) <= 0.05 * c["ideal"],
        }
    d = nf["changes"]["double"]
    ok["double"]["share_within_1pp"] = abs(d["target_share"] - d["target_ideal_share"]) <= 0.01
    ok["every_flow_seen"] = all(o["missing"] == 0 for o in nf["observations"])
    ok["switch_agrees_with_prediction"] = nf["prediction_mismatches"] == 0
    ok["all"] = all(all(v.values()) if isinstance(v, dict) else v for v in ok.values())
    return ok


def _n_slots(text: str) -> int:
    n = int(text)
    if n < 2 or n > 65536 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"{n} is not a power of two between 2 and 65536")
    return n


def _flow_count(text: str) -> int:
    n = int(text)
    if not 100 <= n <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{n} is not between 100 and 1000000")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=_flow_count, default=20000, help="TCP flows (default 20000)")
    p.add_argument("--slots", type=_n_slots, default=4096, help="nfsteer slots (default 4096)")
    p.add_argument("--seed", type=int, default=1, help="flow set seed (default %(default)s)")
    p.add_argument("--runs", type=int, default=9, help="compute-time runs (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    args = p.parse_args(argv)
    require_root()
    from _rig import sh

    # Timed first, while this process runs nothing else (no capture or controller threads).
    compute = {
        65536: compute_times(1000, 65536, args.runs),
        4096: compute_times(1000, 4096, args.runs),
    }
    ovs_version = sh("ovs-vswitchd", "--version").split()[-1]
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print
    flows = FlowSet.make(args.flows, args.seed, CLIENT_NET, SERVER_NET, CLIENT_MAC, SERVER_MAC)
    results: dict = {}
    with Rig(N_BASE + 1) as rig, tempfile.TemporaryDirectory(prefix="slbench") as tmp:
        capture = Capture([far for _, far in rig.instances])
        sender = Sender(rig.client[1])
        try:
            methods = [
                SelectGroup(rig, "select dp_hash", None),
                SelectGroup(rig, "select hash+fields", HASH_FIELDS),
                Nfsteer(rig, args.slots, Path(tmp)),
            ]
            for m in methods:
                log(f"measuring {m.name} ...")
                results[m.name] = run_method(m, flows, sender, capture, log)
            results = {"nfsteer": results.pop("nfsteer"), **results}  # nfsteer's column first
        finally:
            capture.close()
            sender.close()
    ok = acceptance(results["nfsteer"])
    print(table(results, args.flows, args.slots, compute, ovs_version))
    print(f"nfsteer acceptance targets: {'all met' if ok['all'] else 'NOT met: ' + json.dumps(ok)}")
    if args.json:
        summary = {
            "flows": args.flows,
            "slots": args.slots,
            "seed": args.seed,
            "ovs_version": ovs_version,
            "methods": results,
            "compute_ms_1000_instances": {str(k): v for k, v in compute.items()},
            "acceptance": ok,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
