"""The store fault sequence of the end-to-end tests: long-lived TCP connections run while
the replicated store loses its primary to kill -9, has it stopped for 5 s, restarts every
node (AOF), and is wiped (FLUSHALL)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from e2e_support import load, logs

from controller.ops.storenodes import current_primary, down, healthy, node_pid, up


def primary_index(emu: Any) -> int:
    primary = current_primary(emu.store_layout)
    assert primary is not None
    return emu.store_layout.ports.index(primary[1])


def signal_node(emu: Any, i: int, sig: int) -> None:
    os.kill(node_pid(emu.store_layout, i), sig)


def wait_whole(emu: Any, timeout: float = 30) -> None:
    up(emu.store_layout)  # starts whatever is down (a killed node returns as a replica)
    deadline = time.monotonic() + timeout
    while not healthy(emu.store_layout):
        assert time.monotonic() < deadline, "the store did not become whole again"
        time.sleep(0.2)


def run_store_faults(emu: Any, pools: dict[str, list[str]], targets: list[str]) -> dict:
    """Start the pools' instances, run traffic to ``targets`` from every client host
    through all four faults; returns {"faults": {name: wall time}, "conns": [...]}."""
    scaleout = load("scaleout")
    emu.restart_control_plane()
    for pool, names in pools.items():
        for name in names:
            emu.start_nf(name, state="redis")
        for name in names:
            t = scaleout.wait_member(emu, pool, name, ("active",))
            assert t is not None, logs(emu, [name, "controller"])
    # Broken = reset, closed, wrong data, or no progress for 10 s: a failover's gap (2-3.5 s
    # here, see the README) is measured and bounded separately.
    clients = scaleout.Clients(emu, targets, scaleout.TEST_TIMING, ("--dead", "10"))
    faults: dict[str, float] = {}
    try:
        assert clients.wait_established(15), logs(emu)
        time.sleep(2)
        faults["kill"] = time.time()  # Sentinel promotes a replica; every client follows
        signal_node(emu, primary_index(emu), signal.SIGKILL)
        time.sleep(6)
        wait_whole(emu)
        time.sleep(2)
        old = primary_index(emu)  # promoted meanwhile, back as a replica after SIGCONT
        faults["sigstop"] = time.time()
        signal_node(emu, old, signal.SIGSTOP)
        time.sleep(5)
        signal_node(emu, old, signal.SIGCONT)
        time.sleep(3)
        wait_whole(emu)
        assert primary_index(emu) != old
        time.sleep(2)
        faults["restart"] = time.time()  # every node restarts: the AOF brings state back
        down(emu.store_layout)
        up(emu.store_layout)
        time.sleep(4)
        faults["flushall"] = time.time()  # total loss: the NFs' degrade paths
        emu.flush_redis()
        time.sleep(4)
    finally:
        finals = clients.stop()
    conns = [c for f in finals.values() for c in f["conns"]]
    return {"faults": faults, "conns": conns}


def describe(result: dict) -> str:
    lines = [str(result["faults"])]
    lines += [
        f"{c['id']} {c['target']} {c['state']} {c['reason']} max gap {c['max_gap']} "
        f"gaps {c['gaps']}"
        for c in result["conns"]
    ]
    return "\n".join(lines)


def gap_at(conn: dict, t: float, window: float = 8.0) -> float:
    """The longest gap of a connection that started within ``window`` s after ``t``."""
    return max([g for s, g in conn["gaps"] if t - 0.5 <= s <= t + window] + [0.0])
