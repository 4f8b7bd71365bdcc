"""Fuzzing what the controller reads from Redis (real Redis, a real controller in this
process): garbage of every type is written into every key the controller reads and
published on its channel. The store's readers return data or nothing, never raise; the
controller's loops keep running without a traceback; a restart restores what is valid and
ignores the rest; and afterwards a valid change still applies. Bounded by max_examples."""

from __future__ import annotations

import logging
import os
import time

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from membership_support import (
    POOL,
    STATIC_POOL,
    ContractNF,
    controller,
    membership_of,
    owners,
    wait_until,
    write_topology,
)

from contract import keys
from controller.ofp.service import services_of
from controller.store.pools import instances_key

CASES = int(os.environ.get("NFSTEER_FUZZ_REDIS_CASES", "400"))

KEYS = {
    "pools": lambda p: keys.POOLS,
    "epoch": lambda p: keys.epoch(p),
    "assignment": lambda p: keys.assignment(p),
    "instances": lambda p: instances_key(p),
    "meta": lambda p: keys.pool_meta(p),
    "members": lambda p: keys.members(p),
    "inst": lambda p: keys.instance(p, "fw2" if p == POOL else "lb1"),
    "hb": lambda p: keys.heartbeat(p, "fw2" if p == POOL else "lb1"),
}
TEXT = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from(
        [
            b"",
            b"-1",
            b"1e400",
            b"9" * 30,
            str(2**63 + 1).encode(),
            b"null",
            b"[]",
            b"{}",
            b'["fw2", null]',
            b'{"name": "fw2"}',
            b"\xff\xfe",
            b"fw2",
            b"active",
            b"draining",
        ]
    ),
)
FIELDS = st.sampled_from(
    [b"name", b"pool", b"kind", b"mac", b"ip", b"capacity", b"state", b"n_slots", b"basis",
     b"fw1", b"fw2", b"lb1", b"\xff"]
)  # fmt: skip
GARBAGE = st.one_of(
    st.tuples(st.just("string"), TEXT),
    st.tuples(st.just("hash"), st.dictionaries(FIELDS, TEXT, min_size=1, max_size=4)),
    st.tuples(st.just("list"), st.lists(TEXT, min_size=1, max_size=3)),
    st.tuples(st.just("set"), st.lists(TEXT, min_size=1, max_size=3)),
    st.tuples(st.just("zset"), st.lists(TEXT, min_size=1, max_size=3)),
)


def write(raw: redis.Redis, key: str, garbage: tuple) -> None:
    kind, value = garbage
    raw.delete(key)
    if kind == "string":
        raw.set(key, value)
    elif kind == "hash":
        raw.hset(key, mapping=value)
    elif kind == "list":
        raw.rpush(key, *value)
    elif kind == "set":
        raw.sadd(key, *value)
    else:
        raw.zadd(key, {v: i for i, v in enumerate(value)})


def test_garbage_in_every_key(tmp_path, redis_server, caplog):
    caplog.set_level(logging.WARNING)
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xC7)
    raw = redis.Redis.from_url(redis_server.url)
    ran = {"cases": 0, "restarts": 0}
    fw1 = ContractNF(redis_server.url, POOL, "fw1")
    try:
        with controller(topo, redis_server.url) as app:
            svc = services_of(app)
            store = svc.store
            fw1.register()
            wait_until(lambda: owners(app) == {"fw1": 64})
            wait_until(lambda: store.stored_epoch(STATIC_POOL) == 1)

            @settings(
                max_examples=CASES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(
                pool=st.sampled_from([POOL, STATIC_POOL]),
                which=st.sampled_from(sorted(KEYS)),
                garbage=GARBAGE,
                event=st.binary(max_size=20),
            )
            def probe(pool, which, garbage, event):
                ran["cases"] += 1
                write(raw, KEYS[which](pool), garbage)
                raw.publish(keys.events(pool), event)
                # Every reader answers with data or nothing.
                store.load_pool(pool)
                store.stored_epoch(pool)
                store.members([POOL, STATIC_POOL])
                store.registration(pool, "fw2")
                store.heartbeats([(POOL, "fw1"), (POOL, "fw2"), (STATIC_POOL, "lb1")])

            probe()
            membership = membership_of(app)
            time.sleep(1.2)  # at least one scan with the last garbage
            # The loops survived: scans and heartbeat polls ran with the garbage in place.
            assert all(t.is_alive() for t in membership._threads)
            # A valid change still applies and is saved over whatever garbage is left.
            ps = app.steering.pools[STATIC_POOL]
            result = app.apply(lambda s: s.set_capacity(STATIC_POOL, "lb1", 3, 0.0), "test")
            assert result.wait(5) and result.changes[0].moved
            wait_until(lambda: store.stored_epoch(STATIC_POOL) == ps.epoch, timeout=5)
            # With the members set a set again, a new registration joins.
            raw.delete(keys.members(POOL), keys.instance(POOL, "fw3"), keys.heartbeat(POOL, "fw3"))
            fw3 = ContractNF(redis_server.url, POOL, "fw3")
            try:
                fw3.register()
                wait_until(lambda: "fw3" in owners(app), timeout=5)
            finally:
                fw3.close()
            rejected = sum(store.rejected.values())
        # A restart with the garbage left in place starts, and what it restored is valid.
        for _ in range(3):
            ran["restarts"] += 1
            with controller(topo, redis_server.url) as app2:
                assert app2.steering.pools[STATIC_POOL].assignment
                assert None not in app2.steering.pools[STATIC_POOL].assignment
    finally:
        fw1.close()
        raw.close()
    print(f"redis fuzz: {ran['cases']} cases, {ran['restarts']} restarts, {rejected} rejected")
    assert not [r for r in caplog.records if r.exc_info], [
        r.getMessage() for r in caplog.records if r.exc_info
    ][:3]
