"""Open vSwitch helpers for integration tests: bridges with numbered ports, flow dumps,
and fast ``ofproto/trace`` through ovs-vswitchd's control socket."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

RUN_DIR = Path("/var/run/openvswitch")


def run(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


def vsctl(*args: str) -> str:
    return run("ovs-vsctl", "--timeout=10", *args)


def ofctl(*args: str) -> str:
    return run("ovs-ofctl", "-O", "OpenFlow13", *args)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Unixctl:
    """A JSON-RPC client for ovs-vswitchd's control socket (what ovs-appctl speaks), kept
    open so that thousands of traces take seconds instead of a process each."""

    def __init__(self) -> None:
        pid = (RUN_DIR / "ovs-vswitchd.pid").read_text().strip()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(RUN_DIR / f"ovs-vswitchd.{pid}.ctl"))
        self.buf = ""
        self.next_id = 0
        self.decoder = json.JSONDecoder()

    def call(self, method: str, *params: str) -> str:
        self.next_id += 1
        request = {"method": method, "params": list(params), "id": self.next_id}
        self.sock.sendall(json.dumps(request).encode())
        while True:
            try:
                reply, end = self.decoder.raw_decode(self.buf)
            except json.JSONDecodeError:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("ovs-vswitchd closed the control connection") from None
                self.buf += chunk.decode()
                continue
            self.buf = self.buf[end:].lstrip()
            if reply.get("id") != self.next_id:
                continue
            if reply.get("error"):
                raise RuntimeError(f"{method} {params}: {reply['error']}")
            return reply["result"]

    def close(self) -> None:
        self.sock.close()


_BRIDGE_RE = re.compile(r'^bridge\("([^"]+)"\)')
_OUTPUT_RE = re.compile(r"^\s+output:(\d+)\s*$")


def trace_outputs(text: str) -> list[tuple[str, int]]:
    """(bridge, OpenFlow port) of every output action in an ofproto/trace answer."""
    out = []
    bridge = ""
    for line in text.splitlines():
        m = _BRIDGE_RE.match(line)
        if m:
            bridge = m.group(1)
            continue
        m = _OUTPUT_RE.match(line)
        if m:
            out.append((bridge, int(m.group(1))))
    return out


class Bridge:
    """A userspace OVS bridge, fail_mode secure, OpenFlow 1.3, with internal ports brought
    up at the given OpenFlow port numbers."""

    def __init__(self, name: str, dpid: int, ports: Iterable[int]):
        self.name = name
        self.dpid = dpid
        self.ports = list(ports)
        cmd = ["--may-exist", "add-br", name, "--", "set", "bridge", name]
        cmd += ["datapath_type=netdev", "protocols=OpenFlow13", "fail_mode=secure"]
        cmd += [f"other-config:datapath-id={dpid:016x}"]
        for p in self.ports:
            cmd += ["--", "add-port", name, self.port_name(p), "--", "set", "interface"]
            cmd += [self.port_name(p), "type=internal", f"ofport_request={p}"]
        vsctl(*cmd)
        for p in self.ports:
            run("ip", "link", "set", self.port_name(p), "up")

    def port_name(self, port: int) -> str:
        return f"{self.name}p{port}"

    def patch(self, port: int, other: Bridge, other_port: int) -> None:
        """A patch-port link between two bridges."""
        a, b = f"{self.name}x{port}", f"{other.name}x{other_port}"
        vsctl(
            "add-port", self.name, a, "--", "set", "interface", a, "type=patch",
            f"options:peer={b}", f"ofport_request={port}",
            "--", "add-port", other.name, b, "--", "set", "interface", b, "type=patch",
            f"options:peer={a}", f"ofport_request={other_port}",
        )  # fmt: skip

    def unpatch(self, port: int, other: Bridge, other_port: int) -> None:
        vsctl("del-port", f"{self.name}x{port}", "--", "del-port", f"{other.name}x{other_port}")

    def set_controller(self, port: int) -> None:
        vsctl("set-controller", self.name, f"tcp:127.0.0.1:{port}")

    def del_controller(self) -> None:
        vsctl("del-controller", self.name)

    def flows(self) -> list[str]:
        """Flow entries without counters, sorted (comparable before/after)."""
        text = ofctl("--no-stats", "dump-flows", self.name)
        return sorted(line.strip() for line in text.splitlines() if "cookie=" in line)

    def groups(self) -> str:
        return ofctl("dump-groups", self.name)

    def mod_port(self, port: int, action: str) -> None:
        ofctl("mod-port", self.name, str(port), action)

    def delete(self) -> None:
        run("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.name, check=False)


REPO = Path(__file__).resolve().parents[1]
SINGLE = REPO / "topologies" / "single.yaml"
SINGLE_PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]  # the OpenFlow ports single.yaml uses


def static_single(directory: Path) -> Path:
    """topologies/single.yaml with every pool static (no Redis needed), written into
    ``directory`` and checked."""
    import yaml

    from contract.topology import load_topology

    data = yaml.safe_load(SINGLE.read_text())
    for pool in data["pools"].values():
        pool["membership"] = "static"
        pool.pop("nf", None)
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    load_topology(path)
    return path
