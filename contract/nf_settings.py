"""Per-kind NF settings: the ``nf:`` section of a pool in a topology file.

Validated when the topology is loaded (so `nfsteer check` covers them) and read by the NF
instances of that pool. Timeouts are idle timeouts in seconds: a connection's state expires
when no packet of it has been seen for that long.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.values import ipv4, network

Timeout = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _network(value: str) -> str:
    return network(value)


def _address(value: str) -> str:
    return ipv4(value)


class StoreSync(_Strict):
    """Output commit: after a batch, ``WAIT replicas timeout_ms``; the batch's packets
    leave only once that many replicas have everything the batch wrote (else they are
    dropped, and the endpoints retransmit)."""

    replicas: Annotated[int, Field(ge=1, le=16)] = 1
    timeout_ms: Annotated[int, Field(ge=1, le=10_000)] = 50


class _NFCommon(_Strict):
    # What to do with packets that need state while the store is unreachable: drop them
    # (fail closed, the default) or forward them unchanged (fail open).
    fail_open: bool = False
    # Output commit (off by default): no packet leaves that depends on state a failover
    # could lose. Needs one primary (redis:// or redis+sentinel://), not a Redis Cluster.
    store_sync: StoreSync | None = None
    # While the store is unreachable (e.g. a failover), hold packets that need state for up
    # to this long and process them once it answers (0: drop them at once). Fail closed only.
    hold_ms: Annotated[int, Field(ge=0, le=10_000)] = 0


class FirewallRule(_Strict):
    action: Literal["allow", "deny"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    src: str | None = None
    dst: str | None = None
    dst_ports: list[Annotated[int, Field(ge=0, le=65535)]] | None = None

    _check_src = field_validator("src")(classmethod(lambda cls, v: v and _network(v)))
    _check_dst = field_validator("dst")(classmethod(lambda cls, v: v and _network(v)))

    @model_validator(mode="after")
    def _ports_need_l4(self) -> FirewallRule:
        if self.dst_ports is not None and self.proto not in ("tcp", "udp"):
            raise ValueError("dst_ports needs proto tcp or udp")
        return self


class FirewallSettings(_NFCommon):
    # Connections may be opened only from these prefixes (empty: from anywhere); replies
    # are let in by connection tracking. The rules (first match wins, else `default`)
    # decide which new connections may be opened at all.
    inside: list[str] = Field(default_factory=list)
    rules: list[FirewallRule] = Field(default_factory=list)
    # Mid-stream pickup (like conntrack's loose tracking): a TCP segment without SYN from
    # the inside whose connection the rules would allow, but which has no entry (the store
    # lost it), recreates an established entry. "off": such segments are dropped.
    pickup: Literal["inside", "off"] = "inside"
    default: Literal["allow", "deny"] = "allow"
    tcp_syn_timeout: Timeout = 30.0
    tcp_established_timeout: Timeout = 3600.0
    tcp_close_timeout: Timeout = 10.0  # after FIN from both sides or RST
    udp_timeout: Timeout = 60.0
    icmp_timeout: Timeout = 30.0

    _check_inside = field_validator("inside")(classmethod(lambda cls, v: [_network(x) for x in v]))


class NATSettings(_NFCommon):
    # Traffic from these prefixes to anywhere else leaves with source public_ip:port.
    inside: list[str] = Field(default_factory=list)
    public_ip: str | None = None  # required by a running NAT instance
    port_min: Annotated[int, Field(ge=1024, le=65535)] = 20000
    port_max: Annotated[int, Field(ge=1024, le=65535)] = 60999
    tcp_timeout: Timeout = 3600.0
    udp_timeout: Timeout = 60.0
    icmp_timeout: Timeout = 30.0

    _check_inside = field_validator("inside")(classmethod(lambda cls, v: [_network(x) for x in v]))
    _check_public = field_validator("public_ip")(classmethod(lambda cls, v: v and _address(v)))

    @model_validator(mode="after")
    def _range(self) -> NATSettings:
        if self.port_min > self.port_max:
            raise ValueError(f"port_min {self.port_min} is above port_max {self.port_max}")
        return self


class Backend(_Strict):
    ip: str
    port: Annotated[int, Field(ge=1, le=65535)]
    weight: Annotated[int, Field(ge=1, le=1000)] = 1

    _check_ip = field_validator("ip")(classmethod(lambda cls, v: _address(v)))


class VIP(_Strict):
    vip: str
    port: Annotated[int, Field(ge=1, le=65535)]
    proto: Literal["tcp", "udp"] = "tcp"
    backends: Annotated[list[Backend], Field(min_length=1)]

    _check_vip = field_validator("vip")(classmethod(lambda cls, v: _address(v)))


class LBSettings(_NFCommon):
    vips: list[VIP] = Field(default_factory=list)
    idle_timeout: Timeout = 3600.0  # backend affinity of an idle connection

    @model_validator(mode="after")
    def _unique(self) -> LBSettings:
        seen: set[tuple[str, int, str]] = set()
        backends: dict[tuple[str, int, str], tuple[str, int]] = {}
        for v in self.vips:
            key = (v.vip, v.port, v.proto)
            if key in seen:
                raise ValueError(f"vip {v.vip}:{v.port}/{v.proto} is listed twice")
            seen.add(key)
            for b in v.backends:
                bkey = (b.ip, b.port, v.proto)
                # Replies are matched to their VIP by the backend endpoint, so one backend
                # endpoint cannot serve two VIPs.
                if backends.setdefault(bkey, (v.vip, v.port)) != (v.vip, v.port):
                    raise ValueError(f"backend {b.ip}:{b.port}/{v.proto} serves two VIPs")
        return self


NFSettings = FirewallSettings | NATSettings | LBSettings
_BY_KIND: dict[str, type[BaseModel]] = {
    "firewall": FirewallSettings,
    "nat": NATSettings,
    "lb": LBSettings,
}


def settings_for_kind(kind: str, data: dict) -> NFSettings:
    """Validate ``data`` as the settings of an NF of ``kind``; ValueError on bad input."""
    if kind not in _BY_KIND:
        raise ValueError(f"unknown NF kind {kind!r} (firewall, nat or lb)")
    try:
        return _BY_KIND[kind].model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        msg = msg.removeprefix("Value error, ")
        raise ValueError(f"nf.{loc}: {msg}" if loc else f"nf: {msg}") from None
