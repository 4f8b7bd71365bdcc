"""After every kind of bad input (API bodies the topology file would refuse, garbage
registrations in Redis), the controller still programs a new change end to end on a real
userspace OVS bridge: the barrier is confirmed and the switch's slot table follows."""

from __future__ import annotations

import re

import pytest
import redis
from conftest import unique_name
from fastapi.testclient import TestClient
from membership_support import POOL, Bridge, controller, owners, wait_until, write_topology

from contract import keys
from controller.api.routes import create_api
from controller.ofp.service import services_of

pytestmark = [pytest.mark.ovs, pytest.mark.redis]

DPID = 0xB7
TOKEN = "ovs-token"
PORTS = {"fw1": 11, "fw2": 12, "fw3": 13, "fw4": 14, "n1": 40}
NEW = {"name": "n1", "switch": "s1", "port": 40, "mac": "02:00:00:00:0b:01", "ip": "10.0.0.160"}
PROBES = [
    {"port": 4294967296}, {"port": 0xFFFFFFFD}, {"ip": "010.0.0.5"}, {"ip": "\u0661\u0660.0.0.5"},
    {"ip": "10.0.0.1"}, {"ip": "10.0.0.255"}, {"mac": "02:00:00:00:00:01"},
    {"mac": "0e:00:0a:00:00:64"}, {"mac": "01:00:00:00:00:01"}, {"name": "n1\n"},
    {"capacity": True},
]  # fmt: skip


@pytest.fixture
def bridge(ovs):
    br = Bridge.create(unique_name("in"), DPID, [11, 12, 13, 14, 31, 32, 40])
    yield br
    br.delete()


def slot_ports(br: Bridge) -> dict[int, int]:
    out = {}
    for f in br.slot_flows():
        m = re.search(r"reg0=(0x[0-9a-f]+|\d+),metadata=0x1 actions=output:(\d+)", f)
        if m:
            out[int(m.group(1), 0)] = int(m.group(2))
    return out


def switch_follows(app, br: Bridge) -> bool:
    ps = app.steering.pools[POOL]
    want = {s: PORTS[o] for s, o in enumerate(ps.assignment) if o is not None}
    return slot_ports(br) == want


def test_bad_inputs_then_a_change_end_to_end(tmp_path, redis_server, bridge):
    topo = write_topology(tmp_path / "topo.yaml", dpid=DPID)
    raw = redis.Redis.from_url(redis_server.url)
    with controller(topo, redis_server.url, api_token=TOKEN) as app:
        bridge.connect(app.options.listen[1])
        assert app.wait_synced("s1", 10)
        svc = services_of(app)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with TestClient(create_api(app, svc.membership, svc.store), headers=auth) as c:
            r = c.post(f"/api/v1/pools/{POOL}/instances", json={"name": "fw1"})
            assert r.status_code == 200 and r.json()["confirmed"] is True
            wait_until(lambda: switch_follows(app, bridge))
            # Garbage registrations next to the good ones.
            raw.sadd(keys.members(POOL), "fw3", "fw4")
            raw.set(keys.instance(POOL, "fw3"), "not a hash")
            raw.hset(keys.instance(POOL, "fw4"), mapping={"name": "fw4", "capacity": b"\xff"})
            raw.publish(keys.events(POOL), b"register \xff")
            for probe in PROBES:
                r = c.post(f"/api/v1/pools/{POOL}/instances", json=NEW | probe)
                assert r.status_code in (400, 422), (probe, r.text)
            assert owners(app) == {"fw1": 64}
            # A change after the probes: programmed, confirmed by barrier, in the table.
            r = c.post(f"/api/v1/pools/{POOL}/instances", json=NEW)
            assert r.status_code == 200 and r.json()["confirmed"] is True, r.text
            assert owners(app) == {"fw1": 32, "n1": 32}
            wait_until(lambda: switch_follows(app, bridge))
            assert set(slot_ports(bridge).values()) == {11, 40}
            r = c.delete(f"/api/v1/pools/{POOL}/instances/n1")
            assert r.status_code == 200 and r.json()["confirmed"] is True
            wait_until(lambda: switch_follows(app, bridge))
            assert set(slot_ports(bridge).values()) == {11}
    raw.close()
