#!/usr/bin/env python3
"""nfsteer in Mininet: build a topology file into an emulated network.

Every switch of the file becomes an Open vSwitch bridge (userspace datapath, OpenFlow 1.3,
fail mode secure, the file's dpid and port numbers) connected to the nfsteer controller;
every host and NF instance becomes a Mininet host with the file's MAC and IP address on
interface ``<name>-eth0``, plugged into its switch port. Checksum offload is off on every
interface (TCP through veths and the userspace datapath needs that).

topologies/single.yaml::

     c1   c2           sv1  sv2        store
      \\    \\           /    /            |
       +----+---- s1 -+----+-------------+
            /     |     \\     \\
         fw1    fw2    fw3    fw4

Run on its own (root), with a controller, Redis, the NF instances and echo servers::

    .venv/bin/python mininet/nfnet.py --topology topologies/single.yaml --cli

or only the network, through Mininet's own runner (start `nfsteer controller` yourself)::

    mn --custom mininet/nfnet.py --topo nfsteer,topologies/single.yaml \\
       --controller remote,ip=127.0.0.1,port=6653

The store (default, ``store="replicated"``): ``nfsteer store up`` in the run directory — one
Redis primary, two replicas and three Sentinels in the root namespace — on a separate
*store network*: a Linux bridge ``nfst0`` in the root namespace with 172.31.254.1/24, and
one veth per NF instance from its host (``<host>-st``, 172.31.254.N) to the bridge. The
store nodes listen on 172.31.254.1 (and 127.0.0.1); Sentinel hands out 172.31.254.1:PORT
for the primary, which the controller (root namespace) and the NF instances (their store
link) both reach, so every process uses the same ``redis+sentinel://`` URL. The switch
ports of the instances carry nothing but steered traffic and the root namespace gets no
address or route of the emulated network: this is the separate state-store network of a
real deployment, where an instance whose data link fails keeps its store session.

``store="single"``: one redis-server without persistence, on 127.0.0.1 for the controller
and a Unix socket in the run directory for the NF instances (network namespaces do not
separate the file system).

Addresses that belong to no host (a NAT pool's public IP, a load balancer's VIPs) are
resolved by ARP like any other: the switches answer for them (see the controller's
virtual-address ARP responder).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import os
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# `mn --custom` executes this file without setting __file__; its code object knows the path.
HERE = Path(globals().get("__file__") or inspect.currentframe().f_code.co_filename).parent.resolve()
REPO = HERE.parent


def venv_python() -> Path:
    """The project's Python (the one the NFs and traffic programs run with)."""
    if sys.prefix != sys.base_prefix:  # running inside the venv already
        return Path(sys.executable)
    return REPO / ".venv" / "bin" / "python"


def _make_project_importable() -> None:
    # `mn --custom` runs this file under Debian's /usr/bin/python3, which lacks the project's
    # dependencies: add the venv's site-packages (its .pth files make the project importable).
    try:
        import contract.topology  # noqa: F401
    except ImportError:
        for sp in sorted((REPO / ".venv" / "lib").glob("python3*/site-packages")):
            site.addsitedir(str(sp))
        if str(REPO) not in sys.path:
            sys.path.append(str(REPO))


_make_project_importable()

from mininet.link import TCULink  # noqa: E402
from mininet.log import info  # noqa: E402
from mininet.net import Mininet  # noqa: E402
from mininet.node import Host, OVSSwitch, RemoteController  # noqa: E402
from mininet.topo import Topo  # noqa: E402

# mininet.log makes every logger created from now on a MininetLogger (its own console
# handler, level OUTPUT): this process's other loggers stay plain ones.
logging.setLoggerClass(logging.Logger)

from contract.topology import Topology, load_topology  # noqa: E402


class NfHost(Host):
    """A Mininet host without IPv6 (no stray packets). Hosts resolve addresses with ARP like
    any host: the switches answer for the virtual addresses (LB VIPs, NAT public IPs)."""

    def config(self, **params: Any) -> Any:
        result = super().config(**params)
        if self.inNamespace:
            self.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
            self.cmd("sysctl -qw net.ipv6.conf.default.disable_ipv6=1")
        return result


