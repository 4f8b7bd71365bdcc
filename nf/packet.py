"""Frame parsing and rewriting for the NF hot path.

Hand-written with ``struct`` on purpose: a packet library (scapy, os-ken's packet module)
builds a Python object per layer and costs tens to hundreds of microseconds per frame,
which would cap an instance far below what the state store can serve (bench/nf.py measures
this parser against scapy). Only what the NFs need is decoded: Ethernet II, IPv4 without
options and unfragmented, then TCP, UDP or ICMP. Anything else is a counted drop reason,
never an exception.
"""

from __future__ import annotations

import struct
from socket import inet_ntoa

from nf.memo import Memo

TCP, UDP, ICMP = 6, 17, 1
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}

# TCP flags
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8

ETH_IPV4, ETH_ARP, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x0806, 0x86DD, 0x8100, 0x88A8
NOT_STEERED = "not_steered"  # frames left to the kernel (ARP): not a drop

_IP = struct.Struct("!BBHHHBBH4s4s")  # from offset 14
_PORTS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
_IP_WORDS = struct.Struct("!10H")
L3 = 14
L4 = 34  # IPv4 without options


class Packet:
    """The decoded fields of one IPv4 frame. ``sport``/``dport`` hold the ICMP echo
    identifier for ICMP echo messages, so every NF can treat ICMP echo like a port pair.

    Interned: :func:`parse` returns the same object for every frame with the same fields
    (see ``_TCP``), so it is never modified, and what is computed from its fields
    alone may be cached per object (the packet loop caches the NF's request)."""

    __slots__ = ("dport", "dst", "dst_ip", "flags", "icmp_type", "proto", "sport", "src", "src_ip")

    def __init__(self, proto, src, dst, src_ip, dst_ip, sport, dport, flags, icmp_type):
        self.proto: int = proto
        self.src: int = src  # addresses as integers (prefix matching) ...
        self.dst: int = dst
        self.src_ip: str = src_ip  # ... and as dotted strings (state keys)
        self.dst_ip: str = dst_ip
        self.sport: int = sport
        self.dport: int = dport
        self.flags: int = flags  # TCP flags, 0 otherwise
        self.icmp_type: int = icmp_type  # -1 unless ICMP


# The common case in one unpack, from offset 12: ethertype, version/IHL, total length,
# flags/fragment offset, protocol, addresses, then (with IHL 5) the two ports.
_COMMON = struct.Struct("!HBxHxxHxBxx4s4sHH")
COMMON_LEN = 12 + _COMMON.size  # 38: Ethernet, IPv4 without options, ports


# Interned packets: (addresses as 4 bytes, ports, TCP flags) -> Packet, one table per
# protocol; (protocol, addresses, ports, flags, ICMP type) for the rest. A flow's packets
# repeat a few field sets, and building a Packet (two address conversions, nine fields)
# costs more than the rest of the common-case parse. Bounded (Memo): spoofed addresses
# cannot grow them.
def _packet(
    proto: int, src_b: bytes, dst_b: bytes, sport: int, dport: int, flags: int, icmp_type: int
) -> Packet:
    src, dst = int.from_bytes(src_b, "big"), int.from_bytes(dst_b, "big")
    src_ip, dst_ip = inet_ntoa(src_b), inet_ntoa(dst_b)
    return Packet(proto, src, dst, src_ip, dst_ip, sport, dport, flags, icmp_type)


_TCP = Memo(lambda key: _packet(TCP, *key, -1))
_UDP = Memo(lambda key: _packet(UDP, *key, 0, -1))
_OTHER = Memo(lambda key: _packet(*key))


def parse(frame: bytes) -> Packet | str:
    """Decode a frame; returns a Packet or the reason (a short string) why it is dropped.

    The common case (IPv4 without options, unfragmented, TCP or UDP) takes one unpack and
    checks the IP header checksum as one big-integer remainder: the ones' complement sum
    of 16-bit words is the integer modulo 0xFFFF, zero for a correct header (whose words
    sum to 0xFFFF). Everything else goes the long way, :func:`parse_full`."""
    if len(frame) >= COMMON_LEN:
        eth, vihl, total, frag, proto, src_b, dst_b, sport, dport = _COMMON.unpack_from(frame, 12)
        if (
            eth == ETH_IPV4
            and vihl == 0x45
            and not frag & 0x3FFF
            and L3 + total <= len(frame)
            and int.from_bytes(frame[L3:L4], "big") % 0xFFFF == 0
        ):
            if proto == TCP:
                if total >= 40 and 5 <= frame[L4 + 12] >> 4 <= (total - 20) >> 2:
                    return _TCP[(src_b, dst_b, sport, dport, frame[L4 + 13])]
            elif proto == UDP and 8 <= (frame[L4 + 4] << 8 | frame[L4 + 5]) <= total - 20:
                return _UDP[(src_b, dst_b, sport, dport)]
    return parse_full(frame)


