"""The value types every input is checked with: names, MACs, IPv4 addresses, switch ports,
capacities. One definition each, used by the topology file, the REST API, NF registrations,
the NF command line and the records read back from Redis.

Every type is an ``Annotated`` pydantic type that also works in strict models: strings are
full-matched (``re``'s ``$`` would accept a trailing newline), numbers must be real numbers
(``True`` is not a capacity of 1) and addresses are ASCII dotted decimal only.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

MAX_PORT = 0xFFFFFF00  # OFPP_MAX: higher numbers are reserved OpenFlow ports
MAX_CAPACITY = 1_000_000
VIRTUAL_MAC_PREFIX = "0e:00:"  # reserved for the MACs of virtual addresses (VIPs, NAT)
# Short: Mininet derives interface names from instance names.
NAME_PATTERN = r"[A-Za-z][A-Za-z0-9_-]{0,9}"
# \Z, not $: "$" also matches before a trailing newline. Safe with .match and .fullmatch.
NAME_RE = re.compile(NAME_PATTERN + r"\Z")
MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_DOTTED_QUAD = re.compile(r"(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}")


def is_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{short(value)} is not a name (a letter, then up to 9 letters, digits, _ or -)"
        )
    return value


def short(value: Any, limit: int = 40) -> str:
    """repr of a value, cut so that an error never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def mac(value: Any) -> str:
    """A unicast MAC, lower case; not one of the reserved virtual ``0e:00:`` MACs."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    v = value.lower()
    if not MAC_RE.fullmatch(v):
        raise ValueError(f"{short(value)} is not a MAC address like 02:00:00:00:00:01")
    if int(v[:2], 16) & 1:
        raise ValueError(f"{short(value)} is a multicast MAC address")
    if v.startswith(VIRTUAL_MAC_PREFIX):
        raise ValueError(f"{value!r}: MACs starting {VIRTUAL_MAC_PREFIX} are reserved for VIPs")
    if v == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC address")
    return v


def ipv4(value: Any) -> str:
    """An IPv4 address written in ASCII dotted decimal without leading zeros."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value.isascii() or not _DOTTED_QUAD.fullmatch(value):
        raise ValueError(f"{short(value)} is not an IPv4 address like 10.0.0.1")
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ValueError(f"{short(value)} is not an IPv4 address like 10.0.0.1") from None


def host_ipv4(value: Any) -> str:
    """An IPv4 address a host may hold: not 0.0.0.0, multicast, broadcast or loopback."""
    v = ipv4(value)
    a = ipaddress.IPv4Address(v)
    if a.is_unspecified or a.is_multicast or a.is_loopback or v == "255.255.255.255":
        raise ValueError(f"{v} cannot be the address of a host")
    return v


def interface(value: Any) -> str:
    """An address with prefix (10.0.0.1/24), not the network or broadcast address."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    addr, slash, plen = value.partition("/")
    if not slash:
        raise ValueError(f"{short(value)} needs a prefix length, like 10.0.0.1/24")
    host_ipv4(addr)
    if not plen.isascii() or not plen.isdigit() or len(plen) > 2 or int(plen) > 32:
        raise ValueError(f"{short(value)} is not an IPv4 address with prefix like 10.0.0.1/24")
    iface = ipaddress.IPv4Interface(f"{addr}/{int(plen)}")
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{value!r} is the network or broadcast address of {net}")
    return str(iface)


def network(value: Any) -> str:
    """An IPv4 prefix with no host bits set (10.0.0.0/24)."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    addr, slash, plen = value.partition("/")
    ipv4(addr)
    if slash and (not plen.isascii() or not plen.isdigit() or len(plen) > 2):
        raise ValueError(f"{short(value)} is not an IPv4 prefix like 10.0.0.0/24")
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as e:
        raise ValueError(f"{short(value)} is not an IPv4 prefix like 10.0.0.0/24 ({e})") from None


def is_network_or_broadcast_of(ip: str, iface: str) -> bool:
    """``ip`` is the network or broadcast address of the subnet of ``iface`` (a/len)."""
    net = ipaddress.IPv4Interface(iface).network
    return net.prefixlen < 31 and ipaddress.IPv4Address(ip) in (
        net.network_address,
        net.broadcast_address,
    )


def _real_number(value: Any) -> Any:
    # bool is an int subclass: {"capacity": true} must not be read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if isinstance(value, int) and abs(value) > 2**53:
        raise ValueError("must be at most 2^53")
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4_PATTERN = rf"{_OCTET}(\.{_OCTET}){{3}}"


def _schema(pattern: str, example: str, description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": f"^{pattern}$",
            "examples": [example],
            "description": description,
        }
    )


Name = Annotated[
    str,
    BeforeValidator(_name),
    _schema(NAME_PATTERN, "fw1", "a letter, then up to 9 letters, digits, _ or -"),
]
Mac = Annotated[
    str,
    BeforeValidator(mac),
    _schema(
        r"[0-9A-Fa-f][02468aceACE](:[0-9A-Fa-f]{2}){5}",
        "02:00:00:00:00:01",
        "unicast MAC address; 0e:00:... is reserved for virtual addresses",
    ),
]
IPv4 = Annotated[str, BeforeValidator(ipv4), _schema(_IPV4_PATTERN, "10.0.0.1", "IPv4 address")]
HostIPv4 = Annotated[
    str,
    BeforeValidator(host_ipv4),
    _schema(_IPV4_PATTERN, "10.0.0.1", "IPv4 address of a host (not its subnet's first or last)"),
]
Interface = Annotated[
    str,
    BeforeValidator(interface),
    _schema(_IPV4_PATTERN + r"/([0-9]|[12][0-9]|3[0-2])", "10.0.0.1/24", "address with prefix"),
]
Network = Annotated[
    str,
    BeforeValidator(network),
    _schema(_IPV4_PATTERN + r"(/([0-9]|[12][0-9]|3[0-2]))?", "10.0.0.0/24", "IPv4 prefix"),
]
SwitchPort = Annotated[
    int,
    BeforeValidator(_whole_number),
    Field(ge=1, le=MAX_PORT),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_PORT}),
]
Capacity = Annotated[
    float,
    BeforeValidator(_real_number),
    AfterValidator(float),
    Field(gt=0, le=MAX_CAPACITY, strict=False),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CAPACITY}),
]
Timestamp = Annotated[
    float,
    BeforeValidator(_real_number),
    AfterValidator(float),
    Field(ge=0, strict=False),
    WithJsonSchema({"type": "number", "minimum": 0}),
]


def check(kind: Any, value: Any) -> Any:
    """Validate one value against one of the types above; ValueError with a short reason."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as e:
        raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None


def parse_capacity(text: str) -> float:
    """A capacity given as text (command line, Redis hash field)."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"capacity {short(text)} is not a number") from None
    return check(Capacity, number)
