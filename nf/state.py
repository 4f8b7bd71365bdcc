"""The state client: every piece of NF state is read and written through one store.

An NF turns each packet of a batch into one *operation* (an op code, its keys and its
arguments). The store runs all operations of a batch in order and returns one result per
operation:

* :class:`RedisStore` sends the whole batch as **one** ``EVALSHA`` of the NF's Lua script
  (one round trip per batch). The script runs the operations one after the other, each an
  atomic read-modify-write, so two packets of one connection in one batch (or two
  instances racing on one connection) see each other's effects. All keys of one operation
  share one Redis Cluster hash tag.
* :class:`LocalStore` runs the same operations, written in Python, on an in-process dict:
  the traditional NF whose state dies with it, kept as the baseline.

Both give each operation the time in milliseconds (Redis: the server clock, so instances
need no clock agreement). A batch is *submitted* and later *collected*, so the packet loop
can read and prepare the next batch while the store works. When Redis cannot be reached,
the store raises :class:`StoreUnavailable` at once (after a failure it backs off instead of
waiting for a timeout per batch) and reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("nfsteer.nf")

Result = int | str
# A local op: (data, keys, args, now_ms, cfg) -> result. data maps key -> [value, expiry_ms].
LocalOp = Callable[[dict, Sequence[str], Sequence[Any], int, Sequence[Any]], Result]
Op = tuple[str, tuple[str, ...], tuple[Any, ...]]  # (code, keys, args)


class StoreUnavailable(Exception):
    """The state store cannot be reached now; the batch was not (fully) applied."""


@dataclass(frozen=True)
class Script:
    """One NF's batch script: Lua op functions (``OPS[code] = function(K, ki, A, ai, now,
    cfg)``), their arity, and the same ops in Python for the local store."""

    name: str
    lua_ops: str
    arity: dict[str, tuple[int, int]]  # code -> (number of keys, number of args)
    local_ops: dict[str, LocalOp]
    lua: str = field(init=False)

    def __post_init__(self) -> None:
        arity = ", ".join(f"[{c!r}] = {{{k}, {a}}}" for c, (k, a) in self.arity.items())
        object.__setattr__(self, "lua", _LUA_FRAME.format(ops=self.lua_ops, arity=arity))


# The frame around every NF's ops: decode the batch, run each op, return one result each.
# ARGV = ncfg, cfg..., then per op: code, args...; KEYS = each op's keys in order.
_LUA_FRAME = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local OPS = {{}}
{ops}
local ARITY = {{{arity}}}
local ncfg = tonumber(ARGV[1])
local cfg = {{}}
for i = 1, ncfg do cfg[i] = ARGV[1 + i] end
local out = {{}}
local ki, ai = 1, ncfg + 2
local n = #ARGV
while ai <= n do
  local code = ARGV[ai]
  local ar = ARITY[code]
  if not ar then return redis.error_reply('unknown op ' .. tostring(code)) end
  out[#out + 1] = OPS[code](KEYS, ki, ARGV, ai + 1, now, cfg)
  ki = ki + ar[1]
  ai = ai + 1 + ar[2]
end
return out
"""


