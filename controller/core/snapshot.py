"""A consistent copy of one pool: taken by the controller to be saved, or read back."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.core.state import InstanceInfo, PoolState


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
    term: int = 0  # the leader's term it was taken under (its saves are fenced by it)

    @classmethod
    def of(
        cls, pool: PoolState, sources: Mapping[str, str] | None = None, term: int = 0
    ) -> PoolSnapshot:
        return cls(
            name=pool.name,
            kind=pool.kind,
            n_slots=pool.n_slots,
            basis=pool.basis,
            epoch=pool.epoch,
            assignment=list(pool.assignment),
            instances={n: dataclasses.replace(i) for n, i in pool.instances.items()},
            sources=dict(sources or {}),
            term=term,
        )

    def slot_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.instances, 0)
        for owner in self.assignment:
            if owner is not None:
                counts[owner] = counts.get(owner, 0) + 1
        return counts
