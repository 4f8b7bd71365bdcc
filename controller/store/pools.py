"""The controller's state in Redis: pools, instances, slot assignments and epochs.

Layout (every key of one pool carries the hash tag ``{P}``, so a pool lives in one Redis
Cluster slot and one Lua script can change it atomically; see also ``contract/keys.py``):

- ``nfsteer:pools`` (set): names of the pools the controller has saved.
- ``nfsteer:{P}:meta`` (hash): ``kind``, ``n_slots``, ``basis`` of pool P.
- ``nfsteer:{P}:epoch`` (string): the pool epoch; it grows with every change of the
  assignment.
- ``nfsteer:{P}:assignment`` (string): JSON list, owner (instance name or null) per slot.
- ``nfsteer:{P}:instances`` (hash): instance name -> JSON record ``{name, pool, mac, ip,
  switch, port, capacity, state, last_heartbeat, source}``; ``source`` says how the
  instance joined (``topology``, ``registered`` or ``api``).
- ``nfsteer:{P}:inst:N``, ``:members``, ``:hb:N``, ``:events``: the NF registration
  contract (``contract/keys.py``); the controller only writes ``slots`` and ``epoch``
  into an existing ``inst:N`` hash (and restores registrations after Redis lost its data).

One shared client (redis-py connection pool) with explicit timeouts, retry with exponential
backoff and periodic health checks. Connection problems surface as :class:`StoreUnavailable`
after the client's own retries; :class:`Store` logs one line when Redis becomes unreachable
and one when it is back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from contract import keys
from contract.records import parse_instance_record
from contract.values import is_name, short
from controller.core.snapshot import PoolSnapshot
from controller.core.state import InstanceInfo, InstanceState

log = logging.getLogger("nfsteer.store")

SOCKET_TIMEOUT_S = 0.5  # a command that takes longer than this means Redis is in trouble
CONNECT_TIMEOUT_S = 0.5
RETRIES = 2  # client-level retries; the controller's loops retry further with their own backoff
HEALTH_CHECK_INTERVAL_S = 5

SOURCES = ("topology", "registered", "api")
MAX_EPOCH = 2**53  # exact in a Lua number (a double): larger saved epochs are garbage
UNAVAILABLE_REPLIES = ("NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN")
T = TypeVar("T")
Member = tuple[str, str]


def _term(raw: Any) -> int:
    """The term a pool was written under (0 when unknown or malformed)."""
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 16:
        return int(raw)
    return 0


class Fenced(Exception):
    """A save refused: a newer leader's term has written the pool since."""

    def __init__(self, pool: str, term: int):
        super().__init__(f"pool {pool}: written under term {term}, newer than ours")
        self.pool = pool
        self.term = term


class StoreUnavailable(Exception):
    """Redis could not be reached (after the client's retries)."""


def instances_key(pool: str) -> str:
    """The controller's own record of pool P's instances (hash: name -> JSON)."""
    return f"{keys.PREFIX}:{{{pool}}}:instances"


def connect(url: str) -> redis.Redis:
    """The controller's one Redis client (URL may carry a password or ACL user): one
    server, a Sentinel-managed primary (``redis+sentinel://``) or a Redis Cluster
    (``redis+cluster://``; every key of a pool shares the pool's hash tag)."""
    from contract.storeurl import make_client

    return make_client(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.01), RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        client_name="nfsteer-controller",
        # A value that is not UTF-8 (anyone may write into Redis) decodes with U+FFFD and
        # then fails validation like any other bad value, instead of failing the whole
        # pipeline reply it came in.
        encoding_errors="replace",
    )


def instance_to_json(info: InstanceInfo, source: str) -> str:
    d = dataclasses.asdict(info)
    d["state"] = str(info.state)
    d["source"] = source
    return json.dumps(d, sort_keys=True)


