"""Stateful firewall: ordered allow/deny rules for new connections, connection tracking
for everything else.

State: one string key per connection, ``nfsteer:fw:<pool>:{<proto>:<a>:<pa>:<b>:<pb>}``
(endpoints in canonical order, so both directions find it; the braces make the whole
connection one Redis Cluster hash tag) holding ``"<state><initiator side><written at>"``
(two digits, then the server time in ms), with a TTL that is the idle timeout of that
state. One op, ``c``, is the whole TCP state machine:
read the entry, apply the transition table, write the new state with its TTL — atomically,
in Lua. The table lives here once and is rendered into the Lua source, so the Redis and
the local store run the same machine.

Mid-stream pickup (``pickup: inside``, the default, like conntrack's loose tracking): when
the store lost an entry (wiped, or restored from an older append-only file), a bare ACK
from the inside that the rules would let open a connection re-creates it as established,
with the sender as initiator. From the outside such a segment is still dropped, so a
connection whose next segment comes from the outside waits for the inside's next one
(a retransmission or an ACK). A SYN-less segment carrying FIN or RST is never picked up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contract.nf_settings import FirewallSettings
from nf.base import NetworkFunction, Prefixes, ms
from nf.memo import Memo
from nf.packet import ACK, FIN, ICMP, ICMP_ECHO_REQUEST, RST, SYN, TCP, UDP, Packet
from nf.state import Result, Script, local_get, local_set, refresh_ms

# Connection states (0: no entry)
NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_ORIG, FIN_REPLY, CLOSING, CLOSED = range(8)
UDP_OPEN, ICMP_OPEN = 8, 9
STATE_NAMES = [
    "none",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_orig",
    "fin_reply",
    "closing",
    "closed",
    "udp",
    "icmp",
]
# Packet events
EV_SYN, EV_SYNACK, EV_ACK, EV_FIN, EV_RST, EV_UDP, EV_ECHO, EV_ECHO_REPLY = range(8)
OPENERS = frozenset({EV_SYN, EV_UDP, EV_ECHO})
REOPENABLE = frozenset({CLOSING, CLOSED})  # a new opener may reuse a finished connection
ORIG, REPLY = 0, 1
BOTH = (ORIG, REPLY)

# (state, direction relative to the initiator, event) -> new state. Missing: drop.
TRANSITIONS: dict[tuple[int, int, int], int] = {
    (NONE, ORIG, EV_SYN): SYN_SENT,
    (NONE, ORIG, EV_UDP): UDP_OPEN,
    (NONE, ORIG, EV_ECHO): ICMP_OPEN,
    (SYN_SENT, ORIG, EV_SYN): SYN_SENT,
    (SYN_SENT, REPLY, EV_SYNACK): SYN_RECV,
    (SYN_RECV, ORIG, EV_SYN): SYN_RECV,
    (SYN_RECV, REPLY, EV_SYNACK): SYN_RECV,
    (SYN_RECV, ORIG, EV_ACK): ESTABLISHED,
    (SYN_RECV, ORIG, EV_FIN): FIN_ORIG,
    (ESTABLISHED, REPLY, EV_SYNACK): ESTABLISHED,  # the initiator's last ACK was lost
    (ESTABLISHED, ORIG, EV_FIN): FIN_ORIG,
    (ESTABLISHED, REPLY, EV_FIN): FIN_REPLY,
    (FIN_ORIG, ORIG, EV_FIN): FIN_ORIG,
    (FIN_ORIG, REPLY, EV_FIN): CLOSING,
    (FIN_REPLY, REPLY, EV_FIN): FIN_REPLY,
    (FIN_REPLY, ORIG, EV_FIN): CLOSING,
    (UDP_OPEN, ORIG, EV_UDP): UDP_OPEN,
    (UDP_OPEN, REPLY, EV_UDP): UDP_OPEN,
    (ICMP_OPEN, ORIG, EV_ECHO): ICMP_OPEN,
    (ICMP_OPEN, REPLY, EV_ECHO_REPLY): ICMP_OPEN,
}
for _s in (ESTABLISHED, FIN_ORIG, FIN_REPLY, CLOSING):
    for _d in BOTH:
        TRANSITIONS[(_s, _d, EV_ACK)] = _s
for _s in (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_ORIG, FIN_REPLY, CLOSING):
    for _d in BOTH:
        TRANSITIONS[(_s, _d, EV_RST)] = CLOSED
for _d in BOTH:
    TRANSITIONS[(CLOSING, _d, EV_FIN)] = CLOSING

NO_CONNECTION, DENIED, INVALID = "-1", "-2", "-3"
ERRORS = {NO_CONNECTION: "fw_no_connection", DENIED: "fw_denied", INVALID: "fw_invalid_state"}
assert max(STATE_NAMES.index(n) for n in STATE_NAMES) < 10  # a state is one digit


def _index(state: int, direction: int, event: int) -> int:
    return state * 64 + direction * 16 + event


_T = {_index(*k): v for k, v in TRANSITIONS.items()}

_LUA_OPS = (
    "local T = {"
    + ", ".join(f"[{k}] = {v}" for k, v in sorted(_T.items()))
    + "}\n"
    + "local OPENER = {"
    + ", ".join(f"[{e}] = true" for e in sorted(OPENERS))
    + "}\n"
    + "local REOPEN = {"
    + ", ".join(f"[{s}] = true" for s in sorted(REOPENABLE))
    + "}\n"
    + f"""
