"""The controller's state in a real Redis: layout, atomic guarded saves, outages, auth."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import redis
from conftest import RedisServer, require
from membership_support import POOL, write_topology
from redis.crc import key_slot

from contract import keys
from contract.topology import load_topology
from controller.core.state import InstanceInfo, InstanceState, Steering
from controller.store.pools import PoolSnapshot, Store, StoreUnavailable, connect, instances_key


@pytest.fixture
def steering(tmp_path) -> Steering:
    s = Steering(load_topology(write_topology(tmp_path / "t.yaml", 1)), now=0.0)
    for n in ("fw1", "fw2", "fw3"):
        info = s.pools[POOL].instances[n]
        s.add_instance(InstanceInfo(**{**info.__dict__, "state": InstanceState.ACTIVE}), now=1.0)
    return s


def test_client_follows_redis_py_practice(redis_server):
    client = connect(redis_server.url)
    kw = client.connection_pool.connection_kwargs
    assert kw["socket_timeout"] == 0.5 and kw["socket_connect_timeout"] == 0.5
    assert kw["health_check_interval"] > 0
    assert kw["retry"]._retries >= 1  # Retry with ExponentialBackoff
    assert client.ping()
    client.close()


def test_save_and_load_round_trip(redis_server, steering):
    store = Store.from_url(redis_server.url)
    ps = steering.pools[POOL]
    snap = PoolSnapshot.of(ps, {"fw1": "registered", "fw2": "api"})
    assert store.save_pool(snap) is None
    loaded = store.load_pool(POOL)
    assert loaded is not None
    assert loaded.epoch == ps.epoch
    assert loaded.assignment == ps.assignment
    assert loaded.n_slots == ps.n_slots and loaded.kind == "firewall"
    assert loaded.instances == ps.instances
    assert loaded.sources["fw1"] == "registered" and loaded.sources["fw2"] == "api"
    assert loaded.sources["fw4"] == "topology"
    r = store.client
    assert r.sismember(keys.POOLS, POOL)
    assert json.loads(r.hget(instances_key(POOL), "fw4"))["state"] == "down"
    # Another controller's Steering restored from it holds exactly the same pool.
    fresh = Steering(steering.topology)
    fresh.restore_pool(POOL, loaded.instances, loaded.assignment, loaded.epoch)
    assert fresh.pools[POOL].assignment == ps.assignment
    store.close()


def test_one_pool_shares_one_cluster_slot(redis_server, steering):
    """Every key of a pool hashes to one Redis Cluster slot (hash tag), so the Lua save
    works unchanged on a cluster."""
    store = Store.from_url(redis_server.url)
    store.save_pool(PoolSnapshot.of(steering.pools[POOL]))
    pool_keys = [k for k in store.client.keys("nfsteer:{fw}:*")]
    assert len(pool_keys) >= 4
    assert len({key_slot(k.encode()) for k in pool_keys}) == 1
    assert key_slot(keys.members(POOL).encode()) == key_slot(keys.instance(POOL, "x").encode())
    store.close()


def test_older_epoch_never_overwrites_newer(redis_server, steering):
    store = Store.from_url(redis_server.url)
    ps = steering.pools[POOL]
    old = PoolSnapshot.of(ps)
    steering.set_state(POOL, "fw1", InstanceState.FAILED, now=2.0)
    new = PoolSnapshot.of(ps)
    assert new.epoch > old.epoch
    assert store.save_pool(new) is None
    assert store.save_pool(old) == new.epoch  # refused: reports the newer stored epoch
    loaded = store.load_pool(POOL)
    assert loaded.epoch == new.epoch and loaded.assignment == new.assignment
    assert loaded.instances["fw1"].state is InstanceState.FAILED
    # The same epoch may be written again (state changes that move no slot).
    steering.set_capacity(POOL, "fw4", 3.0, now=3.0)  # fw4 is down: nothing moves
    assert store.save_pool(PoolSnapshot.of(ps)) is None
    assert store.load_pool(POOL).instances["fw4"].capacity == 3.0
    store.close()


def test_slot_counts_go_into_existing_registrations_only(redis_server, steering):
    store = Store.from_url(redis_server.url)
    r = store.client
    r.hset(keys.instance(POOL, "fw1"), mapping={"name": "fw1", "state": "active"})
    ps = steering.pools[POOL]
    store.save_pool(PoolSnapshot.of(ps))
    counts = ps.slot_counts()
    assert int(r.hget(keys.instance(POOL, "fw1"), "slots")) == counts["fw1"] > 0
    assert int(r.hget(keys.instance(POOL, "fw1"), "epoch")) == ps.epoch
    assert not r.exists(keys.instance(POOL, "fw2"))  # no stray hash for unregistered ones
    store.close()


def test_malformed_saved_state_is_counted_and_ignored(redis_server, steering):
    store = Store.from_url(redis_server.url)
    store.save_pool(PoolSnapshot.of(steering.pools[POOL]))
    store.client.set(keys.assignment(POOL), "{not json")
    assert store.load_pool(POOL) is None
    assert store.rejected == {(POOL, "assignment"): 1}
    store.client.set(keys.assignment(POOL), "[]")
    store.client.hset(instances_key(POOL), "fw1", '{"name": "fw1"}')
    loaded = store.load_pool(POOL)
    assert loaded is not None and "fw1" not in loaded.instances and "fw2" in loaded.instances
    assert store.rejected[(POOL, "instances")] == 1
    assert store.load_pool("nope") is None
    store.close()


def test_heartbeats_in_one_pipeline(redis_server):
    store = Store.from_url(redis_server.url)
    store.client.set(keys.heartbeat(POOL, "fw1"), "123.5", px=500)
    beats = store.heartbeats([(POOL, "fw1"), (POOL, "fw2")])
    value, pttl = beats[(POOL, "fw1")]
    assert value == "123.5" and 0 < pttl <= 500
    assert beats[(POOL, "fw2")] == (None, -2)
    store.close()


def test_outage_is_logged_once_per_change(redis_server, steering, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer.store")
    store = Store.from_url(redis_server.url)
    assert store.ping() and store.up
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            store.save_pool(PoolSnapshot.of(steering.pools[POOL]))
        assert not store.ping()
    assert not store.up
    redis_server.start()
    assert store.ping() and store.up
    assert store.ping()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("redis unreachable" in m for m in messages) == 1
    assert sum(m == "redis back" for m in messages) == 1
    assert not any(r.exc_info for r in caplog.records)
    # The Lua script is loaded again into the restarted (empty) server.
    assert store.save_pool(PoolSnapshot.of(steering.pools[POOL])) is None
    store.close()


def test_restore_registrations_never_overwrites_a_newer_one(redis_server):
    store = Store.from_url(redis_server.url)
    r = store.client
    r.hset(keys.instance(POOL, "fw1"), mapping={"name": "fw1", "capacity": "5"})
    n = store.restore_registrations(
        {(POOL, "fw1"): {"name": "fw1", "capacity": "1"}, (POOL, "fw2"): {"name": "fw2"}}
    )
    assert n == 1
    assert r.hget(keys.instance(POOL, "fw1"), "capacity") == "5"
    assert r.smembers(keys.members(POOL)) == {"fw2"}
    assert store.retire_registration(POOL, "fw2")
    assert r.hget(keys.instance(POOL, "fw2"), "state") == "draining"
    assert not store.retire_registration(POOL, "fw9")
    assert not r.exists(keys.instance(POOL, "fw9"))  # never creates a registration
    store.close()


def test_password_protected_redis(tmp_path, steering):
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path, password="s3cret-pw")
    server.start()
    try:
        store = Store.from_url(server.url)
        assert store.save_pool(PoolSnapshot.of(steering.pools[POOL])) is None
        assert store.load_pool(POOL).epoch == steering.pools[POOL].epoch
        store.close()
        # Without the password the server answers, but the store reports it unusable.
        anonymous = Store.from_url(f"redis://127.0.0.1:{server.port}/0")
        with pytest.raises(StoreUnavailable):
            anonymous.load_pool(POOL)
        assert not anonymous.up
        anonymous.close()
        wrong = redis.Redis.from_url(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        server.stop()


def test_unreachable_redis_fails_fast(steering):
    store = Store.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        store.load_pool(POOL)
    assert not store.up
    store.close()
