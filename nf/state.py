"""The state client: every piece of NF state is read and written through one store.

An NF turns each packet of a batch into one *operation*: its keys and one argument string
whose first character is the op code (``("nfsteer:fw:p:{...}",), "c011"``). The store runs
all operations of a batch in order and returns one result string per operation:

* :class:`RedisStore` sends the whole batch as **one** ``EVALSHA`` of the NF's Lua script
  (one round trip per batch). The script runs the operations one after the other, each an
  atomic read-modify-write, so two packets of one connection in one batch (or two
  instances racing on one connection) see each other's effects. All keys of one operation
  share one Redis Cluster hash tag.
* :class:`ClusterStore` does the same against a Redis Cluster (``redis+cluster://`` URL):
  a batch is split by hash slot into one script call per slot, all sent in one pipelined
  round trip.
* :class:`LocalStore` runs the same operations, written in Python, on an in-process dict:
  the traditional NF whose state dies with it, kept as the baseline.

The wire format is compact on purpose (it is most of the per-packet cost): a batch is
``EVALSHA sha nkeys keys... cfg... ops`` where ``ops`` is every op's argument string
joined by newlines, and the reply is one bulk string, the results joined by newlines.
``cfg`` holds numbers shared by every op of the batch (TTLs, port range).

Every store gives each operation the time in milliseconds (Redis: the server clock, so
instances need no clock agreement). A batch is *submitted* and later *collected*, so the
packet loop can read and prepare the next batch while the store works. When Redis cannot
be reached, the store raises :class:`NFStateUnavailable` at once (after a failure it backs
off instead of waiting for a timeout per batch) and reconnects by itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nf.memo import Memo

log = logging.getLogger("nfsteer.nf")

Result = str  # an op's result; errors are negative numbers ("-1")
# A local op: (data, keys, arg, now_ms, cfg) -> result. data maps key -> [value, expiry_ms].
LocalOp = Callable[[dict, Sequence[str], str, int, Sequence[int]], Result]
Op = tuple[tuple[str, ...], str]  # (keys, code + argument)


NOT_WRITABLE_REPLIES = ("NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN")


class NFStateUnavailable(Exception):
    """The state store cannot be reached now; the batch was not (fully) applied."""


class NotReplicated(Exception):
    """Output commit: the batch was applied on the primary but fewer replicas than asked
    confirmed it in time; its packets must not leave (a failover could lose the state they
    depend on). Sending the batch again is harmless: every op is idempotent."""


@dataclass(frozen=True)
class Script:
    """One NF's batch script: Lua op functions (``OPS[code] = function(K, ki, a, now,
    cfg)``, ``a`` the op's argument without its code), how many keys each op takes, and
    the same ops in Python for the local store."""

    name: str
    lua_ops: str
    nkeys: dict[str, int]  # code -> number of keys
    local_ops: dict[str, LocalOp]
    lua: str = field(init=False)

    def __post_init__(self) -> None:
        nkeys = ", ".join(f"[{c!r}] = {k}" for c, k in self.nkeys.items())
        object.__setattr__(self, "lua", _LUA_FRAME.format(ops=self.lua_ops, nkeys=nkeys))


# The frame around every NF's ops: decode the batch, run each op, return the results as one
# newline-separated string. ARGV = cfg numbers..., ops; KEYS = each op's keys in order.
_LUA_FRAME = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local OPS = {{}}
{ops}
local NKEYS = {{{nkeys}}}
local n = #ARGV
local cfg = {{}}
for i = 1, n - 1 do cfg[i] = tonumber(ARGV[i]) end
local ops = ARGV[n]
local out = {{}}
local ki, pos, len = 1, 1, #ops
local find, sub = string.find, string.sub
while pos <= len do
  local e = find(ops, '\\n', pos, true) or len + 1
  local code = sub(ops, pos, pos)
  local f = OPS[code]
  if not f then return redis.error_reply('unknown op ' .. code) end
  out[#out + 1] = f(KEYS, ki, sub(ops, pos + 1, e - 1), now, cfg)
  ki = ki + NKEYS[code]
  pos = e + 1
end
return table.concat(out, '\\n')
"""


