"""The controller's event loop never fails silently (real OVS, real controller).

A failing handler is contained (logged with its event, the switch re-synced) and shows in
``/healthz``; a stalled loop makes ``/healthz`` answer 503; a loop that ends anyway ends the
process with a non-zero status and one line. A switch table holding entries the controller
did not write — even ones it cannot parse — is cleaned, not a reason to stop. After each
probe a new change is still programmed end to end.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, free_port, unique_name
from ovs_support import Bridge, ofctl, static_single, wait_for

from controller.core import flows as fl
from controller.core.state import InstanceState
from controller.ofp import ofmsg
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options
from controller.ofp.service import services_of

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(120)]

SINGLE = REPO / "topologies" / "single.yaml"
SINGLE_PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]
NFSTEER = Path(sys.executable).parent / "nfsteer"


def static_topology(tmp_path: Path) -> Path:
    return static_single(tmp_path)


@pytest.fixture
def bridge(ovs) -> Iterator[Bridge]:
    br = Bridge(unique_name("lp"), 1, SINGLE_PORTS)
    yield br
    br.delete()


@pytest.fixture
def app(tmp_path) -> Iterator:
    app, stop = start_in_thread(
        Options(topology=static_topology(tmp_path), listen=("127.0.0.1", 0), api=("127.0.0.1", 0))
    )
    fatal: list[str] = []
    app.on_fatal = fatal.append  # in this process: record instead of exiting
    app.fatal_reasons = fatal
    yield app
    stop()


def api(app) -> str:
    return f"http://127.0.0.1:{services_of(app).api_server.port}"


def connect(app, br: Bridge) -> None:
    br.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30), "s1 did not finish its first programming"


def slot_outputs(br: Bridge) -> set[int]:
    return {
        int(f.split("output:")[1].split(",")[0])
        for f in br.flows()
        if "table=1" in f and "output:" in f
    }


def change_is_programmed(app, br: Bridge) -> None:
    """A new change reaches the switch: barrier confirmed and the flows are there."""
    info = app.steering.pools["fw"].instances["fw2"]
    state = InstanceState.FAILED if info.state is InstanceState.ACTIVE else InstanceState.ACTIVE
    result = app.apply(lambda s: s.set_state("fw", "fw2", state, time.time()), "test change")
    assert result.wait(10), "the change was not confirmed by the switch"
    assert (info.port in slot_outputs(br)) is (state is InstanceState.ACTIVE)


def test_a_failing_handler_is_contained_reported_and_the_switch_resynced(
    app, bridge, monkeypatch, caplog
):
    caplog.set_level(logging.ERROR, logger="nfsteer")
    calls = []
    real = ofmsg.parse_flow_stats

    def broken_once(bodies, into):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(bodies, into)

    monkeypatch.setattr(ofmsg, "parse_flow_stats", broken_once)
    connect(app, bridge)  # the first read-back fails; the switch reconnects and syncs
    assert app.counters.handler_errors == 1 and len(calls) >= 2
    assert "injected fault" in caplog.text and "EventOFPFlowStatsReply" in caplog.text
    r = httpx.get(api(app) + "/healthz", timeout=5)
    assert r.status_code == 503
    assert any("EventOFPFlowStatsReply" in p for p in r.json()["problems"])
    change_is_programmed(app, bridge)
    assert app.fatal_reasons == []


def test_a_stalled_loop_fails_healthz(app, bridge):
    connect(app, bridge)
    assert httpx.get(api(app) + "/healthz", timeout=5).status_code == 200
    blocker = threading.Thread(target=lambda: app.call(lambda: time.sleep(5)), daemon=True)
    blocker.start()
    wait_for(
        lambda: httpx.get(api(app) + "/healthz", timeout=5).status_code == 503,
        8,
        "/healthz to report the stalled loop",
    )
    body = httpx.get(api(app) + "/healthz", timeout=5).json()
    assert any("has not turned" in p for p in body["problems"])
    blocker.join()
    wait_for(lambda: httpx.get(api(app) + "/healthz", timeout=5).status_code == 200, 5, "ok")
    change_is_programmed(app, bridge)


def test_mutation_failure_reaches_its_caller_and_the_loop_goes_on(app, bridge):
    connect(app, bridge)

    def boom(_s):
        raise RuntimeError("bad mutation")

    with pytest.raises(RuntimeError, match="bad mutation"):
        app.apply(boom, "test")
    change_is_programmed(app, bridge)


def test_a_loop_that_ends_anyway_ends_the_process(tmp_path):
    topo = static_topology(tmp_path)
    script = textwrap.dedent(
        f"""
        import time
        from controller.ofp.launcher import start_in_thread
        from controller.ofp.options import Options
        app, stop = start_in_thread(Options(topology={str(topo)!r},
                                            listen=("127.0.0.1", 0), api=None))
        def end_loop():
            raise SystemExit("injected")
        app.post(end_loop)
        time.sleep(20)
        print("still running")
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert r.returncode == 70, (r.returncode, r.stdout, r.stderr)
    assert "still running" not in r.stdout
    assert "event loop ended" in r.stderr


def test_foreign_entries_are_removed_at_connect(app, bridge):
    # Left by someone else, before the controller connects: one with a non-contiguous
    # mask (the controller cannot express it), one in a table it does not use, a group.
    ofctl("add-flow", bridge.name, "table=0,priority=5,ip,nw_src=10.0.0.1/255.0.255.0,actions=drop")
    ofctl("add-flow", bridge.name, "table=7,priority=1,actions=drop")
    ofctl("add-group", bridge.name, "group_id=99,type=all,bucket=output:3")
    connect(app, bridge)
    flows = bridge.flows()
    assert not [f for f in flows if "nw_src=10.0.0.1/255.0.255.0" in f], flows
    assert not [f for f in flows if "table=7" in f]
    assert "group_id=99" not in bridge.groups()
    desired = fl.desired_table(app.steering, "s1", app.routes)
    assert len(flows) == len(desired.flows)
    assert app.counters.handler_errors == 0
    change_is_programmed(app, bridge)


def test_controller_refuses_to_start_when_the_api_port_is_taken(tmp_path):
    topo = static_topology(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["controller", "--topology", str(topo), "--listen", f"127.0.0.1:{free_port()}"]
        r = subprocess.run(
            [str(NFSTEER), *args, "--api", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 2, r.stderr
    assert "REST API" in r.stderr and "Traceback" not in r.stderr
