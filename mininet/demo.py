"""`nfsteer demo`: the scale-out demo in Mininet.

Builds the topology (default ``topologies/single.yaml``) in Mininet with the replicated
store (primary, two replicas, three Sentinels) and the controller, runs one NF pool from
one instance up to all of them and back while clients keep long-lived TCP connections and
open short ones, kills an instance, takes another's link down, kills the store's primary
(``store-failover``: its gap is in the report and the plot), and drains back to one.
Progress is shown live; a JSON report and a PNG plot go to ``reports/`` (or ``--out``).
The scenario itself lives in ``mininet/scaleout.py``.

``nfsteer demo`` runs this file as a script on its own interpreter (this folder is not a
package: it must not shadow Mininet's own ``mininet`` package).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

MININET_DIR = Path(__file__).resolve().parent
REPO = MININET_DIR.parent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--topology",
        default=str(REPO / "topologies" / "single.yaml"),
        metavar="FILE",
        help="topology file (default: topologies/single.yaml)",
    )
    p.add_argument("--pool", default=None, help="pool to scale (default: the first in the file)")
    p.add_argument(
        "--state",
        choices=("redis", "local"),
        default="redis",
        help="NF connection state: in Redis (default) or in-process (the baseline)",
    )
    p.add_argument("--out", default=str(REPO / "reports"), metavar="DIR", help="report folder")
    p.add_argument(
        "--heartbeat-ttl-ms",
        type=int,
        default=300,
        metavar="N",
        help="heartbeat expiry of NF instances (default 300)",
    )
    p.add_argument("--quick", action="store_true", help="shorter pauses (as in the tests)")
    p.add_argument(
        "--scenario",
        choices=("scaleout", "elephants"),
        default="scaleout",
        help="scaleout (default): scale-out, failures, scale-in; elephants: a skewed "
        "workload, hash-only vs load-aware rebalancing side by side (single.yaml)",
    )
    p.add_argument(
        "--controllers",
        type=int,
        default=2,
        metavar="N",
        help="controllers sharing the store, one leading (default 2: the demo kills and "
        "pauses the leader; 1: no controller events)",
    )


def prerequisites(topology_path: str) -> list[str]:
    """What is missing to run the demo, one line each (empty: ready)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root: run as root (Mininet and Open vSwitch need it)")
    for tool, pkg in (
        ("ovs-vsctl", "openvswitch-switch"),
        ("ovs-ofctl", "openvswitch-switch"),
        ("redis-server", "redis-server"),
        ("mnexec", "mininet"),
        ("ethtool", "ethtool"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool}: not found (Debian package {pkg}; `make setup`)")
    if shutil.which("ovs-vsctl"):
        r = subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True)
        if r.returncode != 0:
            missing.append(
                "Open vSwitch is not running: /usr/share/openvswitch/scripts/ovs-ctl start"
            )
    for module, hint in (
        ("mininet.net", "Mininet is not importable (Debian package mininet, venv with system "
                        "site-packages: `make setup`)"),
        ("matplotlib", "matplotlib is not installed in the venv (`make setup`)"),
        ("nf.cli", "the NF command (nf/cli.py) is missing"),
        ("controller.ofp.launcher", "the controller (controller/ofp/launcher.py) is missing"),
    ):  # fmt: skip
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(f"{module}: {hint}")
    for script in ("nfnet.py", "nftraffic.py", "scaleout.py"):
        if not (MININET_DIR / script).is_file():
            missing.append(f"{MININET_DIR / script}: missing")
    from contract.topology import load_topology  # ConfigError reaches the CLI as one line

    topo = load_topology(topology_path)
    roles = [h.role for h in topo.hosts.values()]
    if "client" not in roles or "server" not in roles:
        missing.append(f"{topology_path}: needs at least one client and one server host")
    if not any(len(p.instances) >= 3 for p in topo.pools.values()):
        missing.append(f"{topology_path}: needs a pool with at least 3 instances")
    if shutil.which("ovs-vsctl"):
        for sw in topo.switches:
            r = subprocess.run(["ovs-vsctl", "--timeout=3", "br-exists", sw], capture_output=True)
            if r.returncode == 0:
                missing.append(
                    f"bridge {sw} already exists (another network is running, or remove it "
                    f"with `ovs-vsctl del-br {sw}`)"
                )
    return missing