def refresh_ms(ttl_ms: int) -> int:
    """How long an unchanged entry may go without its expiry being pushed forward: a tenth
    of its idle timeout, at most a second. Skipping those writes makes most packets of an
    established connection read-only for the store; the price is that an idle entry may
    expire up to this much early."""
    return min(ttl_ms // 10, 1000)


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
        return [fns[a[0]](data, keys, a[1:], now, cfg) for keys, a in ops]

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

    # Back off after a failure, doubling up to a tenth of a second: a failover is over
    # within one such step of the Sentinels naming the new primary (an attempt costs one
    # question to a Sentinel and a connect).
    MIN_BACKOFF_S = 0.02
    MAX_BACKOFF_S = 0.1

    def __init__(
        self, client: Any, scripts: Sequence[Script] = (), sync: tuple[int, int] | None = None
    ):
        self.client = client
        # Output commit: (replicas, timeout ms) for a WAIT sent behind every batch.
        self.sync = sync
        self._wait = pack(["WAIT", sync[0], sync[1]]) if sync else b""
        self.not_replicated = 0
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
            # Taken from the client's pool (and given back when dropped) so that the pool's
            # count stays right; get_connection() also connects the way the pool means to
            # (a Sentinel-managed connection asks the Sentinels for the primary first).
            pool = self.client.connection_pool
            conn = pool.get_connection()
            self._conn = conn
            if self.sync:  # a reply may take the WAIT's own timeout on top
                conn.socket_timeout = (conn.socket_timeout or 0) + self.sync[1] / 1000
                conn.disconnect()
                conn.connect()
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
        except NFStateUnavailable:
            if not self._fresh_failure:
                raise
        self._fresh_failure = False
        self.available, self._retry_at = True, 0.0
        self._quiet = True
        try:
            return self.collect(self.submit(script, cfg, ops))
        finally:
            self._quiet = False

    def submit(
        self, script: Script, cfg: Sequence[Any], ops: Sequence[Op], extra: Sequence[str] = ()
    ) -> tuple[int, int]:
        """Send one batch as one EVALSHA and return a ticket for :meth:`collect`. Replies
        come back in order, so batches may be in flight while the next is prepared.
        ``extra`` is one more command (the heartbeat) sent ahead of the batch in the same
        write: it costs no round trip of its own."""
        import redis

        if not self.available and time.monotonic() < self._retry_at:
            raise NFStateUnavailable(self.last_error)
        try:
            conn = self._connection()
            sha = self._sha.get(script.name) or self._load(script)
            packed = pack_batch(sha, cfg, ops)
            if extra:
                packed = pack(extra) + packed
            if self._wait:  # same write, same connection: WAIT cannot run in a script
                packed += self._wait
            conn.send_packed_command([packed], check_health=False)
        except (redis.exceptions.RedisError, OSError) as e:
            self._failed(e)
            raise NFStateUnavailable(self.last_error) from None
        self.round_trips += 1
        return self._generation, 1 if extra else 0

    def collect(self, ticket: tuple[int, int]) -> list[Result]:
        import redis

        generation, extra = ticket
        if generation != self._generation or self._conn is None:
            raise NFStateUnavailable(self.last_error)  # its connection is gone
        acked = None
        try:
            if extra:
                self._extra_reply()
            try:
                res = self._conn.read_response()
            finally:
                if self._wait:  # read even after an error reply: keeps replies in step
                    acked = self._conn.read_response()
        except redis.exceptions.NoScriptError as e:
            # The store lost its scripts (restart, SCRIPT FLUSH): nothing of the batch ran;
            # load again next batch.
            self._sha.clear()
            self.errors += 1
            raise NFStateUnavailable(str(e)) from None
        except (redis.exceptions.RedisError, OSError) as e:
            # Connection lost, timeout, or an error reply (out of memory, read-only
            # replica...): this batch is lost, and with a broken connection so is any
            # batch still in flight on it.
            self._failed(e)
            raise NFStateUnavailable(self.last_error) from None
        self._reachable()
        if acked is not None and acked < self.sync[0]:  # type: ignore[index]
            self.not_replicated += 1
            raise NotReplicated(f"{acked} of {self.sync[0]} replicas confirmed")  # type: ignore[index]
        return res.decode().split("\n")

    def _extra_reply(self) -> None:
        """Read the reply to an extra command: an error reply there (e.g. out of memory)
        is counted; the batch behind it still counts on its own."""
        import redis

        try:
            self._conn.read_response()
        except redis.exceptions.ResponseError as e:
            self.errors += 1
            log.debug("extra command failed: %s", e)

    def command(self, args: Sequence[str]) -> Any:
        """One command in a round trip of its own; nothing may be in flight. Fails at once
        (NFStateUnavailable) while backing off after a failure, like a batch."""
        import redis

        if not self.available and time.monotonic() < self._retry_at:
            raise NFStateUnavailable(self.last_error)
        try:
            conn = self._connection()
            conn.send_packed_command([pack(args)], check_health=False)
            self.round_trips += 1
            res = conn.read_response()
        except (redis.exceptions.RedisError, OSError) as e:
            self._failed(e)
            raise NFStateUnavailable(self.last_error) from None
        self._reachable()
        return res

    def _reachable(self) -> None:
        if not self.available:
            self.available = True
            self._backoff = self.MIN_BACKOFF_S
            log.info("state store reachable again")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.disconnect()
                self.client.connection_pool.release(self._conn)
            self._conn = None

    def _failed(self, e: Exception) -> None:
        import redis

        # A connection error, or a reply saying this node cannot take writes now (it lost
        # its replicas, or is no primary any more): drop the connection, so that the next
        # one asks the Sentinels again. Other error replies leave it up.
        if not isinstance(e, redis.exceptions.ResponseError) or str(e).startswith(
            NOT_WRITABLE_REPLIES
        ):
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


class ClusterStore(RedisStore):
    """Batches against a Redis Cluster. One script call may only touch keys of one hash
    slot, so a batch is split by slot (:func:`group_by_slot`) into one call per slot, in
    the batch's order within each slot; redis-py's cluster pipeline sends every node its
    calls together, so a batch is still one round trip (per node, in parallel). Ops of
    different slots share no keys, so running them in separate calls changes nothing.
    The batch completes in :meth:`submit` (no second batch in flight): the cluster client
    routes, follows MOVED/ASK and refreshes the slot map itself."""

    def _load(self, script: Script) -> str:
        self.round_trips += 1
        sha = self.client.script_load(script.lua)  # on every primary
        sha = sha.decode() if isinstance(sha, bytes) else sha
        self._sha[script.name] = sha
        return sha

    def submit(
        self, script: Script, cfg: Sequence[Any], ops: Sequence[Op], extra: Sequence[str] = ()
    ) -> list[Result]:
        import redis

        if not self.available and time.monotonic() < self._retry_at:
            raise NFStateUnavailable(self.last_error)
        groups = group_by_slot(ops)
        try:
            try:
                out = self._run(script, cfg, ops, groups, extra)
            except redis.exceptions.NoScriptError:
                # A node lost the scripts (restart, failover, a new primary): load again.
                self._sha.clear()
                out = self._run(script, cfg, ops, groups, ())
        except (redis.exceptions.RedisError, OSError) as e:
            self._failed(e)
            raise NFStateUnavailable(self.last_error) from None
        self._reachable()
        return out

    def _run(
        self,
        script: Script,
        cfg: Sequence[Any],
        ops: Sequence[Op],
        groups: list[list[int]],
        extra: Sequence[str],
    ) -> list[Result]:
        sha = self._sha.get(script.name) or self._load(script)
        pipe = self.client.pipeline(transaction=False)
        if extra:  # routed to its own node, sent in parallel with the batch
            pipe.execute_command(*extra)
        for idx in groups:
            keys = [k for i in idx for k in ops[i][0]]
            joined = "\n".join([ops[i][1] for i in idx])
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *cfg, joined)
        replies = pipe.execute(raise_on_error=False)
        self.round_trips += 1
        if extra:
            if isinstance(replies[0], Exception):
                self.errors += 1
                log.debug("extra command failed: %s", replies[0])
            replies = replies[1:]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        out: list[Result] = [""] * len(ops)
        for idx, reply in zip(groups, replies, strict=True):
            for i, r in zip(idx, reply.decode().split("\n"), strict=True):
                out[i] = r
        return out

    def collect(self, ticket: list[Result]) -> list[Result]:
        return ticket

    def command(self, args: Sequence[str]) -> Any:
        import redis

        if not self.available and time.monotonic() < self._retry_at:
            raise NFStateUnavailable(self.last_error)
        try:
            self.round_trips += 1
            res = self.client.execute_command(*args)
        except (redis.exceptions.RedisError, OSError) as e:
            self._failed(e)
            raise NFStateUnavailable(self.last_error) from None
        self._reachable()
        return res

    def _drop_connection(self) -> None:
        pass  # the cluster client manages (and re-makes) its node connections

    def close(self) -> None:
        self.client.close()


