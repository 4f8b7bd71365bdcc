"""Source NAT: inside -> outside connections leave from public_ip:port; return traffic to
public_ip:port is translated back, on any instance.

State, per pool and protocol (all keys carry the pool as one Redis Cluster hash tag, because
allocating a port must atomically touch the allocator and both mapping directions):

* ``nfsteer:nat:{<pool>}:<proto>:map`` hash
  - ``f:<inside ip>:<port>><remote ip>:<port>`` -> public port (forward mapping)
  - ``r:<public port>`` -> ``<inside ip>:<port>><remote ip>:<port>`` (reverse mapping)
  - ``next`` -> where the next allocation starts looking
* ``nfsteer:nat:{<pool>}:<proto>:exp`` sorted set: public port scored by the time (ms) its
  mapping expires; every packet of either direction pushes it forward by the idle timeout.

A port is free when it has no score or its score has passed; allocation (op ``o``) takes
the next free port from ``next`` in one Lua call, so no two instances ever hand out the
same port, and drops the stale forward entry of the port's previous owner. Memory is
bounded by the port range, so these keys need no TTL. Filtering is per connection (the
remote endpoint of return traffic must match the mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from socket import inet_aton
from typing import Any

from nf.base import NetworkFunction, Prefixes, ms
from nf.config import NATSettings
from nf.packet import ICMP, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_NAMES, Packet, rewrite
from nf.state import Result, Script

EXHAUSTED, NO_MAPPING, EXPIRED, WRONG_REMOTE = -10, -11, -12, -13
ERRORS = {
    EXHAUSTED: "nat_ports_exhausted",
    NO_MAPPING: "nat_no_mapping",
    EXPIRED: "nat_mapping_expired",
    WRONG_REMOTE: "nat_wrong_remote",
}
MAX_PROBES = 1024  # bounds the time one allocation may hold Redis

_LUA_OPS = f"""
-- K[ki], K[ki+1]: map hash, expiry zset. cfg: port_min, port_max.
-- o: A = tuple, ttl. Returns the public port or {EXHAUSTED}.
OPS['o'] = function(K, ki, A, ai, now, cfg)
  local map, exp = K[ki], K[ki + 1]
  local tup, ttl = A[ai], tonumber(A[ai + 1])
  local port = redis.call('HGET', map, 'f:' .. tup)
  if port and redis.call('HGET', map, 'r:' .. port) == tup then
    redis.call('ZADD', exp, now + ttl, port)
    return tonumber(port)
  end
  local lo, hi = tonumber(cfg[1]), tonumber(cfg[2])
  local n = hi - lo + 1
  local cur = tonumber(redis.call('HGET', map, 'next') or lo)
  if cur < lo or cur > hi then cur = lo end
  for i = 0, math.min(n, {MAX_PROBES}) - 1 do
    local p = lo + (cur - lo + i) % n
    local e = redis.call('ZSCORE', exp, p)
    if not e or tonumber(e) < now then
      local old = redis.call('HGET', map, 'r:' .. p)
      if old and redis.call('HGET', map, 'f:' .. old) == tostring(p) then
        redis.call('HDEL', map, 'f:' .. old)
      end
      redis.call('HSET', map, 'f:' .. tup, p, 'r:' .. p, tup, 'next', lo + (p - lo + 1) % n)
      redis.call('ZADD', exp, now + ttl, p)
      return p
    end
  end
  return {EXHAUSTED}
end
-- i: A = public port, remote endpoint, ttl. Returns '<inside ip>:<port>' or a drop code.
OPS['i'] = function(K, ki, A, ai, now, cfg)
  local map, exp = K[ki], K[ki + 1]
  local port = A[ai]
  local tup = redis.call('HGET', map, 'r:' .. port)
  if not tup then return {NO_MAPPING} end
  local e = redis.call('ZSCORE', exp, port)
  if not e or tonumber(e) < now then return {EXPIRED} end
  local sep = string.find(tup, '>', 1, true)
  if string.sub(tup, sep + 1) ~= A[ai + 1] then return {WRONG_REMOTE} end
  redis.call('ZADD', exp, now + tonumber(A[ai + 2]), port)
  return string.sub(tup, 1, sep - 1)
