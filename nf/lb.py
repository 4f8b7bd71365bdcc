"""L4 load balancer: VIP:port -> a weighted backend set, with connection affinity held in
the store so that every instance sends a connection's packets to the same backend.

State: one hash per client endpoint, ``nfsteer:lb:<pool>:{<proto>:<client ip>:<port>}``
(the braces make it one Redis Cluster hash tag), with the idle timeout as its TTL:

* ``f:<vip>:<port>`` -> ``<backend ip>:<port>`` (forward: which backend)
* ``r:<backend ip>:<port>`` -> ``<vip>:<port>`` (reverse: which VIP the reply comes from)

* ``t`` -> when its expiry was last pushed forward (server time, ms)

Op ``f`` reads the forward entry, or stores the backend this instance proposes unless
another instance stored one first — get-or-set in one Lua call, so racing instances agree.
The proposal is a *consistent* choice: a table of ``TABLE_SIZE`` slots per VIP, each slot
given to a backend by weighted rendezvous hashing, indexed by a hash of the client
endpoint. Every instance proposes the same backend for a connection, so when the store
loses an entry (wiped, or restored from an older append-only file) the next packet of the
connection — from the client (op ``f``) or from the backend (op ``r``, which may re-create
the entry when the backend is the one the table names) — finds the same backend again, as
long as the backend set is unchanged. A change of the set moves only the slots of the
backends that came or went (rendezvous hashing), so a lost entry of a connection in such a
slot lands on another backend, which resets it. Both ops push the expiry forward, at most
once per refresh interval (see ``nf.state.refresh_ms``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from socket import inet_aton

from contract.nf_settings import LBSettings
from nf.base import NetworkFunction, ms
from nf.packet import ICMP, TCP, UDP, Packet, translate
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
-- r: K = conn hash; a = '<backend>' or '<backend> <vip>' (may re-create the entry: this
-- backend is the consistent choice for the client). Returns the VIP the reply must come
-- from.
OPS['r'] = function(K, ki, a, now, cfg)
  local key = K[ki]
  local b, vip = string.match(a, '^(%S+) ?(.*)$')
  local r = redis.call('HMGET', key, 'r:' .. b, 't')
  local v = r[1]
  if not v then
    if vip == '' or redis.call('HEXISTS', key, 'f:' .. vip) == 1 then return {NO_REVERSE} end
    v = vip
    redis.call('HSET', key, 'f:' .. vip, b, 'r:' .. b, vip)
  end
  touch(key, r[2], now, cfg)
  return v
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
    b, _, vip = a.partition(" ")
    h = local_get(data, key, now)
    v = h.get("r:" + b) if h is not None else None
    if v is None:
        if not vip or (h is not None and "f:" + vip in h):
            return NO_REVERSE
        if h is None:
            h = {}
            local_set(data, key, h, now, cfg[0])
        v = vip
        h["f:" + vip] = b
        h["r:" + b] = vip
    _local_touch(data, key, h, now, cfg)
    return v


SCRIPT = Script("lb", _LUA_OPS, {"f": 1, "r": 1}, {"f": _local_f, "r": _local_r})


def _ip(s: str) -> int:
    return int.from_bytes(inet_aton(s), "big")


TABLE_SIZE = 4099  # a prime; at 100 slots per backend or more, weights hold to ~1 %


def consistent_table(backends: Sequence[tuple[str, int]], size: int = TABLE_SIZE) -> list[str]:
    """Slot -> backend ("ip:port") by weighted rendezvous hashing: each slot goes to the
    backend with the highest ``-weight / ln(u)``, u a hash of (slot, backend) in (0, 1).
    Built once per VIP; removing a backend moves only its own slots."""
    table = []
    for slot in range(size):
        best, best_score = "", -math.inf
        for name, weight in backends:
            h = hashlib.blake2b(f"{slot}/{name}".encode(), digest_size=8).digest()
            u = (int.from_bytes(h, "big") + 1) / (2**64 + 2)
            score = -weight / math.log(u)
            if score > best_score:
                best, best_score = name, score
        table.append(best)
    return table


def client_slot(ip: int, port: int, size: int = TABLE_SIZE) -> int:
    """The table slot of a client endpoint: the same on every instance (integer arithmetic,
    no per-process hash seed)."""
    return (ip * 2654435761 + port * 40503) % size


class LoadBalancer(NetworkFunction):
    kind = "lb"
    script = SCRIPT
    errors = ERRORS

    def __init__(self, pool: str, settings: LBSettings):
        self.settings = settings
        self.fail_open = settings.fail_open
        self.prefix = f"nfsteer:lb:{pool}:"
        ttl = ms(settings.idle_timeout)
        self._cfg = (ttl, refresh_ms(ttl))
        protos = {"tcp": TCP, "udp": UDP}
        # (proto, vip, port) -> ("vip:port", consistent table of "ip:port" backends)
        self.vips: dict[tuple[int, int, int], tuple[str, list[str]]] = {}
        # (proto, backend ip, port) -> ("vip:port", the VIP's table, "ip:port")
        self.backends: dict[tuple[int, int, int], tuple[str, list[str], str]] = {}
        self._addr: dict[str, tuple[int, int]] = {}  # "ip:port" -> (int ip, port)
        for v in settings.vips:
            p = protos[v.proto]
            name = f"{v.vip}:{v.port}"
            table = consistent_table([(f"{b.ip}:{b.port}", b.weight) for b in v.backends])
            self.vips[(p, _ip(v.vip), v.port)] = (name, table)
            self._addr[name] = (_ip(v.vip), v.port)
            for b in v.backends:
                self.backends[(p, _ip(b.ip), b.port)] = (name, table, f"{b.ip}:{b.port}")
                self._addr[f"{b.ip}:{b.port}"] = (_ip(b.ip), b.port)

    def cfg(self) -> tuple[int, ...]:
        return self._cfg

    def request(self, pkt: Packet):
        proto = pkt.proto
        if proto == ICMP:
            return None
        v = self.vips.get((proto, pkt.dst, pkt.dport))
        if v is not None:
            key = f"{self.prefix}{{{proto}:{pkt.src_ip}:{pkt.sport}}}"
            # Every packet proposes the consistent backend: a new connection gets it, and
            # one whose entry was lost gets it back.
            return (key,), f"f{v[0]} {v[1][client_slot(pkt.src, pkt.sport)]}"
        b = self.backends.get((proto, pkt.src, pkt.sport))
        if b is not None:
            key = f"{self.prefix}{{{proto}:{pkt.dst_ip}:{pkt.dport}}}"
            if b[1][client_slot(pkt.dst, pkt.dport)] == b[2]:
                return (key,), f"r{b[2]} {b[0]}"
            return (key,), "r" + b[2]
        return None  # neither to a VIP nor from a backend: forward unchanged

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        if result[0] == "-":
            return self.errors.get(result, "lb_error")
        addr = self._addr.get(result)
        if addr is None:  # stored by an instance with another backend set
            ip, _, port = result.rpartition(":")
            addr = (_ip(ip), int(port))
        # Toward a VIP: the destination becomes the backend; back from one: the source the VIP.
        to_vip = (pkt.proto, pkt.dst, pkt.dport) in self.vips
        return translate(frame, pkt, addr[0], addr[1], to_vip)
