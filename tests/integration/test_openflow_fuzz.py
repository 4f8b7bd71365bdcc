"""Raw bytes into the OpenFlow listener of a running controller (hypothesis).

One controller with the triangle topology; a real OVS bridge is its switch s1. Each case
opens a TCP connection and sends: random bytes; headers with any version, type and length
(shorter than a header, longer than what follows, up to 65535); a hello of any version; a
valid hello and features reply for a dpid (s1's, which is taken, s2's or s3's, which are in
the topology and free, or any other) followed by messages of any type with random bodies,
including multipart replies and port status of the right shape. Afterwards the controller
accepts and serves switches, its app still handles events, and the bridge gets a change
programmed end to end (barrier confirmed, flows read back with ``ovs-ofctl``).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ofpeer_support import RawPeer, features_reply, header, hello
from ovs_support import Bridge

from controller.core import flows as fl
from controller.core.switchlink import LinkTimers
from controller.core.topology import compute_routes
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
NFSTEER = Path(sys.executable).parent / "nfsteer"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
CASES = 1500
BUDGET_S = 30.0  # cases past this are skipped, so a slow machine still ends in time
MULTIPART_REPLY, PORT_STATUS = 19, 12
TIMERS = LinkTimers(handshake_s=1.0, echo_interval_s=1.0, echo_misses=3, max_pending=32)


def message(msg_type: int, body: bytes, xid: int = 0, version: int = 4) -> bytes:
    return header(msg_type, 8 + len(body), xid, version) + body


versions = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 0xFF])
any_header = st.builds(
    lambda v, t, n, x, body: header(t, n, x, v) + body,
    versions,
    st.integers(0, 255),
    st.sampled_from([0, 1, 7, 8, 9, 16, 65535]) | st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=256),
)
typed_message = st.builds(
    lambda t, body, x: message(t, body, x),
    st.integers(0, 40),
    st.binary(max_size=512),
    st.integers(0, 5),
)
multipart_reply = st.builds(
    lambda mp, flags, body: message(MULTIPART_REPLY, struct.pack("!HH4x", mp, flags) + body),
    st.sampled_from([0, 1, 2, 4, 7, 13, 0xFFFF]),
    st.sampled_from([0, 1]),
    st.binary(max_size=600),
)
port_status = st.builds(
    lambda reason, port, body: message(
        PORT_STATUS, struct.pack("!B7xI", reason, port) + body.ljust(60, b"\0")[:60]
    ),
    st.integers(0, 3),
    st.sampled_from([1, 11, 21, 0xFFFFFF00, 0xFFFFFFFF]) | st.integers(0, 2**32 - 1),
    st.binary(max_size=60),
)
hello_elements = st.builds(
    lambda v, elems: header(0, 8 + len(elems), 1, v) + elems,
    versions,
    st.lists(
        st.builds(lambda t, n, body: struct.pack("!HH", t, n) + body, st.integers(0, 3),
                  st.sampled_from([0, 1, 4, 8, 9, 64, 65535]), st.binary(max_size=12)),
        max_size=4,
    ).map(b"".join),
)  # fmt: skip
# flow stats and group desc replies whose entry, instruction, action or bucket lengths are
# 0, short or past their parent (os-ken's parsers walk them by length)
lengths = st.sampled_from([0, 4, 8, 16, 56, 65535]) | st.integers(0, 200)
flow_stats_entry = st.builds(
    lambda n, m, it, il, at, al: struct.pack("!H46xHH4xHH4xHH4x", n, 1, m, it, il, at, al),
    lengths, lengths, st.sampled_from([1, 3, 4, 5]), lengths,
    st.sampled_from([0, 0xFFFF]), lengths,
)  # fmt: skip
bad_lengths = st.one_of(
    st.builds(lambda e: message(MULTIPART_REPLY, struct.pack("!HH4x", 1, 0) + e), flow_stats_entry),
    st.builds(
        lambda n, b: message(MULTIPART_REPLY, struct.pack("!HH4xHBxIH14x", 7, 0, n, 0, 1, b)),
        lengths, lengths,
    ),
)  # fmt: skip
after_handshake = st.lists(
    st.one_of(
        typed_message,
        multipart_reply,
        port_status,
        bad_lengths,
        any_header,
        st.binary(max_size=64),
    ),
    max_size=8,
).map(b"".join)
dpids = st.sampled_from([0x101, 0x102, 0x103]) | st.integers(0, 2**64 - 1)
stream = st.one_of(
    st.binary(max_size=2048),
    st.lists(any_header, min_size=1, max_size=4).map(b"".join),
    st.builds(lambda v, rest: hello(v) + rest, versions, st.binary(max_size=256)),
    hello_elements,
    st.builds(lambda rest: hello() + rest, after_handshake),
    st.builds(lambda d, rest: hello() + features_reply(d, 1) + rest, dpids, after_handshake),
)


@pytest.fixture
def bridge(ovs) -> Iterator[Bridge]:
    b = Bridge(unique_name("fz"), 0x101, [1, 11])
    yield b
    b.delete()


def send_case(port: int, data: bytes) -> None:
    peer = RawPeer(port)
    try:
        peer.sock.sendall(data)
        peer.closed_by_controller(0.05)
    except OSError:
        pass  # the controller closed first: fine
    finally:
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()


def test_raw_bytes_do_not_stop_the_controller(bridge):
    app, stop = start_in_thread(
        Options(topology=TRIANGLE, listen=("127.0.0.1", 0), api=None, switch_link=TIMERS)
    )
    try:
        port = app.options.listen[1]
        bridge.set_controller(port)
        assert app.wait_synced("s1", 30)
        real = app.datapaths["s1"]
        cases = 0
        started = time.monotonic()

        @settings(
            max_examples=CASES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(stream)
        def one_case(data: bytes) -> None:
            nonlocal cases
            if time.monotonic() - started > BUDGET_S:
                return
            cases += 1
            send_case(port, data)

        one_case()
        took = time.monotonic() - started
        print(f"OpenFlow fuzz: {cases} cases in {took:.1f} s")
        assert cases >= 200
        # the real switch kept its connection and is programmed end to end
        assert app.datapaths["s1"] is real and real.is_active
        result = app.apply(lambda s: s.set_capacity("fw", "fw1", 3, time.time()), "after fuzz")
        assert result.changes[0].moved
        assert result.wait(15), "the switch did not confirm a change after the fuzzing"
        want = fl.desired_table(app.steering, "s1", compute_routes(app.steering.topology))
        got = {int(c.split("=")[1].rstrip(","), 16) for c in _cookies(bridge)}
        assert got == {f.cookie for f in want.flows.values()}
        # and a new switch is still accepted: a fresh connection completes the handshake
        peer = RawPeer(port)
        try:
            peer.handshake(dpid=0x7777)
        finally:
            peer.close()
    finally:
        stop()
    assert_nothing_left_running()


def test_zero_lengths_close_the_connection_and_nothing_spins():
    """A hello element of length 0, and after a handshake a flow stats reply with an action
    of length 0: os-ken's parsers would loop on either forever. The connection is closed
    within a second, no thread keeps a CPU busy, and the controller's threads end."""
    app, stop = start_in_thread(
        Options(topology=TRIANGLE, listen=("127.0.0.1", 0), api=None, switch_link=TIMERS)
    )
    try:
        port = app.options.listen[1]
        peer = RawPeer(port)
        peer.send(header(0, 12, 1) + struct.pack("!HH", 1, 0))
        assert peer.closed_by_controller(1.0), "a hello element of length 0 was not refused"
        peer.close()
        peer = RawPeer(port)
        peer.handshake(dpid=0x102)  # s2, free: the controller asks for its table
        entry = struct.pack("!H46xHH4xHH4xHH4x", 72, 1, 4, 4, 16, 0, 0)  # action length 0
        peer.send(message(MULTIPART_REPLY, struct.pack("!HH4x", 1, 0) + entry))
        assert peer.closed_by_controller(1.0), "a flow stats action of length 0 was not refused"
        peer.close()
        assert busy_threads(1.0) == [], "a thread spins"
    finally:
        stop()
    assert_nothing_left_running()