def instance_from_json(text: str) -> tuple[InstanceInfo, str]:
    """Parse one stored instance record (checked by the shared InstanceRecord model);
    raises ValueError on a malformed one."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not JSON: {e}") from None
    record = parse_instance_record(data)
    info = InstanceInfo(
        name=record.name,
        pool=record.pool,
        mac=record.mac,
        ip=record.ip,
        switch=record.switch,
        port=record.port,
        capacity=record.capacity,
        state=InstanceState(record.state),
        last_heartbeat=record.last_heartbeat,
    )
    return info, record.source


def parse_epoch(value: Any) -> int:
    """A saved epoch: a decimal integer from 0 to MAX_EPOCH; ValueError otherwise."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise ValueError(f"epoch {short(value)} is not a whole number")
    epoch = int(value[:20])
    if len(value) > 17 or epoch > MAX_EPOCH:
        raise ValueError(f"epoch {short(value)} is above {MAX_EPOCH}")
    return epoch


# Assignment, epoch and the per-instance slot counts change together or not at all, and an
# older epoch never overwrites a newer one (a late write from a stale snapshot is dropped).
# KEYS: epoch, assignment, instances, meta, inst:N...   ARGV: epoch, assignment JSON, kind,
# n_slots, basis, number of instance records, (name, JSON)..., slot count per inst:N key.
_SAVE_LUA = """
local MAX_EPOCH = 9007199254740992
local function bounded(s)
  if type(s) ~= 'string' or #s > 16 or not string.match(s, '^%d+$') then return nil end
  local n = tonumber(s)
  if n > MAX_EPOCH then return nil end
  return n
end
-- The writer's term (the fencing token of the leader's lease) against the pool's fence:
-- a controller that lost the lead to a newer term can no longer write.
local fence_key = table.remove(KEYS, 5)
local term = bounded(table.remove(ARGV, 1))
if not term then return redis.error_reply('ERR nfsteer save: bad term argument') end
local fence_type = redis.call('TYPE', fence_key)['ok']
local fence = 0
if fence_type == 'string' then fence = bounded(redis.call('GET', fence_key)) or 0 end
if term < fence then return redis.error_reply('FENCED ' .. fence) end
-- Check every argument and key type before anything is written.
local new = bounded(ARGV[1])
local n = bounded(ARGV[6])
if not new then return redis.error_reply('ERR nfsteer save: bad epoch argument') end
if not n or #ARGV ~= 6 + 2 * n + (#KEYS - 4) then
  return redis.error_reply('ERR nfsteer save: bad argument count')
end
for i = 4, 5 do
  if not bounded(ARGV[i]) then return redis.error_reply('ERR nfsteer save: bad number') end
end
for k = 7 + 2 * n, #ARGV do
  if not bounded(ARGV[k]) then return redis.error_reply('ERR nfsteer save: bad slot count') end
end
local want = {'string', 'string', 'hash', 'hash'}
local replaced = 0
for i = 1, 4 do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want[i] then replaced = 1 end
end
local cur = -1
if redis.call('TYPE', KEYS[1])['ok'] == 'string' then
  cur = bounded(redis.call('GET', KEYS[1]))
  if cur == nil then replaced = 1; cur = -1 end
end
if cur > new then return cur end
-- The controller's own keys: one of another type or with a garbage epoch is replaced.
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], fence_key)
redis.call('SET', fence_key, term)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], 'kind', ARGV[3], 'n_slots', ARGV[4], 'basis', ARGV[5])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[3], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
end
local base = 7 + 2 * n
for k = 5, #KEYS do
  -- An NF's registration: written into only when it is a hash.
  if redis.call('TYPE', KEYS[k])['ok'] == 'hash' then
    redis.call('HSET', KEYS[k], 'slots', ARGV[base + k - 5], 'epoch', ARGV[1])
  end
end
return -1 - replaced
"""


_RETIRE_LUA = """
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  redis.call('HSET', KEYS[1], 'state', 'draining')
  return 1
end
return 0
"""


