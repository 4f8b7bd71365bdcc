"""A replicated store on one machine: one Redis primary, two replicas, three Sentinels.

Everything lives under one run directory::

    RUN/store.json              what was started: ports, bind address, service, password
    RUN/redis-N/redis.conf      node N's configuration (rewritten by Sentinel on failover)
    RUN/redis-N/appendonlydir/  its append-only file (appendfsync everysec)
    RUN/redis-N/redis.pid, redis.log
    RUN/sentinel-N/sentinel.conf, sentinel.pid, sentinel.log

Every node writes an AOF, so restarting all of them brings the data back; the primary
accepts a write only while at least one replica is connected and acknowledged within
``min-replicas-max-lag`` seconds (``min-replicas-to-write 1``), so a primary cut off from
its replicas stops taking writes it would lose. Sentinels declare the primary down after
``down_after_ms`` and promote a replica.

``up`` is idempotent: nodes already running are left alone, a node that is down is started
again from its files — as a replica of the current primary when the Sentinels know one
(otherwise a restarted old primary would come back as a second primary until Sentinel
reconfigures it, seconds later).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SERVICE = "nfsteer"
DOWN_AFTER_MS = 1000  # tests and the demo; production: see README ("The replicated store")
FAILOVER_TIMEOUT_MS = 10000
MIN_REPLICAS_MAX_LAG_S = 3  # a replica acknowledges every second
# How often a Sentinel reads a replica's INFO while the primary is up (Redis' default: 10 s).
# During a failover it reads it every second whatever this says, and it learns that the
# replica it promoted is a primary only from that read. With the default, the first read
# at 1 s falls when the primary is declared down, which puts the confirmation a full
# second after it; at 1 s here the reads keep their own phase, and the confirmation
# comes 0.5 s after the promotion on average (bench/store_failover.py: 2.2 -> 1.9 s median).
SENTINEL_INFO_PERIOD_MS = 1000
# How often a Sentinel pings (Redis: 1 s, or down-after if shorter). A Sentinel that has
# just switched to a new primary pings it first one period later; with down-after equal to
# that period (1 s, tests and the demo) the new primary is often called down before its
# first reply is read, and since the other Sentinels' "down" answers about the old primary
# still count, a second failover follows at once (2 of 12 kills here). Half of down-after
# (at most 500 ms) leaves room for the reply: 0 of 12.
SENTINEL_MAX_PING_PERIOD_MS = 500
DEFAULT_PORTS = (6380, 6381, 6382)
DEFAULT_SENTINEL_PORTS = (26380, 26381, 26382)


class StoreError(Exception):
    """A store that cannot be started, reached or described: one line for the operator."""


@dataclass
class StoreLayout:
    run_dir: str
    ports: list[int] = field(default_factory=lambda: list(DEFAULT_PORTS))
    sentinel_ports: list[int] = field(default_factory=lambda: list(DEFAULT_SENTINEL_PORTS))
    bind: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    service: str = SERVICE
    password: str = ""
    down_after_ms: int = DOWN_AFTER_MS
    info_period_ms: int = SENTINEL_INFO_PERIOD_MS
    failover_timeout_ms: int = FAILOVER_TIMEOUT_MS
    announce_ip: str = "127.0.0.1"  # the address Sentinel hands out for the primary
    # Sentinel run ids, fixed up front so that each Sentinel's file can list the others
    # and the replicas: a fresh store can fail over at once instead of after the Sentinels
    # have discovered each other (seconds) and the replicas (up to 10 s).
    sentinel_ids: list[str] = field(
        default_factory=lambda: [secrets.token_hex(20) for _ in range(3)]
    )

    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    def node_dir(self, i: int) -> Path:
        return self.root / f"redis-{i}"

    def sentinel_dir(self, i: int) -> Path:
        return self.root / f"sentinel-{i}"

    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"{self.announce_ip}:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{self.service}"

    def node_url(self, i: int) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.announce_ip}:{self.ports[i]}/0"

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "store.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the password
        with os.fdopen(fd, "w") as f:
            json.dump({**asdict(self), "url": self.url()}, f, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, run_dir: str | Path) -> StoreLayout:
        path = Path(run_dir) / "store.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"no store in {run_dir} (no store.json; run `store up`)") from None
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{path}: {e}") from None
        data.pop("url", None)
        data["run_dir"] = str(run_dir)
        try:
            return cls(**data)
        except TypeError as e:
            raise StoreError(f"{path}: {e}") from None


def node_conf(layout: StoreLayout, i: int, primary_port: int | None) -> str:
    """redis.conf of data node i; a replica of ``primary_port`` unless that is None."""
    d = layout.node_dir(i)
    lines = [
        f"port {layout.ports[i]}",
        f"bind {' '.join(layout.bind)}",
        "protected-mode no" if layout.password else "protected-mode yes",
        "daemonize yes",
        f"dir {d}",
        f"pidfile {d / 'redis.pid'}",
        f"logfile {d / 'redis.log'}",
        'save ""',
        "appendonly yes",
        "appendfsync everysec",
        "min-replicas-to-write 1",
        f"min-replicas-max-lag {MIN_REPLICAS_MAX_LAG_S}",
        # SIGTERM: flush the AOF and go; no waiting for replicas (the AOF has everything).
        "shutdown-timeout 0",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        f"replica-announce-ip {layout.announce_ip}",
    ]
    if layout.password:
        lines += [f"requirepass {layout.password}", f"masterauth {layout.password}"]
    if primary_port is not None:
        lines.append(f"replicaof {layout.announce_ip} {primary_port}")
    return "\n".join(lines) + "\n"


def sentinel_conf(layout: StoreLayout, i: int) -> str:
    d = layout.sentinel_dir(i)
    s = layout.service
    lines = [
        f"port {layout.sentinel_ports[i]}",
        f"bind {' '.join(layout.bind)}",
        "protected-mode no" if layout.password else "protected-mode yes",
        "daemonize yes",
        f"dir {d}",
        f"pidfile {d / 'sentinel.pid'}",
        f"logfile {d / 'sentinel.log'}",
        f"sentinel announce-ip {layout.announce_ip}",
        f"sentinel monitor {s} {layout.announce_ip} {layout.ports[0]} 2",
        f"sentinel down-after-milliseconds {s} {layout.down_after_ms}",
        f"sentinel failover-timeout {s} {layout.failover_timeout_ms}",
        f"sentinel parallel-syncs {s} 1",
        f"sentinel myid {layout.sentinel_ids[i]}",
    ]
    lines += [f"sentinel known-replica {s} {layout.announce_ip} {p}" for p in layout.ports[1:]]
    lines += [
        f"sentinel known-sentinel {s} {layout.announce_ip} {p} {layout.sentinel_ids[j]}"
        for j, p in enumerate(layout.sentinel_ports)
        if j != i
    ]
    if layout.password:
        lines += [
            f"requirepass {layout.password}",
            f"sentinel auth-pass {s} {layout.password}",
            f"sentinel sentinel-pass {layout.password}",
        ]
    return "\n".join(lines) + "\n"


# ---- processes ------------------------------------------------------------------------


def _pid(pidfile: Path) -> int | None:
    """The pid in a pidfile if that process is alive and is a Redis server."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"redis" in cmdline else None


