"""L4 load balancer: VIP:port -> a weighted backend set, with connection affinity held in
the store so that every instance sends a connection's packets to the same backend.

State: one hash per client endpoint, ``nfsteer:lb:<pool>:{<proto>:<client ip>:<port>}``
(the braces make it one Redis Cluster hash tag), with the idle timeout as its TTL:

* ``f:<vip>:<port>`` -> ``<backend ip>:<port>`` (forward: which backend)
* ``r:<backend ip>:<port>`` -> ``<vip>:<port>`` (reverse: which VIP the reply comes from)

* ``t`` -> when its expiry was last pushed forward (server time, ms)

Op ``f`` reads the forward entry; a new connection (TCP SYN, any UDP packet) stores the
backend this instance proposes (weighted random choice) unless another instance stored one
first — get-or-set in one Lua call, so racing instances agree. A TCP packet other than a
SYN without an entry is dropped: sending it to a freshly picked backend would only draw a
reset. Op ``r`` reads the reverse entry for a reply. Both push the expiry forward, at most
once per refresh interval (see ``nf.state.refresh_ms``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import accumulate
from socket import inet_aton

from contract.nf_settings import LBSettings
from nf.base import NetworkFunction, ms
from nf.packet import ACK, ICMP, SYN, TCP, UDP, Packet, rewrite
from nf.state import Result, Script, local_expire, local_get, local_set, refresh_ms

NO_CONNECTION, NO_REVERSE = "-21", "-22"
ERRORS = {NO_CONNECTION: "lb_no_connection", NO_REVERSE: "lb_no_reverse_mapping"}

_LUA_OPS = f"""
-- cfg: idle timeout, refresh interval (ms). Field t of the hash: when its expiry was last
-- pushed forward; that is done again only once per refresh interval.
local function touch(key, t, now, cfg)
  if now - tonumber(t or 0) >= cfg[2] then
    redis.call('HSET', key, 't', now)
    redis.call('PEXPIRE', key, cfg[1])
  end
end
-- f: K = conn hash; a = '<vip>' or '<vip> <proposed backend>' (may create). Returns the
-- backend.
OPS['f'] = function(K, ki, a, now, cfg)
  local key = K[ki]
  local vip, cand = string.match(a, '^(%S+) ?(.*)$')
  local r = redis.call('HMGET', key, 'f:' .. vip, 't')
  local b = r[1]
  if not b then
    if cand == '' then return {NO_CONNECTION} end
    b = cand
    redis.call('HSET', key, 'f:' .. vip, b, 'r:' .. b, vip)
  end
  touch(key, r[2], now, cfg)
  return b
end
-- r: K = conn hash; a = backend. Returns the VIP the reply must come from.
OPS['r'] = function(K, ki, a, now, cfg)
  local key = K[ki]
  local r = redis.call('HMGET', key, 'r:' .. a, 't')
  if not r[1] then return {NO_REVERSE} end
  touch(key, r[2], now, cfg)
  return r[1]
end
"""


def _local_touch(data: dict, key: str, h: dict, now: int, cfg) -> None:
    if now - h.get("t", 0) >= cfg[1]:
        h["t"] = now
        local_expire(data, key, now, cfg[0])


def _local_f(data: dict, keys: Sequence[str], a: str, now: int, cfg) -> Result:
    key = keys[0]
    vip, _, cand = a.partition(" ")
    h = local_get(data, key, now)
    b = h.get("f:" + vip) if h is not None else None
    if b is None:
        if not cand:
            return NO_CONNECTION
        if h is None:
            h = {}
            local_set(data, key, h, now, cfg[0])
        b = cand
        h["f:" + vip] = b
        h["r:" + b] = vip
    _local_touch(data, key, h, now, cfg)
    return b


def _local_r(data: dict, keys: Sequence[str], a: str, now: int, cfg) -> Result:
    key = keys[0]
    h = local_get(data, key, now)
    v = h.get("r:" + a) if h is not None else None
    if v is None:
        return NO_REVERSE
    _local_touch(data, key, h, now, cfg)
    return v


SCRIPT = Script("lb", _LUA_OPS, {"f": 1, "r": 1}, {"f": _local_f, "r": _local_r})


def _ip(s: str) -> int:
    return int.from_bytes(inet_aton(s), "big")


class LoadBalancer(NetworkFunction):
    kind = "lb"
    script = SCRIPT
    errors = ERRORS

    def __init__(self, pool: str, settings: LBSettings, rng: random.Random | None = None):
        self.settings = settings
        self.fail_open = settings.fail_open
        self.prefix = f"nfsteer:lb:{pool}:"
        ttl = ms(settings.idle_timeout)
        self._cfg = (ttl, refresh_ms(ttl))
        self.rng = rng or random.Random()
        protos = {"tcp": TCP, "udp": UDP}
        # (proto, vip, port) -> ("vip:port", backends, cumulative weights)
        self.vips: dict[tuple[int, int, int], tuple[str, list[str], list[int]]] = {}
        self.backends: set[tuple[int, int, int]] = set()
        self._addr: dict[str, tuple[int, int]] = {}  # "ip:port" -> (int ip, port)
        for v in settings.vips:
            p = protos[v.proto]
            names = [f"{b.ip}:{b.port}" for b in v.backends]
            cum = list(accumulate(b.weight for b in v.backends))
            self.vips[(p, _ip(v.vip), v.port)] = (f"{v.vip}:{v.port}", names, cum)
            self._addr[f"{v.vip}:{v.port}"] = (_ip(v.vip), v.port)
            for b in v.backends:
                self.backends.add((p, _ip(b.ip), b.port))
                self._addr[f"{b.ip}:{b.port}"] = (_ip(b.ip), b.port)

    def cfg(self) -> tuple[int, ...]:
        return self._cfg

    def pick(self, vip: tuple[str, list[str], list[int]]) -> str:
        return self.rng.choices(vip[1], cum_weights=vip[2])[0]

    def request(self, pkt: Packet):
        proto = pkt.proto
        if proto == ICMP:
            return None
        v = self.vips.get((proto, pkt.dst, pkt.dport))
        if v is not None:
            key = f"{self.prefix}{{{proto}:{pkt.src_ip}:{pkt.sport}}}"
            if proto == UDP or pkt.flags & (SYN | ACK) == SYN:  # may create a connection
                return (key,), f"f{v[0]} {self.pick(v)}"
            return (key,), "f" + v[0]
        if (proto, pkt.src, pkt.sport) in self.backends:
            key = f"{self.prefix}{{{proto}:{pkt.dst_ip}:{pkt.dport}}}"
            return (key,), f"r{pkt.src_ip}:{pkt.sport}"
        return None  # neither to a VIP nor from a backend: forward unchanged

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        if result[0] == "-":
            return self.errors.get(result, "lb_error")
        addr = self._addr.get(result)
        if addr is None:  # stored by an instance with another backend set
            ip, _, port = result.rpartition(":")
            addr = (_ip(ip), int(port))
        if (pkt.proto, pkt.dst, pkt.dport) in self.vips:
            return rewrite(frame, pkt, dst=addr[0], dport=addr[1])
        return rewrite(frame, pkt, src=addr[0], sport=addr[1])
