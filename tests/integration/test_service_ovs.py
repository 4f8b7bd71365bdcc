"""Membership, restarts and outages against a real userspace OVS bridge, a real controller
(in this process) and a real Redis: what matters is the switch's flow table."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest
from conftest import unique_name
from membership_support import (
    POOL,
    Bridge,
    ContractNF,
    api_url,
    controller,
    owners,
    sh,
    state_of,
    wait_until,
    write_topology,
)

from controller.store.pools import Store

pytestmark = [pytest.mark.ovs, pytest.mark.redis]

DPID = 0xB2
PORTS = {"fw1": 11, "fw2": 12, "fw3": 13, "fw4": 14}
TTL_MS = 300


@pytest.fixture
def bridge(ovs):
    br = Bridge.create(unique_name("mb"), DPID, [11, 12, 13, 14, 31, 32])
    yield br
    br.delete()


@pytest.fixture
def topo(tmp_path):
    return write_topology(tmp_path / "topo.yaml", dpid=DPID)


@pytest.fixture
def nfs(redis_server):
    made: list[ContractNF] = []

    def make(name: str) -> ContractNF:
        nf = ContractNF(redis_server.url, POOL, name, ttl_ms=TTL_MS)
        made.append(nf)
        return nf

    yield make
    for nf in made:
        nf.close()


def slot_ports(br: Bridge) -> dict[int, int]:
    """The fw pool's slot table on the switch: slot -> output port."""
    out = {}
    for f in br.slot_flows():
        m = re.search(r"reg0=(0x[0-9a-f]+|\d+),metadata=0x1 actions=output:(\d+)", f)
        if m:
            out[int(m.group(1), 0)] = int(m.group(2))
    return out


def expected_ports(app) -> dict[int, int]:
    ps = app.steering.pools[POOL]
    return {s: PORTS[o] for s, o in enumerate(ps.assignment) if o is not None}


def switch_follows(app, br: Bridge) -> bool:
    return slot_ports(br) == expected_ports(app)


