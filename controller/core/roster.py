"""Who is in each pool and why: registrations, heartbeats, drains, and which pool state is
to be saved. The decisions of the membership service (:mod:`controller.store.membership`),
which only reads and writes the store.

Per instance, :func:`controller.core.membership_rules.decide` says what its registration,
liveness and port call for; every change is a mutation that re-checks the state, so a
registration read twice or a scan racing an event does nothing twice. While the store is
unreachable nothing is failed for a missing heartbeat.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from controller.core import events as ev
from controller.core import liveness as lv
from controller.core.context import Context
from controller.core.membership_rules import Action, Decision, decide
from controller.core.pool_saves import PoolSaves
from controller.core.programming import Programming
from controller.core.roster_restore import restore_pool
from controller.core.state import InstanceInfo, InstanceState, SteeringError

log = logging.getLogger("nfsteer.membership")
LIVE = (InstanceState.ACTIVE, InstanceState.DRAINING)
Member = lv.Member


class Roster:
    def __init__(self, ctx: Context, programming: Programming, heartbeat_ttl_s: float):
        self.ctx = ctx
        self.programming = programming
        self.liveness = lv.Liveness(ttl_s=heartbeat_ttl_s)
        # How each instance joined: "topology", "registered" or "api". Saved with the state.
        self.sources: dict[Member, str] = {
            (p, n): "topology" for p, ps in ctx.steering.pools.items() for n in ps.instances
        }
        self.saves = PoolSaves(ctx, self.sources)
        self.registrations: dict[Member, dict[str, str]] = {}  # last registration hash seen
        self.heartbeat_failures = 0
        self._ignored: set[Member] = set()

    @property
    def drain_grace_s(self) -> float:
        return self.saves.drain_grace_s

    @drain_grace_s.setter
    def drain_grace_s(self, seconds: float) -> None:
        self.saves.drain_grace_s = seconds

    def registered(self) -> tuple[Member, ...]:
        """Instances whose liveness comes from heartbeats."""
        return tuple(m for m, s in self.sources.items() if s == "registered")

    # -- saved state in -----------------------------------------------------------------------

    def pools_read(self, event: ev.PoolsRead) -> None:
        for snap in event.snapshots:
            for pool, field, why in restore_pool(self.ctx.steering, snap, self.sources,
                                                 quiet=not event.startup):  # fmt: skip
                self.ctx.emit(ev.Reject(pool, field, why))
        self.saves.remember_states()
        self.ctx.changed = True
        if event.startup:  # a drain that was under way goes on, with a fresh grace period
            deadline = self.ctx.now + self.drain_grace_s
            for member, state in self.saves.states.items():
                if state is InstanceState.DRAINING:
                    self.saves.drain_deadline[member] = deadline
            self.saves.save_all()

    def stored_epochs(self, event: ev.StoredEpochs) -> None:
        """Started without the store: the switches follow our state by now, so it is written
        over an older saved one, with an epoch above the saved one."""
        for pool, stored in event.epochs.items():
            if stored is not None and stored >= self.ctx.steering.pools[pool].epoch:
                self._apply(("", pool), lv.bump_epoch(pool, stored + 1),
                            "epoch above the saved state")  # fmt: skip

    def pool_saved(self, event: ev.PoolSaved) -> None:
        if event.newer is not None and event.newer > event.epoch:
            log.warning(
                "pool %s: redis holds epoch %d, newer than ours (%d): raising ours",
                event.pool, event.newer, event.epoch,
            )  # fmt: skip
            self._apply(("", event.pool), lv.bump_epoch(event.pool, event.newer + 1),
                        "epoch above the saved state")  # fmt: skip

    def store_emptied(self, event: ev.StoreEmptied) -> None:
        regs = {
            m: dict(r)
            for m, r in self.registrations.items()
            if m[0] in event.pools and self.sources.get(m) == "registered"
        }
        self.ctx.emit(ev.RestoreRegistrations(event.pools, regs))

    # -- decisions ----------------------------------------------------------------------------

    def registration_read(self, event: ev.RegistrationRead) -> None:
        self.decide((event.pool, event.name), event.registration, None, event.reason)

    def decide(
        self, member: Member, reg: Mapping[str, str] | None, alive: bool | None, reason: str
    ) -> None:
        pool, name = member
        steering = self.ctx.steering
        cur = steering.pools[pool].instances.get(name)
        if reg:
            self.registrations[member] = dict(reg)
        else:
            self.registrations.pop(member, None)
        if alive is None and reg:  # a message from the NF: its registration is fresh
            self.liveness.fresh(member, self.ctx.now)
            alive = True
        parsed: InstanceInfo | str | None = None
        if reg and reg.get("state") != InstanceState.DRAINING:
            try:
                parsed = lv.parse_registration(steering, pool, name, reg)
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
        wall = self.ctx.wall
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
            self._apply(member, lv.remove(pool, name, wall), f"{reason}: deregistered")
        elif d.action is Action.DRAIN:
            drain = lv.set_state(pool, name, InstanceState.DRAINING, wall, (InstanceState.ACTIVE,))
            self._apply(member, drain, why)
        elif d.action is Action.SET_CAPACITY and d.capacity is not None:
            self._apply(member, lv.set_capacity(pool, name, d.capacity, wall), why)
        elif d.action is Action.JOIN and d.info is not None:
            self._apply(member, lv.join(d.info, wall), why)

    def _apply(self, member: Member, mutation: lv.Mutation, reason: str) -> None:
        number = self.programming.apply(ev.Change(mutation, reason))
        error = self.programming.error_of(number)
        if isinstance(error, SteeringError):
            log.warning("%s/%s: %s: %s", member[0], member[1], reason, error)
        elif error is not None:
            raise error

    def _port_down(self, info: InstanceInfo | None) -> bool:
        """The instance's switch port is known to be down (unknown counts as up)."""
        if info is None or not info.located:
            return False
        sw = self.ctx.switches.get(info.switch)
        return sw is not None and sw.sync.ports.get(info.port) is False

    # -- heartbeats and scans -----------------------------------------------------------------

    def heartbeats_read(self, event: ev.HeartbeatsRead) -> None:
        """A poll: ask for the registration of failed instances whose heartbeat is back,
        and whether live ones whose heartbeat is gone are still registered."""
        steering = self.ctx.steering
        for member, alive in self._observe(event.beats).items():
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
                    self.ctx.emit(ev.ReadRegistration(*member, "heartbeat back"))
            elif cur.state in LIVE:
                self.ctx.emit(ev.CheckRegistered(*member))

    def heartbeat_lost(self, event: ev.HeartbeatLost) -> None:
        member = (event.pool, event.name)
        cur = self.ctx.steering.pools[event.pool].instances.get(event.name)
        if cur is None or cur.state not in LIVE:
            return
        if not event.registered:
            # Deregistered (hash and heartbeat go together): not a failure.
            self.decide(member, None, alive=False, reason="deregister")
            return
        self.heartbeat_failures += 1
        lost = lv.set_state(*member, InstanceState.FAILED, self.ctx.wall, LIVE)
        self._apply(member, lost, "heartbeat lost")

    def _observe(self, beats: Mapping[Member, ev.Beat]) -> dict[Member, bool]:
        steering = self.ctx.steering
        now = self.ctx.now
        out = {}
        for member, (value, pttl) in beats.items():
            out[member] = self.liveness.observe(member, value, pttl, now)
            seen = self.liveness.seen.get(member)
            cur = steering.pools[member[0]].instances.get(member[1])
            if seen is not None and seen[2] == now and cur is not None:
                cur.last_heartbeat = self.ctx.wall
                self.ctx.changed = True
        return out

    def scan_read(self, event: ev.ScanRead) -> None:
        """Compare every registration with the pool state (backstop for missed events)."""
        steering = self.ctx.steering
        alive = self._observe(event.beats)
        listed = [(p, n) for p, ms in event.registrations.items() for n in ms]
        for member in listed:
            reg = event.registrations[member[0]][member[1]]
            cur = steering.pools[member[0]].instances.get(member[1])
            if cur is None or cur.state is not InstanceState.FAILED or alive.get(member):
                try:
                    self.decide(member, reg, alive=alive.get(member, False), reason="scan")
                except Exception as e:  # one member's bad data must not stop the others
                    self.ctx.emit(ev.Reject(member[0], f"inst:{member[1]}",
                                            f"{type(e).__name__}: {e}"))  # fmt: skip
            elif reg:
                self.registrations[member] = dict(reg)
        seen = set(listed) | event.unreadable  # unreadable is not a deregistration
        for member in self.registered():
            if member not in seen:
                self.decide(member, None, alive=False, reason="scan")

    # -- timers -------------------------------------------------------------------------------

    def tick(self) -> None:
        """The leader's timers: drains whose grace period is over; instances added through
        the API come back when their port is up (registered pools; static pools come back
        on port status)."""
        if not self.ctx.leading():
            return
        self._revive_ports()
        deadlines = self.saves.drain_deadline
        due = [m for m, t in deadlines.items() if t <= self.ctx.now]
        for pool, name in due:
            del deadlines[(pool, name)]
            log.info("%s/%s: drain grace period over: removing it", pool, name)
            gone = lv.remove(pool, name, self.ctx.wall, (InstanceState.DRAINING,))
            self._apply((pool, name), gone, "drain grace period over")
            self.retire(ev.Retire(pool, name))

    def _revive_ports(self) -> None:
        steering = self.ctx.steering
        for pool, ps in steering.pools.items():
            if steering.topology.pools[pool].membership != "registered":
                continue
            for name, info in list(ps.instances.items()):
                sw = self.ctx.switches.get(info.switch or "")
                if (
                    info.state is InstanceState.FAILED
                    and self.sources.get((pool, name)) == "api"
                    and info.located
                    and sw is not None
                    and sw.sync.ports.get(info.port) is True
                ):
                    up = lv.set_state(
                        pool, name, InstanceState.ACTIVE, self.ctx.wall, (InstanceState.FAILED,)
                    )
                    why = f"instance {pool}/{name}: port {info.switch}:{info.port} up"
                    self._apply((pool, name), up, why)

    def retire(self, event: ev.Retire) -> None:
        """Mark a registered instance's registration draining, so that neither the scan nor
        its heartbeat brings it back."""
        member = (event.pool, event.name)
        if self.sources.get(member) != "registered":
            return
        reg = self.registrations.get(member)
        if reg is not None:
            reg["state"] = "draining"
        self.ctx.emit(ev.RetireRegistration(*member))
