"""The controller's state in Redis: pools, instances, slot assignments and epochs.

Layout (every key of one pool carries the hash tag ``{P}``, so a pool lives in one Redis
Cluster slot and one Lua script can change it atomically; see also ``controller/keys.py``):

- ``nfsteer:pools`` (set): names of the pools the controller has saved.
- ``nfsteer:{P}:meta`` (hash): ``kind``, ``n_slots``, ``basis`` of pool P.
- ``nfsteer:{P}:epoch`` (string): the pool epoch; it grows with every change of the
  assignment.
- ``nfsteer:{P}:assignment`` (string): JSON list, owner (instance name or null) per slot.
- ``nfsteer:{P}:instances`` (hash): instance name -> JSON record ``{name, pool, mac, ip,
  switch, port, capacity, state, last_heartbeat, source}``; ``source`` says how the
  instance joined (``topology``, ``registered`` or ``api``).
- ``nfsteer:{P}:inst:N``, ``:members``, ``:hb:N``, ``:events``: the NF registration
  contract (``controller/keys.py``); the controller only writes ``slots`` and ``epoch``
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
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from controller import keys
from controller.state import InstanceInfo, InstanceState, PoolState

log = logging.getLogger("nfsteer.store")

SOCKET_TIMEOUT_S = 0.5  # a command that takes longer than this means Redis is in trouble
CONNECT_TIMEOUT_S = 0.5
RETRIES = 2  # client-level retries; the controller's loops retry further with their own backoff
HEALTH_CHECK_INTERVAL_S = 5

SOURCES = ("topology", "registered", "api")
UNAVAILABLE_REPLIES = ("NOREPLICAS", "READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """Redis could not be reached (after the client's retries)."""


def instances_key(pool: str) -> str:
    """The controller's own record of pool P's instances (hash: name -> JSON)."""
    return f"{keys.PREFIX}:{{{pool}}}:instances"


def connect(url: str) -> redis.Redis:
    """The controller's one Redis client (URL may carry a password or ACL user): one
    server, a Sentinel-managed primary (``redis+sentinel://``) or a Redis Cluster
    (``redis+cluster://``; every key of a pool shares the pool's hash tag)."""
    from controller.storeurl import make_client

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
    )


@dataclass
class PoolSnapshot:
    """A consistent copy of one pool: taken from the controller to be saved, or read back."""

    name: str
    kind: str
    n_slots: int
    basis: int
    epoch: int
    assignment: list[str | None]
    instances: dict[str, InstanceInfo]
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pool: PoolState, sources: Mapping[str, str] | None = None) -> PoolSnapshot:
        return cls(
            name=pool.name,
            kind=pool.kind,
            n_slots=pool.n_slots,
            basis=pool.basis,
            epoch=pool.epoch,
            assignment=list(pool.assignment),
            instances={n: dataclasses.replace(i) for n, i in pool.instances.items()},
            sources=dict(sources or {}),
        )

    def slot_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.instances, 0)
        for owner in self.assignment:
            if owner is not None:
                counts[owner] = counts.get(owner, 0) + 1
        return counts


def instance_to_json(info: InstanceInfo, source: str) -> str:
    d = dataclasses.asdict(info)
    d["state"] = str(info.state)
    d["source"] = source
    return json.dumps(d, sort_keys=True)


def instance_from_json(text: str) -> tuple[InstanceInfo, str]:
    """Parse one stored instance record; raises ValueError on a malformed one."""
    try:
        d = json.loads(text)
        source = d.pop("source", "topology")
        d["state"] = InstanceState(d["state"])
        d["capacity"] = float(d["capacity"])
        return InstanceInfo(**d), source if source in SOURCES else "topology"
    except (TypeError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"malformed instance record: {e}") from None


# Assignment, epoch and the per-instance slot counts change together or not at all, and an
# older epoch never overwrites a newer one (a late write from a stale snapshot is dropped).
# KEYS: epoch, assignment, instances, meta, inst:N...   ARGV: epoch, assignment JSON, kind,
# n_slots, basis, number of instance records, (name, JSON)..., slot count per inst:N key.
_SAVE_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local new = tonumber(ARGV[1])
if cur > new then return cur end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[4], 'kind', ARGV[3], 'n_slots', ARGV[4], 'basis', ARGV[5])
redis.call('DEL', KEYS[3])
local n = tonumber(ARGV[6])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[3], ARGV[7 + 2 * i], ARGV[8 + 2 * i])
end
local base = 7 + 2 * n
for k = 5, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('HSET', KEYS[k], 'slots', ARGV[base + k - 5], 'epoch', ARGV[1])
  end