-- K[ki]: connection key, holding '<state><initiator side><written at, ms>'.
-- a: three digits: side of the sender (0/1), event, may open (0/1; for a bare ACK: may
-- pick the connection up mid-stream).
-- cfg[state]: idle timeout (ms) of each state; cfg[{ICMP_OPEN} + state]: refresh interval.
-- An unchanged state is written again (pushing its expiry forward) only once per refresh
-- interval, so most packets of an established connection only read.
OPS['c'] = function(K, ki, a, now, cfg)
  local key = K[ki]
  local side, ev = string.byte(a, 1) - 48, string.byte(a, 2) - 48
  local st, init, at = 0, side, 0
  local v = redis.call('GET', key)
  if v then
    st, init = string.byte(v, 1) - 48, string.byte(v, 2) - 48
    at = tonumber(string.sub(v, 3))
    if REOPEN[st] and OPENER[ev] then st, init = 0, side end
  end
  local dir = 0
  if side ~= init then dir = 1 end
  local new = T[st * 64 + dir * 16 + ev]
  if not new and st == 0 and ev == {EV_ACK} and string.byte(a, 3) == 49 then
    new = {ESTABLISHED}  -- mid-stream pickup: the sender becomes the initiator
  end
  if not new then
    if st == 0 then return {NO_CONNECTION} end
    return {INVALID}
  end
  if st == 0 and string.byte(a, 3) ~= 49 then return {DENIED} end
  if new ~= st or now - at >= cfg[{ICMP_OPEN} + new] then
    redis.call('SET', key, new .. init .. now, 'PX', cfg[new])
  end
  return new
