"""Garbage in Redis, with a real Redis and a real controller in this process: saved records
that fail the shared models are counted, logged once and ignored (the topology file wins);
the save script never fails half-way and recovers from a garbage epoch; one bad
registration never stops the scan of the others nor slows failure detection; a PUBLISH
that is not UTF-8 is counted and ignored."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis
from fastapi.testclient import TestClient
from membership_support import (
    POOL,
    STATIC_POOL,
    ContractNF,
    controller,
    membership_of,
    owners,
    state_of,
    wait_until,
    write_topology,
)

from contract import keys
from controller.api.routes import create_api
from controller.ofp.service import services_of
from controller.store.membership import POLL_INTERVAL_S
from controller.store.pools import MAX_EPOCH, PoolSnapshot, Store, instances_key


@pytest.fixture
def topo(tmp_path):
    return write_topology(tmp_path / "topo.yaml", dpid=0xC1)


@pytest.fixture
def raw(redis_server):
    client = redis.Redis.from_url(redis_server.url)  # bytes: garbage may be any bytes
    yield client
    client.close()


def saved_state(app_url: str, topo) -> None:
    """Run a controller once so that both pools are saved."""
    with controller(topo, app_url) as app:
        store = services_of(app).store
        wait_until(lambda: store.stored_epoch(STATIC_POOL) == 1)


BAD_RECORDS = [
    ("unknown switch", {"switch": "s9"}),
    ("a host's port", {"port": 1}),
    ("port 2^40", {"port": 2**40}),
    ("bad ip", {"ip": "010.0.0.5"}),
    ("bad heartbeat", {"last_heartbeat": "x"}),
    ("capacity true", {"capacity": True}),
    ("mac with newline", {"mac": "02:00:00:00:09:09\n"}),
]


@pytest.mark.parametrize(("what", "change"), BAD_RECORDS, ids=[w for w, _ in BAD_RECORDS])
def test_bad_saved_record_is_ignored_and_counted(redis_server, raw, topo, what, change, caplog):
    saved_state(redis_server.url, topo)
    # An instance added through the API (not in the topology) whose record was edited.
    record = {"name": "lb9", "pool": STATIC_POOL, "mac": "02:00:00:00:09:09", "ip": "10.0.0.99",
              "switch": "s1", "port": 39, "capacity": 1.0, "state": "active",
              "last_heartbeat": None, "source": "api"}  # fmt: skip
    raw.hset(instances_key(STATIC_POOL), "lb9", json.dumps(record | change))
    assignment = json.loads(raw.get(keys.assignment(STATIC_POOL)))
    raw.set(keys.assignment(STATIC_POOL), json.dumps(["lb9"] * 4 + assignment[4:]))
    caplog.set_level(logging.WARNING)
    with controller(topo, redis_server.url) as app:
        svc = services_of(app)
        ps = app.steering.pools[STATIC_POOL]
        assert "lb9" not in ps.instances  # the topology wins
        assert None not in ps.assignment  # no slot black-holed
        assert svc.store.rejected[(STATIC_POOL, "instances")] == 1
        assert ps.epoch >= 1 and set(owners(app, STATIC_POOL)) == {"lb1", "lb2"}
        with TestClient(create_api(app, svc.membership, svc.store)) as c:
            assert c.get(f"/api/v1/pools/{STATIC_POOL}").status_code == 200
            text = c.get("/metrics").text
            assert 'nfsteer_store_records_rejected_total{key="instances",pool="lb"} 1.0' in text
            r = c.put(f"/api/v1/pools/{STATIC_POOL}/instances/lb1/capacity", json={"capacity": 3})
            assert r.status_code == 200 and r.json()["confirmed"]
        wait_until(lambda: svc.store.stored_epoch(STATIC_POOL) == ps.epoch)
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert sum("ignoring instances" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("epoch", [b"x", b"1e400", b"-3", str(2**63 + 5).encode(), b"\xff"])
def test_garbage_epoch_is_replaced_by_the_next_save(redis_server, raw, topo, epoch):
    saved_state(redis_server.url, topo)
    raw.set(keys.epoch(POOL), epoch)
    store = Store.from_url(redis_server.url)
    try:
        assert store.load_pool(POOL) is None  # not restored
        with controller(topo, redis_server.url) as app:
            ContractNF(redis_server.url, POOL, "fw1").register(beat=True)
            wait_until(lambda: owners(app) == {"fw1": 64})
            want = app.steering.pools[POOL].epoch
            wait_until(lambda: store.stored_epoch(POOL) == want)
            saved = json.loads(raw.get(keys.assignment(POOL)))
            assert saved == app.steering.pools[POOL].assignment
    finally:
        store.close()


def test_save_checks_types_before_writing(redis_server, raw, topo):
    saved_state(redis_server.url, topo)
    store = Store.from_url(redis_server.url)
    try:
        snap = store.load_pool(STATIC_POOL)
        assert snap is not None
        # A string where the meta hash belongs, a list where the instances hash belongs and
        # a string where an NF's registration hash belongs: replaced or left alone, the
        # save is complete.
        raw.delete(keys.pool_meta(STATIC_POOL), instances_key(STATIC_POOL))
        raw.set(keys.pool_meta(STATIC_POOL), "garbage")
        raw.rpush(instances_key(STATIC_POOL), "garbage")
        raw.set(keys.instance(STATIC_POOL, "lb1"), "not a hash")
        snap.epoch += 1
        assert store.save_pool(snap) is None
        again = store.load_pool(STATIC_POOL)
        assert again is not None and again.epoch == snap.epoch
        assert set(again.instances) == {"lb1", "lb2"}
        assert raw.get(keys.instance(STATIC_POOL, "lb1")) == b"not a hash"
        # A bad argument is refused before anything is written.
        before = {k: raw.dump(k) for k in raw.keys(f"nfsteer:{{{STATIC_POOL}}}:*")}
        bad = PoolSnapshot(**{**snap.__dict__, "epoch": MAX_EPOCH + 2})
        with pytest.raises(redis.ResponseError, match="bad epoch"):
            store.save_pool(bad)
        assert {k: raw.dump(k) for k in raw.keys(f"nfsteer:{{{STATIC_POOL}}}:*")} == before
    finally:
        store.close()


def test_epoch_above_2_pow_63_does_not_fake_a_save(redis_server, raw, topo):
    saved_state(redis_server.url, topo)
    store = Store.from_url(redis_server.url)
    try:
        snap = store.load_pool(STATIC_POOL)
        raw.set(keys.epoch(STATIC_POOL), str(2**63 + 1))
        snap.assignment = ["lb2"] * len(snap.assignment)
        snap.epoch = 7
        assert store.save_pool(snap) is None
        assert raw.get(keys.epoch(STATIC_POOL)) == b"7"
        assert json.loads(raw.get(keys.assignment(STATIC_POOL))) == snap.assignment
        # A newer valid epoch still wins, compared exactly.
        raw.set(keys.epoch(STATIC_POOL), str(MAX_EPOCH))
        assert store.save_pool(snap) == MAX_EPOCH
    finally:
        store.close()


def write_garbage_registrations(raw) -> None:
    """fw3: a string where a hash belongs; fw4: a capacity that is not UTF-8; and members
    that are no names."""
    raw.sadd(keys.members(POOL), "fw3", "fw4", b"\xff\xfe", "x" * 300)
    raw.set(keys.instance(POOL, "fw3"), "not a hash")
    raw.hset(keys.instance(POOL, "fw4"), mapping={"name": "fw4", "capacity": b"\xff\x00"})
    raw.set(keys.heartbeat(POOL, "fw4"), "1", px=60_000)
    raw.hset(keys.heartbeat(POOL, "fw3"), "x", "y")  # not a string


def test_garbage_registrations_never_slow_failure_detection(redis_server, raw, topo, caplog):
    ttl_ms = 300
    caplog.set_level(logging.WARNING)
    with controller(topo, redis_server.url, heartbeat_ttl_ms=ttl_ms) as app:
        fw1 = ContractNF(redis_server.url, POOL, "fw1", ttl_ms=ttl_ms, interval_ms=60)
        fw2 = ContractNF(redis_server.url, POOL, "fw2", ttl_ms=ttl_ms, interval_ms=60)
        try:
            fw1.register()
            fw2.register()
            wait_until(lambda: set(owners(app)) == {"fw1", "fw2"})
            write_garbage_registrations(raw)
            time.sleep(1.5)  # a few scans with the garbage in place
            assert set(owners(app)) == {"fw1", "fw2"}
            detections = []
            for _ in range(3):
                last = fw2.stop_heartbeats()
                wait_until(lambda: state_of(app, "fw2") == "failed", timeout=3, step=0.002)
                detections.append(time.monotonic() - last)
                fw2.start_heartbeats()
                wait_until(lambda: state_of(app, "fw2") == "active")
            worst = max(detections)
            print(f"failure detection with garbage present: {[round(d, 3) for d in detections]} s")
            # TTL + poll interval, plus scheduling slack on a busy shared machine.
            assert worst < ttl_ms / 1000 + POLL_INTERVAL_S + 0.15, detections
            store = services_of(app).store
            assert store.rejected[(POOL, "inst")] >= 1
        finally:
            fw1.close()
            fw2.close()
    assert not [r for r in caplog.records if r.exc_info], "no traceback"
    assert sum("inst:fw3" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_non_utf8_publish_is_counted_and_ignored(redis_server, raw, topo, caplog):
    caplog.set_level(logging.WARNING)
    with controller(topo, redis_server.url) as app:
        membership = membership_of(app)
        wait_until(lambda: membership._pubsub is not None)
        pubsub = membership._pubsub
        # Subscribed at the server, not only created: a message published before is lost.
        wait_until(lambda: raw.pubsub_numpat() >= 1)
        for data in (b"register \xff\xfe", b"\xff", b"register fw1\n", b"bogus fw1"):
            raw.publish(keys.events(POOL), data)
        store = services_of(app).store
        wait_until(lambda: store.rejected.get((POOL, "events"), 0) == 4)
        fw1 = ContractNF(redis_server.url, POOL, "fw1")
        try:
            fw1.register()
            wait_until(lambda: owners(app) == {"fw1": 64})
        finally:
            fw1.close()
        assert membership._pubsub is pubsub  # no resubscribe
    assert not [r for r in caplog.records if r.exc_info]


def test_drain_of_an_instance_whose_registration_is_garbage(redis_server, raw, topo):
    """The API drains a registered instance and marks its registration retired: a key that
    is not a hash any more is left alone, and the drain answers 200 (not a 500 after the
    change was applied)."""
    with controller(topo, redis_server.url) as app:
        fw1, fw2 = (ContractNF(redis_server.url, POOL, n) for n in ("fw1", "fw2"))
        try:
            fw1.register()
            fw2.register()
            wait_until(lambda: set(owners(app)) == {"fw1", "fw2"})
            raw.delete(keys.instance(POOL, "fw2"))
            raw.set(keys.instance(POOL, "fw2"), "not a hash")
            svc = services_of(app)
            with TestClient(create_api(app, svc.membership, svc.store)) as c:
                r = c.post(f"/api/v1/pools/{POOL}/instances/fw2/drain")
                assert r.status_code == 200, r.text
            assert owners(app) == {"fw1": 64}
            assert raw.get(keys.instance(POOL, "fw2")) == b"not a hash"
        finally:
            fw1.close()
            fw2.close()
