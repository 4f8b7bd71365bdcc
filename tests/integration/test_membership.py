"""Membership with a real controller (in this process) and a real Redis: joining by
registration, capacity, drain, heartbeat loss and return, missed messages, controller
restart, Redis restart and partition. The NF side follows the contract in keys.py."""

from __future__ import annotations

import logging
import shutil
import time

import pytest
from conftest import RedisServer, require
from membership_support import (
    POOL,
    ContractNF,
    Proxy,
    controller,
    membership_of,
    owners,
    state_of,
    wait_until,
    write_topology,
)

from contract import keys
from controller.store.membership import Liveness
from controller.store.pools import Store, instances_key

# --- pure logic ----------------------------------------------------------------------------


def test_liveness_fresh_stale_and_expired():
    lv = Liveness(ttl_s=0.5)
    m = ("fw", "fw1")
    assert lv.observe(m, "1.0", 500, now=10.0)
    assert lv.observe(m, "1.0", 450, now=10.4)  # unchanged but within the TTL
    assert not lv.observe(m, "1.0", 400, now=10.6)  # nothing fresh for > TTL
    assert lv.observe(m, "1.0", 500, now=10.7)  # TTL renewed with the same value: fresh
    assert lv.observe(m, "2.0", 480, now=11.1)  # new value: fresh
    assert not lv.observe(m, None, -2, now=11.2)  # key expired: dead at once


def test_liveness_grace_after_start_or_redis_back():
    lv = Liveness(ttl_s=0.5)
    m = ("fw", "fw1")
    lv.observe(m, "1.0", 500, now=1.0)
    lv.restart(now=5.0)  # e.g. Redis came back empty
    assert lv.observe(m, None, -2, now=5.3)  # missing key tolerated for one TTL
    assert not lv.observe(m, None, -2, now=5.6)
    lv.restart(now=8.0)
    assert lv.observe(m, "1.0", 500, now=8.4)


# --- with a real controller ----------------------------------------------------------------


@pytest.fixture
def topo(tmp_path):
    return write_topology(tmp_path / "topo.yaml", dpid=0xA1)


@pytest.fixture
def nfs(redis_server):
    made: list[ContractNF] = []

    def make(name: str, url: str | None = None, **kw) -> ContractNF:
        nf = ContractNF(url or redis_server.url, POOL, name, **kw)
        made.append(nf)
        return nf

    yield make
    for nf in made:
        nf.close()


def test_registration_joins_capacity_reweights_drain_removes(redis_server, topo, nfs):
    with controller(topo, redis_server.url) as app:
        assert owners(app) == {}  # registered pool: nothing until instances register
        fw1, fw2 = nfs("fw1"), nfs("fw2")
        fw1.register()
        wait_until(lambda: owners(app) == {"fw1": 64})
        wait_until(lambda: fw1.slots() == 64)  # written back into the registration
        fw2.register()
        wait_until(lambda: owners(app) == {"fw1": 32, "fw2": 32})
        before = list(app.steering.pools[POOL].assignment)

        fw2.set_capacity(3)
        wait_until(lambda: owners(app) == {"fw1": 16, "fw2": 48})
        after = app.steering.pools[POOL].assignment
        moved = sum(a != b for a, b in zip(before, after, strict=True))
        assert moved == 16  # only fw1's surplus moved

        fw1.drain()
        wait_until(lambda: state_of(app, "fw1") == "draining")
        wait_until(lambda: owners(app) == {"fw2": 64})
        wait_until(lambda: fw1.slots() == 0)  # the NF may now deregister
        fw1.deregister()
        wait_until(lambda: state_of(app, "fw1") is None)
        stored = Store.from_url(redis_server.url)
        wait_until(lambda: stored.client.hget(instances_key(POOL), "fw1") is None)
        assert stored.load_pool(POOL).assignment == app.steering.pools[POOL].assignment
        stored.close()