def parse_full(frame: bytes) -> Packet | str:
    """Decode any frame, naming the reason for a drop."""
    n = len(frame)
    if n < 14:
        return "truncated"
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype != ETH_IPV4:
        if ethertype == ETH_ARP:
            return NOT_STEERED
        if ethertype == ETH_IPV6:
            return "ipv6_unsupported"
        if ethertype in (ETH_VLAN, ETH_QINQ):
            return "vlan_unsupported"
        return "unsupported_ethertype"
    if n < L4:
        return "truncated"
    vihl, _tos, total, _id, frag, _ttl, proto, _csum, src_b, dst_b = _IP.unpack_from(frame, L3)
    if vihl >> 4 != 4 or vihl & 15 < 5 or total < 20:
        return "bad_ip_header"
    if vihl & 15 != 5:
        return "ip_options"
    if L3 + total > n:
        return "truncated"
    if frag & 0x3FFF:  # more-fragments flag or a fragment offset
        return "fragment"
    s = sum(_IP_WORDS.unpack_from(frame, L3))
    s = (s & 0xFFFF) + (s >> 16)
    if (s & 0xFFFF) + (s >> 16) != 0xFFFF:
        return "bad_ip_checksum"
    l4len = total - 20
    flags = 0
    icmp_type = -1
    if proto == TCP:
        if l4len < 20:
            return "truncated"
        doff = frame[L4 + 12] >> 4
        if doff < 5 or doff * 4 > l4len:
            return "bad_tcp_header"
        sport, dport = _PORTS.unpack_from(frame, L4)
        flags = frame[L4 + 13]
    elif proto == UDP:
        if l4len < 8:
            return "truncated"
        sport, dport = _PORTS.unpack_from(frame, L4)
        ulen = _U16.unpack_from(frame, L4 + 4)[0]
        if ulen < 8 or ulen > l4len:
            return "bad_udp_header"
    elif proto == ICMP:
        if l4len < 8:
            return "truncated"
        icmp_type = frame[L4]
        if icmp_type != ICMP_ECHO_REQUEST and icmp_type != ICMP_ECHO_REPLY:
            return "icmp_unsupported"
        sport = dport = _U16.unpack_from(frame, L4 + 4)[0]
    else:
        return "unsupported_protocol"
    return _OTHER[(proto, src_b, dst_b, sport, dport, flags, icmp_type)]


