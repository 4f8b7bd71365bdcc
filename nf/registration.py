"""An NF instance's side of the registration contract in ``contract/keys.py``: register,
heartbeat, change capacity, drain and deregister. Key names come from there only."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from contract import keys

log = logging.getLogger("nfsteer.nf")


def stats_key(pool: str, name: str) -> str:
    # Next to the instance hash (same hash tag) but apart from it: the controller owns the
    # hash's lifetime, so periodic stats must not re-create a hash it has deleted.
    return f"{keys.PREFIX}:{{{pool}}}:stats:{name}"


@dataclass
class Identity:
    name: str
    pool: str
    kind: str
    mac: str
    ip: str
    interface: str
    capacity: float


class Registration:
    def __init__(self, client: Any, ident: Identity, ttl_ms: int = keys.HEARTBEAT_TTL_MS):
        self.r = client
        self.id = ident
        self.ttl_ms = ttl_ms
        self.registered = False
        self.state = "active"
        self.started = time.time()

    def _ts(self) -> str:
        return f"{time.time():.3f}"

    def register(self) -> None:
        i = self.id
        p = self.r.pipeline(transaction=True)
        p.hset(
            keys.instance(i.pool, i.name),
            mapping={
                "name": i.name,
                "pool": i.pool,
                "kind": i.kind,
                "mac": i.mac,
                "ip": i.ip,
                "interface": i.interface,
                "capacity": _num(i.capacity),
                "pid": os.getpid(),
                "started": f"{self.started:.3f}",
                "state": self.state,
            },
        )
        p.sadd(keys.members(i.pool), i.name)
        p.set(keys.heartbeat(i.pool, i.name), self._ts(), px=self.ttl_ms)
        p.execute()
        self.r.publish(keys.events(i.pool), f"register {i.name}")
        if not self.registered:
            log.info("registered %s in pool %s", i.name, i.pool)
        self.registered = True

    def ensure(self) -> bool:
        """Register, or register again if the instance hash is gone (e.g. the store
        restarted empty), so an instance never stays invisible. True once registered."""
        i = self.id
        if not self.registered or not self.r.exists(keys.instance(i.pool, i.name)):
            if self.registered:
                log.info("instance hash of %s is gone: registering again", i.name)
            self.register()
        return True

    def heartbeat(self) -> None:
        """Refresh the heartbeat and :meth:`ensure` the registration in one round trip.
        For a process that beats from a loop of its own; ``nfsteer nf`` beats from its
        packet loop instead (nf/heartbeat.py)."""
        i = self.id
        if not self.registered:
            self.register()
            return
        p = self.r.pipeline(transaction=False)
        p.set(keys.heartbeat(i.pool, i.name), self._ts(), px=self.ttl_ms)
        p.exists(keys.instance(i.pool, i.name))
        _, exists = p.execute()
        if not exists:
            log.info("instance hash of %s is gone: registering again", i.name)
            self.register()

    def set_capacity(self, capacity: float) -> None:
        i = self.id
        i.capacity = capacity
        self.r.hset(keys.instance(i.pool, i.name), "capacity", _num(capacity))
        self.r.publish(keys.events(i.pool), f"update {i.name}")
        log.info("capacity of %s is now %s", i.name, _num(capacity))

    def start_drain(self) -> None:
        i = self.id
        self.state = "draining"
        self.r.hset(keys.instance(i.pool, i.name), "state", "draining")
        self.r.publish(keys.events(i.pool), f"drain {i.name}")
        log.info("draining %s", i.name)

    def slots(self) -> int | None:
        v = self.r.hget(keys.instance(self.id.pool, self.id.name), "slots")
        try:
            return int(v) if v is not None else None
        except ValueError:
            return None

    def deregister(self) -> None:
        i = self.id
        p = self.r.pipeline(transaction=True)
        p.delete(keys.instance(i.pool, i.name), keys.heartbeat(i.pool, i.name))
        p.srem(keys.members(i.pool), i.name)
        p.delete(stats_key(i.pool, i.name))
        p.execute()
        self.r.publish(keys.events(i.pool), f"deregister {i.name}")
        self.registered = False
        log.info("deregistered %s", i.name)

    def write_stats(self, stats: dict[str, Any], ttl_ms: int = 5000) -> None:
        self.r.set(stats_key(self.id.pool, self.id.name), json.dumps(stats), px=ttl_ms)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
