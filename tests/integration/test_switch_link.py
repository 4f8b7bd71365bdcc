"""Switch connections against a real OVS bridge and raw OpenFlow peers: who owns a dpid,
idle and silent connections, the accept loop, OpenFlow over TLS with ``ovs-pki``
certificates.

Every test ends with the real bridge getting a change programmed: the barrier confirmed and
the flows read back from the switch with ``ovs-ofctl dump-flows``.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from conftest import free_port, require, unique_name
from ofpeer_support import RawPeer, header, hello, thread_count, wait_threads
from ovs_support import Bridge, static_single, vsctl, wait_for

from controller.core import flows as fl
from controller.core.switchlink import LinkTimers
from controller.core.topology import compute_routes
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options
from controller.ofp.tls import TlsFiles

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
SINGLE_PORTS = [1, 2, 3, 4, 5, 11, 12, 13, 14]
NFSTEER = Path(sys.executable).parent / "nfsteer"
COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")
FAST = LinkTimers(handshake_s=1.0, echo_interval_s=0.4, echo_misses=3, max_pending=64)


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    return static_single(tmp_path)


@pytest.fixture
def bridge(ovs) -> Iterator[Bridge]:
    b = Bridge(unique_name("sl"), 1, SINGLE_PORTS)
    yield b
    b.delete()


@pytest.fixture
def controller() -> Iterator:
    stops = []

    def start(topology: Path, **kw):
        kw.setdefault("api", None)
        app, stop = start_in_thread(Options(topology=topology, listen=("127.0.0.1", 0), **kw))
        stops.append(stop)
        return app, stop

    yield start
    for stop in stops:
        stop()


def cookies_in(bridge: Bridge) -> set[int]:
    return {int(c, 16) for line in bridge.flows() for c in COOKIE.findall(line)}


def assert_programs_a_change(app, bridge: Bridge, capacity: int = 3) -> None:
    """A pool change reaches the bridge: barrier confirmed, table as computed."""
    result = app.apply(lambda s: s.set_capacity("fw", "fw1", capacity, time.time()), "test")
    assert result.changes[0].moved, "the change moves no slot"
    assert result.wait(10), "the switch did not confirm the change"
    want = fl.desired_table(app.steering, "s1", compute_routes(app.steering.topology))
    assert cookies_in(bridge) == {f.cookie for f in want.flows.values()}


# -- who owns a dpid -------------------------------------------------------------------------


def test_second_connection_for_a_live_dpid_is_refused(topology, bridge, controller, caplog):
    caplog.set_level(logging.INFO, logger="nfsteer")
    api_port = free_port()
    app, _ = controller(topology, api=("127.0.0.1", api_port))
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    real = app.datapaths["s1"]

    impostor = RawPeer(app.options.listen[1])
    try:
        impostor.handshake(dpid=1)
        assert impostor.closed_by_controller(5), "the impostor was not refused"
    finally:
        impostor.close()
    wait_for(lambda: "refused" in caplog.text, 5, "the refusal to be logged")
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    real_address = "{}:{}".format(*real.address[:2])
    assert impostor.address in refused[0] and real_address in refused[0]
    assert app.datapaths["s1"] is real
    health = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=5).json()
    assert health["switches"] == ["s1"]
    assert_programs_a_change(app, bridge)


def test_a_reconnecting_switch_is_not_taken_for_an_impostor(topology, bridge, controller, caplog):
    """`bridge/reconnect` drops the bridge's connection and opens a new one at once: the
    new one gets in (its old connection is given a moment to end), never refused."""
    caplog.set_level(logging.INFO, logger="nfsteer")
    app, _ = controller(topology)
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    for _ in range(2):
        old = app.datapaths["s1"]
        subprocess.run(["ovs-appctl", "bridge/reconnect", bridge.name], check=True)
        wait_for(lambda o=old: app.datapaths.get("s1") not in (None, o), 10, "a new connection")
        assert app.wait_synced("s1", 10)
    assert "refused" not in caplog.text
    assert_programs_a_change(app, bridge)


def test_silent_owner_of_a_dpid_gives_way_to_the_real_switch(topology, bridge, controller):
    """A peer that completes the handshake for the bridge's dpid and then goes silent (it
    answers no echo) is closed as dead, and the bridge takes over."""
    app, _ = controller(topology, switch_link=FAST)
    squatter = RawPeer(app.options.listen[1])
    try:
        squatter.handshake(dpid=1)
        wait_for(lambda: "s1" in app.datapaths, 5, "the squatter to be taken as s1")
        bridge.set_controller(app.options.listen[1])
        assert squatter.closed_by_controller(5), "the silent peer was not closed"
        assert app.wait_synced("s1", 30)
    finally:
        squatter.close()
    assert app.datapaths["s1"].address[1] != int(squatter.address.split(":")[1])
    assert_programs_a_change(app, bridge)


# -- idle connections ------------------------------------------------------------------------


def test_idle_connections_are_closed_and_their_threads_end(topology, bridge, controller):
    app, _ = controller(topology, switch_link=FAST)
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    baseline = thread_count()
    port = app.options.listen[1]
    mute = [RawPeer(port) for _ in range(150)]  # nothing at all
    greeted = [RawPeer(port) for _ in range(30)]  # a hello, then nothing
    for p in greeted:
        p.send(hello())
    silent = [RawPeer(port) for _ in range(20)]  # features for unknown dpids, then nothing
    for i, p in enumerate(silent):
        p.handshake(dpid=0x9000 + i)
    peak = thread_count()
    try:
        for p in mute + greeted + silent:
            assert p.closed_by_controller(10), "an idle connection was left open"
        wait_threads(baseline, 10)
    finally:
        for p in mute + greeted + silent:
            p.close()
    print(f"200 idle connections: {baseline} threads before, {peak} at peak, back after")
    # at most max_pending connections in the handshake: 2 threads each, plus the handshaken
    assert peak - baseline <= 2 * (FAST.max_pending + len(silent)) + 4
    assert app.datapaths["s1"].is_active
    assert_programs_a_change(app, bridge)


def test_a_switch_that_answers_echoes_stays(topology, bridge, controller):
    """With an echo interval far below OVS's own probe interval, the bridge is kept alive by
    its echo replies alone."""
    app, _ = controller(topology, switch_link=FAST)
    bridge.set_controller(app.options.listen[1])
    vsctl("set", "controller", bridge.name, "inactivity_probe=30000")
    assert app.wait_synced("s1", 30)
    dp = app.datapaths["s1"]
    time.sleep(FAST.dead_after_s * 3)
    assert app.datapaths["s1"] is dp and dp.echo_sent is not None
    assert_programs_a_change(app, bridge)


def test_a_busy_controller_does_not_take_its_backlog_for_a_dead_switch(
    topology, bridge, controller
):
    """The reader of a switch's connection stalls handing an event to the app (as behind a
    full event queue) for three times the dead limit: the switch is not silent, it is kept."""
    app, _ = controller(topology, switch_link=FAST)
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    dp = app.datapaths["s1"]
    brick = dp.ofp_brick
    forward = brick.send_event_to_observers
    stalled = threading.Event()

    def slow(ev, state=None):
        if getattr(getattr(ev, "msg", None), "datapath", None) is dp and not stalled.is_set():
            stalled.set()
            time.sleep(FAST.dead_after_s * 3)
        return forward(ev, state)

    brick.send_event_to_observers = slow
    try:
        wait_for(stalled.is_set, 10, "an event from the switch")  # port stats every 2 s
        time.sleep(FAST.dead_after_s * 3 + 0.5)
    finally:
        del brick.send_event_to_observers
    assert app.datapaths["s1"] is dp and dp.is_active
    assert_programs_a_change(app, bridge)


# -- the accept loop -------------------------------------------------------------------------


def test_accept_loop_survives_a_failing_connection_thread(topology, bridge, controller, caplog):
    """No thread for one connection (as when the process is out of threads): that
    connection is dropped and logged, the next is served."""
    from controller.ofp import listener

    app, _ = controller(topology)
    real_spawn = listener.spawn_daemon
    failed = threading.Event()

    def spawn(fn, *args):
        if getattr(fn, "__name__", "") == "_serve" and not failed.is_set():
            failed.set()
            raise RuntimeError("can't start new thread")
        return real_spawn(fn, *args)

    listener.spawn_daemon = spawn
    try:
        victim = RawPeer(app.options.listen[1])
        assert victim.closed_by_controller(5)
        victim.close()
    finally:
        listener.spawn_daemon = real_spawn
    assert "can't start new thread" in caplog.text
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    assert_programs_a_change(app, bridge)


def test_an_exception_in_one_connection_ends_that_connection_only(
    topology, bridge, controller, caplog
):
    """os-ken's error handler decodes a HELLO_FAILED error's data as ASCII and raises on
    anything else: the peer that sends one is logged by address and dropped; the bridge,
    connected before and after, is not disturbed."""
    caplog.set_level(logging.INFO, logger="nfsteer")
    app, _ = controller(topology)
    bridge.set_controller(app.options.listen[1])
    assert app.wait_synced("s1", 30)
    real = app.datapaths["s1"]
    peer = RawPeer(app.options.listen[1])
    try:
        body = struct.pack("!HH", 0, 0) + b"\xff\xfe"  # OFPET_HELLO_FAILED, code 0
        peer.send(header(1, 8 + len(body), 7) + body)
        assert peer.closed_by_controller(5)
    finally:
        peer.close()
    wait_for(lambda: f"connection from {peer.address} failed" in caplog.text, 5, "the log")
    assert app.datapaths["s1"] is real and real.is_active
    assert_programs_a_change(app, bridge)


def test_process_exits_when_the_accept_loop_dies(topology, tmp_path):
    """Crash-only: a listener that fails for good ends the process with status 1 and one
    line saying why (here accept() is made to fail in the real process)."""
    port = free_port()
    code = (
        "import socket, sys\n"
        "from cli import main as cli\n"
        "def accept(self):\n"
        "    raise ValueError('injected accept failure')\n"
        "socket.socket.accept = accept\n"
        f"sys.exit(cli.main(['controller', '--topology', {str(topology)!r}, "
        f"'--listen', '127.0.0.1:{port}', '--api', 'off']))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "exiting: OpenFlow accept loop failed" in last and "injected" in last
    assert "Traceback" not in r.stderr


# -- OpenFlow over TLS -----------------------------------------------------------------------


def _pki(workdir: Path, *args: str) -> None:
    subprocess.run(
        ["ovs-pki", "--force", f"--dir={workdir / 'pki'}", *args],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """Two PKIs made by ovs-pki: ours (controller and switch certificates) and a stranger's
    (a switch certificate from another CA)."""
    require(shutil.which("ovs-pki") is not None, "ovs-pki")
    ours = tmp_path_factory.mktemp("pki")
    other = tmp_path_factory.mktemp("otherpki")
    _pki(ours, "init")
    _pki(ours, "req+sign", "ctl", "controller")
    _pki(ours, "req+sign", "sw", "switch")
    _pki(other, "init")
    _pki(other, "req+sign", "sw", "switch")
    return {
        "switch_ca": ours / "pki" / "switchca" / "cacert.pem",
        "controller_ca": ours / "pki" / "controllerca" / "cacert.pem",
        "ctl_cert": ours / "ctl-cert.pem",
        "ctl_key": ours / "ctl-privkey.pem",
        "sw_cert": ours / "sw-cert.pem",
        "sw_key": ours / "sw-privkey.pem",
        "other_sw_cert": other / "sw-cert.pem",
        "other_sw_key": other / "sw-privkey.pem",
    }


@pytest.fixture
def ovs_ssl(ovs) -> Iterator:
    """Set ovs-vswitchd's (global) TLS key, certificate and CA; cleared afterwards."""

    def set_ssl(key: Path, cert: Path, ca: Path) -> None:
        vsctl("del-ssl")
        vsctl("set-ssl", str(key), str(cert), str(ca))

    yield set_ssl
    vsctl("del-ssl")


