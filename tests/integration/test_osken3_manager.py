"""The app loaded the classic Ryu way: os-ken 3's `osken-manager controller.ofp.app` with the
eventlet hub, in the separate environment .venv-osken3 that scripts/setup.sh builds. It
programs a real OVS bridge and applies a change made through its REST API."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import httpx
import pytest
import yaml
from conftest import REPO, free_port, require, unique_name
from ovs_support import Bridge, wait_for

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(90)]

VENV = REPO / ".venv-osken3"
MANAGER = VENV / "bin" / "osken-manager"
INSTANCE_PORTS = {"fw1": 11, "fw2": 12, "fw3": 13, "fw4": 14}


def slot_table(bridge: Bridge) -> dict[int, int]:
    """The fw pool's slots on the switch: slot -> output port."""
    out = {}
    for flow in bridge.flows():
        m = re.search(r"table=1,.*reg0=(0x[0-9a-f]+|\d+).* actions=output:(\d+)", flow)
        if m:
            out[int(m.group(1), 0)] = int(m.group(2))
    return out


def wanted_table(api: str) -> tuple[int, dict[int, int]]:
    out = httpx.get(f"{api}/api/v1/pools/fw/assignment", timeout=5).json()
    table = {s: INSTANCE_PORTS[o] for s, o in enumerate(out["assignment"]) if o is not None}
    return out["epoch"], table


def test_osken_manager_with_eventlet_programs_the_switch_and_applies_a_change(tmp_path, ovs):
    require(MANAGER.exists(), f"{MANAGER} (built by scripts/setup.sh)")
    version = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import eventlet, os_ken; print(os_ken.__version__)"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.startswith("3."), version

    data = yaml.safe_load((REPO / "topologies" / "single.yaml").read_text())
    data["pools"]["fw"]["membership"] = "static"
    data["pools"]["fw"]["slots"] = 256
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(data))
    of_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    env = dict(os.environ, NFSTEER_TOPOLOGY=str(topo), NFSTEER_API=f"127.0.0.1:{api_port}")
    env.pop("PYTHONPATH", None)
    cmd = [str(MANAGER), "--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(of_port)]
    log = tmp_path / "osken-manager.log"
    with open(log, "w") as logf:
        proc = subprocess.Popen(
            [*cmd, "controller.ofp.app"],
            cwd=tmp_path,
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    bridge = Bridge(unique_name("ok"), 1, [1, 2, 3, 4, 5, *INSTANCE_PORTS.values()])
    try:

        def healthy() -> dict | None:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{api}/healthz", timeout=1).json()
            except httpx.HTTPError:
                return None

        wait_for(healthy, 30, "the app's REST API")
        bridge.set_controller(of_port)
        wait_for(lambda: healthy()["switches"] == ["s1"], 20, "the switch to connect")
        _, wanted = wanted_table(api)
        assert len(wanted) == 256
        fw1_before = sum(1 for p in wanted.values() if p == 11)
        wait_for(lambda: slot_table(bridge) == wanted, 20, "the switch to be programmed")

        r = httpx.put(
            f"{api}/api/v1/pools/fw/instances/fw1/capacity", json={"capacity": 3}, timeout=20
        )
        assert r.status_code == 200, r.text
        change = r.json()
        assert change["confirmed"] is True and change["moved"] > 0
        epoch, wanted = wanted_table(api)
        assert epoch == change["epoch"]
        assert slot_table(bridge) == wanted  # confirmed by barrier: already in the table
        assert sum(1 for p in wanted.values() if p == 11) == fw1_before + change["moved"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        bridge.delete()
    text = log.read_text()
    assert "loading app controller.ofp.app" in text
    assert "Traceback" not in text, text
