"""Pool membership: NF registrations, heartbeat liveness, drain timers, persistence.

The controller side of the registration contract in ``contract/keys.py``:

- a pub/sub listener on ``nfsteer:{*}:events`` reacts at once to ``register``, ``update``,
  ``drain`` and ``deregister`` messages;
- a sync loop polls the heartbeat keys of every registered instance in one pipeline every
  ``POLL_INTERVAL_S`` and fails an instance whose heartbeat key has expired or whose
  heartbeat has not changed for ``heartbeat_ttl_ms``; it rejoins one whose heartbeat
  returns. Failure is therefore detected at most TTL + poll interval after the last
  heartbeat (500 + 50 ms by default);
- every ``SCAN_INTERVAL_S`` it compares all registrations with the pool state, a backstop
  for missed messages (and how registrations made while Redis was unreachable are found);
- it saves every changed pool to Redis (listener on the app), writes the whole state back
  when Redis returns, and restores registrations that an emptied Redis lost.

The two threads only do Redis I/O; every decision runs in the app's event loop
(``app.call``), through the pure rules of :mod:`controller.core.membership_rules`, and every
change is a mutation run through ``app.apply`` that re-checks the state, so the event
thread and the sync loop can race without doing anything twice.
While Redis is unreachable nothing is failed for a missing heartbeat: the switch keeps its
flows (fail-static) and port-status failover keeps working from memory.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from contract import keys
from contract.records import parse_registration_record
from contract.values import is_name, short
from controller.core.membership_rules import Action, Decision, decide
from controller.core.state import InstanceInfo, InstanceState, PoolChange, Steering, SteeringError
from controller.store.pools import Fenced, PoolSnapshot, Store, StoreUnavailable

log = logging.getLogger("nfsteer.membership")

POLL_INTERVAL_S = 0.05
SCAN_INTERVAL_S = 1.0
MAX_BACKOFF_S = 1.0
LIVE = (InstanceState.ACTIVE, InstanceState.DRAINING)

Member = tuple[str, str]  # (pool, instance name)


# --- pure logic -----------------------------------------------------------------------


@dataclass
class Liveness:
    """Heartbeat bookkeeping. Pure: the time is an argument.

    A heartbeat counts as fresh when the key's value changed or its TTL was renewed since
    the last poll. An instance is dead when its key is gone (the NF's own TTL expired) or
    when nothing fresh was seen for ``ttl_s``. Right after start and after Redis returns,
    a missing key is tolerated for one TTL (an emptied Redis has no heartbeat keys until
    the NFs' next beat).
    """

    ttl_s: float
    grace_until: float = 0.0
    seen: dict[Member, tuple[Any, int, float]] = field(default_factory=dict)

    def observe(self, member: Member, value: Any, pttl: int | None, now: float) -> bool:
        """Record one poll result; return whether the instance is alive."""
        if value is None:
            self.seen.pop(member, None)
            return now < self.grace_until
        pttl = -1 if pttl is None else int(pttl)
        prev = self.seen.get(member)
        if prev is None or prev[0] != value or pttl > prev[1]:
            self.seen[member] = (value, pttl, now)
            return True
        self.seen[member] = (value, pttl, prev[2])
        return now - prev[2] <= self.ttl_s

    def fresh(self, member: Member, now: float) -> None:
        """A registration message counts as a heartbeat."""
        value, pttl, _ = self.seen.get(member, ("register", -1, now))
        self.seen[member] = (value, pttl, now)

    def restart(self, now: float, grace: bool = True) -> None:
        """Start (or Redis back): give every instance one TTL to show its heartbeat. A
        takeover gives none: the heartbeat keys lived on in Redis, and one that expired
        while no controller led must be acted on at once."""
        self.grace_until = now + self.ttl_s if grace else now
        self.seen = {m: (v, p, now) for m, (v, p, _) in self.seen.items()}


def parse_registration(
    steering: Steering, pool: str, name: str, reg: Mapping[str, str]
) -> InstanceInfo:
    """The InstanceInfo a registration asks for. The attachment point comes from the
    topology (instance listed under its pool) or from an instance added through the API;
    raises ValueError when the instance cannot be placed or a field is invalid."""
    topo_pool = steering.topology.pools.get(pool)
    if topo_pool is None:
        raise ValueError(f"pool {pool!r} is not in the topology")
    record = parse_registration_record(dict(reg))  # the shared model: ValueError if bad
    if record.kind and record.kind != topo_pool.kind:
        raise ValueError(f"kind {record.kind!r} does not match pool kind {topo_pool.kind!r}")
    listed = topo_pool.instances.get(name)
    known = steering.pools[pool].instances.get(name)
    if listed is not None:
        switch, port, mac, ip = listed.switch, listed.port, listed.mac, listed.ip_address
        capacity = float(listed.capacity)
    elif known is not None and known.located:  # added through the API
        switch, port, mac, ip = known.switch, known.port, known.mac, known.ip
        capacity = known.capacity
    else:
        raise ValueError(
            "not listed under its pool in the topology (add it through the API with an "
            "explicit switch and port)"
        )
    if record.capacity is not None:
        capacity = record.capacity
    for what, mine, theirs in (("MAC", mac, record.mac), ("IP", ip, record.ip)):
        if theirs and theirs != mine.lower():
            log.warning(
                "%s/%s registers %s %s, the topology says %s: using the topology",
                pool,
                name,
                what,
                theirs,
                mine,
            )
    return InstanceInfo(
        name=name,
        pool=pool,
        mac=mac,
        ip=ip,
        switch=switch,
        port=port,
        capacity=capacity,
        state=InstanceState.ACTIVE,
    )


# --- mutations (run by app.apply in the app's loop; each re-checks the state) ---------


def _join(info: InstanceInfo, now: float) -> Callable[[Steering], list[PoolChange]]:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[info.pool].instances.get(info.name)
        if (
            cur is not None
            and cur.state is InstanceState.ACTIVE
            and (cur.switch, cur.port, cur.capacity) == (info.switch, info.port, info.capacity)
        ):
            return []
        info.last_heartbeat = now
        return [s.add_instance(info, now)]

    return mutate


def _set_state(
    pool: str, name: str, state: InstanceState, now: float, only_from: tuple[InstanceState, ...]
) -> Callable[[Steering], list[PoolChange]]:
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or cur.state not in only_from:
            return []
        # An NF that drains itself is not forced: while it is the last active instance it
        # keeps its traffic until it deregisters (or its grace period ends).
        return [s.set_state(pool, name, state, now, force=state is not InstanceState.DRAINING)]

    return mutate


def _set_capacity(pool: str, name: str, capacity: float, now: float):
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or cur.capacity == capacity:
            return []
        return [s.set_capacity(pool, name, capacity, now)]

    return mutate


def _remove(pool: str, name: str, now: float, only_from: tuple[InstanceState, ...] | None = None):
    def mutate(s: Steering) -> list[PoolChange]:
        cur = s.pools[pool].instances.get(name)
        if cur is None or (only_from is not None and cur.state not in only_from):
            return []
        return [s.remove_instance(pool, name, now)]

    return mutate


# --- the running part -----------------------------------------------------------------


class Membership:
    """Watches registrations and heartbeats of one app's pools and keeps Redis in sync.

    Two threads do the Redis I/O (pub/sub events; heartbeat polls, scans and saves). Every
    decision runs in the app's event loop (``app.call``): the state they read and change
    (``sources``, ``registrations``, ``liveness``, the pools) belongs to the loop.
    """

    def __init__(
        self,
        app: Any,
        store: Store,
        *,
        heartbeat_ttl_s: float | None = None,
        poll_interval_s: float = POLL_INTERVAL_S,
        scan_interval_s: float = SCAN_INTERVAL_S,
        drain_grace_s: float = keys.DRAIN_GRACE_S,
    ):
        self.app = app
        self.store = store
        ttl_ms = heartbeat_ttl_s * 1000 if heartbeat_ttl_s else app.options.heartbeat_ttl_ms
        self.liveness = Liveness(ttl_s=ttl_ms / 1000)
        self.poll_interval_s = poll_interval_s
        self.scan_interval_s = scan_interval_s
        self.drain_grace_s = drain_grace_s
        self.pools = list(app.steering.pools)
        # How each instance joined: "topology", "registered" or "api". Saved with the state.
        self.sources: dict[Member, str] = {
            (p, n): "topology" for p, ps in app.steering.pools.items() for n in ps.instances
        }
        self.registrations: dict[Member, dict[str, str]] = {}  # last registration hash seen
        self.last_results: dict[Member, tuple[str, Any]] = {}  # (reason, ApplyResult)
        self.heartbeat_failures = 0
        self.restored = False  # state was loaded from Redis (or Redis was empty)
        self._lock = threading.Lock()  # guards _dirty, _drain_deadline, _save_error
        self._dirty: dict[str, PoolSnapshot] = {}
        self._save_error: str | None = None
        self._states: dict[Member, InstanceState] = {}
        self._drain_deadline: dict[Member, float] = {}
        self._ignored: set[Member] = set()
        self._empty_pools: set[str] = set()
        self._saved: set[str] = set()  # pools written to Redis at least once
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pubsub: redis.client.PubSub | None = None
        self._remember_states()

    # -- lifecycle ------------------------------------------------------------------------

    def restore(self) -> bool:
        """Load every pool's saved state into the app (before switches are programmed and
        before the loop runs). Returns False when Redis is unreachable (the sync loop will
        reconcile later)."""
        steering: Steering = self.app.steering
        try:
            for pool in self.pools:
                stored = self.store.load_pool(pool)
                if stored is None:
                    continue
                self._restore_one(steering, stored)
        except StoreUnavailable:
            return False
        except ValueError as e:
            log.warning("ignoring saved state: %s", e)
        self.restored = True
        self._remember_states()
        with self._lock:  # a drain that was under way goes on, with a fresh grace period
            deadline = time.monotonic() + self.drain_grace_s
            for member, state in self._states.items():
                if state is InstanceState.DRAINING:
                    self._drain_deadline[member] = deadline
        self.mark_all_dirty()  # every pool is in Redis from the start
        return True

    def _restore_one(self, steering: Steering, stored, quiet: bool = False) -> None:
        topo = steering.topology.pools[stored.name]
        if (stored.kind, stored.n_slots, stored.basis) != (topo.kind, topo.slots, topo.basis):
            log.warning(
                "pool %s: saved state is for kind=%s slots=%d basis=%d, the topology says "
                "kind=%s slots=%d basis=%d: starting from the topology",
                stored.name,
                stored.kind,
                stored.n_slots,
                stored.basis,
                topo.kind,
                topo.slots,
                topo.basis,
            )
            return
        instances = dict(stored.instances)
        for name, info in list(instances.items()):
            listed = topo.instances.get(name)
            if listed is not None:  # the topology file is the authority on attachment
                info.switch, info.port = listed.switch, listed.port
                info.mac, info.ip = listed.mac, listed.ip_address
                continue
            try:
                steering.check_instance(info)
            except SteeringError as e:
                self.store.reject(stored.name, "instances", f"{name}: {e}")
                del instances[name]
        for name in topo.instances:  # listed since the state was saved
            if name not in instances:
                instances[name] = steering.pools[stored.name].instances[name]
        try:
            steering.restore_pool(stored.name, instances, stored.assignment, stored.epoch)
        except SteeringError as e:
            self.store.reject(stored.name, "state", f"cannot be restored ({e}): starting fresh")
            return
        for name, source in stored.sources.items():
            self.sources[(stored.name, name)] = source
        if quiet:
            return
        log.info(
            "pool %s: restored epoch %d with %d instances from redis",
            stored.name,
            stored.epoch,
            len(instances),
        )

    def start(self) -> None:
        self.app.call(lambda: self.liveness.restart(time.monotonic()))
        for target, name in ((self._events_loop, "events"), (self._sync_loop, "sync")):
            t = threading.Thread(
                target=self._crash_only, args=(target, name), name=f"nfsteer-membership-{name}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)

    def _crash_only(self, target: Callable[[], None], name: str) -> None:
        """A membership thread contains its own failures; one that ends anyway while the
        controller runs ends the process (a supervisor restarts it, Redis has the state)."""
        try:
            target()
        except BaseException as e:
            if not self._stop.is_set():
                self.app.fatal(f"membership {name} thread ended: {type(e).__name__}: {e}")
            raise

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=3)
        self._threads.clear()

    def health(self) -> list[str]:
        """Problems for /healthz: pool state that could not be saved."""
        with self._lock:
            pending, error = sorted(self._dirty), self._save_error
        if pending and error:
            return [f"pool state of {', '.join(pending)} not saved to redis: {error}"]
        return []

    # -- listener: called in the loop after every applied change ----------------------------

    def on_change(self, changes: list[PoolChange], reason: str) -> None:
        """Snapshot changed pools for saving; track state transitions. Must not block."""
        if not self.app.leading():
            return  # only the leader writes the pool state
        steering: Steering = self.app.steering
        now = time.monotonic()
        with self._lock:
            for pool in {c.pool for c in changes}:
                ps = steering.pools[pool]
                self._dirty[pool] = PoolSnapshot.of(ps, self._sources_of(pool), self._term())
                self._transitions(pool, ps.instances, reason, now)
        self._wake.set()

    def _term(self) -> int:
        lease = getattr(self.app, "lease", None)
        return 0 if lease is None else lease.term

    def _sources_of(self, pool: str) -> dict[str, str]:
        return {n: s for (p, n), s in self.sources.items() if p == pool}

    def _transitions(self, pool: str, instances: Mapping[str, InstanceInfo], reason: str, now):
        for name, info in instances.items():
            before = self._states.get((pool, name))
            if before is not info.state:
                log.info(
                    "%s/%s: %s -> %s (%s)", pool, name, before or "new", info.state, reason,
                    extra={"pool": pool, "instance": name, "state": info.state.value},
                )  # fmt: skip
                if info.state is InstanceState.DRAINING:
                    self._drain_deadline[(pool, name)] = now + self.drain_grace_s
                else:
                    self._drain_deadline.pop((pool, name), None)
            self._states[(pool, name)] = info.state
        for member in [m for m in self._states if m[0] == pool and m[1] not in instances]:
            log.info(
                "%s/%s: removed (%s)", pool, member[1], reason,
                extra={"pool": pool, "instance": member[1]},
            )  # fmt: skip
            del self._states[member]
            self._drain_deadline.pop(member, None)
        active = any(i.state is InstanceState.ACTIVE and i.located for i in instances.values())
        if not active and pool not in self._empty_pools:
            self._empty_pools.add(pool)
            log.warning(
                "pool %s has no active instance: its service traffic is dropped", pool,
                extra={"pool": pool},
            )  # fmt: skip
        elif active and pool in self._empty_pools:
            self._empty_pools.discard(pool)
            log.info("pool %s has an active instance: serving its traffic", pool)

    def _remember_states(self) -> None:
        with self._lock:
            self._states = {
                (p, n): i.state
                for p, ps in self.app.steering.pools.items()
                for n, i in ps.instances.items()
            }
            self._empty_pools = {
                p
                for p, ps in self.app.steering.pools.items()
                if ps.instances and not ps.active_capacities()
            }

    def mark_all_dirty(self) -> None:
        def snapshot() -> None:
            with self._lock:
                for pool, ps in self.app.steering.pools.items():
                    self._dirty[pool] = PoolSnapshot.of(ps, self._sources_of(pool), self._term())

        self.app.call(snapshot)
        self._wake.set()

    def pools_without_active(self) -> set[str]:
        with self._lock:
            return set(self._empty_pools)

    # -- decisions (in the loop) ------------------------------------------------------------

    def _apply(self, member: Member, mutation, reason: str) -> None:
        try:
            result = self.app.apply(mutation, reason)
        except SteeringError as e:
            log.warning("%s/%s: %s: %s", member[0], member[1], reason, e)
            return
        if result.changes:
            self.last_results[member] = (reason, result)

    def reconcile_member(self, pool: str, name: str, reason: str) -> None:
        """Bring one instance in line with its registration (raises StoreUnavailable)."""
        reg = self.store.registration(pool, name)
        if reg is None:
            return  # unreadable: counted and logged by the store; the scan skips it too
        self.app.call(lambda: self._decide((pool, name), reg, alive=None, reason=reason))

    def _decide(self, member: Member, reg: Mapping[str, str] | None, alive, reason: str):
        pool, name = member
        steering: Steering = self.app.steering
        cur = steering.pools[pool].instances.get(name)
        if reg:
            self.registrations[member] = dict(reg)
        else:
            self.registrations.pop(member, None)
        if alive is None and reg:  # a message from the NF: its registration is fresh
            self.liveness.fresh(member, time.monotonic())
            alive = True
        parsed: InstanceInfo | str | None = None
        if reg and reg.get("state") != InstanceState.DRAINING:
            try:
                parsed = parse_registration(steering, pool, name, reg)
            except ValueError as e:
                parsed = str(e)
        decision = decide(
            dict(reg) if reg else None,
            alive=bool(alive),
            current=cur,
            source=self.sources.get(member),
            port_down=self._port_down(cur),
            parsed=parsed,
        )
        self._carry_out(member, decision, reason)

    def _carry_out(self, member: Member, d: Decision, reason: str) -> None:
        pool, name = member
        now = time.time()
        if d.action is Action.IGNORE:
            if member not in self._ignored:
                self._ignored.add(member)
                log.warning("ignoring registration of %s/%s: %s", pool, name, d.why)
            return
        if isinstance(d.info, InstanceInfo) or d.adopt:
            self._ignored.discard(member)
        if d.adopt:
            self.sources[member] = "registered"  # from now on its heartbeat decides
        why = f"{reason}: {d.why}"
        if d.action is Action.REMOVE:
            self._apply(member, _remove(pool, name, now), f"{reason}: deregistered")
        elif d.action is Action.DRAIN:
            self._apply(
                member,
                _set_state(pool, name, InstanceState.DRAINING, now, (InstanceState.ACTIVE,)),
                why,
            )
        elif d.action is Action.SET_CAPACITY and d.capacity is not None:
            self._apply(member, _set_capacity(pool, name, d.capacity, now), why)
        elif d.action is Action.JOIN and d.info is not None:
            self._apply(member, _join(d.info, now), why)

    def _port_down(self, info: InstanceInfo | None) -> bool:
        """The instance's switch port is known to be down (unknown counts as up)."""
        if info is None or not info.located:
            return False
        return self.app.switch_ports.get(info.switch, {}).get(info.port) is False

    # -- the pub/sub thread -----------------------------------------------------------------

    def _events_loop(self) -> None:
        backoff = POLL_INTERVAL_S
        while not self._stop.is_set():
            try:
                pubsub = self.store.client.pubsub(ignore_subscribe_messages=True)
                self._pubsub = pubsub
                pubsub.psubscribe(keys.events_pattern())
                backoff = POLL_INTERVAL_S
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg is not None:
                        self._on_message(msg)
            except (redis.ConnectionError, redis.TimeoutError, OSError, StoreUnavailable):
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:  # a bug must not end membership: log it and carry on
                log.exception("event handling failed")
                self._stop.wait(backoff)
            finally:
                with contextlib.suppress(Exception):
                    self._pubsub.close()  # type: ignore[union-attr]

    def _on_message(self, msg: Mapping[str, Any]) -> None:
        channel, data = msg.get("channel"), msg.get("data")
        if not isinstance(channel, str) or not isinstance(data, str):
            return
        pool = channel.removeprefix(f"{keys.PREFIX}:{{").removesuffix("}:events")
        verb, _, name = data.partition(" ")
        if pool not in self.pools:
            return
        if not self.app.leading():
            return  # the leader acts on it
        if verb not in ("register", "update", "drain", "deregister") or not is_name(name):
            # Not UTF-8 (decoded with U+FFFD), unknown verb, bad name: counted, said once.
            self.store.reject(pool, "events", f"malformed event {short(data)}")
            return
        self.reconcile_member(pool, name, verb)

    # -- the sync thread --------------------------------------------------------------------

    def _sync_loop(self) -> None:
        next_poll = next_scan = 0.0
        backoff = POLL_INTERVAL_S
        was_up = self.restored
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if not self.app.leading():
                    # A standby acts on nothing: it keeps its copy of the pools warm.
                    if now >= next_scan:
                        self.refresh()
                        next_scan = now + self.scan_interval_s
                    was_up = True
                    self._wake.wait(max(0.0, next_scan - time.monotonic()))
                    self._wake.clear()
                    continue
                self.app.call(self._revive_ports)  # needs no Redis
                if not was_up:
                    if not self.store.ping():
                        raise StoreUnavailable("ping failed")
                    self._recovered()
                    was_up = True
                    next_scan = 0.0
                self._flush()
                if now >= next_poll:
                    self._poll_heartbeats()
                    next_poll = now + self.poll_interval_s
                if now >= next_scan:
                    self.scan()
                    next_scan = now + self.scan_interval_s
                self._expire_drains(now)
                backoff = POLL_INTERVAL_S
                timeout = max(0.0, min(next_poll, next_scan) - time.monotonic())
            except StoreUnavailable as e:
                was_up = False
                with self._lock:
                    self._save_error = f"redis unreachable ({e})"
                self._expire_drains(now)  # removal after the grace period needs no Redis
                timeout = backoff
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception:
                log.exception("membership sync failed")
                timeout = MAX_BACKOFF_S
            self._wake.wait(timeout)
            self._wake.clear()

    def refresh(self) -> None:
        """Load every pool's saved state into the app (a standby keeps warm this way)."""
        snapshots = [s for s in (self.store.load_pool(p) for p in self.pools) if s is not None]
        self.app.call(lambda: self._restore_all(snapshots, quiet=True))

    def _restore_all(self, snapshots: list[PoolSnapshot], quiet: bool) -> None:
        steering: Steering = self.app.steering
        for snap in snapshots:
            self._restore_one(steering, snap, quiet=quiet)
        self._remember_states()
        self.app.mark_changed()

    def take_over(self) -> None:
        """This controller leads a new term: adopt the pool state as the last leader left
        it, and write it back under the new term (an older leader's writes are refused
        from then on). Liveness starts without grace."""
        try:
            self.refresh()
        except StoreUnavailable:
            return  # the next round decides again
        self.app.call(lambda: self.liveness.restart(time.monotonic(), grace=False))
        self.restored = True
        self.mark_all_dirty()
        self._wake.set()

    def _recovered(self) -> None:
        """Redis is reachable (again): load or write back state, restore lost data."""
        if not self.restored:
            self._adopt_or_overwrite()
        # Saved before but gone now: Redis restarted empty (not merely unreachable).
        lost = [p for p in sorted(self._saved) if self.store.stored_epoch(p) is None]
        regs = self.app.call(
            lambda: {
                m: dict(r)
                for m, r in self.registrations.items()
                if m[0] in lost and self.sources.get(m) == "registered"
            }
        )
        if lost:
            n = self.store.restore_registrations(regs)
            log.warning(
                "redis holds no state for pools %s: writing it back (%d registrations)",
                ", ".join(sorted(lost)),
                n,
            )
        self.app.call(lambda: self.liveness.restart(time.monotonic()))
        self.mark_all_dirty()
        self._flush()

    def _adopt_or_overwrite(self) -> None:
        """Started without Redis: the switches follow our state by now, so it is written
        over an older saved one, with an epoch above the saved one."""
        for pool in self.pools:
            stored = self.store.stored_epoch(pool)
            ours = self.app.view().pools[pool].epoch
            if stored is not None and stored >= ours:
                self._bump_epoch(pool, stored + 1)
        self.restored = True

    def _bump_epoch(self, pool: str, epoch: int) -> None:
        def mutate(s: Steering) -> list[PoolChange]:
            ps = s.pools[pool]
            ps.epoch = max(ps.epoch, epoch)  # no slot moves: nothing is sent to switches
            return [PoolChange(pool=pool, epoch=ps.epoch)]

        self.app.apply(mutate, "epoch above the saved state")

    def _flush(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        term = self._term()
        try:
            for pool, snap in list(dirty.items()):
                if snap.term != term:  # taken under another term: not ours to write
                    del dirty[pool]
                    continue
                newer = self.store.save_pool(snap)
                self._saved.add(pool)
                if newer is not None and newer > snap.epoch:
                    log.warning(
                        "pool %s: redis holds epoch %d, newer than ours (%d): raising ours",
                        pool,
                        newer,
                        snap.epoch,
                    )
                    self._bump_epoch(pool, newer + 1)
                del dirty[pool]
        except Fenced as e:
            # A newer leader wrote this pool: we are stale. Nothing of ours is written.
            dirty.clear()
            why = f"the store refused a save: {e}"
            self.app.call(lambda: self.app.step_down(why))
            lease = getattr(self.app, "lease", None)
            if lease is not None:
                lease.raise_floor(e.term)
            return
        except Exception as e:
            with self._lock:
                self._save_error = str(e) or type(e).__name__
            raise
        finally:
            with self._lock:  # keep what was not written; a newer snapshot wins
                for pool, snap in dirty.items():
                    self._dirty.setdefault(pool, snap)
        with self._lock:
            self._save_error = None

    def registered_members(self) -> list[Member]:
        """Instances whose liveness comes from heartbeats."""
        return [m for m, s in self.sources.items() if s == "registered"]

    def _poll_heartbeats(self) -> None:
        members = self.app.call(self.registered_members)
        beats = self.store.heartbeats(members)
        dying, back = self.app.call(lambda: self._heartbeats_seen(beats))
        for member in back:
            self.reconcile_member(*member, "heartbeat back")
        for member in dying:
            # {}: none (it deregistered); None: unreadable, which is not a deregistration
            registered = self.store.registration(*member) != {}
            self.app.call(lambda m=member, r=registered: self._heartbeat_lost(m, r))

    def _heartbeats_seen(self, beats: Mapping[Member, Any]) -> tuple[list[Member], list[Member]]:
        """Record a poll (in the loop); returns the live instances whose heartbeat is lost
        and the failed ones whose heartbeat is back."""
        steering: Steering = self.app.steering
        dying, back = [], []
        for member, alive in self._observe(beats).items():
            cur = steering.pools[member[0]].instances.get(member[1])
            if cur is None:
                continue
            if alive:
                cached = self.registrations.get(member, {})
                if (
                    cur.state in (InstanceState.FAILED, InstanceState.DOWN)
                    and cached.get("state") != InstanceState.DRAINING
                    and not self._port_down(cur)
                ):
                    back.append(member)
            elif cur.state in LIVE:
                dying.append(member)
        return dying, back

    def _heartbeat_lost(self, member: Member, registered: bool) -> None:
        cur = self.app.steering.pools[member[0]].instances.get(member[1])
        if cur is None or cur.state not in LIVE:
            return
        if not registered:
            # Deregistered (hash and heartbeat go together): not a failure.
            self._decide(member, None, alive=False, reason="deregister")
            return
        self.heartbeat_failures += 1
        self._apply(
            member,
            _set_state(*member, InstanceState.FAILED, time.time(), LIVE),
            "heartbeat lost",
        )

    def _revive_ports(self) -> None:
        """An instance added through the API has no heartbeat: in a registered pool (the
        app revives static pools itself) it comes back when its port is up again."""
        steering: Steering = self.app.steering
        ports = self.app.switch_ports
        for pool, ps in steering.pools.items():
            if steering.topology.pools[pool].membership != "registered":
                continue
            for name, info in list(ps.instances.items()):
                if (
                    info.state is InstanceState.FAILED
                    and self.sources.get((pool, name)) == "api"
                    and info.located
                    and ports.get(info.switch, {}).get(info.port) is True
                ):
                    self._apply(
                        (pool, name),
                        _set_state(pool, name, InstanceState.ACTIVE, time.time(),
                                   (InstanceState.FAILED,)),
                        f"instance {pool}/{name}: port {info.switch}:{info.port} up",
                    )  # fmt: skip

    def _observe(self, beats: Mapping[Member, Any]) -> dict[Member, bool]:
        """Whether each polled member is alive (in the loop)."""
        steering: Steering = self.app.steering
        now, wall = time.monotonic(), time.time()
        out = {}
        for member, (value, pttl) in beats.items():
            out[member] = self.liveness.observe(member, value, pttl, now)
            seen = self.liveness.seen.get(member)
            cur = steering.pools[member[0]].instances.get(member[1])
            if seen is not None and seen[2] == now and cur is not None:
                cur.last_heartbeat = wall
                self.app.mark_changed()
        return out

    def scan(self) -> None:
        """Compare every registration with the pool state (backstop for missed events)."""
        regs, unreadable = self.store.members(self.pools)
        listed = [(p, n) for p, ms in regs.items() for n in ms]
        beats = self.store.heartbeats(listed)
        self.app.call(lambda: self._scanned(regs, listed, beats, unreadable))

    def _scanned(
        self, regs, listed: list[Member], beats: Mapping[Member, Any], unreadable: set[Member]
    ) -> None:
        steering: Steering = self.app.steering
        alive = self._observe(beats)
        for member in listed:
            reg = regs[member[0]][member[1]]
            cur = steering.pools[member[0]].instances.get(member[1])
            if cur is None or cur.state is not InstanceState.FAILED or alive[member]:
                try:
                    self._decide(member, reg, alive=alive[member], reason="scan")
                except Exception as e:  # one member's bad data must not stop the others
                    self.store.reject(member[0], f"inst:{member[1]}", f"{type(e).__name__}: {e}")
            elif reg:
                self.registrations[member] = dict(reg)
        seen = set(listed) | unreadable  # an unreadable registration is not a deregistration
        for member in self.registered_members():
            if member not in seen:
                self._decide(member, None, alive=False, reason="scan")

    def _expire_drains(self, now: float) -> None:
        with self._lock:
            due = [m for m, t in self._drain_deadline.items() if t <= now]
            for m in due:
                del self._drain_deadline[m]
        for pool, name in due:
            log.info("%s/%s: drain grace period over: removing it", pool, name)
            self._apply(
                (pool, name),
                _remove(pool, name, time.time(), (InstanceState.DRAINING,)),
                "drain grace period over",
            )
            self.retire(pool, name)

    def retire(self, pool: str, name: str) -> None:
        """The controller drained or removed a registered instance: mark its registration
        draining so that neither the scan nor its heartbeat brings it back."""

        def mark() -> bool:
            if self.sources.get((pool, name)) != "registered":
                return False
            reg = self.registrations.get((pool, name))
            if reg is not None:
                reg["state"] = "draining"
            return True

        if self.app.call(mark):
            with contextlib.suppress(StoreUnavailable):
                self.store.retire_registration(pool, name)
