"""REST API against the real app object (and one real HTTP server): reads, changes, auth,
lookups that agree with the switch hash, and bad requests that get 4xx, never 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from membership_support import POOL, STATIC_POOL, controller, membership_of, owners, write_topology

from controller.api.routes import ApiConfigError, check_listen, create_api
from controller.core.hashing import FiveTuple, slot_of
from controller.ofp.service import services_of

TOKEN = "t0ken-for-tests"
JSON = {"content-type": "application/json"}


@pytest.fixture
def running(tmp_path, redis_server):
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xA2)
    with controller(topo, redis_server.url) as app:
        yield app


@pytest.fixture
def client(running):
    svc = services_of(running)
    with TestClient(create_api(running, svc.membership, svc.store)) as c:
        yield c


def test_reads(client, running):
    pools = client.get("/api/v1/pools").json()
    assert [p["name"] for p in pools] == [POOL, STATIC_POOL]
    lb = client.get(f"/api/v1/pools/{STATIC_POOL}").json()
    assert lb["instances"]["active"] == 2 and lb["membership"] == "static"
    assert {m["name"]: m["slots"] for m in lb["members"]} == {"lb1": 8, "lb2": 8}
    assert lb["members"][0]["switch"] == "s1" and lb["members"][0]["port"] == 31
    a = client.get(f"/api/v1/pools/{STATIC_POOL}/assignment").json()
    assert a["assignment"] == running.steering.pools[STATIC_POOL].assignment
    assert a["slots"] == {"lb1": 8, "lb2": 8} and a["epoch"] == 1
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["redis"] == "up"
    assert client.get("/openapi.json").json()["paths"]["/api/v1/pools/{pool}/lookup"]


def test_lookup_agrees_with_the_switch_hash(client, running):
    ps = running.steering.pools[STATIC_POOL]
    for sport in (1000, 2000, 3000, 40000):
        r = client.get(
            f"/api/v1/pools/{STATIC_POOL}/lookup",
            params={"src": "10.0.0.1", "dst": "10.0.0.200", "proto": "tcp", "sport": sport,
                    "dport": 80},
        )  # fmt: skip
        assert r.status_code == 200
        body = r.json()
        slot = slot_of(FiveTuple.parse("10.0.0.1", "10.0.0.200", "tcp", sport, 80), 16, 0)
        assert body == {"pool": STATIC_POOL, "instance": ps.assignment[slot], "slot": slot,
                        "epoch": ps.epoch}  # fmt: skip
        # Symmetric: the reverse direction lands on the same instance.
        back = client.get(
            f"/api/v1/pools/{STATIC_POOL}/lookup",
            params={"src": "10.0.0.200", "dst": "10.0.0.1", "proto": "6", "sport": 80,
                    "dport": sport},
        ).json()  # fmt: skip
        assert back["slot"] == slot


def test_changes_report_epoch_and_moves(client, running):
    r = client.post(f"/api/v1/pools/{POOL}/instances", json={"name": "fw1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"pool": POOL, "epoch": 1, "moved": 64, "confirmed": True,
                        "reason": "api: add fw/fw1"}  # fmt: skip
    # Not in the topology: explicit attachment point.
    r = client.post(
        f"/api/v1/pools/{POOL}/instances",
        json={"name": "fwx", "switch": "s1", "port": 20, "mac": "02:00:00:00:0a:01",
              "ip": "10.0.0.150", "capacity": 3},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["moved"] == 48 and owners(running) == {"fw1": 16, "fwx": 48}
    assert membership_of(running).sources[(POOL, "fwx")] == "api"
    r = client.put(f"/api/v1/pools/{POOL}/instances/fwx/capacity", json={"capacity": 1})
    assert r.json()["moved"] == 16 and owners(running) == {"fw1": 32, "fwx": 32}
    r = client.post(f"/api/v1/pools/{POOL}/instances/fwx/drain")
    assert r.status_code == 200 and owners(running) == {"fw1": 64}
    assert running.steering.pools[POOL].instances["fwx"].state == "draining"
    r = client.post(f"/api/v1/pools/{POOL}/instances/fw1/drain")  # the last active one
    assert r.status_code == 400 and "last active instance" in r.json()["detail"]
    assert owners(running) == {"fw1": 64}  # nothing half-applied
    r = client.post(f"/api/v1/pools/{POOL}/instances/fw1/drain", params={"force": "true"})
    assert r.status_code == 200 and owners(running) == {}
    r = client.delete(f"/api/v1/pools/{POOL}/instances/fwx", params={"wait": "false"})
    assert r.status_code == 200 and r.json()["confirmed"] is None
    assert "fwx" not in running.steering.pools[POOL].instances
    # Everything went through app.apply and was saved to Redis.
    store = services_of(running).store
    from membership_support import wait_until

    wait_until(lambda: store.stored_epoch(POOL) == running.steering.pools[POOL].epoch)


BAD_REQUESTS = [
        ("GET", "/api/v1/pools/nope", {}, 404, "unknown pool"),
        ("GET", "/api/v1/pools/nope/assignment", {}, 404, "unknown pool"),
        ("DELETE", "/api/v1/pools/fw/instances/nope", {}, 404, "no instance"),
        ("POST", "/api/v1/pools/fw/instances/nope/drain", {}, 404, "no instance"),
        ("PUT", "/api/v1/pools/lb/instances/lb1/capacity", {"json": {"capacity": -1}}, 422,
         "capacity"),
        ("PUT", "/api/v1/pools/lb/instances/lb1/capacity", {"json": {"capacity": "x"}}, 422,
         "capacity"),
        ("PUT", "/api/v1/pools/lb/instances/lb1/capacity", {"json": {"capacity": 1e12}}, 422,
         "capacity"),
        ("PUT", "/api/v1/pools/lb/instances/lb1/capacity", {"content": b"{", "headers": JSON}, 422,
         "JSON"),
        ("POST", "/api/v1/pools/fw/instances", {"json": {}}, 422, "name"),
        ("POST", "/api/v1/pools/fw/instances", {"json": {"name": "fw1", "bogus": 1}}, 422,
         "bogus"),
        ("POST", "/api/v1/pools/fw/instances", {"json": {"name": "new1"}}, 422,
         "give switch, port, mac, ip"),
        ("POST", "/api/v1/pools/fw/instances", {"json": {"name": "fw1", "port": 99}}, 409,
         "listed in the topology"),
        ("POST", "/api/v1/pools/fw/instances",
         {"json": {"name": "n1", "switch": "s1", "port": 31, "mac": "02:00:00:00:0b:01",
                   "ip": "10.0.0.160"}}, 400, "already used"),
        ("POST", "/api/v1/pools/fw/instances",
         {"json": {"name": "n1", "switch": "s9", "port": 40, "mac": "02:00:00:00:0b:01",
                   "ip": "10.0.0.160"}}, 400, "unknown switch"),
        ("POST", "/api/v1/pools/fw/instances",
         {"json": {"name": "n1", "switch": "s1", "port": 40, "mac": "zz",
                   "ip": "10.0.0.160"}}, 422, "MAC"),
        ("GET", "/api/v1/pools/lb/lookup", {"params": {"src": "x", "dst": "10.0.0.1"}}, 400,
         "source address"),
        ("GET", "/api/v1/pools/lb/lookup",
         {"params": {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "tcp", "sport": 70000}},
         400, "port"),
        ("GET", "/api/v1/pools/lb/lookup", {"params": {"src": "10.0.0.1"}}, 422, "dst"),
]  # fmt: skip


def test_bad_requests_get_4xx_with_a_message(client, running):
    for method, path, kw, status, says in BAD_REQUESTS:
        before = {p: (ps.epoch, list(ps.assignment)) for p, ps in running.steering.pools.items()}
        r = client.request(method, path, **kw)
        assert r.status_code == status, (method, path, kw, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and says.lower() in detail.lower(), (path, detail)
        after = {p: (ps.epoch, list(ps.assignment)) for p, ps in running.steering.pools.items()}
        assert after == before  # nothing applied


def test_token_is_enforced_on_changes_only(tmp_path, redis_server):
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xA3)
    with (
        controller(topo, redis_server.url, api_token=TOKEN) as app,
        TestClient(create_api(app)) as c,
    ):
        path = f"/api/v1/pools/{STATIC_POOL}/instances/lb1/capacity"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.put(path, json={"capacity": 2}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert app.steering.pools[STATIC_POOL].instances["lb1"].capacity == 1
        assert c.get("/api/v1/pools").status_code == 200  # reads stay open
        r = c.put(path, json={"capacity": 2}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert app.steering.pools[STATIC_POOL].instances["lb1"].capacity == 2


def test_non_loopback_needs_a_token():
    with pytest.raises(ApiConfigError, match="token"):
        check_listen("0.0.0.0", None)
    with pytest.raises(ApiConfigError):
        check_listen("10.1.2.3", "")
    check_listen("0.0.0.0", TOKEN)
    check_listen("127.0.0.1", None)
    check_listen("::1", None)


def test_controller_refuses_an_open_api_without_token(tmp_path):
    from controller.ofp.options import Options, OptionsError

    topo = write_topology(tmp_path / "topo.yaml", dpid=0xA6)
    with pytest.raises(OptionsError, match="not a loopback address"):
        Options(topology=topo, api=("0.0.0.0", 0))
    assert Options(topology=topo, api=("0.0.0.0", 0), api_token="t").api == ("0.0.0.0", 0)
    assert Options(topology=topo, api=None).api is None  # no API: nothing to protect


def test_real_http_server(running):
    """The uvicorn server the controller starts: JSON, metrics and OpenAPI over TCP."""
    from membership_support import api_url

    base = api_url(running)
    with httpx.Client(base_url=base, timeout=5) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/openapi.json").status_code == 200
        r = c.post(f"/api/v1/pools/{POOL}/instances", json={"name": "fw2", "capacity": 2})
        assert r.status_code == 200 and r.json()["moved"] == 64
        assert c.get("/api/v1/pools/nope").status_code == 404
        text = c.get("/metrics").text
    assert 'nfsteer_instance_slots{instance="fw2",pool="fw"} 64.0' in text
    assert 'nfsteer_pool_instances{pool="fw",state="active"} 1.0' in text
    assert "nfsteer_rebalances_total 1.0" in text
    assert "nfsteer_slots_moved_total 64.0" in text
    assert 'nfsteer_pool_without_active_instance{pool="fw"} 0.0' in text
    assert "nfsteer_redis_up 1.0" in text
    assert "nfsteer_change_to_barrier_seconds_bucket" in text


def test_sample_histogram_counts_each_sample_once():
    """Pure logic behind nfsteer_change_to_barrier_seconds (the real scrape is tested
    with a switch in test_service_ovs.py)."""
    from collections import deque

    from controller.api.metrics import SampleHistogram

    samples: deque = deque(maxlen=4)
    h = SampleHistogram(buckets=(0.01, 0.1))
    samples.extend([0.005, 0.05])
    h.consume(samples)
    h.consume(samples)  # nothing new
    assert h.counts == [1, 1, 0]
    samples.extend([0.5, 0.002, 0.003])  # one old sample falls out of the deque
    h.consume(samples)
    assert h.counts == [3, 1, 1] and abs(h.total - 0.56) < 1e-9
    family = h.family("x_seconds", "doc")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "x_seconds_bucket"}
    assert buckets == {"0.01": 3, "0.1": 4, "+Inf": 5}