class LocalStore:
    """In-process state with the same operations: the baseline (state dies with the
    process and is invisible to other instances)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.data: dict[str, list] = {}
        self._clock = clock
        self._next_sweep = 0
        self.round_trips = 0

    def run(self, script: Script, cfg: Sequence[Any], ops: Sequence[Op]) -> list[Result]:
        now = int(self._clock() * 1000)
        if now >= self._next_sweep:
            self._sweep(now)
        data = self.data
        fns = script.local_ops
        return [fns[code](data, keys, args, now, cfg) for code, keys, args in ops]

    def submit(self, script: Script, cfg: Sequence[Any], ops: Sequence[Op]) -> list[Result]:
        return self.run(script, cfg, ops)

    def collect(self, ticket: list[Result]) -> list[Result]:
        return ticket

    def _sweep(self, now: int) -> None:
        # Expired entries are ignored when read; drop them in bulk now and then so that
        # memory stays bounded like Redis's own expiry.
        dead = [k for k, v in self.data.items() if v[1] is not None and v[1] <= now]
        for k in dead:
            del self.data[k]
        self._next_sweep = now + 1000

    def close(self) -> None:
        pass


def local_get(data: dict, key: str, now: int) -> Any:
    e = data.get(key)
    if e is None:
        return None
    if e[1] is not None and e[1] <= now:
        del data[key]
        return None
    return e[0]


def local_set(data: dict, key: str, value: Any, now: int, ttl_ms: int | None) -> None:
    data[key] = [value, None if ttl_ms is None else now + ttl_ms]


def local_expire(data: dict, key: str, now: int, ttl_ms: int) -> None:
    e = data.get(key)
    if e is not None:
        e[1] = now + ttl_ms


class RedisStore:
    """Runs each batch as one EVALSHA on a connection of its own (made from the shared
    client's settings: address, password, timeouts), packing the command by hand:
    redis-py's generic packer costs more per argument than the NF's whole per-packet work,
    and its pipelines cannot leave a batch in flight while the next is prepared."""

    MIN_BACKOFF_S = 0.05
    MAX_BACKOFF_S = 1.0

    def __init__(self, client: Any, scripts: Sequence[Script] = ()):
        self.client = client
        self._conn: Any = None
        self._generation = 0  # tickets of batches sent on an older connection are void
        self._sha: dict[str, str] = {}
        self.available = True
        self._retry_at = 0.0
        self._backoff = self.MIN_BACKOFF_S
        self._fresh_failure = False  # the last failure came right after a success
        self._quiet = False
        self.round_trips = 0
        self.errors = 0
        self.last_error = ""

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = self.client.connection_pool.make_connection()
            self._sha.clear()
            self._generation += 1
        return self._conn

    def _load(self, script: Script) -> str:
        conn = self._conn
        self.round_trips += 1
        conn.send_packed_command([pack(["SCRIPT", "LOAD", script.lua])], check_health=False)
        sha = conn.read_response()
        sha = sha.decode() if isinstance(sha, bytes) else sha
        self._sha[script.name] = sha
        return sha

    def run(self, script: Script, cfg: Sequence[Any], ops: Sequence[Op]) -> list[Result]:
        """Submit and collect one batch. On the first failure after a success (typically a
        connection broken by a store restart), retry once at once on a new connection
        before backing off."""
        try:
            return self.collect(self.submit(script, cfg, ops))
        except StoreUnavailable:
            if not self._fresh_failure:
                raise
        self._fresh_failure = False
        self.available, self._retry_at = True, 0.0
        self._quiet = True
        try:
            return self.collect(self.submit(script, cfg, ops))
        finally:
            self._quiet = False

    def submit(self, script: Script, cfg: Sequence[Any], ops: Sequence[Op]) -> int:
        """Send one batch as one EVALSHA and return a ticket for :meth:`collect`. Replies
        come back in order, so batches may be in flight while the next is prepared."""
        import redis

        if not self.available and time.monotonic() < self._retry_at:
            raise StoreUnavailable(self.last_error)
        keys: list[Any] = []
        argv: list[Any] = [len(cfg), *cfg]
        for code, k, a in ops:
            keys += k
            argv.append(code)
            argv += a
        try:
            conn = self._connection()
            sha = self._sha.get(script.name) or self._load(script)
            packed = pack(["EVALSHA", sha, len(keys), *keys, *argv])
            conn.send_packed_command([packed], check_health=False)
        except (redis.exceptions.RedisError, OSError) as e:
            self._failed(e)
            raise StoreUnavailable(self.last_error) from None
        self.round_trips += 1
        return self._generation

    def collect(self, ticket: int) -> list[Result]:
        import redis

        if ticket != self._generation or self._conn is None:
            raise StoreUnavailable(self.last_error)  # its connection is gone
        try:
            res = self._conn.read_response()
        except redis.exceptions.NoScriptError as e:
            # The store lost its scripts (restart, SCRIPT FLUSH): load again next batch.
            self._sha.clear()
            self.errors += 1
            raise StoreUnavailable(str(e)) from None
        except (redis.exceptions.RedisError, OSError) as e:
            # Connection lost, timeout, or an error reply (out of memory, read-only
            # replica...): this batch is lost, and with a broken connection so is any
            # batch still in flight on it.
            self._failed(e)
            raise StoreUnavailable(self.last_error) from None
        if not self.available:
            self.available = True
            self._backoff = self.MIN_BACKOFF_S
            log.info("state store reachable again")
        return [r.decode() if isinstance(r, bytes) else r for r in res]

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
            self._conn = None

    def _failed(self, e: Exception) -> None:
        import redis

        if not isinstance(e, redis.exceptions.ResponseError):
            self._drop_connection()
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"
        self._fresh_failure = self.available
        if self.available:
            if not self._quiet:
                log.warning("state store unreachable (%s); retrying with backoff", self.last_error)
        else:
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF_S)
        self.available = False
        self._retry_at = time.monotonic() + self._backoff

    def close(self) -> None:
        self._drop_connection()


def pack(args: Sequence[Any]) -> bytes:
    """RESP encoding of one command. Every argument is ASCII here (addresses, numbers,
    names matching the topology's name pattern, Lua source), so length in characters is
    length in bytes and the command is encoded once, at the end."""
    parts = [f"*{len(args)}\r\n"]
    for a in args:
        s = a if type(a) is str else str(a)
        parts.append(f"${len(s)}\r\n{s}\r\n")
    return "".join(parts).encode()


def redis_client(url: str, timeout_s: float = 0.25) -> Any:
    """The one redis-py client of an NF process: short socket timeouts (a packet loop must
    not hang on a dead store), one quick retry with backoff inside redis-py, and our own
    backoff above it (RedisStore)."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), 1),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=0,
        client_name="nfsteer-nf",
    )
