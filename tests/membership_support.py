"""Shared parts of the membership tests: an NF side that follows the registration contract
of ``contract/keys.py`` with plain redis-py calls, a real controller in this process, a
userspace OVS bridge with veth ports, and a TCP proxy that can cut the controller off Redis.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from contract import keys
from controller.ofp.options import Options

SWITCH = "s1"
POOL = "fw"
STATIC_POOL = "lb"


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.01) -> Any:
    """Poll pred until it returns something true; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = pred()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        time.sleep(step)
        value = pred()
    return value


def write_topology(
    path: Path, dpid: int, n_instances: int = 4, slots: int = 64, static: bool = True
) -> Path:
    """A one-switch topology: two hosts, a registered firewall pool fw (fw1..fwN on ports
    11..) and, optionally, a static load-balancer pool lb (lb1, lb2 on ports 31, 32)."""
    pools: dict[str, Any] = {
        POOL: {
            "kind": "firewall",
            "slots": slots,
            "membership": "registered",
            "instances": {
                f"fw{i}": {
                    "switch": SWITCH,
                    "port": 10 + i,
                    "mac": f"02:00:00:00:01:{i:02x}",
                    "ip": f"10.0.0.{100 + i}/24",
                    "capacity": 1,
                }
                for i in range(1, n_instances + 1)
            },
        }
    }
    services: dict[str, Any] = {
        "web": {"pool": POOL, "match": [{"proto": "tcp", "src": "10.0.0.0/25"}]}
    }
    if static:
        pools[STATIC_POOL] = {
            "kind": "lb",
            "slots": 16,
            "membership": "static",
            "instances": {
                f"lb{i}": {
                    "switch": SWITCH,
                    "port": 30 + i,
                    "mac": f"02:00:00:00:02:{i:02x}",
                    "ip": f"10.0.0.{210 + i}/24",
                }
                for i in (1, 2)
            },
        }
        services["vip"] = {"pool": STATIC_POOL, "match": [{"proto": "tcp", "dst": "10.0.0.200/32"}]}
    topo = {
        "name": "mbtest",
        "switches": {SWITCH: {"dpid": dpid}},
        "hosts": {
            "c1": {"switch": SWITCH, "port": 1, "mac": "02:00:00:00:00:01", "ip": "10.0.0.1/24"},
            "sv1": {
                "switch": SWITCH,
                "port": 2,
                "mac": "02:00:00:00:00:81",
                "ip": "10.0.0.129/24",
            },
        },
        "pools": pools,
        "services": services,
    }
    path.write_text(yaml.safe_dump(topo, sort_keys=False))
    return path


# --- the NF side of the registration contract ------------------------------------------------


