"""The replicated store under faults, on real Redis and Sentinel: clients follow a
failover, and no write an NF was told is replicated (output commit) is ever lost."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
import redis
from nf_support import NFSTEER
from store_support import ReplicatedStore

from contract.nf_settings import FirewallSettings
from controller.core.state import InstanceInfo, InstanceState
from controller.ops.storenodes import SENTINEL_INFO_PERIOD_MS
from controller.store.pools import PoolSnapshot, Store
from nf.firewall import Firewall
from nf.state import NFStateUnavailable, NotReplicated, redis_client, redis_store

pytestmark = pytest.mark.redis

FW = Firewall("t", FirewallSettings(tcp_syn_timeout=600))


class Writer(threading.Thread):
    """Batches of new firewall entries through the NF state client, with output commit;
    remembers every entry of a batch the store confirmed (replicated)."""

    def __init__(self, url: str, sync: tuple[int, int] | None = (1, 200)):
        super().__init__(daemon=True)
        self.store = redis_store(redis_client(url), [FW.script], sync)
        self.acked: list[str] = []
        self.ok_at: list[float] = []
        self.failed_at: list[float] = []
        self.failures = 0
        self.not_replicated = 0
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            keys = [f"nfsteer:fw:t:{{k{n + j}}}" for j in range(8)]
            n += 8
            try:
                res = self.store.run(FW.script, FW.cfg(), [((k,), "c001") for k in keys])
            except NFStateUnavailable:
                self.failures += 1
                self.failed_at.append(time.monotonic())
            except NotReplicated:
                self.not_replicated += 1
                self.failed_at.append(time.monotonic())
            else:
                assert res == ["1"] * 8
                self.acked += keys
                self.ok_at.append(time.monotonic())
            time.sleep(0.002)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def primary_client(store: ReplicatedStore) -> redis.Redis:
    return redis.Redis.from_url(store.node_url(store.primary_index()), decode_responses=True)


def missing(store: ReplicatedStore, keys: list[str]) -> int:
    r = primary_client(store)
    p = r.pipeline(transaction=False)
    for k in keys:
        p.exists(k)
    return sum(1 for e in p.execute() if not e)


def resumed_after(w: Writer, t0: float, timeout: float = 15.0) -> float:
    """Seconds from t0 to the first confirmed batch after the first failed one."""
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        failed = [t for t in w.failed_at if t > t0]
        later = [t for t in w.ok_at if failed and t > failed[0]]
        if later:
            return later[0] - t0
        time.sleep(0.02)
    raise AssertionError("the NF client did not resume after the failover")


def test_cli_up_status_down_and_a_restart_from_the_aof(replicated_store):
    s = replicated_store
    st = s.cli("status", "--json")
    assert st.returncode == 0 and '"replicas_in_sync": 2' in st.stdout
    periods = [
        (x["info_period_ms"], x["ping_period_ms"]) for x in json.loads(st.stdout)["sentinels"]
    ]
    assert periods == [(SENTINEL_INFO_PERIOD_MS, 500)] * 3  # runtime settings, made by `store up`
    r = redis_client(s.url)
    r.set("nfsteer:kept", "1")
    assert r.wait(1, 1000) >= 1
    r.close()
    time.sleep(1.2)  # appendfsync everysec
    assert s.cli("down").returncode == 0
    assert s.cli("status").returncode == 1  # nothing answers
    s.up()  # every node again, from its files
    r = redis_client(s.url)
    assert r.get("nfsteer:kept") == b"1"
    st = json.loads(s.cli("status", "--json").stdout)
    assert [x["info_period_ms"] for x in st["sentinels"]] == [SENTINEL_INFO_PERIOD_MS] * 3
    # and the controller's scripts run on the restarted store
    store = Store.from_url(s.url)
    assert store.save_pool(snapshot(epoch=1)) is None
    assert store.load_pool("p").epoch == 1


def snapshot(epoch: int) -> PoolSnapshot:
    inst = InstanceInfo(
        name="fw1", pool="p", mac="02:00:00:00:01:01", ip="10.0.0.201", switch="s1", port=11,
        capacity=1.0, state=InstanceState.ACTIVE, last_heartbeat=0.0,
    )  # fmt: skip
    return PoolSnapshot("p", "firewall", 4, 0, epoch, ["fw1"] * 4, {"fw1": inst})


def test_kill9_primary_clients_follow_and_no_replicated_write_is_lost(replicated_store):
    s = replicated_store
    controller = Store.from_url(s.url)
    assert controller.save_pool(snapshot(epoch=1)) is None
    w = Writer(s.url)
    w.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    old = s.kill_primary()
    gap = resumed_after(w, t0)
    time.sleep(0.5)
    w.stop()
    assert s.primary_index() != old
    assert gap < 10, gap
    assert len(w.acked) > 100 and missing(s, w.acked) == 0
    # The controller follows too, and its save script runs on the promoted replica.
    assert controller.save_pool(snapshot(epoch=2)) is None
    assert controller.load_pool("p").epoch == 2
    s.up()  # the old primary comes back as a replica
    s.wait_healthy()
    assert s.primary_index() != old


def test_sigstop_primary_5s_it_takes_no_writes_and_comes_back_a_replica(replicated_store):
    s = replicated_store
    w = Writer(s.url)
    w.start()
    time.sleep(0.5)
    old = s.primary_index()
    t0 = time.monotonic()
    s.signal_node(old, signal.SIGSTOP)
    gap = resumed_after(w, t0)
    time.sleep(max(0.0, 5 - (time.monotonic() - t0)))
    s.signal_node(old, signal.SIGCONT)
    time.sleep(1.0)
    w.stop()
    assert gap < 10, gap
    r = redis.Redis.from_url(s.node_url(old), socket_timeout=2)
    with pytest.raises(redis.ResponseError, match=r"READONLY|NOREPLICAS"):
        r.set("nfsteer:stale-write", "x")
    s.wait_healthy()
    assert s.primary_index() != old
    assert redis.Redis.from_url(s.node_url(old)).info("replication")["role"] == "slave"
    assert len(w.acked) > 100 and missing(s, w.acked) == 0


def test_output_commit_holds_a_batch_the_replicas_do_not_confirm(replicated_store):
    s = replicated_store
    primary = s.primary_index()
    replicas = [i for i in range(3) if i != primary]
    store = redis_store(redis_client(s.url), [FW.script], (1, 50))
    op = [(("nfsteer:fw:t:{held}",), "c001")]
    assert store.run(FW.script, FW.cfg(), op) == ["1"]
    for i in replicas:
        s.signal_node(i, signal.SIGSTOP)
    try:
        with pytest.raises(NotReplicated):
            store.run(FW.script, FW.cfg(), [(("nfsteer:fw:t:{held2}",), "c001")])
    finally:
        for i in replicas:
            s.signal_node(i, signal.SIGCONT)
    time.sleep(0.2)
    assert store.run(FW.script, FW.cfg(), [(("nfsteer:fw:t:{held3}",), "c001")]) == ["1"]


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda u, s: u.replace(str(s.sentinel_ports[0]), "1").replace(
            str(s.sentinel_ports[1]), "2").replace(str(s.sentinel_ports[2]), "3"),
         "no Sentinel answers"),
        (lambda u, s: u.replace("/nfsteer", "/nosuch"), "monitor no service 'nosuch'"),
        (lambda u, s: u.replace("//:", "//:wrong"), "wrong password"),
    ],
)  # fmt: skip
def test_bad_store_urls_are_one_line_at_start_up(replicated_store, mangle, message):
    url = mangle(replicated_store.url, replicated_store)
    for cmd in (
        ["nf", "--kind", "firewall", "--interface", "lo", "--pool", "fw", "--redis", url],
        ["controller", "--topology", "topologies/single.yaml", "--redis", url, "--api", "off",
         "--listen", "127.0.0.1:0"],
    ):  # fmt: skip
        r = subprocess.run(
            [NFSTEER, *cmd],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2, (cmd, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], r.stderr
        assert "wrong" not in lines[0] or ":wrong" not in lines[0]  # no password echoed


def test_a_retried_batch_changes_nothing(replicated_store):
    """After a timeout a batch may be sent again: every op is idempotent (get-or-set,
    state transitions that repeat), so the second run leaves the same state."""
    from nf_support import processor, tcp

    for kind, frames in (
        ("firewall", [tcp("10.0.0.1", "10.0.0.129", 40000, 80, "S")]),
        ("nat", [tcp("10.0.0.1", "198.51.100.7", 40000, 443, "S")]),
        ("lb", [tcp("10.0.0.1", "10.0.0.100", 40000, 80, "S")]),
    ):
        p = processor(kind, replicated_store.url)
        r = primary_client(replicated_store)
        first = p.process(frames)
        state = {k: r.dump(k) for k in r.keys("nfsteer:*")}
        assert p.process(frames) == first
        assert {k: r.dump(k) for k in r.keys("nfsteer:*")}.keys() == state.keys()


def test_a_single_server_url_with_a_wrong_password_is_one_line(redis_server):
    redis_server.stop()
    redis_server.password = "right"
    redis_server.start()
    url = redis_server.url.replace(":right@", ":wrong@")
    r = subprocess.run(
        [NFSTEER, "nf", "--kind", "firewall", "--interface", "lo", "--pool", "fw", "--redis", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and r.stderr.strip() == "nfsteer nf: wrong password for the store"


def test_held_packets_go_out_once_the_store_answers(redis_server):
    """hold_ms: a packet that needs state while the store is away waits instead of being
    dropped, and leaves as soon as the store answers; past hold_ms it is dropped."""
    from nf_support import one, processor, udp

    p = processor("firewall", redis_server.url, hold_ms=3000)
    assert one(p, udp("10.0.0.1", "10.0.0.129", 5000, 53)) is not None
    redis_server.stop()
    frame = udp("10.0.0.1", "10.0.0.129", 5001, 53)
    assert one(p, frame) is None
    assert p.counters.held == 1 and len(p.held) == 1 and not p.counters.dropped
    redis_server.start()
    deadline = time.monotonic() + 5
    out: list[bytes] = []
    while not out:
        assert time.monotonic() < deadline, "held frame never released"
        out = p.process([])
        time.sleep(0.02)
    assert out == [frame] and not p.held
    # Past its hold time a frame is dropped, never sent late.
    q = processor("firewall", redis_server.url, hold_ms=100)
    redis_server.stop()
    assert one(q, udp("10.0.0.1", "10.0.0.129", 5002, 53)) is None
    time.sleep(0.2)
    redis_server.start()
    assert q.process([]) == [] and q.counters.dropped == {"store_unavailable": 1}
