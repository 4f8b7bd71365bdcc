"""Records exchanged through Redis: the controller's saved instance record and an NF's
registration hash. Both are read back from a store that anyone with access may have
edited, so both are checked with the shared value types before they are used."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from contract.values import (
    MAX_CAPACITY,
    Capacity,
    HostIPv4,
    Mac,
    Name,
    SwitchPort,
    Timestamp,
    interface,
    parse_capacity,
)

InstanceStateName = Literal["active", "draining", "failed", "down"]
Source = Literal["topology", "registered", "api"]


class InstanceRecord(BaseModel):
    """One instance as the controller saves it (``nfsteer:{P}:instances``, JSON per name)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name
    pool: Name
    mac: Mac
    ip: HostIPv4
    switch: Name | None
    port: SwitchPort | None
    capacity: Capacity
    state: InstanceStateName
    last_heartbeat: Timestamp | None = None
    source: Source = "topology"


def _registered_ip(value: Any) -> Any:
    """An NF registers the address of its interface, with or without prefix, or ""."""
    if value in ("", None):
        return None
    if isinstance(value, str) and "/" in value:
        return interface(value).split("/")[0]
    return value


def _registered_capacity(value: Any) -> Any:
    if value in ("", None):
        return None
    if isinstance(value, str):
        return parse_capacity(value)
    return value


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


class RegistrationRecord(BaseModel):
    """The fields of an NF's registration hash (``nfsteer:{P}:inst:N``) the controller uses.
    Values arrive as strings; other fields (pid, started, slots, epoch...) are not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: Annotated[Name | None, BeforeValidator(_empty_is_none)] = None
    pool: Annotated[Name | None, BeforeValidator(_empty_is_none)] = None
    kind: Annotated[Literal["firewall", "nat", "lb"] | None, BeforeValidator(_empty_is_none)] = None
    mac: Annotated[Mac | None, BeforeValidator(_empty_is_none)] = None
    ip: Annotated[HostIPv4 | None, BeforeValidator(_registered_ip)] = None
    capacity: Annotated[
        Annotated[float, Field(gt=0, le=MAX_CAPACITY)] | None,
        BeforeValidator(_registered_capacity),
    ] = None
    state: Literal["active", "draining"] = "active"


def _first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{loc}: {msg}" if loc else msg


def parse_instance_record(data: Any) -> InstanceRecord:
    """Validate a decoded instance record; ValueError naming the first bad field."""
    try:
        return InstanceRecord.model_validate(data)
    except ValidationError as e:
        raise ValueError(_first_error(e)) from None


def parse_registration_record(data: Any) -> RegistrationRecord:
    """Validate a registration hash; ValueError naming the first bad field."""
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError("not a hash of text fields")
    try:
        return RegistrationRecord.model_validate(data)
    except ValidationError as e:
        raise ValueError(_first_error(e)) from None