def node_pid(layout: StoreLayout, i: int) -> int | None:
    return _pid(layout.node_dir(i) / "redis.pid")


def sentinel_pid(layout: StoreLayout, i: int) -> int | None:
    return _pid(layout.sentinel_dir(i) / "sentinel.pid")


def _redis(host: str, port: int, password: str, timeout: float = 0.3) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=host,
        port=port,
        password=password or None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # redis-py's default sleeps for seconds on a dead node
        decode_responses=True,
    )


def _ask(host: str, port: int, password: str, *cmd: Any) -> Any:
    """One command to one node; None when it does not answer."""
    import redis

    r = _redis(host, port, password)
    try:
        return r.execute_command(*cmd)
    except (redis.RedisError, OSError):
        return None
    finally:
        r.close()


def current_primary(layout: StoreLayout) -> tuple[str, int] | None:
    """The primary as most answering Sentinels name it."""
    votes: dict[tuple[str, int], int] = {}
    for p in layout.sentinel_ports:
        a = _ask(
            layout.announce_ip, p, layout.password, "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
            layout.service,
        )  # fmt: skip
        if a:
            key = (a[0], int(a[1]))
            votes[key] = votes.get(key, 0) + 1
    return max(votes, key=lambda k: votes[k]) if votes else None


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StoreError(f"{name} is not installed (scripts/setup.sh installs it)")
    return path


