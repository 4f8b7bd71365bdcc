"""The controller against real Open vSwitch bridges (userspace datapath).

Each test builds its own bridges (prefix ``c3``), runs the controller in this process
(``start_in_thread``, without the REST API unless the test uses it) or as the real
``nfsteer controller`` process, and checks the switch with ``ofproto/trace`` (the switch's
own verdict, including its multipath hash) and with flow/group dumps. A test waits for the
app's barrier replies (``ApplyResult.wait``, ``app.wait_confirmed``) before it looks at the
switch, never for a fixed time.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import free_port, unique_name
from ovs_support import Bridge, Unixctl, trace_outputs, wait_for

from contract.topology import load_topology
from controller.core import flows as fl
from controller.core.hashing import FiveTuple
from controller.core.state import InstanceInfo, InstanceState, Steering
from controller.core.topology import compute_routes
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options
from controller.ofp.service import services_of

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
NFSTEER = Path(sys.executable).parent / "nfsteer"
SINGLE_PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def bridges(ovs) -> Iterator:
    made: list[Bridge] = []

    def make(dpid: int, ports: list[int]) -> Bridge:
        b = Bridge(unique_name("c3"), dpid, ports)
        made.append(b)
        return b

    yield make
    for b in made:
        b.delete()


@pytest.fixture
def controller() -> Iterator:
    stops = []

    def start(topology: Path, **kw):
        kw.setdefault("api", None)  # tests run side by side: no fixed API port
        app, stop = start_in_thread(Options(topology=topology, listen=("127.0.0.1", 0), **kw))
        stops.append(stop)
        return app, stop

    yield start
    for stop in stops:
        stop()


@pytest.fixture(scope="module")
def unixctl(ovs) -> Iterator[Unixctl]:
    client = Unixctl()
    yield client
    client.close()


def write_topology(tmp_path: Path, source: Path = SINGLE, **switch_settings) -> Path:
    """The single-switch topology with a static pool (no Redis needed)."""
    data = yaml.safe_load(source.read_text())
    for pool in data["pools"].values():
        pool["membership"] = "static"
        pool.pop("nf", None)
    for sw in data["switches"].values():
        sw.update(switch_settings)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    load_topology(path)
    return path


def connect(app, bridge: Bridge, switch: str = "s1") -> None:
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced(switch, 30), f"{switch} did not finish its first programming"


def random_flows(n: int, seed: int) -> list[FiveTuple]:
    rng = random.Random(seed)
    return [
        FiveTuple(
            f"10.0.0.{rng.randrange(1, 127)}",
            f"10.0.0.{rng.randrange(129, 255)}",
            rng.choice([6, 17]),
            rng.randrange(1024, 65536),
            rng.choice([80, 443, 5001]),
        )
        for _ in range(n)
    ]


def trace(unixctl: Unixctl, bridge: Bridge, in_port: int, ft: FiveTuple) -> list[tuple[str, int]]:
    proto = {6: "tcp", 17: "udp"}[ft.proto]
    flow = (
        f"in_port={in_port},{proto},nw_src={ft.src},nw_dst={ft.dst},"
        f"{proto}_src={ft.sport},{proto}_dst={ft.dport}"
    )
    return trace_outputs(unixctl.call("ofproto/trace", bridge.name, flow))


def port_of(app, name: str | None) -> int | None:
    return None if name is None else app.steering.pools["fw"].instances[name].port


def delivered(unixctl, bridge, flows, in_port=1) -> list[int | None]:
    out = []
    for ft in flows:
        outputs = trace(unixctl, bridge, in_port, ft)
        out.append(outputs[-1][1] if outputs else None)
    return out


# -- single switch ---------------------------------------------------------------------------


def test_flows_reach_the_instance_the_assignment_names(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path))
    assert services_of(app).api_server is None  # started with the API off
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    flows = random_flows(1000, seed=11)
    got = delivered(unixctl, br, flows)
    want = [port_of(app, app.steering.lookup("fw", ft)) for ft in flows]
    assert got == want
    assert set(got) == {11, 12, 13, 14}
    # the reverse direction (server -> client) lands on the same instance
    back = delivered(unixctl, br, [ft.reversed() for ft in flows[:200]], in_port=3)
    assert back == want[:200]
    # processed traffic from an instance goes to its destination, not back into the pool
    ft = FiveTuple("10.0.0.1", "10.0.0.130", 6, 40000, 80)
    assert trace(unixctl, br, 12, ft) == [(br.name, 4)]
    # ARP and non-service traffic are forwarded
    arp = unixctl.call("ofproto/trace", br.name, "in_port=1,arp,arp_tpa=10.0.0.129")
    assert trace_outputs(arp) == [(br.name, 3)]
    assert trace(unixctl, br, 1, FiveTuple("10.0.0.1", "10.0.0.2", 6, 1000, 22)) == [(br.name, 2)]


def _share_changed(before: list, after: list) -> float:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b) / len(before)


def _noise(p: float, n: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / n) + 0.005


def test_remove_add_reweight_move_the_minimum(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path))
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    flows = random_flows(600, seed=12)
    n = len(flows)
    before = delivered(unixctl, br, flows)

    # remove fw2 (capacity 1 of 5): ideal share moved 1/5, nothing else moves
    info = app.steering.pools["fw"].instances["fw2"]
    mods_before = app.counters.flow_mods_sent
    result = app.apply(lambda s: s.remove_instance("fw", "fw2", time.time()), "test: remove")
    assert result.wait(10) and result.barrier_done is not None
    assert app.counters.change_latency[-1] == result.barrier_done - result.started
    moved_slots = len(result.changes[0].moved)
    # flow-mods: the moved slots, plus fw2's own entries going away (its port in table 0;
    # VID, ARP, IPv4 and MAC forwarding in table 2)
    assert app.counters.flow_mods_sent - mods_before == moved_slots + 5
    after = delivered(unixctl, br, flows)
    assert all(a == 12 for a, b in zip(before, after, strict=True) if a != b)  # no collateral
    assert 12 not in after
    assert abs(_share_changed(before, after) - 1 / 5) < _noise(1 / 5, n)

    # add it back: only flows that go to fw2 move
    before = after
    result = app.apply(lambda s: s.add_instance(info, time.time()), "test: add")
    assert result.wait(10)
    after = delivered(unixctl, br, flows)
    assert all(b == 12 for a, b in zip(before, after, strict=True) if a != b)
    assert abs(_share_changed(before, after) - 1 / 5) < _noise(1 / 5, n)

    # reweight fw1 from 1 to 3 (of 7): its share grows by 3/7 - 1/5
    before = after
    result = app.apply(lambda s: s.set_capacity("fw", "fw1", 3, time.time()), "test: reweight")
    assert result.wait(10)
    after = delivered(unixctl, br, flows)
    assert all(b == 11 for a, b in zip(before, after, strict=True) if a != b)
    ideal = 3 / 7 - 1 / 5
    assert abs(_share_changed(before, after) - ideal) < _noise(ideal, n)
    want = [port_of(app, app.steering.lookup("fw", ft)) for ft in flows]
    assert after == want

    # a change that changes nothing sends nothing and is done at once
    sent = (app.counters.flow_mods_sent, app.counters.barriers_sent)
    result = app.apply(lambda s: s.set_capacity("fw", "fw1", 3, time.time()), "test: same")
    assert result.changes[0].moved == () and result.wait(0) and result.barrier_done is None
    assert (app.counters.flow_mods_sent, app.counters.barriers_sent) == sent


def test_instance_port_down_moves_its_slots_to_survivors(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path))
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    flows = random_flows(300, seed=13)
    before = delivered(unixctl, br, flows)
    assert 13 in before
    t0 = time.monotonic()
    subprocess.run(["ip", "link", "set", br.port_name(13), "down"], check=True)

    def fw3_state():
        return app.steering.pools["fw"].instances["fw3"].state

    wait_for(lambda: fw3_state() is InstanceState.FAILED, 10, "fw3 to be failed")
    assert app.wait_confirmed(10), "the switch did not confirm the change"
    took = time.monotonic() - t0
    after = delivered(unixctl, br, flows)
    assert 13 not in after and None not in after
    assert all(a == 13 for a, b in zip(before, after, strict=True) if a != b)
    print(f"port down -> slots moved and confirmed in {took * 1000:.0f} ms")
    # a static instance whose port comes back takes its share again
    subprocess.run(["ip", "link", "set", br.port_name(13), "up"], check=True)
    wait_for(lambda: fw3_state() is InstanceState.ACTIVE, 10, "fw3 to be active again")
    assert app.wait_confirmed(10), "the switch did not confirm the change"
    want = [port_of(app, app.steering.lookup("fw", ft)) for ft in flows]
    assert 13 in want and delivered(unixctl, br, flows) == want


def test_controller_restart_leaves_the_table_untouched(tmp_path, bridges, controller, unixctl):
    topo = write_topology(tmp_path)
    app, stop = controller(topo)
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    table = br.flows()
    assert len(table) > 4096
    stop()
    app2, _ = controller(topo)
    connect(app2, br)
    assert app2.counters.flow_mods_sent == 0 and app2.counters.group_mods_sent == 0
    assert br.flows() == table  # same entries, same cookies: nothing deleted and re-added


def test_switch_reconnect_gets_the_full_correct_table(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path))
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    br.del_controller()
    wait_for(lambda: not app.datapaths, 10, "the switch to disconnect")
    # while it is away: the pool changes, and part of its table is lost
    app.apply(lambda s: s.set_capacity("fw", "fw4", 4, time.time()), "test: while away")
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", br.name, "table=2"], check=True)
    connect(app, br)
    desired = fl.desired_table(app.steering, "s1", compute_routes(app.steering.topology))
    assert len(br.flows()) == len(desired.flows)
    flows = random_flows(300, seed=14)
    want = [port_of(app, app.steering.lookup("fw", ft)) for ft in flows]
    assert delivered(unixctl, br, flows) == want
    assert trace(unixctl, br, 12, FiveTuple("10.0.0.1", "10.0.0.130", 6, 1, 80)) == [(br.name, 4)]


def test_select_group_mode_programs_weighted_buckets(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path, steering="select_group"))
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)

    def weights() -> dict[int, int]:
        out = {}
        for part in br.groups().split("bucket=")[1:]:
            fields = dict(f.split(":", 1) for f in part.split("actions=")[0].strip(",").split(","))
            out[int(part.split("output:")[1].split(",")[0].split()[0])] = int(fields["weight"])
        return out

    counts = app.steering.pools["fw"].slot_counts()
    assert weights() == {port_of(app, n): c for n, c in counts.items()}
    assert all(w > 0 for w in weights().values())
    assert "type=select" in br.groups()
    assert not [f for f in br.flows() if "table=1" in f]
    result = app.apply(
        lambda s: s.set_state("fw", "fw1", InstanceState.FAILED, time.time()), "test: fail fw1"
    )
    assert result.wait(10)
    assert set(weights()) == {12, 13, 14}
    assert all(w > 0 for w in weights().values())


def _send_frames(bridge: Bridge, port: int, flows: list[FiveTuple]) -> None:
    import socket

    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        sender.bind((bridge.port_name(port), 0))
        for ft in flows:
            frame = (
                Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:81")
                / IP(src=ft.src, dst=ft.dst)
                / TCP(sport=ft.sport, dport=ft.dport, flags="S")
            )
            sender.send(bytes(frame))
    finally:
        sender.close()


def _status_traffic(api: str) -> dict[str, int]:
    """Instance -> packets in the RX/TX column of `nfsteer status` (absent: "-")."""
    r = subprocess.run(
        [str(NFSTEER), "status", "--api", api], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = lines[1].split()
    assert head[:2] == ["POOL", "INSTANCE"] and "RX/TX" in head
    out = {}
    for line in lines[2:]:
        cols = line.split()
        if len(cols) >= len(head) and cols[0] == "fw" and "/" in cols[6]:
            rx, tx = cols[6].split("/")
            out[cols[1]] = int(rx) + int(tx)
    return out


def test_nfsteer_controller_process(tmp_path, bridges):
    """The real process, without Redis: it programs the switch, and its REST API serves
    `nfsteer status` with the instance ports' packet counters."""
    topo = write_topology(tmp_path)
    port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [str(NFSTEER), "controller", "--topology", str(topo), "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        [*cmd, "--api", f"127.0.0.1:{api_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        br = bridges(1, SINGLE_PORTS)
        br.set_controller(port)
        wait_for(lambda: len(br.flows()) > 4096, 30, "the process to program the switch")
        flows = random_flows(200, seed=16)
        steering = Steering(load_topology(topo))
        sent = Counter(steering.lookup("fw", ft) for ft in flows)
        assert len(sent) == 4  # every instance gets some
        _send_frames(br, 1, flows)

        def counted() -> bool:
            traffic = _status_traffic(api)
            return set(traffic) == set(sent) and all(traffic[n] >= c for n, c in sent.items())

        wait_for(counted, 15, "nfsteer status to show the frames on the instance ports")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "switch s1: table read back" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topology", "/nonexistent.yaml"], "cannot read"),
        (["--topology", str(SINGLE), "--listen", "127.0.0.1:99999"], "--listen"),
        (["--topology", str(SINGLE), "--listen", "nohost:1"], "--listen"),
        (["--topology", str(SINGLE), "--heartbeat-ttl-ms", "0"], "heartbeat"),
        (["--topology", str(SINGLE), "--redis", "http://x"], "Redis URL"),
        (["--topology", str(SINGLE), "--api", "0.0.0.0:18080"], "--api-token"),
        (["--topology", str(SINGLE), "--api", "nohost:1"], "--api"),
    ],
)
def test_nfsteer_controller_bad_arguments(args, message):
    r = subprocess.run(
        [str(NFSTEER), "controller", *args], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_nfsteer_controller_port_in_use(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                str(NFSTEER),
                "controller",
                "--topology",
                str(SINGLE),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 2
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr


# -- several switches ------------------------------------------------------------------------


def test_three_switches_tagged_paths_and_link_down(tmp_path, bridges, controller, unixctl):
    app, _ = controller(TRIANGLE)
    topo = app.steering.topology
    brs = {
        "s1": bridges(0x101, [1, 11]),
        "s2": bridges(0x102, [11]),
        "s3": bridges(0x103, [1, 11]),
    }
    for link in topo.links:
        brs[link.a].patch(link.a_port, brs[link.b], link.b_port)
    for name, br in brs.items():
        connect(app, br, name)
    switch_of = {br.name: name for name, br in brs.items()}
    flows = [FiveTuple(f"10.0.0.{1 + i % 100}", "10.0.0.129", 6, 20000 + i, 80) for i in range(300)]
    for ft in flows:
        owner = app.steering.pools["fw"].instances[app.steering.lookup("fw", ft)]
        outputs = trace(unixctl, brs["s1"], 1, ft)
        assert (switch_of[outputs[-1][0]], outputs[-1][1]) == (owner.switch, owner.port)
    # processed traffic from fw1 (on s1) to the server on s3: direct link
    ft = FiveTuple("10.0.0.1", "10.0.0.129", 6, 1000, 80)
    assert [switch_of[b] for b, _ in trace(unixctl, brs["s1"], 11, ft)] == ["s1", "s3"]
    # the s1-s3 link goes away (patch ports cannot be set down, so both ends are removed;
    # each switch reports its port deleted): routed around through s2
    brs["s1"].unpatch(23, brs["s3"], 21)

    def link_gone() -> bool:
        ports = app.switch_ports
        return ports["s1"].get(23) is False and ports["s3"].get(21) is False

    # The app reprograms under its lock as it records a port down, so once both ends are
    # recorded, waiting for every barrier covers the whole reroute (table 2 and table 1).
    wait_for(link_gone, 10, "both ends of the link to be reported deleted")
    assert app.wait_confirmed(10), "the switches did not confirm the reroute"
    assert [switch_of[b] for b, _ in trace(unixctl, brs["s1"], 11, ft)] == ["s1", "s2", "s3"]
    for ft in flows[:100]:
        owner = app.steering.pools["fw"].instances[app.steering.lookup("fw", ft)]
        outputs = trace(unixctl, brs["s1"], 1, ft)
        assert (switch_of[outputs[-1][0]], outputs[-1][1]) == (owner.switch, owner.port)
        assert (brs["s1"].name, 23) not in outputs


def test_registered_instance_joins_at_a_new_port(tmp_path, bridges, controller, unixctl):
    app, _ = controller(write_topology(tmp_path))
    br = bridges(1, [*SINGLE_PORTS, 15])
    connect(app, br)
    newcomer = InstanceInfo(
        name="fw5",
        pool="fw",
        mac="02:00:00:00:01:05",
        ip="10.0.0.205",
        switch="s1",
        port=15,
        capacity=1.0,
        state=InstanceState.ACTIVE,
    )
    result = app.apply(lambda s: s.add_instance(newcomer, time.time()), "test: join")
    assert result.wait(10)
    flows = random_flows(300, seed=15)
    want = [port_of(app, app.steering.lookup("fw", ft)) for ft in flows]
    assert 15 in want
    assert delivered(unixctl, br, flows) == want


def test_real_frames_reach_the_assigned_instance(tmp_path, bridges, controller):
    """Frames sent into the bridge come out at the instance Steering.lookup names (the
    datapath's own multipath hash, not just the trace of it)."""
    import select
    import socket

    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    app, _ = controller(write_topology(tmp_path))
    br = bridges(1, SINGLE_PORTS)
    connect(app, br)
    taps = {}
    for port in (11, 12, 13, 14):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        s.bind((br.port_name(port), 0))
        s.setblocking(False)
        taps[s] = port
    sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sender.bind((br.port_name(1), 0))
    try:
        flows = [FiveTuple("10.0.0.1", "10.0.0.129", 6, 30000 + i, 80) for i in range(200)]
        for ft in flows:
            frame = (
                Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:81")
                / IP(src=ft.src, dst=ft.dst)
                / TCP(sport=ft.sport, dport=ft.dport, flags="S")
            )
            sender.send(bytes(frame))
        seen: dict[int, list[int]] = {}
        deadline = time.monotonic() + 10
        while sum(len(v) for v in seen.values()) < len(flows) and time.monotonic() < deadline:
            ready, _, _ = select.select(list(taps), [], [], 0.2)
            for s in ready:
                data = s.recv(2048)
                pkt = Ether(data)
                if TCP in pkt and pkt[IP].src == "10.0.0.1":
                    seen.setdefault(pkt[TCP].sport, []).append(taps[s])
    finally:
        sender.close()
        for s in taps:
            s.close()
    want = {ft.sport: [port_of(app, app.steering.lookup("fw", ft))] for ft in flows}
    assert seen == want
