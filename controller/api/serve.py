"""Serving the REST API: uvicorn in a daemon thread, and the rule for where it may listen."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("nfsteer.api")


class ApiConfigError(ValueError):
    """The API cannot be served as configured."""


def check_listen(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ApiConfigError(
            f"the API would listen on {host}, which is not a loopback address: "
            "set an API token (--api-token) to protect changes"
        )


class ApiServer:
    """uvicorn in a daemon thread; ``start`` returns once it listens (or raises)."""

    def __init__(
        self,
        api: FastAPI,
        host: str,
        port: int,
        on_unexpected_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.on_unexpected_exit = on_unexpected_exit
        config = uvicorn.Config(
            api,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,  # its records go to the handler the command set up
        )
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> None:
        self.thread = threading.Thread(target=self._run, name="nfsteer-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the API could not listen on {self.host}:{self.port}")
            time.sleep(0.01)
        sockets = [s for srv in self.server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("REST API on http://%s:%d", self.host, self.port)

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when it cannot bind
            pass
        except Exception as e:
            log.exception("REST API server failed")
            if self.server.started and self.on_unexpected_exit is not None:
                self.on_unexpected_exit(f"REST API server failed: {e}")
            return
        if self.server.started and not self.server.should_exit and self.on_unexpected_exit:
            self.on_unexpected_exit("REST API server stopped")

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=5)