class Store:
    """Controller state in Redis over one shared client; tracks whether Redis is reachable."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._save = client.register_script(_SAVE_LUA)
        self._retire = client.register_script(_RETIRE_LUA)
        self._up: bool | None = None  # unknown until the first command
        self._lock = threading.Lock()
        # Records read back from Redis that failed validation: (pool, key) -> count.
        # Each distinct bad value is logged once.
        self.rejected: dict[tuple[str, str], int] = {}
        self._reported: set[tuple[str, str, str]] = set()

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(connect(url))

    @property
    def up(self) -> bool:
        return bool(self._up)

    def _mark(self, ok: bool, error: Exception | None = None) -> None:
        with self._lock:
            before, self._up = self._up, ok
        if ok and before is False:
            log.warning("redis back")
        elif not ok and before is not False:
            log.warning("redis unreachable: %s", error)

    def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run fn(client); connection trouble becomes StoreUnavailable (logged once)."""
        try:
            result = fn(self.client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            self._mark(False, e)
            raise StoreUnavailable(str(e)) from None
        except redis.exceptions.NoPermissionError as e:
            # An ACL user without the rights it needs: as good as unreachable, and said once.
            # (Wrong or missing passwords and a loading server are ConnectionErrors.)
            self._mark(False, e)
            raise StoreUnavailable(str(e)) from None
        except redis.ResponseError as e:
            # A store that cannot take writes now (a primary without its replicas, a
            # demoted primary, a replica loading its data): unavailable, said once.
            if not str(e).startswith(UNAVAILABLE_REPLIES):
                raise
            # Reconnect next time: a Sentinel-managed connection asks for the primary again.
            pool = getattr(self.client, "connection_pool", None)  # a cluster has none
            if pool is not None:
                pool.disconnect()
            self._mark(False, e)
            raise StoreUnavailable(str(e)) from None
        self._mark(True)
        return result

    def reject(self, pool: str, key: str, problem: str) -> None:
        """Count and log a record that failed validation, once for each distinct problem
        (by pool and kind of key: ``inst:fw1`` counts as ``inst``). A standby reads the
        state every second: the same bad record is not counted again each time."""
        kind = key.split(":", 1)[0]
        with self._lock:
            first = (pool, key, problem) not in self._reported
            if first:
                self.rejected[(pool, kind)] = self.rejected.get((pool, kind), 0) + 1
                if len(self._reported) > 10_000:
                    self._reported.clear()
                self._reported.add((pool, key, problem))
        if first:
            log.warning("pool %s: ignoring %s in redis: %s", pool, key, problem)

    def ping(self) -> bool:
        try:
            return bool(self.call(lambda r: r.ping()))
        except StoreUnavailable:
            return False

    # --- controller state -------------------------------------------------------------

    def save_pool(self, snap: PoolSnapshot) -> int | None:
        """Save a pool atomically. Returns None when written, or the newer stored epoch;
        raises :class:`Fenced` when a newer term has written the pool since."""
        counts = snap.slot_counts()
        names = sorted(snap.instances)
        inst_keys = [keys.instance(snap.name, n) for n in names]
        argv: list[Any] = [
            snap.term,
            snap.epoch,
            json.dumps(snap.assignment, separators=(",", ":")),
            snap.kind,
            snap.n_slots,
            snap.basis,
            len(names),
        ]
        for n in names:
            argv += [n, instance_to_json(snap.instances[n], snap.sources.get(n, "topology"))]
        argv += [counts.get(n, 0) for n in names]
        key_list = [
            keys.epoch(snap.name),
            keys.assignment(snap.name),
            instances_key(snap.name),
            keys.pool_meta(snap.name),
            keys.fence(snap.name),
            *inst_keys,
        ]

        def run(r: redis.Redis) -> int:
            try:
                stored = int(self._save(keys=key_list, args=argv, client=r))
            except redis.ResponseError as e:
                if str(e).startswith("FENCED"):
                    raise Fenced(snap.name, int(str(e).split()[1])) from None
                raise
            try:
                r.sadd(keys.POOLS, snap.name)  # another cluster slot: not part of the script
            except redis.ResponseError as e:  # not a set: only informational, left alone
                self.reject(snap.name, "pools", f"wrong type ({short(str(e))})")
            return stored

        stored = self.call(run)
        if stored == -2:
            log.warning("pool %s: replaced malformed saved state in redis", snap.name)
        return None if stored < 0 else stored

    def load_pool(self, pool: str) -> PoolSnapshot | None:
        """Read a saved pool; None if nothing (complete and valid) is saved. Every value is
        checked: a bad instance record is counted, logged once and left out; a bad epoch,
        assignment or meta leaves the whole pool out (the topology file wins)."""

        def run(r: redis.Redis) -> list[Any]:
            p = r.pipeline(transaction=True)  # one consistent read
            p.get(keys.epoch(pool))
            p.get(keys.assignment(pool))
            p.hgetall(instances_key(pool))
            p.hgetall(keys.pool_meta(pool))
            p.get(keys.fence(pool))
            return p.execute(raise_on_error=False)

        return parse_pool(pool, self.call(run), self.reject)

    def stored_epoch(self, pool: str) -> int | None:
        """The saved epoch; None when there is none or it is malformed (counted)."""

        def run(r: redis.Redis) -> Any:
            p = r.pipeline(transaction=False)
            p.get(keys.epoch(pool))
            return p.execute(raise_on_error=False)[0]

        value = self.call(run)
        if value is None:
            return None
        if isinstance(value, Exception):
            self.reject(pool, "epoch", "wrong type")
            return None
        try:
            return parse_epoch(value)
        except ValueError as e:
            self.reject(pool, "epoch", str(e))
            return None

    # --- the registration contract (controller side) -----------------------------------

    def members(
        self, pools: Iterable[str]
    ) -> tuple[dict[str, dict[str, dict[str, str]]], set[Member]]:
        """Registered instances: pool -> name -> registration hash (one round trip per
        pool set: SMEMBERS for all pools, then HGETALL for every member), and the members
        whose registration is unreadable (not a hash, not text: counted, logged once and
        left for the caller to skip). A bad entry never hides the others."""
        pools = list(pools)
        bad: set[Member] = set()

        def run(r: redis.Redis) -> dict[str, dict[str, dict[str, str]]]:
            p = r.pipeline(transaction=False)
            for pool in pools:
                p.smembers(keys.members(pool))
            names: list[list[str]] = []
            for pool, found in zip(pools, p.execute(raise_on_error=False), strict=True):
                if isinstance(found, Exception):
                    self.reject(pool, "members", f"wrong type ({short(str(found))})")
                    found = set()
                valid = []
                for n in sorted(found):
                    if is_name(n):
                        valid.append(n)
                    else:
                        self.reject(pool, "members", f"{short(n)} is not an instance name")
                names.append(valid)
            p = r.pipeline(transaction=False)
            for pool, ns in zip(pools, names, strict=True):
                for n in ns:
                    p.hgetall(keys.instance(pool, n))
            hashes = iter(p.execute(raise_on_error=False))
            out: dict[str, dict[str, dict[str, str]]] = {}
            for pool, ns in zip(pools, names, strict=True):
                out[pool] = {}
                for n in ns:
                    reg = next(hashes)
                    if isinstance(reg, Exception):
                        self.reject(pool, f"inst:{n}", f"wrong type ({short(str(reg))})")
                        bad.add((pool, n))
                        continue
                    out[pool][n] = reg
            return out

        return self.call(run), bad

    def registration(self, pool: str, name: str) -> dict[str, str] | None:
        """The registration hash ({} when there is none); None when the key holds
        something else (counted and logged once)."""

        def run(r: redis.Redis) -> Any:
            p = r.pipeline(transaction=False)
            p.hgetall(keys.instance(pool, name))
            return p.execute(raise_on_error=False)[0]

        reg = self.call(run)
        if isinstance(reg, Exception):
            self.reject(pool, f"inst:{name}", f"wrong type ({short(str(reg))})")
            return None
        return reg

    def heartbeats(self, members: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        """(value, remaining TTL in ms) of every member's heartbeat key, in one pipeline.
        A missing key reads (None, -2)."""
        members = list(members)
        if not members:
            return {}

        def run(r: redis.Redis) -> list[Any]:
            p = r.pipeline(transaction=False)
            for pool, name in members:
                p.get(keys.heartbeat(pool, name))
                p.pttl(keys.heartbeat(pool, name))
            return p.execute(raise_on_error=False)

        out = self.call(run)
        beats: dict[tuple[str, str], Any] = {}
        for i, m in enumerate(members):
            value, pttl = out[2 * i], out[2 * i + 1]
            if isinstance(value, Exception) or isinstance(pttl, Exception):
                # Not a string key: no valid heartbeat (an NF's next beat replaces it).
                self.reject(m[0], f"hb:{m[1]}", "wrong type")
                value, pttl = None, -2
            beats[m] = (value, pttl)
        return beats

    def restore_registrations(self, regs: Mapping[tuple[str, str], Mapping[str, str]]) -> int:
        """Write back registrations that Redis lost (it restarted empty); an NF's own newer
        registration is never overwritten. Returns how many were restored."""
        items = [(k, dict(v)) for k, v in regs.items() if v]
        if not items:
            return 0

        def run(r: redis.Redis) -> int:
            p = r.pipeline(transaction=False)
            for (pool, name), _ in items:
                p.exists(keys.instance(pool, name))
            missing = [it for it, exists in zip(items, p.execute(), strict=True) if not exists]
            p = r.pipeline(transaction=False)
            for (pool, name), fields in missing:
                p.hset(keys.instance(pool, name), mapping=fields)
                p.sadd(keys.members(pool), name)
            for (pool, _), result in zip(
                missing, p.execute(raise_on_error=False)[1::2], strict=True
            ):
                if isinstance(result, Exception):
                    self.reject(pool, "members", f"wrong type ({short(str(result))})")
            return len(missing)

        return self.call(run)

    def retire_registration(self, pool: str, name: str) -> bool:
        """Mark a registration ``state draining``: the controller drained or removed the
        instance, and a registration in that state is never joined again (the NF keeps
        its keys until it deregisters; a new registration starts active). Returns whether
        there was a registration."""
        return bool(self.call(lambda r: self._retire(keys=[keys.instance(pool, name)], client=r)))

    def close(self) -> None:
        from contract.storeurl import close_client

        close_client(self.client)


def parse_pool(
    pool: str, replies: list[Any], reject: Callable[[str, str, str], None]
) -> PoolSnapshot | None:
    """A saved pool from the replies of its read (see :meth:`Store.load_pool`); bad values
    are handed to ``reject``."""
    epoch_raw, assignment, records, meta, fence_raw = replies
    for key, value in (("epoch", epoch_raw), ("assignment", assignment)):
        if isinstance(value, Exception):
            reject(pool, key, f"wrong type ({short(str(value))})")
            return None
    for key, value in (("instances", records), ("meta", meta)):
        if isinstance(value, Exception):
            reject(pool, key, f"wrong type ({short(str(value))})")
            records = {} if key == "instances" else records
            if key == "meta":
                return None
    if epoch_raw is None or assignment is None or not meta:
        return None
    try:
        epoch = parse_epoch(epoch_raw)
    except ValueError as e:
        reject(pool, "epoch", str(e))
        return None
    try:
        owners = json.loads(assignment)
    except ValueError:
        owners = None
    if not isinstance(owners, list) or not all(o is None or is_name(o) for o in owners):
        reject(pool, "assignment", "not a JSON list of instance names")
        return None
    try:
        kind, n_slots = meta["kind"], int(meta["n_slots"])
        basis = int(meta.get("basis", "0"))
    except (KeyError, ValueError):
        reject(pool, "meta", f"malformed: {short(meta, 80)}")
        return None
    instances: dict[str, InstanceInfo] = {}
    sources: dict[str, str] = {}
    for name, text in records.items():
        try:
            info, source = instance_from_json(text)
            if info.name != name or info.pool != pool:
                raise ValueError(f"record of {info.pool}/{info.name} under {short(name)}")
        except ValueError as e:
            reject(pool, "instances", f"{short(name)}: {e}")
            continue
        instances[name], sources[name] = info, source
    return PoolSnapshot(
        name=pool,
        kind=kind,
        n_slots=n_slots,
        basis=basis,
        epoch=epoch,
        assignment=owners,
        instances=instances,
        sources=sources,
        term=_term(fence_raw),
    )