def _start(argv: list[str], pidfile: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()  # a stale one from a killed process
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise StoreError(f"{' '.join(argv)} failed: {(r.stderr or r.stdout).strip()}")


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise StoreError(f"timed out waiting for {what}")


def start_node(layout: StoreLayout, i: int) -> None:
    """Start data node i from its files (a replica of the current primary if known)."""
    d = layout.node_dir(i)
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "redis.conf"
    primary = current_primary(layout)
    if not conf.exists():
        conf.write_text(node_conf(layout, i, None if i == 0 else layout.ports[0]))
        conf.chmod(0o600)
    if primary is not None and primary[1] != layout.ports[i]:
        # A node that was primary when it died must not come back as one: point it at the
        # primary the Sentinels chose in the meantime (CONFIG REWRITE keeps it).
        text = [ln for ln in conf.read_text().splitlines() if not ln.startswith("replicaof ")]
        text.append(f"replicaof {primary[0]} {primary[1]}")
        conf.write_text("\n".join(text) + "\n")
    _start([_binary("redis-server"), str(conf)], d / "redis.pid")
    _wait(
        lambda: _ask(layout.announce_ip, layout.ports[i], layout.password, "PING"),
        10,
        f"redis-{i} on port {layout.ports[i]}",
    )


def start_sentinel(layout: StoreLayout, i: int) -> None:
    d = layout.sentinel_dir(i)
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "sentinel.conf"
    if not conf.exists():  # Sentinel rewrites its file with what it learns: keep it
        conf.write_text(sentinel_conf(layout, i))
        conf.chmod(0o600)
    if shutil.which("redis-sentinel"):
        argv = ["redis-sentinel", str(conf)]
    else:  # the same program in Sentinel mode
        argv = [_binary("redis-server"), str(conf), "--sentinel"]
    _start(argv, d / "sentinel.pid")
    _wait(
        lambda: _ask(layout.announce_ip, layout.sentinel_ports[i], layout.password, "PING"),
        10,
        f"sentinel-{i} on port {layout.sentinel_ports[i]}",
    )


def tune_sentinel(layout: StoreLayout, port: int) -> None:
    """Sentinel timings that are not configuration-file settings but runtime ones (SENTINEL
    DEBUG; not kept in sentinel.conf, so set after every start): see the constants above."""
    ping_ms = min(SENTINEL_MAX_PING_PERIOD_MS, max(layout.down_after_ms // 2, 100))
    ask = ("SENTINEL", "DEBUG", "INFO-PERIOD", layout.info_period_ms, "PING-PERIOD", ping_ms)
    if _ask(layout.announce_ip, port, layout.password, *ask) is None:
        raise StoreError(f"the Sentinel on port {port} refused SENTINEL DEBUG (Redis 7.0 or newer)")


def _check_ports(layout: StoreLayout) -> None:
    import socket

    ports = [*layout.ports, *layout.sentinel_ports]
    if len(set(ports)) != len(ports) or len(layout.ports) != 3 or len(layout.sentinel_ports) != 3:
        raise StoreError("three distinct data ports and three distinct Sentinel ports are needed")
    for i, p in enumerate(layout.ports):
        if node_pid(layout, i) is None and _in_use(socket, layout.bind[0], p):
            raise StoreError(f"port {p} is in use by another program")
    for i, p in enumerate(layout.sentinel_ports):
        if sentinel_pid(layout, i) is None and _in_use(socket, layout.bind[0], p):
            raise StoreError(f"port {p} is in use by another program")


def _in_use(socket: Any, host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def up(layout: StoreLayout, wait_s: float = 30.0) -> list[str]:
    """Start whatever is not running; wait until the primary has its replicas and the
    Sentinels see each other. Returns what was started."""
    if not layout.password:
        layout.password = secrets.token_hex(16)
    layout.save()
    _check_ports(layout)
    started: list[str] = []
    # Sentinels first when the store existed before: they name the current primary.
    fresh = not (layout.sentinel_dir(0) / "sentinel.conf").exists()
    order = ["nodes", "sentinels"] if fresh else ["sentinels", "nodes"]
    for part in order:
        if part == "nodes":
            for i in range(3):
                if node_pid(layout, i) is None:
                    start_node(layout, i)
                    started.append(f"redis-{i}")
        else:
            for i in range(3):
                if sentinel_pid(layout, i) is None:
                    start_sentinel(layout, i)
                    started.append(f"sentinel-{i}")
    for p in layout.sentinel_ports:  # also the ones that ran already: a runtime setting
        tune_sentinel(layout, p)
    _wait(lambda: healthy(layout), wait_s, "the primary, two replicas and three Sentinels")
    return started


def healthy(layout: StoreLayout) -> bool:
    st = status(layout)
    return bool(
        st["primary"]
        and st["replicas_in_sync"] == 2
        and all(s["up"] and s["sentinels"] == 3 and s["replicas"] == 2 for s in st["sentinels"])
    )


def status(layout: StoreLayout) -> dict[str, Any]:
    """What each node says about itself, and the primary as the Sentinels name it."""
    primary = current_primary(layout)
    nodes = []
    in_sync = 0
    for i, port in enumerate(layout.ports):
        info = _ask(layout.announce_ip, port, layout.password, "INFO", "replication")
        n: dict[str, Any] = {"name": f"redis-{i}", "port": port, "pid": node_pid(layout, i)}
        n["up"] = info is not None
        if info:
            n["role"] = "primary" if info.get("role") == "master" else "replica"
            n["offset"] = info.get("master_repl_offset")
            if n["role"] == "replica":
                n["link"] = info.get("master_link_status")
                n["of"] = f"{info.get('master_host')}:{info.get('master_port')}"
                if primary and n["link"] == "up" and info.get("master_port") == primary[1]:
                    in_sync += 1
            else:
                n["replicas"] = info.get("connected_slaves", 0)
        nodes.append(n)
    sentinels = []
    for i, port in enumerate(layout.sentinel_ports):
        m = _ask(layout.announce_ip, port, layout.password, "SENTINEL", "MASTER", layout.service)
        s: dict[str, Any] = {"name": f"sentinel-{i}", "port": port, "pid": sentinel_pid(layout, i)}
        s["up"] = m is not None
        if m:
            d = dict(zip(m[::2], m[1::2], strict=False)) if isinstance(m, list) else m
            s["primary"] = f"{d.get('ip')}:{d.get('port')}"
            s["sentinels"] = int(d.get("num-other-sentinels", 0)) + 1
            s["replicas"] = int(d.get("num-slaves", 0))
            s["flags"] = d.get("flags")
            timings = _ask(layout.announce_ip, port, layout.password, "SENTINEL", "DEBUG") or {}
            s["info_period_ms"] = int(timings.get("INFO-PERIOD", 0)) or None
            s["ping_period_ms"] = int(timings.get("PING-PERIOD", 0)) or None
        sentinels.append(s)
    return {
        "run_dir": layout.run_dir,
        "service": layout.service,
        "url": layout.url(),
        "primary": f"{primary[0]}:{primary[1]}" if primary else None,
        "replicas_in_sync": in_sync,
        "nodes": nodes,
        "sentinels": sentinels,
    }


def _stop(pid: int | None, timeout: float = 5.0) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def down(layout: StoreLayout) -> list[str]:
    """Stop every node (SIGTERM: the AOF is flushed); the files stay for the next `up`."""
    pids = {f"sentinel-{i}": sentinel_pid(layout, i) for i in range(3)}
    pids |= {f"redis-{i}": node_pid(layout, i) for i in range(3)}
    running = {name: pid for name, pid in pids.items() if pid is not None}
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in running.values():
        _stop(pid)  # waits; SIGKILL after 5 s
    return list(running)
