"""Several controllers, one leader (real `nfsteer controller` processes, real OVS, real Redis).

The bridge is connected to every controller; the leader is MASTER with its term as the
generation id, the others SLAVE. Killing the leader hands the switch to a standby with zero
flow-mods when in sync; a paused leader that comes back can change nothing and rejoins as a
standby; two controllers that both believe they lead cannot both program a switch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from conftest import REPO, free_port, unique_name
from ovs_support import Bridge, static_single, vsctl, wait_for

from contract.topology import load_topology

pytestmark = [pytest.mark.ovs, pytest.mark.redis, pytest.mark.timeout(180)]

NFSTEER = Path(sys.executable).parent / "nfsteer"
SINGLE = REPO / "topologies" / "single.yaml"
PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]
LEASE_MS = 1000


class Controller:
    def __init__(self, name: str, topo: Path, redis_url: str, workdir: Path, *extra: str):
        self.name = name
        self.of_port, self.api_port = free_port(), free_port()
        self.log = workdir / f"controller-{name}.out"
        args = [str(NFSTEER), "controller", "--topology", str(topo), "--redis", redis_url]
        args += ["--listen", f"127.0.0.1:{self.of_port}", "--api", f"127.0.0.1:{self.api_port}"]
        args += ["--id", name, "--lease-ms", str(LEASE_MS), *extra]
        env = {**os.environ, "NFSTEER_TEST_HOOKS": "1"}  # the /debug routes of one test
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for(self.up, 20, f"controller {name} to serve its API")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"controller {self.name} exited: {self.log.read_text()}")
        try:
            httpx.get(self.api + "/healthz", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(self.api + "/healthz", timeout=2).json()

    def role(self) -> str | None:
        try:
            return self.health()["role"]
        except httpx.HTTPError:
            return None

    def metric(self, name: str) -> float:
        for line in httpx.get(self.api + "/metrics", timeout=2).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not exported")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def topo(tmp_path) -> Path:
    return static_single(tmp_path)


@pytest.fixture
def bridge(ovs) -> Iterator[Bridge]:
    br = Bridge(unique_name("ha"), 1, PORTS)
    yield br
    br.delete()


@pytest.fixture
def cluster(redis_server, topo, tmp_path) -> Iterator:
    started: list[Controller] = []

    def start(name: str, *extra: str) -> Controller:
        c = Controller(name, topo, redis_server.url, tmp_path, *extra)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def connect_all(br: Bridge, controllers: list[Controller]) -> None:
    vsctl("set-controller", br.name, *[f"tcp:127.0.0.1:{c.of_port}" for c in controllers])


def switch_roles(br: Bridge) -> dict[int, str]:
    """OpenFlow port of each controller connection -> the role OVS gives it."""
    uuids = vsctl("get", "bridge", br.name, "controller").strip("[] \n").split(", ")
    roles = {}
    for uuid in uuids:
        out = vsctl("--format=json", "--columns=target,role", "list", "controller", uuid)
        target, role = json.loads(out)["data"][0]
        roles[int(target.rsplit(":", 1)[1])] = role if isinstance(role, str) else ""
    return roles


def leader_of(controllers: list[Controller]) -> Controller:
    leaders = [c for c in controllers if c.role() == "leader"]
    assert len(leaders) == 1, [c.role() for c in controllers]
    return leaders[0]


def programmed(br: Bridge) -> bool:
    return any("table=1" in f for f in br.flows())


def test_one_leader_master_the_others_slave_and_a_takeover_sends_nothing(cluster, bridge):
    a, b = cluster("a"), cluster("b")
    connect_all(bridge, [a, b])
    wait_for(lambda: sum(c.role() == "leader" for c in (a, b)) == 1, 10, "one leader")
    wait_for(lambda: programmed(bridge), 10, "the leader to program the switch")
    leader = leader_of([a, b])
    standby = b if leader is a else a
    wait_for(
        lambda: (
            switch_roles(bridge).get(leader.of_port) == "master"
            and switch_roles(bridge).get(standby.of_port) == "slave"
        ),
        10,
        "MASTER for the leader and SLAVE for the standby",
    )
    health = standby.health()
    assert health["leader"] == leader.name and health["term"] == leader.health()["term"]
    # a change sent to the standby is redirected to the leader (same method and body)
    r = httpx.put(
        standby.api + "/api/v1/pools/fw/instances/fw2/capacity", json={"capacity": 2}, timeout=5
    )
    assert r.status_code == 307 and r.headers["location"].startswith(leader.api)
    cli = subprocess.run(
        [str(NFSTEER), "instance", "capacity", "fw", "fw2", "3", "--api", standby.api],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    wait_for(lambda: programmed(bridge), 5, "flows")
    before = bridge.flows()
    term = leader.health()["term"]

    t0 = time.monotonic()
    leader.proc.kill()  # kill -9: no hand-over
    # the switch's MASTER role reply, as the new leader counts it (OVS's database shows
    # roles only every few seconds)
    wait_for(lambda: standby.metric("nfsteer_takeover_seconds_count") >= 1, 10, "a takeover")
    took = time.monotonic() - t0
    print(f"leader killed -> new MASTER on the switch in {took * 1000:.0f} ms")
    assert took < 3 * LEASE_MS / 1000
    wait_for(lambda: switch_roles(bridge).get(standby.of_port) == "master", 10, "OVS: MASTER")
    h = standby.health()
    assert h["role"] == "leader" and h["term"] > term
    assert standby.metric("nfsteer_flow_mods_sent_total") == 0  # in sync: nothing sent
    assert bridge.flows() == before
    # the new leader takes changes
    r = httpx.put(
        standby.api + "/api/v1/pools/fw/instances/fw2/capacity", json={"capacity": 1}, timeout=10
    )
    assert r.status_code == 200 and r.json()["confirmed"] is True


def test_a_paused_leader_changes_nothing_and_rejoins_as_standby(cluster, bridge):
    a, b = cluster("a"), cluster("b")
    connect_all(bridge, [a, b])
    wait_for(lambda: sum(c.role() == "leader" for c in (a, b)) == 1, 10, "one leader")
    wait_for(lambda: programmed(bridge), 10, "the leader to program the switch")
    old = leader_of([a, b])
    new = b if old is a else a
    os.kill(old.proc.pid, signal.SIGSTOP)
    time.sleep(3 * LEASE_MS / 1000)
    wait_for(lambda: new.role() == "leader", 10, "the standby to take over")
    r = httpx.put(
        new.api + "/api/v1/pools/fw/instances/fw1/capacity", json={"capacity": 4}, timeout=10
    )
    assert r.status_code == 200 and r.json()["confirmed"] is True
    after_change = bridge.flows()
    store_epoch = new.health()["term"]
    os.kill(old.proc.pid, signal.SIGCONT)
    wait_for(lambda: old.role() == "standby", 10, "the old leader to step down")
    time.sleep(1)
    assert bridge.flows() == after_change  # nothing it had queued reached the switch
    # OVS's database shows the roles a few seconds late
    wait_for(lambda: switch_roles(bridge).get(new.of_port) == "master", 20, "OVS: MASTER")
    wait_for(lambda: switch_roles(bridge).get(old.of_port) == "slave", 20, "OVS: SLAVE")
    assert new.health()["term"] == store_epoch and new.role() == "leader"
    assert "stepping down" in old.log.read_text()


def test_two_believers_cannot_both_program_a_switch(cluster, bridge, redis_server, tmp_path):
    a, b = cluster("a"), cluster("b")
    connect_all(bridge, [a, b])
    wait_for(lambda: sum(c.role() == "leader" for c in (a, b)) == 1, 10, "one leader")
    wait_for(lambda: programmed(bridge), 10, "the leader to program the switch")
    leader = leader_of([a, b])
    other = b if leader is a else a
    # The test hook: the other one is told it leads with an older term (as a leader that
    # was partitioned away would believe). The switch refuses it; it steps down.
    flows = bridge.flows()
    saved = redis.Redis.from_url(redis_server.url).get("nfsteer:{fw}:assignment")
    r = httpx.post(other.api + "/debug/believe-leader", json={"term_delta": -1}, timeout=5)
    assert r.status_code == 200, r.text
    # it tries to change something at once, before any switch answered it
    httpx.put(
        other.api + "/api/v1/pools/fw/instances/fw2/capacity", json={"capacity": 3}, timeout=10
    )
    wait_for(
        lambda: other.metric("nfsteer_fenced_total") >= 1, 10, "a switch or the store to fence it"
    )
    wait_for(lambda: other.role() == "standby", 10, "it to step down")
    assert bridge.flows() == flows  # no flow-mod of its reached the switch
    assert redis.Redis.from_url(redis_server.url).get("nfsteer:{fw}:assignment") == saved
    wait_for(lambda: switch_roles(bridge).get(leader.of_port) == "master", 20, "OVS: MASTER")
    assert switch_roles(bridge).get(other.of_port) != "master"
    assert leader.role() == "leader"
    # the other one learned the switch's generation and rejoined as a standby (SLAVE)
    wait_for(lambda: switch_roles(bridge).get(other.of_port) == "slave", 20, "OVS: SLAVE")


def test_same_id_and_short_lease_are_refused(cluster, topo, redis_server):
    a = cluster("a")
    # a switch of the topology that never connected to it is named (a forgotten address)
    warnings = a.health()["warnings"]
    assert any("switch s1 is not connected to this controller" in w for w in warnings)
    status = subprocess.run(
        [str(NFSTEER), "status", "--api", a.api], capture_output=True, text=True, timeout=30
    )
    assert "warning: switch s1 is not connected" in status.stdout
    r = subprocess.run(
        [str(NFSTEER), "controller", "--topology", str(topo), "--redis", redis_server.url,
         "--listen", f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{free_port()}",
         "--id", "a", "--lease-ms", str(LEASE_MS)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("nfsteer controller: another controller with id 'a'")
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [str(NFSTEER), "controller", "--topology", str(topo), "--redis", redis_server.url,
         "--lease-ms", "1000", "--lease-renew-ms", "400"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2 and "more than 3x the renewal interval" in r.stderr, r.stderr


def test_an_nf_that_dies_while_no_leader_is_in_charge_is_failed_at_takeover(
    redis_server, bridge, tmp_path
):
    from membership_support import POOL, ContractNF
    from membership_support import write_topology as registered_topology

    ttl_ms = 300
    topo = registered_topology(tmp_path / "reg.yaml", dpid=1, n_instances=2, static=False)
    started = [
        Controller(n, topo, redis_server.url, tmp_path, "--heartbeat-ttl-ms", str(ttl_ms))
        for n in ("a", "b")
    ]
    nfs = [ContractNF(redis_server.url, POOL, f"fw{i}", ttl_ms=ttl_ms, interval_ms=60)
           for i in (1, 2)]  # fmt: skip
    try:
        connect_all(bridge, started)
        wait_for(lambda: sum(c.role() == "leader" for c in started) == 1, 10, "one leader")
        for nf in nfs:
            nf.register()
        leader = leader_of(started)
        standby = next(c for c in started if c is not leader)

        def state(c: Controller, name: str) -> str | None:
            pool = httpx.get(c.api + f"/api/v1/pools/{POOL}", timeout=2).json()
            return next((m["state"] for m in pool["members"] if m["name"] == name), None)

        wait_for(lambda: state(leader, "fw1") == "active", 10, "fw1 to join")
        wait_for(lambda: state(standby, "fw1") == "active", 10, "the standby to see it")
        leader.proc.kill()
        died = nfs[0].stop_heartbeats()  # the NF dies while no controller leads
        wait_for(lambda: state(standby, "fw1") == "failed", 10, "fw1 to be failed")
        took = time.monotonic() - died
        print(f"NF died in the leaderless gap -> failed {took * 1000:.0f} ms later")
        assert took <= (LEASE_MS + ttl_ms + 200) / 1000 + 0.5  # the bound, and the poll
        assert state(standby, "fw2") == "active"
    finally:
        for nf in nfs:
            nf.close()
        for c in started:
            c.stop()


def restart_vswitchd() -> None:
    """Restart ovs-vswitchd only (the database and the bridges' configuration stay); it
    forgets the generation ids it saw."""
    ctl = "/usr/share/openvswitch/scripts/ovs-ctl"
    subprocess.run([ctl, "--no-ovsdb-server", "stop"], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "--no-ovsdb-server", "--system-id=random", "start"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_ovs_vswitchd_restart_with_several_controllers(cluster, bridge):
    a, b = cluster("a"), cluster("b")
    connect_all(bridge, [a, b])
    wait_for(lambda: sum(c.role() == "leader" for c in (a, b)) == 1, 10, "one leader")
    wait_for(lambda: programmed(bridge), 10, "the leader to program the switch")
    leader = leader_of([a, b])
    standby = b if leader is a else a
    before = bridge.flows()
    restart_vswitchd()
    for port in PORTS:  # internal ports come back down
        subprocess.run(["ip", "link", "set", bridge.port_name(port), "up"], check=False)
    wait_for(lambda: switch_roles(bridge).get(leader.of_port) == "master", 30, "MASTER again")
    wait_for(lambda: switch_roles(bridge).get(standby.of_port) == "slave", 30, "SLAVE again")
    wait_for(lambda: bridge.flows() == before, 20, "the table as before")
    assert leader.role() == "leader" and standby.role() == "standby"
    r = httpx.put(
        leader.api + "/api/v1/pools/fw/instances/fw2/capacity", json={"capacity": 2}, timeout=10
    )
    assert r.status_code == 200 and r.json()["confirmed"] is True


def test_the_store_refuses_a_save_under_an_older_term(redis_server, topo):
    from controller.core.state import Steering
    from controller.store.pools import Fenced, PoolSnapshot, Store

    store = Store.from_url(redis_server.url)
    st = Steering(load_topology(topo))
    newer = PoolSnapshot.of(st.pools["fw"], term=5)
    assert store.save_pool(newer) is None
    st.set_capacity("fw", "fw1", 3, 0)
    stale = PoolSnapshot.of(st.pools["fw"], term=4)
    with pytest.raises(Fenced) as refused:
        store.save_pool(stale)
    assert refused.value.term == 5
    assert store.load_pool("fw").assignment == newer.assignment  # nothing of it written
    st.set_capacity("fw", "fw1", 4, 0)
    assert store.save_pool(PoolSnapshot.of(st.pools["fw"], term=5)) is None  # equal: ok
    store.close()
