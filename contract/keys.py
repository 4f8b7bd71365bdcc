"""Redis key layout shared by the controller and the NF instances: the registration contract.

Every key of one pool carries the pool name as a Redis Cluster hash tag (``{pool}``), so a
pool's keys live in one cluster slot and can be changed in one transaction or Lua script.

Registration contract (what an NF instance does; README "Registration contract"):

1. **Register** on start, in one MULTI/EXEC:
   ``HSET nfsteer:{P}:inst:N name N pool P kind K mac M ip A interface I capacity C
   pid PID started TS state active``, ``SADD nfsteer:{P}:members N``,
   ``SET nfsteer:{P}:hb:N TS PX TTL``, then ``PUBLISH nfsteer:{P}:events "register N"``.
   N is the instance name; when N is listed under the pool in the topology file, the
   controller knows its switch and port from there.
2. **Heartbeat** every TTL / ``HEARTBEAT_INTERVAL_FRACTION`` (TTL ``HEARTBEAT_TTL_MS`` by
   default: a beat every ``HEARTBEAT_INTERVAL_MS``; an interval may be chosen, but it must
   stay below TTL / 2): ``SET nfsteer:{P}:hb:N TS PX TTL``, TS the wall-clock time in
   seconds. The beat must come from the code that processes packets (in ``nfsteer nf``
   the packet loop sends it in the same pipelined round trip as a state batch, or alone
   when idle), so a hung instance stops beating even if its process lives on. The
   controller treats an instance whose heartbeat key has expired (or not been refreshed
   for its own heartbeat TTL) as failed, and one whose heartbeat returns as rejoining.
3. **Capacity change**: ``HSET nfsteer:{P}:inst:N capacity C`` and
   ``PUBLISH nfsteer:{P}:events "update N"``.
4. **Drain and deregister** on SIGTERM: ``HSET nfsteer:{P}:inst:N state draining`` and
   ``PUBLISH ... "drain N"``; keep processing until the controller has moved every slot
   away (field ``slots`` of the instance hash reads 0) or ``DRAIN_GRACE_S`` has passed; then
   ``DEL`` the instance hash and heartbeat key, ``SREM`` it from members and
   ``PUBLISH ... "deregister N"``.

The controller writes back into the instance hash: ``slots`` (how many hash slots the
instance holds now) and ``epoch`` (the pool epoch of that assignment).
"""

from __future__ import annotations

PREFIX = "nfsteer"
HEARTBEAT_TTL_MS = 500
HEARTBEAT_INTERVAL_FRACTION = 5  # beats per TTL: four may be late or lost before expiry
HEARTBEAT_INTERVAL_MS = HEARTBEAT_TTL_MS // HEARTBEAT_INTERVAL_FRACTION
DRAIN_GRACE_S = 5.0

POOLS = f"{PREFIX}:pools"  # set of pool names known to the controller


def _tag(pool: str) -> str:
    return f"{PREFIX}:{{{pool}}}"


def instance(pool: str, name: str) -> str:
    return f"{_tag(pool)}:inst:{name}"


def members(pool: str) -> str:
    return f"{_tag(pool)}:members"


def heartbeat(pool: str, name: str) -> str:
    return f"{_tag(pool)}:hb:{name}"


def events(pool: str) -> str:
    return f"{_tag(pool)}:events"


def events_pattern() -> str:
    return f"{PREFIX}:{{*}}:events"


def pool_meta(pool: str) -> str:
    return f"{_tag(pool)}:meta"


def assignment(pool: str) -> str:
    return f"{_tag(pool)}:assignment"


def epoch(pool: str) -> str:
    return f"{_tag(pool)}:epoch"


def fence(pool: str) -> str:
    """The term of the leader that last wrote the pool's state (a fencing token)."""
    return f"{_tag(pool)}:term"
