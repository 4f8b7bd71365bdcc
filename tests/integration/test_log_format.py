"""`--log-format json` on the real processes: every stderr line is one JSON object, and the
lines about a change carry its pool, instance and epoch as fields."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest
import yaml
from conftest import REPO, free_port, require, unique_name
from nf_support import FW, NFSTEER, NFProcess, veth_pair, write_topology

pytestmark = pytest.mark.timeout(60)


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    for record in out:
        assert {"time", "level", "logger", "message"} <= set(record), record
    return out


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_controller_logs_json_with_pool_and_epoch_fields(tmp_path):
    data = yaml.safe_load((REPO / "topologies" / "single.yaml").read_text())
    data["pools"]["fw"]["membership"] = "static"
    topo = tmp_path / "topology.yaml"
    topo.write_text(yaml.safe_dump(data))
    api = f"127.0.0.1:{free_port()}"
    cmd = [NFSTEER, "controller", "--topology", str(topo), "--listen", f"127.0.0.1:{free_port()}"]
    proc = subprocess.Popen(
        [*cmd, "--api", api, "--log-format", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://{api}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 20, "the controller's API")
        r = httpx.put(
            f"http://{api}/api/v1/pools/fw/instances/fw2/capacity",
            json={"capacity": 3},
            params={"wait": "false"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        epoch = r.json()["epoch"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    records = _json_lines(err)
    change = [r for r in records if r.get("epoch") == epoch]
    assert change, records
    assert change[0]["pool"] == "fw" and change[0]["moved"] > 0
    assert change[0]["logger"] == "nfsteer.controller" and change[0]["level"] == "INFO"


def test_bad_argument_is_one_json_line_in_json_mode():
    r = subprocess.run(
        [NFSTEER, "--log-format", "json", "controller", "--topology", "/nonexistent.yaml"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    (record,) = _json_lines(r.stderr)
    assert record["level"] == "ERROR" and "cannot read" in record["message"]


def test_nf_process_logs_json_with_its_pool_and_instance(tmp_path):
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    cfg = write_topology(tmp_path / "t.yaml", "fwp", "firewall", FW)
    with veth_pair(unique_name("lj")) as (_, nf_if):
        nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", "fwp",
                       "--name", "fwj", "--state", "local", "--config", str(cfg),
                       "--log-format", "json")  # fmt: skip
        nf.wait_ready()
        assert nf.stop() == 0
    records = _json_lines(nf.log.read_text())
    assert all(r["pool"] == "fwp" and r["instance"] == "fwj" for r in records), records
    assert any("firewall instance fwj" in r["message"] for r in records)