def load_scenario(name: str = "scaleout") -> ModuleType:
    """mininet/NAME.py, loaded by path (the folder must not shadow Mininet's package)."""
    spec = importlib.util.spec_from_file_location(f"nfsteer_{name}", MININET_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    missing = prerequisites(args.topology)
    if not missing and args.pool is not None:
        from contract.topology import load_topology

        pools = load_topology(args.topology).pools
        if args.pool not in pools or len(pools[args.pool].instances) < 3:
            print(f"nfsteer demo: no pool {args.pool!r} with 3 or more instances", file=sys.stderr)
            return 2
    if missing:
        print("nfsteer demo: cannot run, missing:", file=sys.stderr)
        for m in missing:
            print(f"  - {m}", file=sys.stderr)
        return 1
    scaleout = load_scenario()
    from mininet.log import setLogLevel

    setLogLevel("warning")
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the network on `kill`
    say = lambda line: print(line, flush=True)  # noqa: E731
    if args.scenario == "elephants":
        return run_elephants(args, say)
    timing = scaleout.TEST_TIMING if args.quick else scaleout.DEMO_TIMING
    t_begin = time.monotonic()
    say(f"*** building {args.topology} in Mininet (Redis, controller, echo servers)")
    if args.controllers < 1:
        print("nfsteer demo: --controllers must be at least 1", file=sys.stderr)
        return 2
    with scaleout.nfnet.Emulation(
        Path(args.topology), heartbeat_ttl_ms=args.heartbeat_ttl_ms, controllers=args.controllers
    ) as emu:
        pool = args.pool or next(p for p, v in emu.topology.pools.items() if len(v.instances) >= 3)
        say(
            f"*** network up in {time.monotonic() - t_begin:.1f} s; controller API "
            f"{emu.api_base}; pool {pool}, NF state {args.state}"
        )
        report = scaleout.Scenario(
            emu, pool, args.state, timing, say, store_failover=True,
            controller_events=args.controllers > 1,
        ).run()  # fmt: skip
        say("*** stopping the network")
    when = time.strftime("%Y%m%d-%H%M%S")
    stem = f"demo-{report['topology']}-{report['pool']}-{args.state}-{when}"
    json_path, png_path = scaleout.write_report(report, Path(args.out), stem)
    say("")
    say(f"*** summary ({time.monotonic() - t_begin:.0f} s in all)")
    for line in scaleout.summary_lines(report):
        say("  " + line)
    say(f"  report: {json_path}")
    say(f"  plot:   {png_path}")
    s = report["summary"]
    if args.state == "redis" and (s["broken"] or s["stalled"]):
        say("  RESULT: connections were disrupted although state is in Redis")
        return 1
    return 0


def run_elephants(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """The skewed workload: hash-only vs load-aware, a report and a side-by-side plot."""
    elephants = load_scenario("elephants")
    t_begin = time.monotonic()
    steady = 15.0 if args.quick else 40.0
    opts = elephants.options(steady_s=steady, interval_s=3.0 if args.quick else 5.0)
    say(f"*** elephants on topologies/single.yaml: {opts.flows} UDP flows "
        f"(Zipf s={opts.zipf}), pool fw in load mode (threshold {opts.threshold:g}, "
        f"every {opts.interval_s:g} s)")  # fmt: skip
    result = elephants.run(opts, lambda line: say("    " + line))
    stem = f"demo-elephants-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path, png_path = elephants.write_report(result, Path(args.out), stem)
    imb, conv = result["imbalance"], result["converge"]
    say("")
    say(f"*** summary ({time.monotonic() - t_begin:.0f} s in all)")
    say(f"  imbalance: hash only {imb['hash_only']}, load-aware {imb['load_aware']}, "
        f"best possible {imb['best_possible_lpt']}")  # fmt: skip
    say(f"  {conv['slots_moved']} slots moved, {result['moves_in_steady_window']} moves in "
        f"the {steady:g} s steady window; {result['broken']} of {result['long_connections']} "
        "long-lived TCP connections broken")  # fmt: skip
    say(f"  report: {json_path}")
    say(f"  plot:   {png_path}")
    return 1 if result["broken"] else 0


if __name__ == "__main__":  # how `nfsteer demo` runs it (see cli/demo.py)
    from cli.command import standalone

    sys.exit(standalone("demo", "run the scale-out demo in Mininet", add_arguments, run))
