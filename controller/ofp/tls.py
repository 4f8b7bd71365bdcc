"""OpenFlow over TLS: the server context, and a TLS stream safe for one reader and one writer.

Switches are authenticated by certificate: the context requires one, signed by the given CA.

A switch connection is read by one thread and written by another. An ``ssl.SSLSocket`` must
not be used by two threads at once (OpenSSL objects are not thread-safe), so the TLS state
here is an ``SSLObject`` over memory buffers, used under a lock for moments only, while the
socket itself is read and written outside that lock as usual.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READ_SIZE = 64 * 1024


class TlsConfigError(ValueError):
    """A certificate or key cannot be used; the message names the option and the file."""


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # CA that signs switch certificates
    cert: Path  # the controller's certificate
    private_key: Path  # the controller's private key


def _readable(path: Path, option: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsConfigError(f"{option}: cannot read {path}: {e.strerror or e}") from None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The controller's TLS context; one-line errors naming the option that is wrong."""
    _readable(files.ca_cert, "--ca-cert")
    _readable(files.cert, "--cert")
    _readable(files.private_key, "--private-key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(files.ca_cert))
    except (ssl.SSLError, ValueError) as e:
        raise TlsConfigError(
            f"--ca-cert: {files.ca_cert} holds no usable CA certificate ({e})"
        ) from None
    try:
        ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.private_key))
    except (ssl.SSLError, ValueError) as e:
        raise TlsConfigError(
            f"--cert/--private-key: cannot use {files.cert} with {files.private_key} ({e})"
        ) from None
    return ctx


def peer_name(cert: dict[str, Any] | None) -> str:
    """The common name of a peer certificate (for logs)."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


class TlsStream:
    """The server side of a TLS connection over ``sock``, with the socket calls a switch
    connection makes (``recv``, ``sendall``, ``shutdown``, ``close``, ...)."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext):
        self.raw = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._lock = threading.Lock()  # the TLS state
        self._write_lock = threading.Lock()  # keeps records in order on the socket

    def handshake(self, timeout: float) -> None:
        """Complete the TLS handshake within ``timeout`` seconds (ssl.SSLError: refused)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            finally:
                self._flush()  # our handshake records, or the alert that refuses the peer
            if done:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("TLS handshake not complete in time")
            self.raw.settimeout(remaining)
            data = self.raw.recv(READ_SIZE)
            if not data:
                raise ConnectionError("closed during the TLS handshake")
            with self._lock:
                self._in.write(data)

    def peer_certificate(self) -> dict[str, Any] | None:
        return self._tls.getpeercert()

    def _flush(self) -> None:
        with self._write_lock:
            with self._lock:
                data = self._out.read()
            if data:
                self.raw.sendall(data)

    def recv(self, size: int) -> bytes:
        while True:
            with self._lock:
                try:
                    data = self._tls.read(size)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:  # the peer's close_notify
                    return b""
                pending_out = self._out.pending
            if pending_out:  # e.g. a key update answered by the read
                self._flush()
            if data is not None:
                return data
            raw = self.raw.recv(READ_SIZE)  # timeouts and errors reach the caller
            if not raw:
                return b""
            with self._lock:
                self._in.write(raw)

    def sendall(self, data: bytes) -> None:
        with self._write_lock:
            with self._lock:
                if data:
                    self._tls.write(data)
                out = self._out.read()
            self.raw.sendall(out)

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def fileno(self) -> int:
        return self.raw.fileno()
