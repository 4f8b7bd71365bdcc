"""End to end on topologies/leafspine.yaml (2 spines, 3 leaves, three pools): instances on
other leaves than the traffic's ingress, NAT and load balancer pools, and an inter-switch link
failure, with real Mininet, OVS, controller, Redis, NF processes and TCP.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from e2e_support import emulation, load, logs

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]

NAT_PUBLIC = "10.0.0.240"
VIP = "10.0.0.100"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    yield from emulation("leafspine.yaml", tmp_path_factory.mktemp("em-leafspine"))


@pytest.fixture
def scaleout():
    return load("scaleout")


def start_pool(emu, scaleout, pool: str, names: list[str]) -> None:
    for name in names:
        emu.start_nf(name, state="redis")
    for name in names:
        t = scaleout.wait_member(emu, pool, name, ("active",))
        assert t is not None, logs(emu, [name, "controller"])


def run_client(emu, host: str, targets: list[str], long: int, seconds: float):
    args = ["client", "--targets", ",".join(targets), "--long", str(long)]
    args += ["--short-rate", "5", "--duration", str(seconds), "--status-every", "1"]
    return emu.host(host).popen(emu.traffic_cmd(*args), stderr=subprocess.DEVNULL, text=True)


def final_status(proc) -> dict:
    out, _ = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finals = [m for m in lines if m.get("final")]
    assert finals, out[-2000:]
    return finals[-1]


def established_peers(emu, host: str, port: int) -> list[str]:
    out = emu.host(host).cmd(f"ss -Htn state established '( sport = :{port} )'")
    return [line.split()[-1].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def test_redis_state_keeps_every_connection_across_the_fabric(emu, scaleout):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, "fw", "redis", scaleout.TEST_TIMING, say=lambda _: None).run()
    s, f = report["summary"], report["figures"]
    detail = "\n".join(scaleout.summary_lines(report)) + "\n" + logs(emu)
    assert s["long_connections"] == 12
    assert s["broken"] == 0, detail
    assert s["stalled"] == 0, detail
    assert s["short_failed"] == 0, detail
    # every instance carried traffic, including those on another leaf than the client
    assert all(v["to_traffic_s"] is not None for v in f["time_to_traffic"].values()), detail
    assert f["kill_detected_s"] is not None and f["kill_detected_s"] < 1.0, detail


def test_local_state_breaks_connections_across_the_fabric(emu, scaleout):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, "fw", "local", scaleout.TEST_TIMING, say=lambda _: None).run()
    # connections moved to an instance without their state are dropped by the firewall
    assert report["summary"]["broken"] > 0, "\n".join(scaleout.summary_lines(report))


def test_nat_and_load_balancer_pools_carry_connections(emu, scaleout):
    emu.restart_control_plane()
    start_pool(emu, scaleout, "nat", ["nat1", "nat2"])
    start_pool(emu, scaleout, "lb", ["lb1", "lb2"])
    ports = emu.instance_ports()
    before = emu.port_counters()
    nat = run_client(emu, "c1", ["10.0.0.129:5002", "10.0.0.130:5002"], long=8, seconds=6)
    lb = run_client(emu, "c2", [f"{VIP}:80"], long=16, seconds=6)
    time.sleep(4)
    # the servers see the NAT's public address, never the clients'
    nat_peers = established_peers(emu, "sv1", 5002) + established_peers(emu, "sv2", 5002)
    # the load balancer spreads its connections over both backends
    lb_peers = {sv: established_peers(emu, sv, 8080) for sv in ("sv1", "sv2")}
    nat_final, lb_final = final_status(nat), final_status(lb)
    after = emu.port_counters()
    detail = logs(emu)
    assert nat_peers and set(nat_peers) == {NAT_PUBLIC}, (nat_peers, detail)
    assert all(lb_peers.values()), (lb_peers, detail)
    assert set(lb_peers["sv1"] + lb_peers["sv2"]) == {"10.0.0.2"}, lb_peers
    for final in (nat_final, lb_final):
        assert final["long"]["broken"] == 0, (final["conns"], detail)
        assert all(c["received"] > 100 for c in final["conns"]), final["conns"]
        assert final["short"]["ok"] > 0 and final["short"]["failed"] == 0, final["short"]
    # every instance of both pools carried some of it
    for name in ("nat1", "nat2", "lb1", "lb2"):
        assert after[ports[name]][1] - before[ports[name]][1] > 50, (name, detail)


def test_fabric_link_failure_is_routed_around(emu, scaleout):
    emu.restart_control_plane()
    start_pool(emu, scaleout, "fw", ["fw1", "fw2", "fw3"])
    servers = ["10.0.0.129:5001", "10.0.0.130:5001"]
    clients = scaleout.Clients(emu, servers, scaleout.TEST_TIMING)
    try:
        assert clients.wait_established(15)
        # find the uplink of lf1 (c1's leaf) that carries the traffic now
        a = emu.port_counters(["lf1"])
        time.sleep(1.5)
        b = emu.port_counters(["lf1"])
        load = {p: b[("lf1", p)][1] - a[("lf1", p)][1] for p in (31, 32)}
        busy = max(load, key=load.get)
        spine, other = ("sp1", 32) if busy == 31 else ("sp2", 31)
        assert load[busy] > 100, load
        emu.set_link("lf1", spine, up=False)
        time.sleep(4)
        c = emu.port_counters(["lf1"])
        time.sleep(1.5)
        d = emu.port_counters(["lf1"])
        moved = d[("lf1", other)][1] - c[("lf1", other)][1]
        emu.set_link("lf1", spine, up=True)
        time.sleep(2)
    finally:
        finals = clients.stop()
        emu.set_link("lf1", "sp1", up=True)
        emu.set_link("lf1", "sp2", up=True)
    conns = [c for f in finals.values() for c in f["conns"]]
    detail = logs(emu, ["controller"])
    assert moved > 100, (load, moved, detail)  # the traffic took the other spine
    assert conns and all(c["state"] != "broken" for c in conns), (conns, detail)
    assert max(c["max_gap"] for c in conns) < 1.0, (conns, detail)
