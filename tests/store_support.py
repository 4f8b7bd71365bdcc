"""A real replicated store for tests: ``nfsteer store up`` (1 primary, 2 replicas, 3
Sentinels, AOF) on free loopback ports in a temporary run directory."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port
from nf_support import NFSTEER

from controller.ops.storenodes import StoreLayout, current_primary, healthy, node_pid, status


class ReplicatedStore:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.ports = [free_port() for _ in range(3)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.url = ""

    def cli(self, action: str, *extra: str) -> subprocess.CompletedProcess:
        cmd = [NFSTEER, "store", action]
        cmd += ["--run-dir", str(self.run_dir), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def up(self) -> None:
        ports = ",".join(map(str, self.ports))
        sentinels = ",".join(map(str, self.sentinel_ports))
        r = self.cli("up", "--ports", ports, "--sentinel-ports", sentinels)
        assert r.returncode == 0, r.stderr
        self.url = r.stdout.strip()

    def down(self) -> None:
        # SIGCONT first: a stopped node would ignore SIGTERM.
        for i in range(3):
            pid = node_pid(self.layout, i)
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
        self.cli("down")

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout.load(self.run_dir)

    def primary_index(self) -> int:
        primary = current_primary(self.layout)
        assert primary is not None
        return self.ports.index(primary[1])

    def node_url(self, i: int) -> str:
        return self.layout.node_url(i)

    def signal_node(self, i: int, sig: int) -> None:
        pid = node_pid(self.layout, i)
        assert pid is not None
        os.kill(pid, sig)

    def kill_primary(self) -> int:
        i = self.primary_index()
        self.signal_node(i, signal.SIGKILL)
        return i

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy(self.layout):
                return
            time.sleep(0.1)
        raise AssertionError(f"store not healthy: {status(self.layout)}")
