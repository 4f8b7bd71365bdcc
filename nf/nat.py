"""Source NAT: inside -> outside connections leave from public_ip:port; return traffic to
public_ip:port is translated back, on any instance.

The public port range is cut into *shards* of up to ``SHARD_PORTS`` consecutive ports, each
with keys of its own, per pool and protocol (``<s>`` the shard number):

* ``nfsteer:nat:{<pool>:<proto>:<s>}:map`` hash
  - ``f:<inside ip>:<port>><remote ip>:<port>`` -> public port (forward mapping)
  - ``r:<public port>`` -> ``<inside ip>:<port>><remote ip>:<port>`` (reverse mapping)
* ``nfsteer:nat:{<pool>:<proto>:<s>}:exp`` sorted set: public port scored by the time (ms)
  its mapping expires; packets of either direction push it forward by the idle timeout
  (at most once per refresh interval, see ``nf.state.refresh_ms``).

A connection belongs to the shard its inside/remote endpoints hash to (every instance
computes the same), and return traffic to the shard its public port lies in. Allocating a
port atomically touches the shard's allocator and both mapping directions, which share the
shard's Redis Cluster hash tag; different shards spread over a cluster's nodes. The price:
a shard may run out of ports while another still has some.

A port is free when it has no score or its score has passed; allocation (op ``o``) takes
the first free port of the shard at or after the connection's *first choice* (a hash of
its endpoints, the same on every instance) in one Lua call, so no two instances ever hand
out the same port, and drops the stale forward entry of the port's previous owner. The
deterministic first choice is what lets a mapping the store lost (wiped, or restored from
an older append-only file) come back at the same public port when the inside side sends
next — unless another connection took that port in the meantime (Redis arbitrates: the
later one probes on). Return traffic that arrives before the inside side sends again finds
no mapping and is dropped.
Hence ``f:x = p`` implies ``r:p = x``. Memory is bounded by the port range, so these keys
need no TTL. Filtering is per connection (the remote endpoint of return traffic must match
the mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from socket import inet_aton

from contract.nf_settings import NATSettings
from nf.base import NetworkFunction, Prefixes, ms
from nf.memo import Memo
from nf.packet import ICMP, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_NAMES, Packet, translate
from nf.state import Result, Script, refresh_ms

EXHAUSTED, NO_MAPPING, EXPIRED, WRONG_REMOTE = "-10", "-11", "-12", "-13"
ERRORS = {
    EXHAUSTED: "nat_ports_exhausted",
    NO_MAPPING: "nat_no_mapping",
    EXPIRED: "nat_mapping_expired",
    WRONG_REMOTE: "nat_wrong_remote",
}
MAX_PROBES = 1024  # bounds the time one allocation may hold Redis
SHARD_PORTS = 1024
PROTOS = tuple(PROTO_NAMES)  # cfg index of a protocol's timeouts

_LUA_OPS = f"""
-- K[ki], K[ki+1]: the shard's map hash and expiry zset. cfg[2j-1], cfg[2j]: idle timeout
-- and refresh interval (ms) of protocol j; ops start with j.
-- o: a = '<j><shard's first port> <last port> <first choice> <tuple>'. Returns the
-- public port.
OPS['o'] = function(K, ki, a, now, cfg)
  local map, exp = K[ki], K[ki + 1]
  local j, lo, hi, cur, tup = string.match(a, '^(%d)(%d+) (%d+) (%d+) (.*)$')
  local ttl = cfg[2 * j - 1]
  local port = redis.call('HGET', map, 'f:' .. tup)
  if port then
    local e = tonumber(redis.call('ZSCORE', exp, port) or 0)
    if e - now <= ttl - cfg[2 * j] then redis.call('ZADD', exp, now + ttl, port) end
    return port
  end
  lo, hi, cur = tonumber(lo), tonumber(hi), tonumber(cur)
  local n = hi - lo + 1
  if cur < lo or cur > hi then cur = lo end
  for i = 0, math.min(n, {MAX_PROBES}) - 1 do
    local p = lo + (cur - lo + i) % n
    local e = redis.call('ZSCORE', exp, p)
    if not e or tonumber(e) < now then
      local old = redis.call('HGET', map, 'r:' .. p)
      if old and redis.call('HGET', map, 'f:' .. old) == tostring(p) then
        redis.call('HDEL', map, 'f:' .. old)
      end
      redis.call('HSET', map, 'f:' .. tup, p, 'r:' .. p, tup)
      redis.call('ZADD', exp, now + ttl, p)
      return p
    end
  end
  return {EXHAUSTED}
end
-- i: a = '<j><public port> <remote endpoint>'. Returns '<inside ip>:<port>'.
OPS['i'] = function(K, ki, a, now, cfg)
  local map, exp = K[ki], K[ki + 1]
  local j, port, remote = string.match(a, '^(%d)(%d+) (.*)$')
  local tup = redis.call('HGET', map, 'r:' .. port)
  if not tup then return {NO_MAPPING} end
  local e = redis.call('ZSCORE', exp, port)
  if not e or tonumber(e) < now then return {EXPIRED} end
  local sep = string.find(tup, '>', 1, true)
  if string.sub(tup, sep + 1) ~= remote then return {WRONG_REMOTE} end
  local ttl = cfg[2 * j - 1]
  if tonumber(e) - now <= ttl - cfg[2 * j] then redis.call('ZADD', exp, now + ttl, port) end
  return string.sub(tup, 1, sep - 1)