def group_by_slot(ops: Sequence[Op]) -> list[list[int]]:
    """Positions of a batch's ops grouped by the Redis Cluster hash slot of their keys (all
    keys of one op share a hash tag, so its first key decides), in batch order."""
    from redis.crc import key_slot

    groups: dict[int, list[int]] = {}
    for i, (keys, _) in enumerate(ops):
        groups.setdefault(key_slot(keys[0].encode()), []).append(i)
    return list(groups.values())


def redis_store(
    client: Any, scripts: Sequence[Script] = (), sync: tuple[int, int] | None = None
) -> RedisStore:
    """The store for a client made by :func:`redis_client`: per-slot batches on a cluster.
    ``sync`` (replicas, timeout ms) turns on output commit; a cluster has no one primary
    to WAIT on, so it is refused there (ValueError)."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        if sync:
            raise ValueError("store_sync needs one primary (redis:// or redis+sentinel://)")
        return ClusterStore(client, scripts)
    return RedisStore(client, scripts, sync)


def _bulk(s: str) -> str:
    return f"${len(s)}\r\n{s}\r\n"


def pack(args: Sequence[Any]) -> bytes:
    """RESP encoding of one command. Every argument is ASCII here (addresses, numbers,
    names matching the topology's name pattern, Lua source), so length in characters is
    length in bytes and the command is encoded once, at the end."""
    parts = [f"*{len(args)}\r\n"]
    parts += [_bulk(a if type(a) is str else str(a)) for a in args]
    return "".join(parts).encode()


# RESP encodings of keys and of the cfg numbers: a flow's key and an NF's cfg recur batch
# after batch, and formatting them was most of the packing.
_BULK_KEYS = Memo(_bulk)
_BULK_CFGS = Memo(lambda cfg: "".join([_bulk(str(c)) for c in cfg]), 64)


def pack_batch(sha: str, cfg: Sequence[Any], ops: Sequence[Op]) -> bytes:
    """``EVALSHA sha nkeys keys... cfg... ops`` in RESP, built by hand: per packet this is
    one cached key encoding and one slice of a joined string, where redis-py's generic
    packer would cost more than the NF's whole per-packet work."""
    keys = [_BULK_KEYS[k] for ks, _ in ops for k in ks]
    joined = "\n".join([a for _, a in ops])
    n = len(keys)
    return (
        f"*{n + len(cfg) + 4}\r\n$7\r\nEVALSHA\r\n{_bulk(sha)}{_bulk(str(n))}"
        + "".join(keys)
        + _BULK_CFGS[tuple(cfg)]
        + _bulk(joined)
    ).encode()


def redis_client(url: str, timeout_s: float = 0.05) -> Any:
    """The one redis-py client of an NF process (see ``contract/storeurl.py`` for the
    URLs: one server, ``redis+sentinel://`` or ``redis+cluster://``). Timeouts are tens of
    milliseconds: a packet loop must not hang on a dead or stopped store — a batch takes
    well under a millisecond — and after a failover the next connection asks the Sentinels
    for the new primary. One quick retry with backoff inside redis-py, and our own backoff
    above it (RedisStore)."""
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    from contract.storeurl import make_client

    return make_client(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), 1),
        client_name="nfsteer-nf",
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=0,
    )
