"""The one object every route depends on: the controller's services and the lookups the
routes share (a pool or instance or 404, where an instance came from, its load, a change).

Stored on the FastAPI application (``api.state.context``); routes take it as the
``Context`` dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry

from contract.topology import Topology
from controller.api.deps import (
    LeaderElection,
    MembershipService,
    Mutation,
    PoolStore,
    SteeringHost,
)
from controller.api.models import ChangeOut
from controller.core.loadbalance import PoolReport
from controller.core.state import InstanceInfo, PoolState

BARRIER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ApiContext:
    app: SteeringHost
    membership: MembershipService | None
    store: PoolStore | None
    election: LeaderElection | None
    token: str | None
    topology: Topology  # never changes while the controller runs
    registry: CollectorRegistry

    def pool_or_404(self, pool: str) -> PoolState:
        ps = self.app.view().pools.get(pool)
        if ps is None:
            raise HTTPException(404, f"unknown pool {pool!r}")
        return ps

    def instance_or_404(self, pool: str, name: str) -> InstanceInfo:
        info = self.pool_or_404(pool).instances.get(name)
        if info is None:
            raise HTTPException(404, f"pool {pool!r} has no instance {name!r}")
        return info

    def source_of(self, pool: str, name: str) -> str:
        """How the instance joined: "topology", "registered" or "api"."""
        if self.membership is None:
            return "api" if name not in self.topology.pools[pool].instances else "topology"
        return self.membership.sources.get((pool, name), "topology")

    def load_of(self, pool: str) -> PoolReport | None:
        return self.app.loads.reports.get(pool)

    def change(self, pool: str, mutation: Mutation, reason: str, wait: bool) -> ChangeOut:
        """Apply in the loop; with ``wait``, answer once the switches confirmed it."""
        result = self.app.apply(mutation, reason)
        changes = result.changes
        confirmed = result.wait(BARRIER_TIMEOUT_S) if wait else None
        return ChangeOut(
            pool=pool,
            epoch=changes[-1].epoch if changes else self.app.view().pools[pool].epoch,
            moved=sum(len(x.moved) for x in changes),
            confirmed=confirmed,
            reason=reason,
        )


def api_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(api_context)]