def cpu_ticks() -> dict[str, int]:
    """utime + stime of each thread of this process, in clock ticks."""
    out = {}
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[stat.parent.name] = int(fields[11]) + int(fields[12])
    return out


def busy_threads(seconds: float) -> list[str]:
    """Threads that used more than half of a CPU over ``seconds``."""
    before = cpu_ticks()
    time.sleep(seconds)
    after = cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    return [t for t, n in after.items() if (n - before.get(t, n)) / hz > seconds / 2]


def assert_nothing_left_running() -> None:
    """After stop(): no connection, watchdog or loop thread of the controller is left, and
    no thread of this process keeps a CPU busy (pytest can exit)."""
    ours = ("_serve", "_send_then_shutdown", "_watch", "_accept_loop", "nfsteer-loop")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [t.name for t in threading.enumerate() if any(n in t.name for n in ours)]
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"controller threads still running after stop: {left}"
    assert busy_threads(1.0) == [], "a thread still spins after stop"


def _cookies(bridge: Bridge) -> list[str]:
    return [part for line in bridge.flows() for part in line.split() if part.startswith("cookie=")]


def test_the_controller_process_exits_after_a_malformed_hello():
    """The real process: a malformed hello, then SIGTERM: it exits at once with status 0
    (no thread of a connection keeps it alive)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(NFSTEER), "controller", "--topology", str(TRIANGLE), "--listen",
         f"127.0.0.1:{port}", "--api", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                peer = RawPeer(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the controller did not listen"
                time.sleep(0.1)
        peer.send(header(0, 12, 1) + struct.pack("!HH", 1, 0))
        assert peer.closed_by_controller(2.0)
        peer.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "hello element at byte 8: length 0" in out


def test_a_message_in_hand_past_the_budget_is_fatal(monkeypatch):
    """The last resort behind the framing check: a message whose handling never ends (here
    a check slowed down) stops the controller with one line, instead of a silent spin."""
    from controller.ofp import listener, wire

    monkeypatch.setattr(listener, "MESSAGE_BUDGET_S", 0.5)
    real_check = wire.check

    def slow_check(msg_type: int, data: bytes) -> str | None:
        time.sleep(3.0)  # stands in for a parser that does not return
        return real_check(msg_type, data)

    monkeypatch.setattr(wire, "check", slow_check)
    reasons: list[str] = []
    app, stop = start_in_thread(
        Options(topology=TRIANGLE, listen=("127.0.0.1", 0), api=None, switch_link=TIMERS),
        on_fatal=reasons.append,
    )
    peer = RawPeer(app.options.listen[1])
    try:
        peer.send(header(0, 8, 1))
        deadline = time.monotonic() + 2.5
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(reasons) == 1 and "one message has been in hand" in reasons[0], reasons
    finally:
        peer.close()
        stop()