@dataclass
class ContractNF:
    """An NF instance's side of the registration contract, written out in plain redis-py calls."""

    url: str
    pool: str
    name: str
    kind: str = "firewall"
    capacity: float = 1
    ttl_ms: int = keys.HEARTBEAT_TTL_MS
    interval_ms: int = keys.HEARTBEAT_INTERVAL_MS
    client: redis.Redis = field(init=False)
    _beating: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=1)
        n = int(self.name.lstrip("abcdefghijklmnopqrstuvwxyz") or 1)
        self.mac = f"02:00:00:00:01:{n:02x}"
        self.ip = f"10.0.0.{100 + n}"

    def register(self, beat: bool = True) -> float:
        """Step 1 of the contract; returns time.monotonic() just before it."""
        t0 = time.monotonic()
        now = time.time()
        p = self.client.pipeline(transaction=True)
        p.hset(
            keys.instance(self.pool, self.name),
            mapping={
                "name": self.name,
                "pool": self.pool,
                "kind": self.kind,
                "mac": self.mac,
                "ip": self.ip,
                "interface": f"{self.name}-eth0",
                "capacity": self.capacity,
                "pid": 4242,
                "started": now,
                "state": "active",
            },
        )
        p.sadd(keys.members(self.pool), self.name)
        p.set(keys.heartbeat(self.pool, self.name), now, px=self.ttl_ms)
        p.execute()
        self.client.publish(keys.events(self.pool), f"register {self.name}")
        if beat:
            self.start_heartbeats()
        return t0

    def heartbeat(self) -> None:
        self.client.set(keys.heartbeat(self.pool, self.name), time.time(), px=self.ttl_ms)

    def start_heartbeats(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._beating.set()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while self._beating.is_set():
            with contextlib.suppress(redis.RedisError):
                self.heartbeat()
            time.sleep(self.interval_ms / 1000)

    def stop_heartbeats(self) -> float:
        """The process hangs: no more heartbeats. Returns the time of the last one."""
        self._beating.clear()
        if self._thread is not None:
            self._thread.join()
        return time.monotonic()

    def set_capacity(self, capacity: float) -> None:
        self.capacity = capacity
        self.client.hset(keys.instance(self.pool, self.name), "capacity", capacity)
        self.client.publish(keys.events(self.pool), f"update {self.name}")

    def drain(self) -> None:
        self.client.hset(keys.instance(self.pool, self.name), "state", "draining")
        self.client.publish(keys.events(self.pool), f"drain {self.name}")

    def slots(self) -> int | None:
        value = self.client.hget(keys.instance(self.pool, self.name), "slots")
        return None if value is None else int(value)

    def deregister(self) -> None:
        self.stop_heartbeats()
        p = self.client.pipeline(transaction=True)
        p.delete(keys.instance(self.pool, self.name), keys.heartbeat(self.pool, self.name))
        p.srem(keys.members(self.pool), self.name)
        p.execute()
        self.client.publish(keys.events(self.pool), f"deregister {self.name}")

    def close(self) -> None:
        self.stop_heartbeats()
        self.client.close()


# --- a controller in this process ---------------------------------------------------------------


@contextlib.contextmanager
def controller(topology: Path, redis_url: str | None, **kw: Any) -> Iterator[Any]:
    from controller.ofp.launcher import start_in_thread

    kw.setdefault("listen", ("127.0.0.1", 0))
    kw.setdefault("api", ("127.0.0.1", 0))
    app, stop = start_in_thread(Options(topology=topology, redis_url=redis_url, **kw))
    try:
        yield app
    finally:
        stop()


def api_url(app: Any) -> str:
    from controller.ofp.service import services_of

    server = services_of(app).api_server
    return f"http://127.0.0.1:{server.port}"


def membership_of(app: Any) -> Any:
    from controller.ofp.service import services_of

    return services_of(app).membership


def owners(app: Any, pool: str = POOL) -> dict[str, int]:
    return {n: c for n, c in app.steering.pools[pool].slot_counts().items() if c}


def state_of(app: Any, name: str, pool: str = POOL) -> str | None:
    info = app.steering.pools[pool].instances.get(name)
    return None if info is None else str(info.state)


# --- Open vSwitch ----------------------------------------------------------------------------


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


@dataclass
class Bridge:
    """A userspace OVS bridge with a veth pair per instance port, removed by delete()."""

    name: str
    dpid: int
    ports: dict[int, str] = field(default_factory=dict)  # ofport -> the peer we toggle

    @classmethod
    def create(cls, name: str, dpid: int, ofports: list[int]) -> Bridge:
        br = cls(name, dpid)
        sh(
            "ovs-vsctl", "--may-exist", "add-br", name,
            "--", "set", "bridge", name, "datapath_type=netdev", "protocols=OpenFlow13",
            "fail-mode=secure", f"other-config:datapath-id={dpid:016x}",
        )  # fmt: skip
        for ofport in ofports:
            a, b = f"{name}p{ofport}", f"{name}q{ofport}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "up")
            sh("ip", "link", "set", b, "up")
            sh(
                "ovs-vsctl", "add-port", name, a,
                "--", "set", "interface", a, f"ofport_request={ofport}",
            )  # fmt: skip
            br.ports[ofport] = b
        return br

    def connect(self, of_port: int) -> None:
        sh("ovs-vsctl", "set-controller", self.name, f"tcp:127.0.0.1:{of_port}")
        sh("ovs-vsctl", "set", "controller", self.name, "max_backoff=1000")

    def disconnect(self) -> None:
        sh("ovs-vsctl", "del-controller", self.name)

    def link(self, ofport: int, up: bool) -> None:
        sh("ip", "link", "set", self.ports[ofport], "up" if up else "down")

    def flows(self) -> list[str]:
        out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--no-stats", self.name)
        return sorted(line.strip() for line in out.splitlines() if "reply" not in line)

    def slot_flows(self) -> list[str]:
        return [f for f in self.flows() if "table=1" in f]

    def delete(self) -> None:
        sh("ovs-vsctl", "--if-exists", "del-br", self.name, check=False)
        for ofport in self.ports:
            sh("ip", "link", "del", f"{self.name}p{ofport}", check=False)


# --- a TCP proxy that can cut the controller off Redis ---------------------------------------


class Proxy:
    """Forwards 127.0.0.1:port to a target; cut() drops every connection and refuses new
    ones (a network partition between the controller and Redis), heal() ends that."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self._cut = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=1)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._cut and not self._stop:
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        self._cut = True
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def heal(self) -> None:
        self._cut = False

    def close(self) -> None:
        self._stop = True
        self.cut()
        self.listener.close()
