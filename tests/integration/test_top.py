"""`nfsteer top` in a real terminal (tmux): a real controller with a real OVS bridge and
traffic through it; the view shows the pool, packets per second and the change an API call
makes, and quits on `q`. Against an unreachable controller it prints one line, exit 1."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
import uuid

import httpx
import pytest
import yaml
from conftest import REPO, free_port, require, unique_name
from membership_support import api_url, controller
from ovs_support import Bridge, wait_for

NFSTEER = str(REPO / ".venv" / "bin" / "nfsteer")
pytestmark = [pytest.mark.ovs, pytest.mark.timeout(90)]
ROW = re.compile(r"^\s+(fw\d)\s+(\w+)\s+([\d.]+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")


class Tmux:
    """A tmux server of our own (its own socket), one window running a command."""

    def __init__(self, command: str):
        self.socket = f"nfsteer-top-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-x", "130", "-y", "50", command)

    def _tmux(self, *args: str) -> str:
        r = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def wait(self, predicate, what: str, timeout: float = 15) -> str:
        return wait_for(lambda: predicate(s := self.screen()) and s, timeout, what)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def rows(screen: str) -> dict[str, tuple[str, ...]]:
    return {m.group(1): m.groups()[1:] for line in screen.splitlines() if (m := ROW.match(line))}


def _traffic(bridge: Bridge, stop: threading.Event) -> None:
    """TCP SYNs of 64 flows from c1's port, about 400 frames/s, until stopped."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    frames = [
        bytes(
            Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:81")
            / IP(src="10.0.0.1", dst="10.0.0.129")
            / TCP(sport=40000 + i, dport=80, flags="S")
        )
        for i in range(64)
    ]
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((bridge.port_name(1), 0))
        while not stop.is_set():
            for f in frames:
                s.send(f)
            stop.wait(0.16)


def test_top_shows_pools_rates_and_events_and_quits_on_q(tmp_path, ovs):
    require(shutil.which("tmux") is not None, "tmux")
    data = yaml.safe_load((REPO / "topologies" / "single.yaml").read_text())
    data["pools"]["fw"]["membership"] = "static"
    data["pools"]["fw"]["slots"] = 256
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(data))
    bridge = Bridge(unique_name("tp"), 1, [1, 2, 3, 4, 5, 11, 12, 13, 14])
    stop = threading.Event()
    sender = threading.Thread(target=_traffic, args=(bridge, stop), daemon=True)
    tmux = None
    try:
        with controller(topo, None) as app:
            bridge.set_controller(app.options.listen[1])
            assert app.wait_synced("s1", 15)
            sender.start()
            api = api_url(app)
            tmux = Tmux(f"TERM=xterm {NFSTEER} top --api {api}; echo EXIT=$?; sleep 60")
            screen = tmux.wait(lambda s: set(rows(s)) == {"fw1", "fw2", "fw3", "fw4"}, "rows")
            assert "pool fw  firewall" in screen and "switches: s1" in screen
            got = rows(screen)
            assert [got[n][0] for n in sorted(got)] == ["active"] * 4
            assert sum(int(r[2]) for r in got.values()) == 256
            # Port counters are polled every 2 s: wait for two readings with traffic between.
            screen = tmux.wait(
                lambda s: all(r[3] not in ("-", "0") for r in rows(s).values()), "packets/s"
            )
            shares = {n: (float(r[4]), float(r[5])) for n, r in rows(screen).items()}
            assert shares["fw4"][1] == 40.0  # capacity 2 of 5
            assert abs(sum(load for load, _ in shares.values()) - 100) < 0.5

            r = httpx.put(
                f"{api}/api/v1/pools/fw/instances/fw2/capacity", json={"capacity": 3}, timeout=10
            )
            assert r.status_code == 200
            epoch = r.json()["epoch"]
            screen = tmux.wait(lambda s: "fw/fw2 capacity 1 -> 3" in s, "the change's event")
            assert f"epoch {epoch - 1} -> {epoch}" in screen
            assert rows(screen)["fw2"][1] == "3"
            (tmp_path / "screen.txt").write_text(screen)
            tmux.keys("q")
            tmux.wait(lambda s: "EXIT=0" in s, "top to quit on q", timeout=5)
    finally:
        stop.set()
        if tmux is not None:
            tmux.close()
        bridge.delete()


def test_top_against_an_unreachable_controller_prints_one_line_and_exits_1():
    api = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = subprocess.run([NFSTEER, "top", "--api", api], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"nfsteer top: cannot reach the controller at {api}")
    assert len(r.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 10


def test_top_against_something_else_than_nfsteer_prints_one_line_and_exits_1(tmp_path):
    import functools
    import http.server

    (tmp_path / "api" / "v1").mkdir(parents=True)
    (tmp_path / "healthz").write_text('{"status": "ok"}')
    (tmp_path / "api" / "v1" / "pools").write_text('[{"not": "a pool"}]')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = f"http://127.0.0.1:{server.server_address[1]}"
        r = subprocess.run(
            [NFSTEER, "top", "--api", api], capture_output=True, text=True, timeout=30
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert "unexpected answer" in r.stderr and "Traceback" not in r.stderr
