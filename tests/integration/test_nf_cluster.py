"""Redis Cluster: a batch is split by hash slot into one script call per slot; state is
shared by instances through a real three-primary cluster on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import free_port, require
from nf_support import processor, tcp
from redis.cluster import RedisCluster
from redis.crc import key_slot
from scapy.layers.inet import TCP
from scapy.layers.l2 import Ether

from nf.state import ClusterStore, group_by_slot

C, S = "10.0.0.1", "10.0.0.129"
OUT, PUBLIC = "198.51.100.7", "192.0.2.1"


def test_groups_hold_one_slot_each_in_batch_order():
    p = processor("firewall", None)
    pkts = [tcp(C, S, 40000 + i, 80, "S") for i in range(300)]
    ops = [p.nf.request(parsed(f)) for f in pkts]
    groups = group_by_slot(ops)
    assert sorted(i for g in groups for i in g) == list(range(len(ops)))
    assert len(groups) > 100  # many connections: many slots
    for g in groups:
        assert g == sorted(g)
        assert len({key_slot(k.encode()) for i in g for k in ops[i][0]}) == 1
    # Both directions of a connection share its key, hence its group.
    back = p.nf.request(parsed(tcp(S, C, 80, 40000, "SA")))
    assert group_by_slot([ops[0], back]) == [[0, 1]]


def test_nat_shards_spread_over_slots():
    p = processor("nat", None, port_min=20000, port_max=60999)
    assert p.nf.shards == 41
    ops = [p.nf.request(parsed(tcp(C, OUT, 10000 + i, 443, "S"))) for i in range(400)]
    for keys, _ in ops:  # a shard's map and expiry set: one slot
        assert key_slot(keys[0].encode()) == key_slot(keys[1].encode())
    assert len(group_by_slot(ops)) == 41


def parsed(frame: bytes):
    from nf.packet import parse

    return parse(frame)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class Cluster:
    """Three redis-server primaries with cluster mode on, slots spread by redis-cli."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.ports = [cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for port in self.ports:
            d = self.tmp / str(port)
            d.mkdir()
            cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--save", "", "--appendonly", "no", "--dir", str(d)]  # fmt: skip
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping())
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).cluster("INFO")["cluster_state"] == "ok")

    @staticmethod
    def _wait(ok, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ok():
                    return
            except (redis.exceptions.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("cluster did not come up")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    require(shutil.which("redis-server") and shutil.which("redis-cli"), "redis-server")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def keys_per_node(cluster: Cluster, pattern: str) -> list[int]:
    return [len(redis.Redis(port=p).keys(pattern)) for p in cluster.ports]


def test_firewall_state_carried_across_instances_on_a_cluster(cluster):
    a = processor("firewall", cluster.url, pool="cfw")
    b = processor("firewall", cluster.url, pool="cfw")
    assert isinstance(a.store, ClusterStore) and isinstance(a.store.client, RedisCluster)
    n = 60
    # Whole handshakes as batches spanning many slots (and all three nodes).
    assert len(a.process([tcp(C, S, 41000 + i, 80, "S") for i in range(n)])) == n
    assert len(a.process([tcp(S, C, 80, 41000 + i, "SA") for i in range(n)])) == n
    assert len(a.process([tcp(C, S, 41000 + i, 80, "A") for i in range(n)])) == n
    assert all(k > 0 for k in keys_per_node(cluster, "nfsteer:fw:cfw:*"))
    # The connections moved to b: data passes both ways, and a FIN closes them there.
    assert len(b.process([tcp(S, C, 80, 41000 + i, "PA", b"d") for i in range(n)])) == n
    assert len(b.process([tcp(C, S, 41000 + i, 80, "FA") for i in range(n)])) == n
    # A connection b never saw is still refused, amid allowed ones in the same batch.
    out = b.process([tcp(S, C, 80, 49999, "PA", b"x"), tcp(S, C, 80, 41000, "A")])
    assert len(out) == 1 and b.counters.dropped == {"fw_no_connection": 1}
    assert a.counters.dropped == {}
    assert a.store.round_trips == 1 + 3  # script load + one per batch


def test_nat_allocation_across_instances_on_a_cluster(cluster):
    a = processor("nat", cluster.url, pool="cnat", port_min=20000, port_max=24999)
    b = processor("nat", cluster.url, pool="cnat", port_min=20000, port_max=24999)
    n = 50
    outs = a.process([tcp(C, OUT, 30000 + i, 443, "S") for i in range(n)])
    ports = [Ether(f)[TCP].sport for f in outs]
    assert len(set(ports)) == n
    back = b.process([tcp(OUT, PUBLIC, 443, port, "SA") for port in ports])
    assert [Ether(f)[TCP].dport for f in back] == [30000 + i for i in range(n)]
    assert sum(k > 0 for k in keys_per_node(cluster, "nfsteer:nat:*")) >= 2
