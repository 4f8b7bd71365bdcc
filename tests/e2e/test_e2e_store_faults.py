"""End to end with store faults: long-lived TCP connections through the firewall pool of
topologies/single.yaml while the replicated store (primary, 2 replicas, 3 Sentinels, AOF)
loses its primary to kill -9, has it stopped for 5 s, restarts every node, and is wiped
(FLUSHALL: the firewall picks the connections up from the inside)."""

from __future__ import annotations

import signal
import time

import pytest
from e2e_support import emulation, load, logs

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    yield from emulation("single.yaml", tmp_path_factory.mktemp("em-store"))


def primary_index(emu) -> int:
    from controller.storenodes import current_primary

    primary = current_primary(emu.store_layout)
    assert primary is not None
    return emu.store_layout.ports.index(primary[1])


def signal_node(emu, i: int, sig: int) -> None:
    import os

    from controller.storenodes import node_pid

    os.kill(node_pid(emu.store_layout, i), sig)


def wait_whole(emu, timeout: float = 30) -> None:
    from controller.storenodes import healthy, up

    up(emu.store_layout)  # starts whatever is down (a killed node returns as a replica)
    deadline = time.monotonic() + timeout
    while not healthy(emu.store_layout):
        assert time.monotonic() < deadline, "the store did not become whole again"
        time.sleep(0.2)


def test_connections_survive_every_store_fault(emu):
    from controller.storenodes import down, up

    scaleout = load("scaleout")
    emu.restart_control_plane()
    sc = scaleout.Scenario(emu, "fw", "redis", scaleout.TEST_TIMING, say=lambda _: None)
    for name in ("fw1", "fw2"):
        emu.start_nf(name, state="redis")
        assert sc.wait_state(name, ("active",)) is not None, logs(emu, [name, "controller"])
    servers = [h.ip_address for h in emu.topology.hosts.values() if h.role == "server"]
    clients = scaleout.Clients(emu, [f"{ip}:5001" for ip in servers], scaleout.TEST_TIMING)
    try:
        assert clients.wait_established(15)
        time.sleep(2)
        faults = {}
        # 1. kill -9 the primary: Sentinel promotes a replica, every client follows.
        t0 = time.time()
        signal_node(emu, primary_index(emu), signal.SIGKILL)
        time.sleep(6)
        faults["kill"] = t0
        wait_whole(emu)
        time.sleep(2)
        # 2. SIGSTOP the primary for 5 s: promoted meanwhile, back as a replica.
        old = primary_index(emu)
        faults["sigstop"] = time.time()
        signal_node(emu, old, signal.SIGSTOP)
        time.sleep(5)
        signal_node(emu, old, signal.SIGCONT)
        time.sleep(3)
        wait_whole(emu)
        assert primary_index(emu) != old
        time.sleep(2)
        # 3. every node restarts: the AOF brings the state back.
        faults["restart"] = time.time()
        down(emu.store_layout)
        up(emu.store_layout)
        time.sleep(4)
        # 4. FLUSHALL: every entry is gone; the firewall picks connections up from the inside.
        faults["flushall"] = time.time()
        emu.flush_redis()
        time.sleep(4)
    finally:
        finals = clients.stop()
    conns = [c for f in finals.values() for c in f["conns"]]
    detail = f"{faults}\n" + "\n".join(
        f"{c['id']} {c['state']} {c['reason']} max gap {c['max_gap']} gaps {c['gaps']}"
        for c in conns
    )
    assert len(conns) == 12, detail
    assert [c for c in conns if c["state"] == "broken"] == [], detail + logs(emu)
    assert max(c["max_gap"] for c in conns) < 8.0, detail