end
return -1
"""


_RETIRE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
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

    def ping(self) -> bool:
        try:
            return bool(self.call(lambda r: r.ping()))
        except StoreUnavailable:
            return False

    # --- controller state -------------------------------------------------------------

    def save_pool(self, snap: PoolSnapshot) -> int | None:
        """Save a pool atomically. Returns None when written, or the newer stored epoch."""
        counts = snap.slot_counts()
        names = sorted(snap.instances)
        inst_keys = [keys.instance(snap.name, n) for n in names]
        argv: list[Any] = [
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
            *inst_keys,
        ]

        def run(r: redis.Redis) -> int:
            stored = int(self._save(keys=key_list, args=argv, client=r))
            r.sadd(keys.POOLS, snap.name)  # another cluster slot: not part of the script
            return stored

        stored = self.call(run)
        return None if stored < 0 else stored

    def load_pool(self, pool: str) -> PoolSnapshot | None:
        """Read a saved pool; None if nothing (complete) is saved. Raises ValueError when
        the saved data is malformed."""

        def run(r: redis.Redis) -> list[Any]:
            p = r.pipeline(transaction=True)  # one consistent read
            p.get(keys.epoch(pool))
            p.get(keys.assignment(pool))
            p.hgetall(instances_key(pool))
            p.hgetall(keys.pool_meta(pool))
            return p.execute()

        epoch, assignment, records, meta = self.call(run)
        if epoch is None or assignment is None or not meta:
            return None
        try:
            owners = json.loads(assignment)
            if not isinstance(owners, list) or not all(
                o is None or isinstance(o, str) for o in owners
            ):
                raise ValueError("assignment is not a list of names")
            instances: dict[str, InstanceInfo] = {}
            sources: dict[str, str] = {}
            for name, text in records.items():
                instances[name], sources[name] = instance_from_json(text)
            return PoolSnapshot(
                name=pool,
                kind=meta.get("kind", ""),
                n_slots=int(meta["n_slots"]),
                basis=int(meta.get("basis", 0)),
                epoch=int(epoch),
                assignment=owners,
                instances=instances,
                sources=sources,
            )
        except (ValueError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"saved state of pool {pool!r} is malformed: {e}") from None

    def stored_epoch(self, pool: str) -> int | None:
        value = self.call(lambda r: r.get(keys.epoch(pool)))
        return None if value is None else int(value)

    # --- the registration contract (controller side) -----------------------------------

    def members(self, pools: Iterable[str]) -> dict[str, dict[str, dict[str, str]]]:
        """Registered instances: pool -> name -> registration hash (one round trip per
        pool set: SMEMBERS for all pools, then HGETALL for every member)."""
        pools = list(pools)

        def run(r: redis.Redis) -> dict[str, dict[str, dict[str, str]]]:
            p = r.pipeline(transaction=False)
            for pool in pools:
                p.smembers(keys.members(pool))
            names = [sorted(m) for m in p.execute()]
            p = r.pipeline(transaction=False)
            for pool, ns in zip(pools, names, strict=True):
                for n in ns:
                    p.hgetall(keys.instance(pool, n))
            hashes = iter(p.execute())
            return {
                pool: {n: next(hashes) for n in ns} for pool, ns in zip(pools, names, strict=True)
            }

        return self.call(run)

    def registration(self, pool: str, name: str) -> dict[str, str]:
        return self.call(lambda r: r.hgetall(keys.instance(pool, name)))

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
            return p.execute()

        out = self.call(run)
        return {m: (out[2 * i], out[2 * i + 1]) for i, m in enumerate(members)}

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
            p.execute()
            return len(missing)

        return self.call(run)

    def retire_registration(self, pool: str, name: str) -> bool:
        """Mark a registration ``state draining``: the controller drained or removed the
        instance, and a registration in that state is never joined again (the NF keeps
        its keys until it deregisters; a new registration starts active). Returns whether
        there was a registration."""
        return bool(self.call(lambda r: self._retire(keys=[keys.instance(pool, name)], client=r)))

    def close(self) -> None:
        from controller.storeurl import close_client

        close_client(self.client)