end
"""


def _local_out(data: dict, keys: Sequence[str], args: Sequence[Any], now: int, cfg) -> Result:
    m = data.setdefault(keys[0], [{}, None])[0]
    exp = data.setdefault(keys[1], [{}, None])[0]
    tup, ttl = args
    port = m.get("f:" + tup)
    if port is not None and m.get(f"r:{port}") == tup:
        exp[port] = now + ttl
        return port
    lo, hi = cfg
    n = hi - lo + 1
    cur = m.get("next", lo)
    for i in range(min(n, MAX_PROBES)):
        p = lo + (cur - lo + i) % n
        e = exp.get(p)
        if e is None or e < now:
            old = m.get(f"r:{p}")
            if old is not None and m.get("f:" + old) == p:
                del m["f:" + old]
            m["f:" + tup] = p
            m[f"r:{p}"] = tup
            m["next"] = lo + (p - lo + 1) % n
            exp[p] = now + ttl
            return p
    return EXHAUSTED


def _local_in(data: dict, keys: Sequence[str], args: Sequence[Any], now: int, cfg) -> Result:
    m = data.get(keys[0], [{}])[0]
    exp = data.get(keys[1], [{}])[0]
    port, remote, ttl = args
    tup = m.get(f"r:{port}")
    if tup is None:
        return NO_MAPPING
    e = exp.get(port)
    if e is None or e < now:
        return EXPIRED
    inside, _, rem = tup.partition(">")
    if rem != remote:
        return WRONG_REMOTE
    exp[port] = now + ttl
    return inside


SCRIPT = Script("nat", _LUA_OPS, {"o": (2, 2), "i": (2, 3)}, {"o": _local_out, "i": _local_in})


class NAT(NetworkFunction):
    kind = "nat"
    script = SCRIPT
    errors = ERRORS

    def __init__(self, pool: str, settings: NATSettings):
        if not settings.public_ip:
            raise ValueError("nf.public_ip: a NAT instance needs a public address")
        self.settings = settings
        self.fail_open = settings.fail_open
        self.public_ip = settings.public_ip
        self.public = int.from_bytes(inet_aton(settings.public_ip), "big")
        self.inside = Prefixes(settings.inside)
        self.keys = {
            p: (f"nfsteer:nat:{{{pool}}}:{name}:map", f"nfsteer:nat:{{{pool}}}:{name}:exp")
            for p, name in PROTO_NAMES.items()
        }
        self.ttl = {p: ms(getattr(settings, f"{name}_timeout")) for p, name in PROTO_NAMES.items()}
        self._cfg = (settings.port_min, settings.port_max)

    def cfg(self) -> tuple[Any, ...]:
        return self._cfg

    def request(self, pkt: Packet):
        proto = pkt.proto
        if pkt.dst == self.public:
            if proto == ICMP:
                if pkt.icmp_type != ICMP_ECHO_REPLY:
                    return "nat_icmp_unsupported"
                remote = f"{pkt.src_ip}:0"  # the echo id is the translated one: no remote port
            else:
                remote = f"{pkt.src_ip}:{pkt.sport}"
            return ("i", self.keys[proto], (pkt.dport, remote, self.ttl[proto]))
        if pkt.src in self.inside and pkt.dst not in self.inside:
            if proto == ICMP:
                if pkt.icmp_type != ICMP_ECHO_REQUEST:
                    return "nat_icmp_unsupported"
                tup = f"{pkt.src_ip}:{pkt.sport}>{pkt.dst_ip}:0"
            else:
                tup = f"{pkt.src_ip}:{pkt.sport}>{pkt.dst_ip}:{pkt.dport}"
            return ("o", self.keys[proto], (tup, self.ttl[proto]))
        return None  # not translated traffic (inside to inside, or unrelated): forward

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        if isinstance(result, int):
            if result < 0:
                return self.errors.get(result, "nat_error")
            return rewrite(frame, pkt, src=self.public, sport=result)
        ip, _, port = result.rpartition(":")
        return rewrite(frame, pkt, dst=int.from_bytes(inet_aton(ip), "big"), dport=int(port))
