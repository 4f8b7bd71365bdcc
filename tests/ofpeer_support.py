"""A raw OpenFlow 1.3 peer over a plain socket, written with ``struct`` (not os-ken), for
tests that play a misbehaving switch: an impostor, an idle or silent one, a fuzzer."""

from __future__ import annotations

import socket
import struct
import threading
import time

from ovs_support import wait_for

OFP13 = 0x04
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, FEATURES_REQUEST, FEATURES_REPLY = 0, 1, 2, 3, 5, 6
HEADER = struct.Struct("!BBHI")


def header(msg_type: int, length: int, xid: int = 0, version: int = OFP13) -> bytes:
    return HEADER.pack(version, msg_type, length, xid)


def hello(version: int = OFP13, xid: int = 1) -> bytes:
    return header(HELLO, 8, xid, version)


def features_reply(dpid: int, xid: int) -> bytes:
    # datapath_id, n_buffers, n_tables, auxiliary_id, pad, capabilities, reserved
    body = struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0x4F, 0)
    return header(FEATURES_REPLY, 8 + len(body), xid) + body


def thread_count() -> int:
    return threading.active_count()


class RawPeer:
    """One TCP connection to the controller's OpenFlow port."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        host, port = self.sock.getsockname()[:2]
        self.address = f"{host}:{port}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self, timeout: float = 5.0) -> tuple[int, int, bytes] | None:
        """(type, xid, body) of the next message; None when the controller closed."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 8:
                _, msg_type, length, xid = HEADER.unpack_from(self.buf)
                if len(self.buf) >= length:
                    body, self.buf = self.buf[8:length], self.buf[length:]
                    return msg_type, xid, body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no message from the controller")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data

    def handshake(self, dpid: int) -> None:
        """Hello, then a features reply for ``dpid`` when asked."""
        self.send(hello())
        while True:
            got = self.read_message()
            assert got is not None, "the controller closed before asking for features"
            msg_type, xid, _ = got
            if msg_type == FEATURES_REQUEST:
                self.send(features_reply(dpid, xid))
                return

    def closed_by_controller(self, timeout: float) -> bool:
        """True once the controller closed this connection (messages are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.read_message(max(0.01, deadline - time.monotonic())) is None:
                    return True
            except TimeoutError:
                return False
            except OSError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def wait_threads(baseline: int, timeout: float) -> None:
    wait_for(lambda: thread_count() <= baseline, timeout, f"threads back to {baseline}")
