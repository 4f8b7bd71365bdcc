"""Request and response bodies of the REST API (their JSON schemas are the OpenAPI's)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from contract.values import Capacity, HostIPv4, Mac, Name, SwitchPort

WaitQ = Annotated[bool, Query(description="answer after the switches' barrier replies")]
ForceQ = Annotated[bool, Query(description="drain even the last active instance")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceIn(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name = Field(description="instance name")
    switch: Name | None = Field(None, description="switch name (default: from the topology)")
    port: SwitchPort | None = Field(None, description="switch port (default: from the topology)")
    mac: Mac | None = Field(None, description="unicast MAC address (default: from the topology)")
    ip: HostIPv4 | None = Field(None, description="IPv4 address (default: from the topology)")
    capacity: Capacity | None = Field(None, description="relative capacity (default 1)")


class CapacityIn(Body):
    model_config = ConfigDict(extra="forbid", strict=True)

    capacity: Capacity


class InstanceOut(BaseModel):
    name: str
    pool: str
    state: str
    capacity: float
    slots: int
    mac: str
    ip: str
    switch: str | None
    port: int | None
    last_heartbeat: float | None
    source: str
    traffic: dict[str, int] | None = None
    load: float | None = Field(
        default=None, description="packets/s through its slots (pools in load mode)"
    )


class PoolOut(BaseModel):
    name: str
    kind: str
    membership: str
    n_slots: int
    epoch: int
    unserved_slots: int
    instances: dict[str, int]  # state -> count


class MoveOut(BaseModel):
    time: float
    epoch: int
    slots: int
    kind: str = Field(description="load, or membership (joins, failures, drains, capacity)")
    reason: str


class LoadOut(BaseModel):
    mode: str = Field(description="load: hot slots move to even out load; flows: they do not")
    why_flows: str | None = Field(description="why a pool configured for load stays in flows")
    imbalance: float | None = Field(
        description="max load per unit of capacity over the mean (null before a reading)"
    )
    instances: dict[str, float]  # packets/s
    moves: list[MoveOut]  # recent changes that moved slots, with their reason
    moves_total: dict[str, int]  # slots moved, by kind


class PoolDetail(PoolOut):
    members: list[InstanceOut]
    load: LoadOut | None = None


class AssignmentOut(BaseModel):
    pool: str
    epoch: int
    n_slots: int
    slots: dict[str, int]
    assignment: list[str | None]


class LookupOut(BaseModel):
    pool: str
    instance: str | None
    slot: int
    epoch: int


class ServiceOut(BaseModel):
    name: str
    chain: list[str] = Field(description="the pools the forward direction visits, in order")
    bidirectional: bool
    priority: int
    match: list[dict[str, Any]]


class HopOut(BaseModel):
    pool: str
    instance: str | None = Field(description="null: no owner, or the hop is after a NAT")
    slot: int | None
    epoch: int
    five_tuple: dict[str, Any] | None = Field(
        description="as this hop hashes it; null after a NAT (look up the translated one)"
    )


class ServiceLookupOut(BaseModel):
    service: str
    direction: str
    hops: list[HopOut]


class ChangeOut(BaseModel):
    pool: str
    epoch: int
    moved: int
    confirmed: bool | None = Field(
        description="every switch answered the barrier (null when not waited for)"
    )
    reason: str
