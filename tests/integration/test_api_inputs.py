"""Every API body is checked by the shared value types before anything is applied: values
the topology file would refuse are refused here too (4xx, nothing changed), the token is
checked before the body is parsed, bodies are bounded, and a later change still applies."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from membership_support import POOL, STATIC_POOL, controller, owners, write_topology

from controller.api.routes import MAX_BODY_BYTES, create_api
from controller.ofp.service import services_of

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW = {"name": "n1", "switch": "s1", "port": 40, "mac": "02:00:00:00:0b:01", "ip": "10.0.0.160"}


@pytest.fixture
def running(tmp_path, redis_server):
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xB2)
    with controller(topo, redis_server.url, api_token=TOKEN) as app:
        yield app


@pytest.fixture
def client(running):
    svc = services_of(running)
    with TestClient(create_api(running, svc.membership, svc.store), headers=AUTH) as c:
        yield c


def state(app):
    return {
        p: (
            ps.epoch,
            list(ps.assignment),
            {n: (i.mac, i.ip, i.port) for n, i in ps.instances.items()},
        )
        for p, ps in app.steering.pools.items()
    }


BAD_INSTANCES = [
    ({"ip": "010.0.0.5"}, "ip"),
    ({"ip": "\u0661\u0660.0.0.5"}, "ip"),
    ({"ip": "10.0.0.5\n"}, "ip"),
    ({"ip": "10.0.0.1"}, "address of host"),  # c1's address
    ({"ip": "10.0.0.101"}, "address of instance"),  # fw1's
    ({"ip": "10.0.0.0"}, "network or broadcast"),
    ({"ip": "10.0.0.255"}, "network or broadcast"),
    ({"ip": "224.0.0.1"}, "ip"),
    ({"port": 4294967296}, "port"),
    ({"port": 0xFFFFFFFD}, "port"),
    ({"port": 0}, "port"),
    ({"port": True}, "port"),
    ({"port": 40.0}, "port"),
    ({"port": "40"}, "port"),
    ({"mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"mac": "0e:00:0a:00:00:64"}, "reserved"),
    ({"mac": "02:00:00:00:0b:01\n"}, "mac"),
    ({"mac": "02:00:00:00:00:01"}, "MAC of host"),  # c1's MAC
    ({"mac": "02:00:00:00:01:01"}, "MAC of instance"),  # fw1's
    ({"name": "n1\n"}, "name"),
    ({"name": "x" * 11}, "name"),
    ({"switch": "s1\n"}, "switch"),
    ({"capacity": True}, "capacity"),
    ({"capacity": "2"}, "capacity"),
    ({"capacity": 0}, "capacity"),
    ({"capacity": 1e300}, "capacity"),
]


def test_bad_instances_are_refused_and_nothing_changes(client, running):
    for change, says in BAD_INSTANCES:
        before = state(running)
        r = client.post(f"/api/v1/pools/{POOL}/instances", json=NEW | change)
        assert r.status_code in (400, 422), (change, r.text)
        assert says.lower() in r.json()["detail"].lower(), (change, r.json())
        assert state(running) == before, change
        assert services_of(running).membership.sources.get((POOL, "n1")) is None
    # After every probe a valid change still applies, and so does a removal.
    r = client.post(f"/api/v1/pools/{POOL}/instances", json=NEW)
    assert r.status_code == 200 and owners(running) == {"n1": 64}
    r = client.delete(f"/api/v1/pools/{POOL}/instances/n1")
    assert r.status_code == 200 and "n1" not in running.steering.pools[POOL].instances


def test_capacity_true_is_not_one(client, running):
    r = client.put(f"/api/v1/pools/{STATIC_POOL}/instances/lb1/capacity", json={"capacity": True})
    assert r.status_code == 422 and "capacity" in r.json()["detail"]
    assert running.steering.pools[STATIC_POOL].instances["lb1"].capacity == 1


def test_token_is_checked_before_the_body(client):
    path = f"/api/v1/pools/{STATIC_POOL}/instances/lb1/capacity"
    for body in (b"{", b"not json", b'{"capacity": true}'):
        r = client.put(
            path, content=body, headers={"Authorization": "", "content-type": "application/json"}
        )
        assert r.status_code == 401, r.text
    r = client.put(path, content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_body_size_is_limited_and_never_echoed(client, running):
    before = state(running)
    huge = "a" * (10 * 1024 * 1024)
    r = client.post(f"/api/v1/pools/{POOL}/instances", json={"name": huge})
    assert r.status_code == 413 and len(r.content) < 200
    # Just under the limit: an invalid name is refused without echoing it back.
    name = "b" * (MAX_BODY_BYTES - 100)
    r = client.post(f"/api/v1/pools/{POOL}/instances", json={"name": name})
    assert r.status_code == 422 and len(r.content) < 1000

    # A chunked body without a length is cut off at the limit too.
    def chunks():
        for _ in range(100):
            yield b"x" * 4096

    r = client.post(
        f"/api/v1/pools/{POOL}/instances",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert state(running) == before


def test_openapi_documents_the_errors(client):
    doc = client.get("/openapi.json").json()
    add = doc["paths"]["/api/v1/pools/{pool}/instances"]["post"]["responses"]
    assert {"400", "401", "404", "409", "413", "422"} <= set(add)
    schema = add["422"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert doc["components"]["schemas"][schema]["properties"]["detail"]["type"] == "string"


def test_lookup_takes_ascii_numbers_only(client):
    path = f"/api/v1/pools/{STATIC_POOL}/lookup"
    ok = {"src": "10.0.0.1", "dst": "10.0.0.2", "proto": "tcp", "sport": "1000", "dport": "80"}
    assert client.get(path, params=ok).status_code == 200
    for bad in ({"src": "\u0661\u0660.0.0.1"}, {"sport": "\u0661\u0660"}, {"proto": "\u0666"},
                {"dport": "8" * 5000}):  # fmt: skip
        r = client.get(path, params=ok | bad)
        assert r.status_code == 400 and len(r.content) < 300, (bad, r.text[:200])