end
"""


def _local_out(data: dict, keys: Sequence[str], a: str, now: int, cfg) -> Result:
    m = data.setdefault(keys[0], [{}, None])[0]
    exp = data.setdefault(keys[1], [{}, None])[0]
    j = ord(a[0]) - 48
    lo, hi, first, tup = a[1:].split(" ", 3)
    ttl = cfg[2 * j - 2]
    port = m.get("f:" + tup)
    if port is not None:
        if exp.get(port, 0) - now <= ttl - cfg[2 * j - 1]:
            exp[port] = now + ttl
        return port
    lo, hi, cur = int(lo), int(hi), int(first)
    n = hi - lo + 1
    if not lo <= cur <= hi:
        cur = lo
    for i in range(min(n, MAX_PROBES)):
        p = str(lo + (cur - lo + i) % n)
        e = exp.get(p)
        if e is None or e < now:
            old = m.get("r:" + p)
            if old is not None and m.get("f:" + old) == p:
                del m["f:" + old]
            m["f:" + tup] = p
            m["r:" + p] = tup
            exp[p] = now + ttl
            return p
    return EXHAUSTED


def _local_in(data: dict, keys: Sequence[str], a: str, now: int, cfg) -> Result:
    m = data.get(keys[0], [{}])[0]
    exp = data.get(keys[1], [{}])[0]
    j = ord(a[0]) - 48
    port, remote = a[1:].split(" ", 1)
    tup = m.get("r:" + port)
    if tup is None:
        return NO_MAPPING
    e = exp.get(port)
    if e is None or e < now:
        return EXPIRED
    inside, _, rem = tup.partition(">")
    if rem != remote:
        return WRONG_REMOTE
    ttl = cfg[2 * j - 2]
    if e - now <= ttl - cfg[2 * j - 1]:
        exp[port] = now + ttl
    return inside


SCRIPT = Script("nat", _LUA_OPS, {"o": 2, "i": 2}, {"o": _local_out, "i": _local_in})


def shard_of(src: int, sport: int, dst: int, dport: int, shards: int) -> int:
    """The shard of a connection's forward mapping: the same on every instance (plain
    integer arithmetic, no per-process hash seed)."""
    return (src * 2654435761 + dst * 40503 + sport * 65599 + dport) % shards


def first_choice(src: int, sport: int, dst: int, dport: int, lo: int, hi: int) -> int:
    """The public port a connection tries first within its shard's range [lo, hi]: the same
    on every instance, and independent of the shard choice (another multiplier)."""
    h = (src * 2246822519 + dst * 3266489917 + sport * 668265263 + dport * 374761393) >> 7
    return lo + h % (hi - lo + 1)


def shard_keys(pool: str, proto_name: str, shard: int) -> tuple[str, str]:
    tag = f"nfsteer:nat:{{{pool}:{proto_name}:{shard}}}"
    return f"{tag}:map", f"{tag}:exp"


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
        self._inside = Memo(self.inside.__contains__)  # address -> inside: a dict lookup
        lo, hi = settings.port_min, settings.port_max
        self.port_min, self.port_max = lo, hi
        self.shards = (hi - lo) // SHARD_PORTS + 1
        # Per protocol and shard: (keys, "o" op prefix, "i" op prefix).
        self._ops: dict[int, list[tuple[tuple[str, str], str, str, int, int]]] = {}
        cfg: list[int] = []
        for j, proto in enumerate(PROTOS, 1):
            ttl = ms(getattr(settings, f"{PROTO_NAMES[proto]}_timeout"))
            cfg += (ttl, refresh_ms(ttl))
            self._ops[proto] = [
                (
                    shard_keys(pool, PROTO_NAMES[proto], s),
                    f"o{j}{lo + s * SHARD_PORTS} {min(hi, lo + (s + 1) * SHARD_PORTS - 1)} ",
                    f"i{j}",
                    lo + s * SHARD_PORTS,
                    min(hi, lo + (s + 1) * SHARD_PORTS - 1),
                )
                for s in range(self.shards)
            ]
        self._cfg = tuple(cfg)

    def cfg(self) -> tuple[int, ...]:
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
            port = pkt.dport
            if not self.port_min <= port <= self.port_max:
                return "nat_no_mapping"
            keys, _, prefix, _, _ = self._ops[proto][(port - self.port_min) // SHARD_PORTS]
            return keys, f"{prefix}{port} {remote}"
        inside = self._inside
        if inside[pkt.src] and not inside[pkt.dst]:
            if proto == ICMP:
                if pkt.icmp_type != ICMP_ECHO_REQUEST:
                    return "nat_icmp_unsupported"
                dport = 0
            else:
                dport = pkt.dport
            shard = shard_of(pkt.src, pkt.sport, pkt.dst, dport, self.shards)
            keys, prefix, _, lo, hi = self._ops[proto][shard]
            first = first_choice(pkt.src, pkt.sport, pkt.dst, dport, lo, hi)
            return keys, f"{prefix}{first} {pkt.src_ip}:{pkt.sport}>{pkt.dst_ip}:{dport}"
        return None  # not translated traffic (inside to inside, or unrelated): forward

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        if result[0] == "-":
            return self.errors.get(result, "nat_error")
        if pkt.dst != self.public:
            return translate(frame, pkt, self.public, int(result), False)
        ip, _, port = result.rpartition(":")
        return translate(frame, pkt, int.from_bytes(inet_aton(ip), "big"), int(port), True)
