"""Shared fixtures: real Redis servers and Open vSwitch.

Tests that need OVS, Mininet or Redis skip on a developer machine that lacks them, but in CI
(``CI=true``) a missing dependency is a failure: a skip there would hide a broken install.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]


def require(ok: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI) when a real dependency is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away redis-server on a free loopback port; can be stopped and restarted."""

    def __init__(self, workdir: Path, password: str | None = None):
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replicated_store(tmp_path: Path) -> Iterator[Any]:
    """A real replicated store (``nfsteer store up``: 1 primary, 2 replicas, 3 Sentinels)
    on free loopback ports; see tests/store_support.py."""
    from store_support import ReplicatedStore

    require(shutil.which("redis-server") is not None, "redis-server")
    store = ReplicatedStore(tmp_path / "store")
    store.up()
    try:
        yield store
    finally:
        store.down()


def ovs_running() -> bool:
    if shutil.which("ovs-vsctl") is None:
        return False
    r = subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="session")
def ovs() -> None:
    """Open vSwitch is installed and ovs-vswitchd answers."""
    require(ovs_running(), "Open vSwitch (ovs-vswitchd)")


def unique_name(prefix: str) -> str:
    """A short unique name for a bridge or interface (Linux allows 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"[:15]