def ip_to_int(ip: str) -> int:
    a, b, c, d = (int(x) for x in ip.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _delta(old: int, new: int) -> int:
    """What a 32-bit (or 16-bit) field changing from ``old`` to ``new`` adds to the
    complemented ones'-complement sum (RFC 1624: HC' = ~(~HC + ~m + m'))."""
    return (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)


def rewrite(
    frame: bytes,
    pkt: Packet,
    src: int | None = None,
    sport: int | None = None,
    dst: int | None = None,
    dport: int | None = None,
) -> bytes:
    """A copy of ``frame`` with new source/destination address/port, checksums updated
    incrementally (IP header; TCP/UDP including the pseudo-header; ICMP echo identifier).
    The changes are summed first and folded once per checksum (the per-packet cost of
    NAT and LB)."""
    out = bytearray(frame)
    proto = pkt.proto
    if proto == TCP:
        coff = L4 + 16
    elif proto == UDP:
        coff = L4 + 6
    else:
        coff = L4 + 2
    ip_sum = ~((out[L3 + 10] << 8) | out[L3 + 11]) & 0xFFFF
    l4_csum = (out[coff] << 8) | out[coff + 1]
    l4_sum = ~l4_csum & 0xFFFF
    udp_no_csum = proto == UDP and l4_csum == 0
    if src is not None and src != pkt.src:
        d = _delta(pkt.src, src)
        ip_sum += d
        if proto != ICMP:
            l4_sum += d
        out[L3 + 12 : L3 + 16] = src.to_bytes(4, "big")
    if dst is not None and dst != pkt.dst:
        d = _delta(pkt.dst, dst)
        ip_sum += d
        if proto != ICMP:
            l4_sum += d
        out[L3 + 16 : L3 + 20] = dst.to_bytes(4, "big")
    if proto == ICMP:
        # The echo identifier is the only "port"; sport and dport name the same field.
        new_id = sport if sport is not None else dport
        if new_id is not None and new_id != pkt.sport:
            l4_sum += (~pkt.sport & 0xFFFF) + new_id
            out[L4 + 4 : L4 + 6] = new_id.to_bytes(2, "big")
    else:
        if sport is not None and sport != pkt.sport:
            l4_sum += (~pkt.sport & 0xFFFF) + sport
            out[L4 : L4 + 2] = sport.to_bytes(2, "big")
        if dport is not None and dport != pkt.dport:
            l4_sum += (~pkt.dport & 0xFFFF) + dport
            out[L4 + 2 : L4 + 4] = dport.to_bytes(2, "big")
    while ip_sum >> 16:
        ip_sum = (ip_sum & 0xFFFF) + (ip_sum >> 16)
    while l4_sum >> 16:
        l4_sum = (l4_sum & 0xFFFF) + (l4_sum >> 16)
    ip_csum = ~ip_sum & 0xFFFF
    l4_csum = ~l4_sum & 0xFFFF
    if udp_no_csum:
        l4_csum = 0  # UDP checksum 0 means "none": keep it so
    elif proto == UDP and l4_csum == 0:
        l4_csum = 0xFFFF
    out[L3 + 10] = ip_csum >> 8
    out[L3 + 11] = ip_csum & 0xFF
    out[coff] = l4_csum >> 8
    out[coff + 1] = l4_csum & 0xFF
    return bytes(out)


# At L3 + 10: the IP header checksum and, contiguous with it, the source address. At
# L3 + 16: the destination address and, contiguous with it, the two ports.
_CSUM_SRC = struct.Struct("!HI")
_DST_PORTS = struct.Struct("!IHH")


def translate(frame: bytes, pkt: Packet, addr: int, port: int, dst: bool) -> bytes:
    """:func:`rewrite` of one endpoint — the source (``dst`` false) or the destination
    address and port — the one change NAT and LB make to every packet, with the same
    output byte for byte (a property test checks). Hand-written for TCP and UDP because
    it is most of those NFs' per-packet work: the checksums are updated with plain
    integer arithmetic (a 32-bit field is congruent to the sum of its 16-bit words modulo
    0xFFFF, so ~old + new needs no splitting) and written with three ``pack_into``;
    ICMP takes :func:`rewrite`."""
    proto = pkt.proto
    if proto == TCP:
        coff = L4 + 16
    elif proto == UDP:
        coff = L4 + 6
    elif dst:
        return rewrite(frame, pkt, dst=addr, dport=port)
    else:
        return rewrite(frame, pkt, src=addr, sport=port)
    if dst:
        old, old_port = pkt.dst, pkt.dport
    else:
        old, old_port = pkt.src, pkt.sport
    l4_csum = (frame[coff] << 8) | frame[coff + 1]
    ip_sum = ((frame[L3 + 10] << 8) | frame[L3 + 11]) ^ 0xFFFF
    l4_sum = l4_csum ^ 0xFFFF
    if addr != old:
        d = (old ^ 0xFFFFFFFF) + addr
        ip_sum += d
        l4_sum += d
    if port != old_port:
        l4_sum += (old_port ^ 0xFFFF) + port
    # Folding the carries leaves a positive sum in 1..0xFFFF: (s - 1) % 0xFFFF + 1.
    ip_csum = ((ip_sum - 1) % 0xFFFF + 1 if ip_sum else 0) ^ 0xFFFF
    l4_out = ((l4_sum - 1) % 0xFFFF + 1 if l4_sum else 0) ^ 0xFFFF
    if coff == L4 + 6:
        if l4_csum == 0:
            l4_out = 0  # UDP checksum 0 means "none": keep it so
        elif l4_out == 0:
            l4_out = 0xFFFF
    out = bytearray(frame)
    if dst:
        _U16.pack_into(out, L3 + 10, ip_csum)
        _DST_PORTS.pack_into(out, L3 + 16, addr, pkt.sport, port)
    else:
        _CSUM_SRC.pack_into(out, L3 + 10, ip_csum, addr)
        _U16.pack_into(out, L4, port)
    _U16.pack_into(out, coff, l4_out)
    return bytes(out)