def _tls_files(pki: dict[str, Path]) -> TlsFiles:
    return TlsFiles(pki["switch_ca"], pki["ctl_cert"], pki["ctl_key"])


def test_tls_switch_with_a_certificate_from_our_ca(topology, bridge, controller, pki, ovs_ssl):
    ovs_ssl(pki["sw_key"], pki["sw_cert"], pki["controller_ca"])
    app, _ = controller(topology, listen_tls=_tls_files(pki))
    vsctl("set-controller", bridge.name, f"ssl:127.0.0.1:{app.options.listen[1]}")
    assert app.wait_synced("s1", 30), "the switch did not connect over TLS"
    # nothing in clear text is served: a plain OpenFlow hello gets no answer
    plain = RawPeer(app.options.listen[1])
    try:
        plain.send(hello())
        assert plain.closed_by_controller(5)
    finally:
        plain.close()
    assert_programs_a_change(app, bridge)


def test_tls_switch_with_a_certificate_from_another_ca_is_refused(
    topology, bridge, controller, pki, ovs_ssl, caplog
):
    caplog.set_level(logging.INFO, logger="nfsteer")
    ovs_ssl(pki["other_sw_key"], pki["other_sw_cert"], pki["controller_ca"])
    app, _ = controller(topology, listen_tls=_tls_files(pki))
    vsctl("set-controller", bridge.name, f"ssl:127.0.0.1:{app.options.listen[1]}")
    wait_for(lambda: "TLS handshake with" in caplog.text, 15, "a refused TLS handshake")
    assert "certificate verify failed" in caplog.text.lower() or "CERTIFICATE" in caplog.text
    assert not app.datapaths
    assert not bridge.flows()
    # the same bridge with a certificate from our CA gets in and is programmed
    ovs_ssl(pki["sw_key"], pki["sw_cert"], pki["controller_ca"])
    assert app.wait_synced("s1", 30)
    assert_programs_a_change(app, bridge)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--listen", "ssl:127.0.0.1:0"], "needs --ca-cert, --cert and --private-key"),
        (["--ca-cert", "/etc/hostname"], "need --listen ssl:"),
        (["--tls-files", "missing-ca"], "--ca-cert: cannot read"),
        (["--tls-files", "missing-key"], "--private-key: cannot read"),
        (["--tls-files", "swapped"], "--cert/--private-key: cannot use"),
        (["--tls-files", "not-a-ca"], "--ca-cert:"),
        (["--echo-interval", "0"], "--echo-interval"),
        (["--echo-misses", "0"], "--echo-misses"),
        (["--handshake-timeout", "nan"], "--handshake-timeout"),
        (["--max-handshakes", "0"], "--max-handshakes"),
        (["--listen", "udp:127.0.0.1:1"], "--listen"),
    ],
)
def test_bad_switch_link_options_are_one_line(topology, pki, tmp_path, extra, message):
    files = {
        "missing-ca": [tmp_path / "none.pem", pki["ctl_cert"], pki["ctl_key"]],
        "missing-key": [pki["switch_ca"], pki["ctl_cert"], tmp_path / "none.pem"],
        "swapped": [pki["switch_ca"], pki["ctl_cert"], pki["sw_key"]],
        "not-a-ca": [topology, pki["ctl_cert"], pki["ctl_key"]],
    }
    if extra[0] == "--tls-files":
        ca, cert, key = files[extra[1]]
        extra = ["--listen", "ssl:127.0.0.1:0", "--ca-cert", str(ca), "--cert", str(cert)]
        extra += ["--private-key", str(key)]
    r = subprocess.run(
        [str(NFSTEER), "controller", "--topology", str(topology), "--api", "off", *extra],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_tls_options_are_mirrored_in_os_ken_conf(topology, controller, pki):
    from os_ken import cfg

    app, stop = controller(topology, listen_tls=_tls_files(pki))
    conf = cfg.CONF
    assert conf.ofp_ssl_listen_port == app.options.listen[1]
    assert conf.ca_certs == str(pki["switch_ca"]) and conf.ctl_cert == str(pki["ctl_cert"])
    assert conf.ctl_privkey == str(pki["ctl_key"])
    stop()
    app2, _ = controller(topology, switch_link=replace(FAST, echo_interval_s=0.5))
    assert conf.ofp_tcp_listen_port == app2.options.listen[1] and conf.ca_certs is None
    assert conf.echo_request_interval == 0.5