end
"""
)
_RESULT = [str(st) for st in range(ICMP_OPEN + 1)]


def _local_ct(data: dict, keys: Sequence[str], a: str, now: int, cfg) -> Result:
    key = keys[0]
    side, ev = ord(a[0]) - 48, ord(a[1]) - 48
    st, init, at = 0, side, 0
    v = local_get(data, key, now)
    if v is not None:
        st, init, at = v
        if st in REOPENABLE and ev in OPENERS:
            st, init = 0, side
    new = _T.get(_index(st, 0 if side == init else 1, ev))
    if new is None and st == 0 and ev == EV_ACK and a[2] == "1":
        new = ESTABLISHED  # mid-stream pickup
    if new is None:
        return NO_CONNECTION if st == 0 else INVALID
    if st == 0 and a[2] != "1":
        return DENIED
    if new != st or now - at >= cfg[ICMP_OPEN + new - 1]:  # cfg[0] is state 1
        local_set(data, key, (new, init, now), now, cfg[new - 1])
    return _RESULT[new]


SCRIPT = Script("firewall", _LUA_OPS, {"c": 1}, {"c": _local_ct})
# The op argument of every (side, event, may open): "c" and three digits.
_ARG = [f"c{side}{ev}{may}" for side in BOTH for ev in range(16) for may in (0, 1)]


class Firewall(NetworkFunction):
    kind = "firewall"
    script = SCRIPT
    errors = ERRORS

    def __init__(self, pool: str, settings: FirewallSettings):
        self.settings = settings
        self.fail_open = settings.fail_open
        self.prefix = f"nfsteer:fw:{pool}:"
        self.inside = Prefixes(settings.inside)
        protos = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "any": 0}
        self.rules = [
            (
                r.action == "allow",
                protos[r.proto],
                Prefixes([r.src]) if r.src else None,
                Prefixes([r.dst]) if r.dst else None,
                frozenset(r.dst_ports) if r.dst_ports is not None else None,
            )
            for r in settings.rules
        ]
        self.default_allow = settings.default == "allow"
        self.pickup = settings.pickup == "inside"
        s = settings
        ttl = {
            SYN_SENT: s.tcp_syn_timeout,
            SYN_RECV: s.tcp_syn_timeout,
            ESTABLISHED: s.tcp_established_timeout,
            FIN_ORIG: s.tcp_established_timeout,
            FIN_REPLY: s.tcp_established_timeout,
            CLOSING: s.tcp_close_timeout,
            CLOSED: s.tcp_close_timeout,
            UDP_OPEN: s.udp_timeout,
            ICMP_OPEN: s.icmp_timeout,
        }
        ttls = [ms(ttl[st]) for st in range(1, ICMP_OPEN + 1)]
        self._cfg = (*ttls, *(refresh_ms(t) for t in ttls))
        # (proto, src, dst, dport) -> may open: every ACK asks (pickup), so the rules are
        # evaluated once per such key rather than once per packet.
        self._may_open = Memo(self._decide)

    def cfg(self) -> tuple[Any, ...]:
        return self._cfg

    def may_open(self, pkt: Packet) -> bool:
        """May this packet open a new connection (inside check, then rules, then default)?"""
        return self._may_open[(pkt.proto, pkt.src, pkt.dst, pkt.dport)]

    def _decide(self, key: tuple[int, int, int, int]) -> bool:
        pkt_proto, pkt_src, pkt_dst, pkt_dport = key
        if self.inside and pkt_src not in self.inside:
            return False
        for allow, proto, src, dst, ports in self.rules:
            if proto and proto != pkt_proto:
                continue
            if src is not None and pkt_src not in src:
                continue
            if dst is not None and pkt_dst not in dst:
                continue
            if ports is not None and pkt_dport not in ports:
                continue
            return allow
        return self.default_allow

    def request(self, pkt: Packet):
        proto = pkt.proto
        if proto == TCP:
            f = pkt.flags
            if f & RST:
                ev = EV_RST
            elif f & SYN:
                if f & FIN:
                    return "fw_bad_tcp_flags"
                ev = EV_SYNACK if f & ACK else EV_SYN
            elif f & FIN:
                ev = EV_FIN
            elif f & ACK:
                ev = EV_ACK
            else:
                return "fw_bad_tcp_flags"
        elif proto == UDP:
            ev = EV_UDP
        else:
            ev = EV_ECHO if pkt.icmp_type == ICMP_ECHO_REQUEST else EV_ECHO_REPLY
        if (pkt.src, pkt.sport) <= (pkt.dst, pkt.dport):
            side = 0
            conn = f"{proto}:{pkt.src_ip}:{pkt.sport}:{pkt.dst_ip}:{pkt.dport}"
        else:
            side = 1
            conn = f"{proto}:{pkt.dst_ip}:{pkt.dport}:{pkt.src_ip}:{pkt.sport}"
        # Openers may open a connection, and (pickup) a bare ACK from the inside may
        # re-create one the store lost, when the rules would let it open.
        may_open = 0
        if (ev in OPENERS or (ev == EV_ACK and self.pickup)) and self._may_open[
            (proto, pkt.src, pkt.dst, pkt.dport)
        ]:
            may_open = 1
        return (f"{self.prefix}{{{conn}}}",), _ARG[side * 32 + ev * 2 + may_open]

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        if result[0] == "-":
            return self.errors.get(result, "fw_error")
        return frame