def test_last_active_instance_is_not_drained_without_force(redis_server, topo, nfs, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer")
    with controller(topo, redis_server.url) as app:
        membership_of(app).drain_grace_s = 0.3
        fw1 = nfs("fw1")
        fw1.register()
        wait_until(lambda: owners(app) == {"fw1": 64})
        fw1.drain()
        wait_until(lambda: any("last active instance" in r.getMessage() for r in caplog.records))
        assert state_of(app, "fw1") == "active" and owners(app) == {"fw1": 64}
        fw1.deregister()  # it goes anyway: the pool is left without an instance
        wait_until(lambda: state_of(app, "fw1") is None)
        assert owners(app) == {}
        assert any("has no active instance" in r.getMessage() for r in caplog.records)


def test_drain_without_deregistration_ends_after_grace(redis_server, topo, nfs):
    with controller(topo, redis_server.url) as app:
        membership_of(app).drain_grace_s = 0.3
        fw1, fw2 = nfs("fw1"), nfs("fw2")
        fw1.register()
        fw2.register()
        wait_until(lambda: owners(app) == {"fw1": 32, "fw2": 32})
        fw2.drain()  # ... and never deregisters
        wait_until(lambda: state_of(app, "fw2") == "draining")
        wait_until(lambda: state_of(app, "fw2") is None)
        assert owners(app) == {"fw1": 64}
        # Its registration is retired, so neither the scan nor its heartbeat brings it back.
        assert fw2.client.hget(keys.instance(POOL, "fw2"), "state") == "draining"
        time.sleep(1.2)  # a full scan period
        assert state_of(app, "fw2") is None


def test_heartbeat_loss_fails_and_return_rejoins(redis_server, topo, nfs):
    with controller(topo, redis_server.url, heartbeat_ttl_ms=300) as app:
        fw1, fw2, fw3 = nfs("fw1", ttl_ms=300), nfs("fw2", ttl_ms=300), nfs("fw3", ttl_ms=300)
        for nf in (fw1, fw2, fw3):
            nf.register()
        wait_until(lambda: len(owners(app)) == 3)
        before = list(app.steering.pools[POOL].assignment)
        fw2.stop_heartbeats()
        wait_until(lambda: state_of(app, "fw2") == "failed")
        after = list(app.steering.pools[POOL].assignment)
        assert "fw2" not in after
        # Minimal moves: only fw2's slots changed owner.
        assert all(b == a for b, a in zip(before, after, strict=True) if b != "fw2")
        fw2.start_heartbeats()
        wait_until(lambda: state_of(app, "fw2") == "active")
        wait_until(lambda: len(owners(app)) == 3)
        assert membership_of(app).heartbeat_failures == 1


def test_unknown_or_mismatched_registration_is_ignored(redis_server, topo, nfs, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer.membership")
    with controller(topo, redis_server.url) as app:
        stranger = nfs("fw9")  # not listed under the pool
        stranger.register()
        wrong_kind = nfs("fw3", kind="nat")
        wrong_kind.register()
        fw1 = nfs("fw1")
        fw1.register()
        wait_until(lambda: owners(app) == {"fw1": 64})

        def messages() -> str:
            return "\n".join(r.getMessage() for r in caplog.records)

        # Each registration is handled when its message arrives, or by the next scan when
        # it came before the controller subscribed: not necessarily before fw1's.
        wait_until(lambda: "ignoring registration of fw/fw9" in messages())
        wait_until(lambda: "ignoring registration of fw/fw3" in messages())
        assert "not listed under its pool" in messages()
        assert "fw9" not in app.steering.pools[POOL].instances
        assert state_of(app, "fw3") == "down"


def test_missed_message_is_found_by_the_scan(redis_server, topo, nfs):
    with controller(topo, redis_server.url) as app:
        fw1 = nfs("fw1")
        # Register without the PUBLISH (as if the message was lost).
        fw1.client.hset(
            keys.instance(POOL, "fw1"),
            mapping={"name": "fw1", "pool": POOL, "kind": "firewall", "capacity": 2,
                     "state": "active"},
        )  # fmt: skip
        fw1.client.sadd(keys.members(POOL), "fw1")
        fw1.start_heartbeats()
        wait_until(lambda: owners(app) == {"fw1": 64}, timeout=5)
        assert app.steering.pools[POOL].instances["fw1"].capacity == 2


def test_controller_restart_restores_state_without_moves(redis_server, topo, nfs):
    with controller(topo, redis_server.url) as app:
        for name in ("fw1", "fw2", "fw3"):
            nfs(name).register()
        wait_until(lambda: len(owners(app)) == 3)
        epoch = app.steering.pools[POOL].epoch
        assignment = list(app.steering.pools[POOL].assignment)
        store = Store.from_url(redis_server.url)
        wait_until(lambda: store.stored_epoch(POOL) == epoch)
        store.close()
    # The NFs keep beating while no controller runs; a new one resumes where it was.
    with controller(topo, redis_server.url) as app2:
        ps = app2.steering.pools[POOL]
        assert ps.epoch == epoch and ps.assignment == assignment
        assert membership_of(app2).sources[(POOL, "fw1")] == "registered"
        # It keeps watching: after the heartbeat grace nothing was failed or moved.
        wait_until(lambda: membership_of(app2).liveness.seen.keys() >= {(POOL, "fw1")})
        assert ps.epoch == epoch and app2.counters.rebalances == 0


def test_registrations_while_controller_was_down(redis_server, topo, nfs):
    with controller(topo, redis_server.url) as app:
        fw1, fw2 = nfs("fw1"), nfs("fw2")
        fw1.register()
        fw2.register()
        wait_until(lambda: len(owners(app)) == 2)
    fw2.deregister()
    nfs("fw3").register()
    with controller(topo, redis_server.url) as app2:
        wait_until(lambda: set(owners(app2)) == {"fw1", "fw3"})
        assert state_of(app2, "fw2") is None


def test_redis_restart_empty_state_is_written_back(redis_server, topo, nfs, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer")
    with controller(topo, redis_server.url) as app:
        fw1, fw2 = nfs("fw1"), nfs("fw2")
        fw1.register()
        fw2.register()
        wait_until(lambda: owners(app) == {"fw1": 32, "fw2": 32})
        epoch = app.steering.pools[POOL].epoch
        redis_server.stop()
        wait_until(lambda: any("redis unreachable" in r.getMessage() for r in caplog.records))
        redis_server.start()  # a throw-away server: it comes back empty
        store = Store.from_url(redis_server.url)
        wait_until(lambda: store.stored_epoch(POOL) == epoch)
        loaded = store.load_pool(POOL)
        assert loaded.assignment == app.steering.pools[POOL].assignment
        # The registrations it lost are written back; the NFs' heartbeats keep them alive.
        wait_until(lambda: store.client.smembers(keys.members(POOL)) == {"fw1", "fw2"})
        assert owners(app) == {"fw1": 32, "fw2": 32}
        # Registration works again.
        nfs("fw3").register()
        wait_until(lambda: len(owners(app)) == 3)
        store.close()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("redis unreachable" in m for m in messages) == 1
        assert sum(m == "redis back" for m in messages) == 1
        assert not any(r.exc_info for r in caplog.records)


def test_partition_is_fail_static_and_reconciles(redis_server, topo, nfs, caplog):
    """The controller loses Redis (the NFs do not): nothing is failed for missing
    heartbeats; what changed meanwhile is picked up when it is back."""
    caplog.set_level(logging.WARNING, logger="nfsteer")
    proxy = Proxy(redis_server.port)
    try:
        with controller(topo, proxy.url(), heartbeat_ttl_ms=300) as app:
            fw1, fw2 = nfs("fw1", ttl_ms=300), nfs("fw2", ttl_ms=300)
            fw1.register()
            fw2.register()
            wait_until(lambda: owners(app) == {"fw1": 32, "fw2": 32})
            epoch = app.steering.pools[POOL].epoch
            proxy.cut()
            wait_until(lambda: any("redis unreachable" in r.getMessage() for r in caplog.records))
            fw2.deregister()
            nfs("fw3", ttl_ms=300).register()
            time.sleep(1.0)  # several TTLs without seeing any heartbeat
            assert app.steering.pools[POOL].epoch == epoch  # fail-static
            assert owners(app) == {"fw1": 32, "fw2": 32}
            proxy.heal()
            wait_until(lambda: set(owners(app)) == {"fw1", "fw3"}, timeout=8)
            assert state_of(app, "fw1") == "active"
    finally:
        proxy.close()


def test_password_protected_redis(tmp_path, topo):
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path, password="pw-for-tests")
    server.start()
    nf = ContractNF(server.url, POOL, "fw1")
    try:
        with controller(topo, server.url) as app:
            nf.register()
            wait_until(lambda: owners(app) == {"fw1": 64})
            assert membership_of(app).store.up
    finally:
        nf.close()
        server.stop()


def test_unreachable_redis_at_start_then_available(tmp_path, topo, nfs, redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="nfsteer")
    redis_server.stop()
    with controller(topo, redis_server.url) as app:  # starts anyway, from the topology
        assert app.steering.pools["lb"].epoch == 1
        wait_until(lambda: any("redis unreachable" in r.getMessage() for r in caplog.records))
        redis_server.start()
        nfs("fw1").register()
        wait_until(lambda: owners(app) == {"fw1": 64}, timeout=8)
        store = Store.from_url(redis_server.url)
        wait_until(lambda: store.stored_epoch(POOL) == app.steering.pools[POOL].epoch)
        store.close()