class NfsteerTopo(Topo):
    """The Mininet topology of an nfsteer topology file (path or loaded Topology)."""

    def build(self, topology: str | Path | Topology = "topologies/single.yaml") -> None:
        topo = topology if isinstance(topology, Topology) else load_topology(topology)
        self.nfsteer = topo
        for name, sw in topo.switches.items():
            self.addSwitch(
                name,
                cls=OVSSwitch,
                dpid=f"{sw.dpid:016x}",
                datapath="user",
                protocols="OpenFlow13",
                failMode="secure",
            )
        for name, att in topo.attachments().items():
            self.addHost(name, cls=NfHost, ip=att.ip, mac=att.mac)
            # TCULink: checksum offload off on both ends (txo=rxo=False)
            self.addLink(name, att.switch, port1=0, port2=att.port, cls=TCULink)
        for link in topo.links:
            self.addLink(link.a, link.b, port1=link.a_port, port2=link.b_port, cls=TCULink)


topos = {"nfsteer": NfsteerTopo}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


@dataclass
class NFProcess:
    name: str
    pool: str
    kind: str
    state: str
    capacity: float
    proc: subprocess.Popen
    started: float  # time.time()
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Emulation:
    """A running emulated network: Mininet, Redis, the controller, servers and NFs.

    Use as a context manager; everything it started is stopped on exit, and nothing else.
    """

    topology_path: Path
    workdir: Path | None = None
    heartbeat_ttl_ms: int = 300
    start_servers: bool = True
    controller_log_level: str = "INFO"
    store: str = "replicated"  # or "single" (one Redis, no persistence)
    controllers: int = 1  # several: one leads (a lease in the store), the others stand by
    lease_ms: int = 1000  # the leader's lease when there are several
    topology: Topology = field(init=False)
    net: Mininet | None = field(init=False, default=None)
    nfs: dict[str, NFProcess] = field(init=False, default_factory=dict)
    servers: list[subprocess.Popen] = field(init=False, default_factory=list)
    redis_proc: subprocess.Popen | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.topology_path = Path(self.topology_path).resolve()
        self.topology = load_topology(self.topology_path)
        self._own_workdir = self.workdir is None
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="em-nfsteer-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = venv_python()
        if self.controllers < 1:
            raise ValueError("controllers must be at least 1")
        # (OpenFlow port, API port) of each controller; the first is the default one
        self.controller_ports = [(free_port(), free_port()) for _ in range(self.controllers)]
        self.of_port, self.api_port = self.controller_ports[0]
        self.controller_procs: list[subprocess.Popen | None] = [None] * self.controllers
        self.redis_port = free_port()
        self.redis_password = secrets.token_hex(12)
        self.redis_socket = self.workdir / "redis.sock"
        self._extra_procs: list[subprocess.Popen] = []
        self.store_layout: Any = None  # the replicated store (controller.ops.storenodes)
        self._store_links: list[str] = []
        if self.store not in ("replicated", "single"):
            raise ValueError(f"store must be replicated or single, not {self.store!r}")

    # ---- URLs ----------------------------------------------------------------------------
    @property
    def redis_url(self) -> str:
        """For processes in the root namespace (the controller, the demo)."""
        if self.store_layout is not None:
            return self.store_layout.url()
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def nf_redis_url(self) -> str:
        """For processes inside Mininet hosts: the same Sentinel URL over the store network
        (replicated store), or the Unix socket (single)."""
        if self.store_layout is not None:
            return self.store_layout.url()
        return f"unix://:{self.redis_password}@{self.redis_socket}?db=0"

    @property
    def api_base(self) -> str:
        """A running controller's API (a standby redirects changes to the leader)."""
        for i, proc in enumerate(self.controller_procs):
            if proc is not None and proc.poll() is None:
                return f"http://127.0.0.1:{self.controller_ports[i][1]}"
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def controller_proc(self) -> subprocess.Popen | None:
        return self.controller_procs[0]

    # ---- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Emulation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        busy = [s for s in self.topology.switches if _bridge_exists(s)]
        if busy:
            raise RuntimeError(
                f"Open vSwitch bridge(s) {', '.join(busy)} already exist; another network "
                f"is running or a previous one was not cleaned up (ovs-vsctl del-br NAME)"
            )
        self.start_redis()
        self.start_controller()
        topo = NfsteerTopo(self.topology)
        ctl_name = next(n for n in ("ctl", "ctl0", "nfctl") if n not in self.topology.attachments())
        self.net = Mininet(
            topo=topo,
            controller=None,
            build=False,
            autoSetMacs=False,
            autoStaticArp=False,
            waitConnected=False,
        )
        for i, (of_port, _) in enumerate(self.controller_ports):
            self.net.addController(
                ctl_name if i == 0 else f"{ctl_name}{i + 1}",
                controller=RemoteController,
                ip="127.0.0.1",
                port=of_port,
            )
        self.net.build()
        self.net.start()
        if self.store_layout is not None:
            self.attach_store_network()
        self.wait_connected()
        if self.start_servers:
            self.start_echo_servers()

    def stop(self) -> None:
        for nf in list(self.nfs.values()):
            if nf.alive():
                with contextlib.suppress(ProcessLookupError):
                    nf.proc.kill()
                nf.proc.wait(5)
        for p in self.servers + self._extra_procs:
            _stop_process(p, 2)
        self.servers.clear()
        if self.net is not None:
            self.net.stop()
            self.net = None
        self.stop_controllers()
        _stop_process(self.redis_proc)
        self.redis_proc = None
        self.stop_store()
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- Redis and controller ------------------------------------------------------------
    def start_redis(self) -> None:
        if self.store == "replicated":
            self.start_store()
            return
        args = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        args += ["--unixsocket", str(self.redis_socket), "--unixsocketperm", "700"]
        args += ["--requirepass", self.redis_password, "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.out")]
        self.redis_proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port("127.0.0.1", self.redis_port, 10, self.redis_proc)

    def flush_redis(self) -> None:
        import redis

        if self.store_layout is not None:
            r = redis.Redis.from_url(self.primary_url())
            r.flushall()
            r.wait(2, 1000)
            return
        redis.Redis.from_url(self.redis_url).flushall()

    # ---- the replicated store on its own network -----------------------------------------
    def start_store(self) -> None:
        from controller.ops.storenodes import StoreLayout, up

        if Path(f"/sys/class/net/{STORE_BRIDGE}").exists():  # left by a run that crashed
            subprocess.run(["ip", "link", "del", STORE_BRIDGE], capture_output=True)
        _sh("ip", "link", "add", STORE_BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{STORE_ADDRESS}/24", "dev", STORE_BRIDGE)
        _sh("ip", "link", "set", STORE_BRIDGE, "up")
        layout = StoreLayout(
            run_dir=str(self.workdir / "store"),
            ports=[free_port() for _ in range(3)],
            sentinel_ports=[free_port() for _ in range(3)],
            bind=[STORE_ADDRESS, "127.0.0.1"],
            announce_ip=STORE_ADDRESS,
            password=self.redis_password,
        )
        up(layout)
        self.store_layout = layout

    def attach_store_network(self) -> None:
        """One veth from every NF instance's host to the store bridge."""
        assert self.net is not None
        instances = [n for p in self.topology.pools.values() for n in p.instances]
        for k, name in enumerate(instances, start=2):
            host = self.net.get(name)
            outer, inner = f"nfst-{name}"[:15], f"{name}-st"[:15]
            _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self._store_links.append(outer)
            _sh("sysctl", "-qw", f"net.ipv6.conf.{outer}.disable_ipv6=1")
            _sh("ip", "link", "set", inner, "netns", str(host.pid))
            _sh("ip", "link", "set", outer, "master", STORE_BRIDGE, "up")
            host.cmd(f"ip addr add {STORE_PREFIX}.{k}/24 dev {inner} && ip link set {inner} up")

    def primary_url(self) -> str:
        """The current primary's own redis:// URL (tests that inspect the store)."""
        from controller.ops.storenodes import current_primary

        primary = current_primary(self.store_layout)
        assert primary is not None, "no primary"
        return f"redis://:{self.redis_password}@{primary[0]}:{primary[1]}/0"

    def stop_store(self) -> None:
        if self.store_layout is not None:
            from controller.ops.storenodes import down, node_pid

            for i in range(3):  # a stopped node would ignore SIGTERM
                pid = node_pid(self.store_layout, i)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            down(self.store_layout)
            self.store_layout = None
        for link in self._store_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self._store_links.clear()
        if Path(f"/sys/class/net/{STORE_BRIDGE}").exists():
            subprocess.run(["ip", "link", "del", STORE_BRIDGE], capture_output=True)

    def start_controller(self) -> None:
        """Every controller (one, or several sharing the store: one leads)."""
        for i in range(self.controllers):
            self.start_one_controller(i)

    def controller_log(self, i: int) -> Path:
        assert self.workdir is not None
        return self.workdir / ("controller.out" if i == 0 else f"controller{i + 1}.out")

    def start_one_controller(self, i: int) -> None:
        of_port, api_port = self.controller_ports[i]
        log = open(self.controller_log(i), "ab")  # noqa: SIM115 - owned by the process
        cmd = [str(self.python), "-m", "cli", "controller"]
        cmd += ["--topology", str(self.topology_path)]
        cmd += ["--listen", f"127.0.0.1:{of_port}", "--api", f"127.0.0.1:{api_port}"]
        cmd += ["--heartbeat-ttl-ms", str(self.heartbeat_ttl_ms)]
        cmd += ["--id", f"ctl{i + 1}", "--lease-ms", str(self.lease_ms)]
        cmd += ["--log-level", self.controller_log_level]
        # The Redis URL carries the password: in the environment, not on the command line.
        env = {**os.environ, "NFSTEER_REDIS": self.redis_url}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.controller_procs[i] = proc
        log.close()
        try:
            _wait_port("127.0.0.1", of_port, 30, proc)
        except (RuntimeError, TimeoutError) as e:
            tail = self.controller_log(i).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the controller did not start ({e}):\n{tail}") from None

    def stop_controllers(self) -> None:
        for i, proc in enumerate(self.controller_procs):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)  # a paused one must be able to stop
                _stop_process(proc)
            self.controller_procs[i] = None

    def leader(self) -> int | None:
        """Index of the controller that leads now (None: none does)."""
        import httpx

        for i, proc in enumerate(self.controller_procs):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                url = f"http://127.0.0.1:{self.controller_ports[i][1]}/healthz"
                role = httpx.get(url, timeout=0.5).json().get("role")
                if role in ("leader", "single"):
                    return i
        return None

    def restart_control_plane(self) -> None:
        """Fresh Redis and controller (the network stays): a clean slate between scenarios."""
        for nf in list(self.nfs.values()):
            self.stop_nf(nf.name, kill=True)
        self.nfs.clear()
        self.stop_controllers()
        if self.store_layout is not None:
            self.flush_redis()  # the store network and its links stay
        else:
            _stop_process(self.redis_proc)
            self.start_redis()
        self.start_controller()
        self.wait_connected()

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Until every switch is connected to the controller and has its flows."""
        deadline = time.monotonic() + timeout
        pending = set(self.topology.switches)
        while pending and time.monotonic() < deadline:
            for sw in sorted(pending):
                if _controller_connected(sw) and _flow_count(sw) > 1:
                    pending.discard(sw)
            if not pending:
                # the controller has read back and programmed every switch it knows
                with contextlib.suppress(Exception):
                    if len(self.api("GET", "/healthz").get("switches", ())) < len(
                        self.topology.switches
                    ):
                        pending.add("(controller)")
            if pending:
                time.sleep(0.1)
                pending.discard("(controller)")
        if pending:
            raise TimeoutError(
                f"switch(es) {', '.join(sorted(pending))} got no flows in {timeout:.0f} s"
            )

    def api(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        r = httpx.request(method, self.api_base + path, timeout=5, follow_redirects=True, **kw)
        r.raise_for_status()
        return r.json() if r.content else None

    # ---- hosts, servers, NF instances -----------------------------------------------------
    def host(self, name: str) -> Host:
        assert self.net is not None
        return self.net[name]

    def popen(
        self, host: str, args: list[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen:
        """Run a program inside a Mininet host; stdout goes to ``log`` unless given."""
        if log is not None:
            with open(log, "ab") as f:
                kw.setdefault("stdout", f)
                kw.setdefault("stderr", subprocess.STDOUT)
                return self.host(host).popen(args, cwd=str(REPO), **kw)
        return self.host(host).popen(args, cwd=str(REPO), **kw)

    def traffic_cmd(self, *args: str) -> list[str]:
        return [str(self.python), "-u", str(HERE / "nftraffic.py"), *args]

    def service_ports(self) -> list[int]:
        """Every TCP/UDP port the servers should answer on (service ports, LB backends)."""
        ports = {5001}
        for svc in self.topology.services.values():
            for m in svc.match:
                ports.update(m.dst_ports or ())
        for pool in self.topology.pools.values():
            if pool.kind == "lb":
                for v in pool.settings.vips:
                    ports.update(b.port for b in v.backends)
        return sorted(p for p in ports if p > 0)

    def start_echo_servers(self) -> None:
        ports = ",".join(map(str, self.service_ports()))
        for name, h in self.topology.hosts.items():
            if h.role == "server":
                log = self.workdir / f"{name}.out"
                self.servers.append(
                    self.popen(name, self.traffic_cmd("serve", "--ports", ports), log)
                )
        for name, h in self.topology.hosts.items():
            if h.role == "server":
                for port in self.service_ports():
                    self._wait_in_host(name, h.ip_address, port)

    def _wait_in_host(self, host: str, ip: str, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.host(host).cmd(f"ss -Hltn 'sport = :{port}'")
            if out.strip():
                return
            time.sleep(0.1)
        raise TimeoutError(f"server on {host} ({ip}:{port}) did not start")

    def pool_of(self, instance: str) -> str:
        for pname, pool in self.topology.pools.items():
            if instance in pool.instances:
                return pname
        raise KeyError(f"{instance!r} is no instance of the topology")

    def start_nf(self, name: str, state: str = "redis", capacity: float | None = None) -> NFProcess:
        pname = self.pool_of(name)
        pool = self.topology.pools[pname]
        inst = pool.instances[name]
        cap = inst.capacity if capacity is None else capacity
        cmd = [str(self.python), "-m", "cli", "nf", "--kind", pool.kind]
        cmd += ["--interface", f"{name}-eth0", "--pool", pname, "--name", name]
        cmd += ["--capacity", f"{cap:g}", "--state", state]
        cmd += [
            "--config",
            str(self.topology_path),
            "--heartbeat-ttl-ms",
            str(self.heartbeat_ttl_ms),
        ]
        log = self.workdir / f"{name}.out"
        # The Redis URL carries the password: in the environment, not on the command line.
        env = {**os.environ, "NFSTEER_REDIS": self.nf_redis_url}
        proc = self.popen(name, cmd, log, env=env)
        nf = NFProcess(name, pname, pool.kind, state, cap, proc, time.time(), log)
        self.nfs[name] = nf
        return nf

    def stop_nf(self, name: str, kill: bool = False, timeout: float = 15.0) -> float:
        """SIGTERM (drain and deregister) or SIGKILL; returns seconds until it exited."""
        nf = self.nfs[name]
        t0 = time.monotonic()
        if nf.alive():
            nf.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                nf.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                nf.proc.kill()
                nf.proc.wait(5)
        return time.monotonic() - t0

    def set_link(self, a: str, b: str, up: bool) -> None:
        assert self.net is not None
        self.net.configLinkStatus(a, b, "up" if up else "down")

    def instance_ports(self) -> dict[str, tuple[str, int]]:
        return {
            n: (i.switch, i.port)
            for p in self.topology.pools.values()
            for n, i in p.instances.items()
        }

    def port_counters(
        self, switches: list[str] | None = None
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """(switch, port) -> (rx_packets, tx_packets) as the switch counts them."""
        out: dict[tuple[str, int], tuple[int, int]] = {}
        for sw in switches or list(self.topology.switches):
            out.update(dump_ports(sw))
        return out


STORE_BRIDGE = "nfst0"
STORE_PREFIX = "172.31.254"
STORE_ADDRESS = f"{STORE_PREFIX}.1"


def _sh(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _bridge_exists(name: str) -> bool:
    r = subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", name], capture_output=True)
    return r.returncode == 0


def _controller_connected(bridge: str) -> bool:
    r = subprocess.run(
        ["ovs-vsctl", "--timeout=5", "get", "Bridge", bridge, "controller"],
        capture_output=True, text=True,
    )  # fmt: skip
    uuids = r.stdout.strip().strip("[]").split(",")
    if not uuids or not uuids[0].strip():
        return False
    r = subprocess.run(
        ["ovs-vsctl", "--timeout=5", "get", "Controller", uuids[0].strip(), "is_connected"],
        capture_output=True, text=True,
    )  # fmt: skip
    return r.stdout.strip() == "true"


def _flow_count(bridge: str) -> int:
    r = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge], capture_output=True, text=True
    )
    return sum(1 for line in r.stdout.splitlines() if "actions=" in line)


def dump_ports(bridge: str) -> dict[tuple[str, int], tuple[int, int]]:
    """Port counters of one bridge from `ovs-ofctl dump-ports` (independent of the controller)."""
    r = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", bridge], capture_output=True, text=True
    )
    out: dict[tuple[str, int], tuple[int, int]] = {}
    port = None
    rx = 0
    for line in r.stdout.splitlines():
        words = line.replace(",", " ").split()
        if len(words) >= 3 and words[0] == "port" and words[2] == "rx":
            name = words[1].rstrip(":")
            port = int(name) if name.isdigit() else None
            rx = _field(words, "pkts")
        elif port is not None and words and words[0] == "tx":
            out[(bridge, port)] = (rx, _field(words, "pkts"))
            port = None
    return out


def _field(words: list[str], key: str) -> int:
    for w in words:
        if w.startswith(key + "="):
            v = w.split("=", 1)[1]
            return int(v) if v.isdigit() else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run an nfsteer topology file in Mininet.")
    p.add_argument("--topology", required=True, help="topology YAML file")
    p.add_argument("--cli", action="store_true", help="open the Mininet CLI (else wait for ^C)")
    p.add_argument("--state", choices=("redis", "local"), default="redis", help="NF state")
    p.add_argument("--instances", default="all", help="comma-separated instances to start")
    p.add_argument("--heartbeat-ttl-ms", type=int, default=300)
    p.add_argument(
        "--store",
        choices=("replicated", "single"),
        default="replicated",
        help="replicated: primary, 2 replicas, 3 Sentinels (default); single: one Redis",
    )
    p.add_argument(
        "--controllers", type=int, default=1, help="controllers (several: one leads; default 1)"
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("nfnet: must run as root (Mininet and Open vSwitch need it)", file=sys.stderr)
        return 2
    from contract.topology import ConfigError

    try:
        emu = Emulation(
            Path(args.topology),
            heartbeat_ttl_ms=args.heartbeat_ttl_ms,
            store=args.store,
            controllers=args.controllers,
        )
    except ConfigError as e:
        print(f"nfnet: {e}", file=sys.stderr)
        return 2
    wanted = list(emu.instance_ports()) if args.instances == "all" else args.instances.split(",")
    unknown = [n for n in wanted if n not in emu.instance_ports()]
    if unknown:
        print(f"nfnet: unknown instance(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with emu:
        for name in wanted:
            emu.start_nf(name, state=args.state)
        info(f"*** controller API {emu.api_base}, Redis {emu.redis_url}\n")
        info(f"*** Redis for the hosts: {emu.nf_redis_url}\n")
        info(f"*** NF instances: {', '.join(wanted)}; logs in {emu.workdir}\n")
        if args.cli:
            from mininet.cli import CLI

            CLI(emu.net)
        else:
            print("running; press ^C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return 0


if __name__ == "__main__":
    from mininet.log import setLogLevel

    setLogLevel("info")
    sys.exit(main())
