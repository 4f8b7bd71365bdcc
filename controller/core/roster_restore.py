"""Saved pool state back into the steering state, checked against the topology. Pure."""

from __future__ import annotations

import logging

from controller.core.liveness import Member
from controller.core.snapshot import PoolSnapshot
from controller.core.state import Steering, SteeringError

log = logging.getLogger("nfsteer.membership")


def restore_pool(
    steering: Steering, stored: PoolSnapshot, sources: dict[Member, str], quiet: bool = False
) -> list[tuple[str, str, str]]:
    """Restore one saved pool into ``steering`` (and how its instances joined into
    ``sources``). Returns what was rejected, as (pool, field, why) for the store's record."""
    rejected: list[tuple[str, str, str]] = []
    topo = steering.topology.pools[stored.name]
    if (stored.kind, stored.n_slots, stored.basis) != (topo.kind, topo.slots, topo.basis):
        log.warning(
            "pool %s: saved state is for kind=%s slots=%d basis=%d, the topology says "
            "kind=%s slots=%d basis=%d: starting from the topology",
            stored.name, stored.kind, stored.n_slots, stored.basis,
            topo.kind, topo.slots, topo.basis,
        )  # fmt: skip
        return rejected
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
            rejected.append((stored.name, "instances", f"{name}: {e}"))
            del instances[name]
    for name in topo.instances:  # listed since the state was saved
        if name not in instances:
            instances[name] = steering.pools[stored.name].instances[name]
    try:
        steering.restore_pool(stored.name, instances, stored.assignment, stored.epoch)
    except SteeringError as e:
        rejected.append((stored.name, "state", f"cannot be restored ({e}): starting fresh"))
        return rejected
    for name, source in stored.sources.items():
        sources[(stored.name, name)] = source
    if not quiet:
        log.info(
            "pool %s: restored epoch %d with %d instances from redis",
            stored.name, stored.epoch, len(instances),
        )  # fmt: skip
    return rejected
