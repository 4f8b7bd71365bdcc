"""`nfsteer status|pool|instance` against a real controller's REST API."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import REPO, free_port
from membership_support import (
    POOL,
    STATIC_POOL,
    api_url,
    controller,
    owners,
    wait_until,
    write_topology,
)

from cli.main import main

TOKEN = "cli-token"


@pytest.fixture
def running(tmp_path, redis_server):
    topo = write_topology(tmp_path / "topo.yaml", dpid=0xA5)
    with controller(topo, redis_server.url, api_token=TOKEN) as app:
        # Leading before the test starts: its log line would land in a command's stderr.
        wait_until(app.leading)
        yield app, api_url(app)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_instance_commands_change_the_pool(running, capsys):
    app, url = running
    auth = ("--api", url, "--api-token", TOKEN)
    code, out, _ = cli(capsys, "instance", "add", POOL, "fw1", *auth)
    assert code == 0 and "64 slots moved" in out and "confirmed" in out
    code, out, _ = cli(
        capsys, "instance", "add", POOL, "fwz", "--switch", "s1", "--port", "21",
        "--mac", "02:00:00:00:0c:01", "--ip", "10.0.0.170", "--capacity", "3", *auth,
    )  # fmt: skip
    assert code == 0 and owners(app) == {"fw1": 16, "fwz": 48}
    code, out, _ = cli(capsys, "instance", "capacity", POOL, "fwz", "1", *auth)
    assert code == 0 and owners(app) == {"fw1": 32, "fwz": 32}
    code, out, _ = cli(capsys, "instance", "drain", POOL, "fwz", *auth)
    assert code == 0 and owners(app) == {"fw1": 64}
    code, _, err = cli(capsys, "instance", "drain", POOL, "fw1", *auth)
    assert code == 1 and err.count("\n") == 1 and "last active instance" in err
    code, out, _ = cli(capsys, "instance", "drain", POOL, "fw1", "--force", *auth)
    assert code == 0 and owners(app) == {}
    code, out, _ = cli(capsys, "instance", "remove", POOL, "fwz", "--no-wait", *auth)
    assert code == 0 and "not waited for" in out
    assert "fwz" not in app.steering.pools[POOL].instances


def test_status_and_pool_views(running, capsys):
    _, url = running
    cli(capsys, "instance", "add", POOL, "fw2", "--api", url, "--api-token", TOKEN)
    code, out, _ = cli(capsys, "status", "--api", url)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"controller {url}: 0 switch(es) connected, redis up")
    assert lines[1].split()[:5] == ["POOL", "INSTANCE", "STATE", "CAPACITY", "SLOTS"]
    rows = {tuple(line.split()[:5]) for line in lines[2:]}
    assert (POOL, "fw2", "active", "1", "64") in rows
    assert (POOL, "fw1", "down", "1", "0") in rows
    assert (STATIC_POOL, "lb1", "active", "1", "8") in rows
    code, out, _ = cli(capsys, "pool", "list", "--api", url)
    assert code == 0 and out.splitlines()[1].split()[:6] == [
        POOL, "firewall", "registered", "64", "1", "1",
    ]  # fmt: skip
    code, out, _ = cli(capsys, "pool", "show", STATIC_POOL, "--api", url)
    assert code == 0 and out.startswith("pool lb: lb, static membership, 16 slots, epoch 1")
    code, _, err = cli(capsys, "pool", "show", "nope", "--api", url)
    assert code == 1 and err == "nfsteer pool: 404 Not Found: unknown pool 'nope'\n"


def test_missing_token_is_one_line(running, capsys):
    _, url = running
    code, _, err = cli(capsys, "instance", "capacity", STATIC_POOL, "lb1", "2", "--api", url)
    assert code == 1
    assert err == "nfsteer instance: 401 Unauthorized: missing or wrong bearer token\n"


def test_unreachable_controller_is_one_line():
    port = free_port()
    r = subprocess.run(
        [str(REPO / ".venv/bin/nfsteer"), "status", "--api", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(
        f"nfsteer status: cannot reach the controller at http://127.0.0.1:{port}"
    )
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_real_process_against_running_controller(running):
    _, url = running
    r = subprocess.run(
        [str(REPO / ".venv/bin/nfsteer"), "pool", "show", POOL, "--api", url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert "fw1" in r.stdout and "down" in r.stdout


def test_lookup_cli_agrees_online_and_offline(running, tmp_path):
    """`nfsteer lookup --api` (another module) speaks this API; for a static pool the
    controller's answer equals the one computed from the topology file alone."""
    _, url = running
    nfsteer = str(REPO / ".venv/bin/nfsteer")
    flow = ["10.0.0.1", "10.0.0.200", "tcp", "41000", "80"]
    online = subprocess.run(
        [nfsteer, "lookup", "--api", url, "--pool", STATIC_POOL, "--json", *flow],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    offline = subprocess.run(
        [nfsteer, "lookup", "--topology", str(tmp_path / "topo.yaml"), "--pool", STATIC_POOL,
         "--json", *flow],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert online.returncode == 0 and offline.returncode == 0, online.stderr + offline.stderr
    a, b = json.loads(online.stdout), json.loads(offline.stdout)
    assert (a["instance"], a["slot"]) == (b["instance"], b["slot"])
    assert a["epoch"] == 1


def test_token_from_the_environment_or_a_file(running, capsys, monkeypatch, tmp_path):
    app, url = running
    monkeypatch.delenv("NFSTEER_API_TOKEN", raising=False)
    code, _, err = cli(capsys, "instance", "capacity", STATIC_POOL, "lb1", "2", "--api", url)
    assert code == 1 and "401" in err
    monkeypatch.setenv("NFSTEER_API_TOKEN", TOKEN)
    code, _, _ = cli(capsys, "instance", "capacity", STATIC_POOL, "lb1", "2", "--api", url)
    assert code == 0 and app.steering.pools[STATIC_POOL].instances["lb1"].capacity == 2
    monkeypatch.delenv("NFSTEER_API_TOKEN")
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    code, _, _ = cli(
        capsys, "instance", "capacity", STATIC_POOL, "lb1", "3", "--api", url,
        "--api-token-file", str(token),
    )  # fmt: skip
    assert code == 0 and app.steering.pools[STATIC_POOL].instances["lb1"].capacity == 3