def metric(app, name: str) -> float:
    """One sample from the controller's /metrics over HTTP."""
    text = httpx.get(api_url(app) + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def connect(app, br: Bridge) -> None:
    connects = app.counters.switch_connects
    br.connect(app.options.listen[1])
    wait_until(lambda: app.counters.switch_connects > connects, timeout=10)
    assert app.wait_synced("s1", 10)


def test_join_capacity_failures_and_return_on_the_switch(redis_server, topo, bridge, nfs):
    with controller(topo, redis_server.url, heartbeat_ttl_ms=TTL_MS) as app:
        connect(app, bridge)
        assert slot_ports(bridge) == {}  # nobody registered yet: no slot is served
        assert metric(app, 'nfsteer_pool_without_active_instance{pool="fw"}') == 1
        fw1, fw2, fw3 = nfs("fw1"), nfs("fw2"), nfs("fw3")
        for nf in (fw1, fw2, fw3):
            nf.register()
        wait_until(lambda: len(owners(app)) == 3)
        wait_until(lambda: switch_follows(app, bridge))
        assert set(slot_ports(bridge).values()) == {11, 12, 13}

        fw3.set_capacity(2)
        wait_until(lambda: owners(app).get("fw3") == 32)
        wait_until(lambda: switch_follows(app, bridge))

        bridge.link(12, up=False)  # port status: failed at once
        wait_until(lambda: state_of(app, "fw2") == "failed")
        wait_until(lambda: switch_follows(app, bridge))
        assert 12 not in slot_ports(bridge).values()
        bridge.link(12, up=True)  # back up, and its heartbeat is alive: rejoins
        wait_until(lambda: state_of(app, "fw2") == "active")
        wait_until(lambda: switch_follows(app, bridge) and 12 in slot_ports(bridge).values())

        fw1.stop_heartbeats()  # hung process, link still up
        wait_until(lambda: state_of(app, "fw1") == "failed")
        wait_until(lambda: switch_follows(app, bridge))
        assert 11 not in slot_ports(bridge).values()
        fw1.start_heartbeats()
        wait_until(lambda: state_of(app, "fw1") == "active")
        wait_until(lambda: switch_follows(app, bridge) and 11 in slot_ports(bridge).values())

        fw3.drain()
        wait_until(lambda: fw3.slots() == 0)
        wait_until(lambda: switch_follows(app, bridge))
        assert 13 not in slot_ports(bridge).values()
        fw3.deregister()
        wait_until(lambda: state_of(app, "fw3") is None)
        assert app.counters.switch_errors == 0
        # An instance added through the API has no heartbeat: its port decides.
        r = httpx.post(api_url(app) + f"/api/v1/pools/{POOL}/instances", json={"name": "fw4"})
        assert r.status_code == 200 and r.json()["confirmed"] is True
        assert switch_follows(app, bridge) and 14 in slot_ports(bridge).values()
        bridge.link(14, up=False)
        wait_until(lambda: state_of(app, "fw4") == "failed")
        bridge.link(14, up=True)
        wait_until(lambda: state_of(app, "fw4") == "active")
        wait_until(lambda: switch_follows(app, bridge) and 14 in slot_ports(bridge).values())
        assert metric(app, 'nfsteer_pool_without_active_instance{pool="fw"}') == 0
        # the same reading, not a change in between (e.g. a heartbeat late on a busy machine)
        wait_until(
            lambda: metric(app, "nfsteer_flow_mods_sent_total") == app.counters.flow_mods_sent > 0
        )
        assert metric(app, "nfsteer_rebalances_total") == app.counters.rebalances >= 8
        assert metric(app, "nfsteer_change_to_barrier_seconds_count") > 0
        assert metric(app, "nfsteer_heartbeat_failures_total") == 1
        assert metric(app, "nfsteer_switches_connected") == 1
        assert metric(app, 'nfsteer_switch_connected{switch="s1"}') == 1
        assert metric(app, 'nfsteer_pool_instances{pool="fw",state="active"}') == 3


def test_controller_restart_changes_nothing_on_the_switch(redis_server, topo, bridge, nfs):
    with controller(topo, redis_server.url, heartbeat_ttl_ms=TTL_MS) as app:
        connect(app, bridge)
        fw = {name: nfs(name) for name in ("fw1", "fw2", "fw3")}
        for nf in fw.values():
            nf.register()
        wait_until(lambda: len(owners(app)) == 3)
        fw["fw3"].set_capacity(2)
        wait_until(lambda: owners(app).get("fw3") == 32)
        wait_until(lambda: switch_follows(app, bridge))
        epoch, assignment = (
            app.steering.pools[POOL].epoch,
            list(app.steering.pools[POOL].assignment),
        )
        store = Store.from_url(redis_server.url)
        wait_until(lambda: store.stored_epoch(POOL) == epoch)
        store.close()
        before = bridge.flows()
    assert bridge.flows() == before  # fail-mode secure: the switch kept its table
    with controller(topo, redis_server.url, heartbeat_ttl_ms=TTL_MS) as app2:
        ps = app2.steering.pools[POOL]
        assert (ps.epoch, ps.assignment) == (epoch, assignment)  # loaded before the switch
        connect(app2, bridge)
        assert app2.counters.flow_mods_sent == 0  # no correct flow deleted and re-added
        assert app2.counters.group_mods_sent == 0
        assert bridge.flows() == before
        time.sleep(2 * TTL_MS / 1000)  # the NFs' heartbeats carry them over the restart
        assert app2.counters.rebalances == 0 and ps.epoch == epoch
        assert bridge.flows() == before


def test_switch_reconnect_gets_a_full_correct_resync(redis_server, topo, bridge, nfs):
    with controller(topo, redis_server.url, heartbeat_ttl_ms=TTL_MS) as app:
        connect(app, bridge)
        nfs("fw1").register()
        nfs("fw2").register()
        wait_until(lambda: len(owners(app)) == 2 and switch_follows(app, bridge))
        others = [f for f in bridge.flows() if "table=1" not in f]
        bridge.disconnect()
        wait_until(lambda: not app.datapaths)
        # While it is away the switch's table is damaged and the pool changes.
        sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge.name, "table=1,reg0=0x1/0xffff")
        sh(
            "ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge.name,
            "table=1,priority=100,metadata=0x1,reg0=0x2,actions=output:14",
        )  # fmt: skip
        sh(
            "ovs-ofctl",
            "-O",
            "OpenFlow13",
            "add-flow",
            bridge.name,
            "table=0,priority=7,actions=drop",
        )
        nfs("fw3").register()
        wait_until(lambda: len(owners(app)) == 3)
        connect(app, bridge)
        assert switch_follows(app, bridge)
        assert 14 not in slot_ports(bridge).values()
        assert [f for f in bridge.flows() if "table=1" not in f] == others
        assert app.counters.switch_errors == 0


def test_redis_outage_is_fail_static_and_written_back(redis_server, topo, bridge, nfs, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer")
    with controller(topo, redis_server.url, heartbeat_ttl_ms=TTL_MS) as app:
        connect(app, bridge)
        fw1, fw2 = nfs("fw1"), nfs("fw2")
        fw1.register()
        fw2.register()
        wait_until(lambda: len(owners(app)) == 2 and switch_follows(app, bridge))
        before = bridge.flows()
        redis_server.stop()
        wait_until(lambda: any("redis unreachable" in r.getMessage() for r in caplog.records))
        time.sleep(3 * TTL_MS / 1000)  # no heartbeat can be seen: nothing is failed
        assert bridge.flows() == before
        assert state_of(app, "fw1") == state_of(app, "fw2") == "active"

        bridge.link(12, up=False)  # port-status failover works from memory
        wait_until(lambda: state_of(app, "fw2") == "failed")
        wait_until(lambda: switch_follows(app, bridge) and owners(app) == {"fw1": 64})
        bridge.link(12, up=True)
        epoch = app.steering.pools[POOL].epoch

        redis_server.start()  # empty: the controller writes its newer state back
        store = Store.from_url(redis_server.url)
        wait_until(lambda: store.stored_epoch(POOL) is not None, timeout=8)
        # fw2's heartbeat is back and its port is up: it rejoins.
        wait_until(lambda: state_of(app, "fw2") == "active", timeout=8)
        wait_until(lambda: switch_follows(app, bridge) and len(owners(app)) == 2)
        assert app.steering.pools[POOL].epoch > epoch
        wait_until(lambda: store.stored_epoch(POOL) == app.steering.pools[POOL].epoch)
        assert store.load_pool(POOL).assignment == app.steering.pools[POOL].assignment
        store.close()
        assert not any(r.exc_info for r in caplog.records)
