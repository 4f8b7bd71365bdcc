"""Per-kind NF settings: the ``nf:`` section of a pool in a topology file.

Validated when the topology is loaded (so `nfsteer check` covers them) and read by the NF
instances of that pool.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FirewallRule(_Strict):
    action: Literal["allow", "deny"]
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    src: str | None = None
    dst: str | None = None
    dst_ports: list[Annotated[int, Field(ge=0, le=65535)]] | None = None


class FirewallSettings(_Strict):
    # Connections may be opened only from these prefixes; replies are let in by conntrack.
    inside: list[str] = Field(default_factory=list)
    rules: list[FirewallRule] = Field(default_factory=list)
    default: Literal["allow", "deny"] = "allow"


class NATSettings(_Strict):
    inside: list[str] = Field(default_factory=list)
    public_ip: str | None = None
    port_min: Annotated[int, Field(ge=1024, le=65535)] = 20000
    port_max: Annotated[int, Field(ge=1024, le=65535)] = 60999


class Backend(_Strict):
    ip: str
    port: Annotated[int, Field(ge=1, le=65535)]
    weight: Annotated[int, Field(ge=1, le=1000)] = 1


class VIP(_Strict):
    vip: str
    port: Annotated[int, Field(ge=1, le=65535)]
    proto: Literal["tcp", "udp"] = "tcp"
    backends: Annotated[list[Backend], Field(min_length=1)]


class LBSettings(_Strict):
    vips: list[VIP] = Field(default_factory=list)


NFSettings = FirewallSettings | NATSettings | LBSettings
_BY_KIND: dict[str, type[BaseModel]] = {
    "firewall": FirewallSettings,
    "nat": NATSettings,
    "lb": LBSettings,
}


def settings_for_kind(kind: str, data: dict) -> NFSettings:
    """Validate ``data`` as the settings of an NF of ``kind``; ValueError on bad input."""
    try:
        return _BY_KIND[kind].model_validate(data)  # type: ignore[return-value]
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbid" else first["msg"]
        raise ValueError(f"nf.{loc}: {msg}") from None
