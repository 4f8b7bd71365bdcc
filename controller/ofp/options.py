"""Controller options: from the command line (`nfsteer controller`) or from the environment.

When the app is loaded by some other os-ken AppManager, nothing passes it arguments, so it
reads these environment variables:

=========================  ================================================  ==============
variable                   meaning                                           default
=========================  ================================================  ==============
NFSTEER_TOPOLOGY           topology YAML file (required)                     -
NFSTEER_REDIS              Redis URL (``redis://[:password@]host:port/db``)  no Redis
NFSTEER_LISTEN             OpenFlow [tcp:|ssl:]HOST:PORT (informational:     127.0.0.1:6653
                           the listener belongs to the AppManager's os-ken
                           CONF)
NFSTEER_API                REST API / metrics HOST:PORT, or ``off``          127.0.0.1:8080
NFSTEER_API_TOKEN          bearer token the REST API requires for changes    none
                           (required when the API is not on loopback)
NFSTEER_HEARTBEAT_TTL_MS   heartbeat expiry for registered instances         500
NFSTEER_LOG_LEVEL          DEBUG, INFO, WARNING, ERROR                       INFO
NFSTEER_ID                 this controller's name among several (Redis)      host-pid
NFSTEER_LEASE_MS           the leader's lease (renewed every lease / 4)      3000
=========================  ================================================  ==============

``api`` is None (``--api off``, ``NFSTEER_API=off``) to run without the REST API and metrics
endpoint, e.g. for several controllers in one process.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.core.leadership import DEFAULT_LEASE_MS, check_lease
from controller.core.switchlink import LinkTimers
from controller.ofp.tls import TlsFiles

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
API_OFF = "off"
DEFAULT_LISTEN = ("127.0.0.1", 6653)
DEFAULT_API = ("127.0.0.1", 8080)
DEFAULT_HEARTBEAT_TTL_MS = 500
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class OptionsError(ValueError):
    """An option has an invalid value; the message names the option."""


@dataclass(frozen=True)
class Options:
    topology: Path
    redis_url: str | None = None
    listen: tuple[str, int] = DEFAULT_LISTEN
    api: tuple[str, int] | None = DEFAULT_API  # None: no REST API / metrics endpoint
    api_token: str | None = None
    heartbeat_ttl_ms: int = DEFAULT_HEARTBEAT_TTL_MS
    log_level: str = "INFO"
    listen_tls: TlsFiles | None = None  # OpenFlow over TLS (``--listen ssl:...``)
    # handshake and echo timers of switch connections
    switch_link: LinkTimers = field(default_factory=LinkTimers)
    # Several controllers (with Redis): this one's name, and the leader's lease.
    controller_id: str | None = None  # default: host name and pid
    lease_ms: int = DEFAULT_LEASE_MS
    lease_renew_ms: int | None = None  # default: lease / 4

    def __post_init__(self) -> None:
        if (
            not isinstance(self.heartbeat_ttl_ms, int)
            or not 10 <= self.heartbeat_ttl_ms <= 3_600_000
        ):
            raise OptionsError(
                f"heartbeat TTL must be between 10 and 3600000 ms, not {self.heartbeat_ttl_ms!r}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise OptionsError(
                f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}"
            )
        if self.redis_url is not None:
            from contract.storeurl import StoreURLError, check_url

            try:
                check_url(self.redis_url)
            except StoreURLError as e:
                raise OptionsError(f"Redis URL: {e}") from None
        if self.api is not None:
            # The rule lives with the API server; imported here only when it applies.
            from controller.api.routes import ApiConfigError, check_listen

            try:
                check_listen(self.api[0], self.api_token)
            except ApiConfigError as e:
                raise OptionsError(str(e)) from None
        problem = check_lease(self.lease_ms, self.lease_renew_ms)
        if problem:
            raise OptionsError(problem)
        if self.controller_id is not None and not ID_RE.fullmatch(self.controller_id):
            raise OptionsError(
                f"controller id {self.controller_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        object.__setattr__(self, "log_level", self.log_level.upper())
        object.__setattr__(self, "topology", Path(self.topology))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Options:
        env = os.environ if environ is None else environ
        topology = env.get("NFSTEER_TOPOLOGY")
        if not topology:
            raise OptionsError("NFSTEER_TOPOLOGY must name the topology file")
        ttl = env.get("NFSTEER_HEARTBEAT_TTL_MS", str(DEFAULT_HEARTBEAT_TTL_MS))
        try:
            ttl_ms = int(ttl)
        except ValueError:
            raise OptionsError(f"NFSTEER_HEARTBEAT_TTL_MS: {ttl!r} is not a number") from None
        return cls(
            topology=Path(topology),
            redis_url=env.get("NFSTEER_REDIS") or None,
            listen=parse_listen(env.get("NFSTEER_LISTEN", ""), "NFSTEER_LISTEN")[1],
            api=parse_api(env.get("NFSTEER_API", ""), "NFSTEER_API"),
            api_token=env.get("NFSTEER_API_TOKEN") or None,
            heartbeat_ttl_ms=ttl_ms,
            log_level=env.get("NFSTEER_LOG_LEVEL", "INFO"),
            controller_id=env.get("NFSTEER_ID") or None,
            lease_ms=_int_env(env, "NFSTEER_LEASE_MS", DEFAULT_LEASE_MS),
        )


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise OptionsError(f"{name}: {text!r} is not a number") from None


def parse_listen(text: str, what: str = "--listen") -> tuple[bool, tuple[str, int]]:
    """``[tcp:|ssl:]HOST:PORT`` (see :func:`parse_hostport`): (TLS or not, address)."""
    scheme, sep, rest = text.strip().partition(":")
    if sep and scheme.lower() in ("tcp", "ssl"):
        return scheme.lower() == "ssl", parse_hostport(rest, DEFAULT_LISTEN, what)
    return False, parse_hostport(text, DEFAULT_LISTEN, what)


def parse_api(text: str, what: str = "--api") -> tuple[str, int] | None:
    """The API address: like :func:`parse_hostport`, or ``off`` for no API."""
    if text.strip().lower() == API_OFF:
        return None
    return parse_hostport(text, DEFAULT_API, what)


def parse_hostport(text: str, default: tuple[str, int], what: str = "address") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT``, ``HOST`` or ``[v6]:PORT``; empty means the default."""
    text = text.strip()
    if not text:
        return default
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    host = host or default[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise OptionsError(f"{what}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    if not port_text:
        return host, default[1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise OptionsError(f"{what}: port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)
