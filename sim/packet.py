"""A packet as the switch model sees it: the header fields :mod:`controller.core.flows`
matches on and rewrites, and how one OXM match field compares against it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from controller.core import flows as fl
from controller.core.hashing import FiveTuple

OFPVID_PRESENT = 0x1000
ARP_FIELDS = {"arp_op": 16, "arp_sha": 48, "arp_spa": 32, "arp_tha": 48, "arp_tpa": 32}
FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "ipv4_src": 32, "ipv4_dst": 32, **ARP_FIELDS}


@dataclass
class Packet:
    eth_src: str = "02:00:00:00:00:99"
    eth_dst: str = "ff:ff:ff:ff:ff:ff"
    eth_type: int = fl.ETH_IPV4
    vlan: int | None = None  # VID when tagged
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    ip_proto: int | None = None
    sport: int | None = None
    dport: int | None = None
    arp_op: int | None = None
    arp_sha: str | None = None
    arp_spa: str | None = None
    arp_tha: str | None = None
    arp_tpa: str | None = None

    @classmethod
    def l4(cls, proto: int, src: str, dst: str, sport: int, dport: int, **kw: Any) -> Packet:
        return cls(ipv4_src=src, ipv4_dst=dst, ip_proto=proto, sport=sport, dport=dport, **kw)

    @classmethod
    def arp(cls, tpa: str, **kw: Any) -> Packet:
        """An ARP request for ``tpa`` unless ``arp_op`` says otherwise; the sender MAC
        defaults to the Ethernet source."""
        kw.setdefault("arp_op", fl.ARP_REQUEST)
        kw.setdefault("eth_src", cls.eth_src)
        kw.setdefault("arp_sha", kw["eth_src"])
        kw.setdefault("arp_spa", "10.0.0.99")
        kw.setdefault("arp_tha", "00:00:00:00:00:00")
        return cls(eth_type=fl.ETH_ARP, arp_tpa=tpa, **kw)

    def five_tuple(self) -> FiveTuple:
        return FiveTuple(
            self.ipv4_src or "0.0.0.0",
            self.ipv4_dst or "0.0.0.0",
            self.ip_proto or 0,
            self.sport or 0,
            self.dport or 0,
        )

    def field(self, name: str, regs: dict[str, int], in_port: int) -> Any:
        """Value of an OXM field, or None when the packet has no such field."""
        ip = self.eth_type == fl.ETH_IPV4
        if name == "in_port":
            return in_port
        if name in ("metadata", "reg0"):
            return regs[name]
        if name == "eth_type":
            return self.eth_type
        if name in ("eth_src", "eth_dst"):
            return getattr(self, name)
        if name == "vlan_vid":
            return OFPVID_PRESENT | self.vlan if self.vlan is not None else 0
        if name == "ip_proto":
            return self.ip_proto if ip else None
        if name in ("ipv4_src", "ipv4_dst"):
            return getattr(self, name) if ip else None
        if name in ARP_FIELDS:
            return getattr(self, name) if self.eth_type == fl.ETH_ARP else None
        for proto, l4 in ((6, "tcp"), (17, "udp")):
            if name == f"{l4}_src":
                return self.sport if ip and self.ip_proto == proto else None
            if name == f"{l4}_dst":
                return self.dport if ip and self.ip_proto == proto else None
        raise ValueError(f"the switch model does not match on field {name!r}")


def field_matches(actual: Any, wanted: Any) -> bool:
    """A packet's field value against one match value (exact, or (value, mask))."""
    if actual is None:
        return False
    if isinstance(wanted, tuple):
        value, mask = wanted
        if isinstance(value, str) and "." in value:
            net = ipaddress.IPv4Network(f"{value}/{mask}")
            return ipaddress.IPv4Address(actual) in net
        return (actual & mask) == (value & mask)
    return actual == wanted
