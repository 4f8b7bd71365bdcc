"""The switch's flow hash, computed off the switch.

The controller steers with the Nicira ``multipath`` action::

    multipath(symmetric_l3l4+udp, BASIS, modulo_n, N_SLOTS, 0, NXM_NX_REG0[0..15])

which writes a slot number into reg0; a table then maps each slot to an instance. This
module re-implements exactly what Open vSwitch 3.1 computes for that action, so that the
controller (and ``nfsteer lookup``) can say which slot, hence which instance, serves a
5-tuple without asking the switch:

- ``flow_hash_symmetric_l3l4(flow, basis, inc_udp_ports=true)`` (lib/flow.c): starting from
  ``basis``, ``hash_add`` the XOR of the two IPv4 addresses, then the IP protocol, then (TCP,
  SCTP, UDP only) the XOR of the two L4 ports; finish with ``hash_finish(hash, basis)``.
  XOR makes the hash symmetric: both directions of a connection get the same slot.
  Addresses and ports are network-order fields that OVS reads as host-order (little-endian)
  integers, so the bytes are taken little-endian here.
- ``hash_add``/``hash_finish`` (lib/hash.h): Debian builds OVS for generic x86-64 (no
  ``__SSE4_2__``), so the murmur-style ``mhash`` path is used, not the CRC32 one.
  ``tests/test_hashing.py`` checks this against the running switch.
- ``modulo_n`` (lib/multipath.c): ``hash % n_links``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from contract.values import ipv4, short

# nx_hash_fields / nx_mp_algorithm numbers from OVS include/openflow/nicira-ext.h. os-ken
# names only some of them (no NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP), so the numbers are here.
MULTIPATH_FIELDS = 3  # NX_HASH_FIELDS_SYMMETRIC_L3L4_UDP
MULTIPATH_ALGORITHM = 0  # NX_MP_ALG_MODULO_N

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
_PORTED = (6, 17, 132)  # protocols whose ports enter the hash (+udp variant)
_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class FiveTuple:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int

    @classmethod
    def parse(
        cls, src: str, dst: str, proto: str | int, sport: str | int, dport: str | int
    ) -> FiveTuple:
        """Validate and normalise; raises ValueError with a one-line reason."""
        addrs = []
        for what, value in (("source", src), ("destination", dst)):
            try:
                addrs.append(ipv4(str(value).strip()))
            except ValueError:
                raise ValueError(f"{what} address {short(value)} is not an IPv4 address") from None
        number = _parse_proto(proto)
        ports = []
        for what, value in (("source", sport), ("destination", dport)):
            text = value.strip() if isinstance(value, str) else None
            if text is not None and not (text.isascii() and text.isdigit() and len(text) <= 5):
                raise ValueError(f"{what} port {short(value)} is not a number from 0 to 65535")
            try:
                port = int(text, 10) if text is not None else int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{what} port {short(value)} is not a number") from None
            if isinstance(value, bool) or not 0 <= port <= 65535:
                raise ValueError(f"{what} port {short(value)} is not between 0 and 65535")
            ports.append(port)
        return cls(addrs[0], addrs[1], number, ports[0], ports[1])

    def reversed(self) -> FiveTuple:
        return FiveTuple(self.dst, self.src, self.proto, self.dport, self.sport)


def _parse_proto(proto: str | int) -> int:
    if isinstance(proto, str):
        name = proto.strip().lower()
        if name in PROTOCOLS:
            return PROTOCOLS[name]
        if not (name.isascii() and name.isdigit() and len(name) <= 3):
            known = ", ".join(PROTOCOLS)
            raise ValueError(f"protocol {proto!r} is not one of {known} or a number 0-255")
        proto = int(name)
    if isinstance(proto, bool) or not isinstance(proto, int) or not 0 <= proto <= 255:
        raise ValueError(f"protocol {proto!r} is not one of tcp, udp, icmp or a number 0-255")
    return proto


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def hash_add(hash_: int, data: int) -> int:
    """OVS mhash_add (murmur3 body step)."""
    data = (data * 0xCC9E2D51) & _M32
    data = _rot(data, 15)
    data = (data * 0x1B873593) & _M32
    hash_ = _rot(hash_ ^ data, 13)
    return (hash_ * 5 + 0xE6546B64) & _M32


def hash_finish(hash_: int, final: int) -> int:
    """OVS hash_finish on the mhash path: mhash_finish(hash ^ final)."""
    h = (hash_ ^ final) & _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def flow_hash(ft: FiveTuple, basis: int = 0) -> int:
    """OVS 3.1 flow_hash_symmetric_l3l4(flow, basis, inc_udp_ports=true) for IPv4."""
    src = ipaddress.IPv4Address(ft.src).packed
    dst = ipaddress.IPv4Address(ft.dst).packed
    # ovs_be32 read as a host-order uint32 on a little-endian machine.
    addr_xor = int.from_bytes(bytes(a ^ b for a, b in zip(src, dst, strict=True)), "little")
    h = hash_add(basis, addr_xor)
    h = hash_add(h, ft.proto)
    if ft.proto in _PORTED:
        # ovs_be16 (tp_src ^ tp_dst) read as a host-order uint16.
        h = hash_add(h, int.from_bytes((ft.sport ^ ft.dport).to_bytes(2, "big"), "little"))
    return hash_finish(h, basis)


def slot_of(ft: FiveTuple, n_slots: int, basis: int = 0) -> int:
    """The slot `multipath(symmetric_l3l4+udp, basis, modulo_n, n_slots, 0, reg0[0..15])`
    writes for this 5-tuple."""
    return flow_hash(ft, basis) % n_slots
