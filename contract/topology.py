"""Topology and service configuration: one YAML file describes one network.

The controller, `nfsteer check`, the NF instances and the Mininet scripts all read the
same file through :func:`load_topology`. Validation is strict: unknown keys, wrong types,
duplicate names (also duplicate YAML keys), references to undefined things and impossible
values are rejected with the file, the field and the reason, and nothing is applied from a
file that fails.

Layout (see ``topologies/single.yaml`` for a full example)::

    name: single
    switches:
      s1: {dpid: 1}                         # steering: multipath (default) | select_group
    links:                                  # switch-to-switch links, explicit port numbers
      - {a: s1, a_port: 10, b: s2, b_port: 10}
    hosts:                                  # end hosts (clients, servers, ...)
      c1: {switch: s1, port: 1, mac: "02:00:00:00:00:01", ip: 10.0.0.1/24, role: client}
    pools:
      fw:
        kind: firewall                      # firewall | nat | lb
        slots: 4096                         # hash slots, power of two, 2..65536
        membership: static                  # static | registered
        nf: {...}                           # NF settings for this kind (contract/nf_settings.py)
        instances:
          fw1: {switch: s1, port: 11, mac: "02:00:00:00:01:01", ip: 10.0.0.101/24,
                capacity: 1}
        rebalance: {mode: load, threshold: 1.15, interval_s: 5, max_moves: 8}
                                            # default mode: flows (capacity shares only)
    services:
      web:
        pool: fw                            # or a chain of pools: chain: [fw, nat]
        bidirectional: true                 # also steer the reverse direction
        match:                              # a list; a packet matching any entry is steered
          - {proto: tcp, src: 10.0.0.0/25, dst: 10.0.0.128/25, dst_ports: [80, 5001]}
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.files import read_limited
from contract.nf_settings import NFSettings, settings_for_kind
from contract.values import (
    VIRTUAL_MAC_PREFIX,
    Capacity,
    Interface,
    Mac,
    Name,
    Network,
    SwitchPort,
)

MAX_PORT_COMBINATIONS = 256
MAX_FILE_BYTES = 4 * 1024 * 1024  # a topology file is a few kB; this bounds a mistake
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 20_000  # values, mappings and lists in one file (pure-Python YAML: keeps it fast)


class ConfigError(Exception):
    """A configuration file is invalid. ``str()`` is one message naming file, field, reason."""

    def __init__(self, path: str | Path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = [f"{self.path}: {p}" for p in problems]
        super().__init__("\n".join(lines))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Port = SwitchPort
L4Port = Annotated[int, Field(ge=0, le=65535)]


def virtual_mac(ip: str) -> str:
    """The MAC switches answer ARP with for virtual address ``ip``: 0e:00 followed by the
    four bytes of the address (10.0.0.100 -> 0e:00:0a:00:00:64). Stable, distinct for every
    IPv4 address, unicast and locally administered (0x0e has bit 0 clear and bit 1 set)."""
    return VIRTUAL_MAC_PREFIX + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


class Switch(Strict):
    dpid: Annotated[int, Field(ge=1, le=2**64 - 1)]
    steering: Literal["multipath", "select_group"] = "multipath"


class Link(Strict):
    a: Name
    a_port: Port
    b: Name
    b_port: Port


class Attachment(Strict):
    """Something plugged into a switch port: a host or an NF instance."""

    switch: Name
    port: Port
    mac: Mac
    ip: Interface

    @property
    def ip_address(self) -> str:
        return self.ip.split("/")[0]


class Host(Attachment):
    role: Literal["client", "server", "store", "other"] = "other"


class Instance(Attachment):
    capacity: Capacity = 1.0

    @property
    def capacity_fraction(self) -> Fraction:
        return Fraction(str(self.capacity))


class Rebalance(Strict):
    """How a pool's slots follow load. ``flows``: slots are spread by capacity only (flow
    counts). ``load``: the controller also reads each slot's traffic and moves hot slots
    from instances whose load per unit of capacity exceeds the pool mean by ``threshold``
    (for two intervals in a row), at most ``max_moves`` slots per ``interval_s``."""

    mode: Literal["flows", "load"] = "flows"
    threshold: Annotated[float, Field(ge=1.01, le=10.0)] = 1.15
    interval_s: Annotated[float, Field(ge=1.0, le=3600.0)] = 5.0
    max_moves: Annotated[int, Field(ge=1, le=4096)] = 8

    @field_validator("threshold", "interval_s", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        # Strict mode refuses an int for a float field; 2 is as good a threshold as 2.0.
        if isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        return v


class Pool(Strict):
    kind: Literal["firewall", "nat", "lb"]
    slots: int = 4096
    membership: Literal["static", "registered"] = "static"
    basis: Annotated[int, Field(ge=0, le=65535)] = 0
    nf: dict[str, Any] = Field(default_factory=dict)
    instances: dict[Name, Instance] = Field(default_factory=dict)
    rebalance: Rebalance = Field(default_factory=Rebalance)

    @field_validator("slots")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v < 2 or v > 65536 or v & (v - 1):
            raise ValueError(f"must be a power of two between 2 and 65536, not {v}")
        return v

    @model_validator(mode="after")
    def _nf_settings(self) -> Pool:
        settings_for_kind(self.kind, self.nf)  # raises ValueError with a clear reason
        return self

    @property
    def settings(self) -> NFSettings:
        return settings_for_kind(self.kind, self.nf)


class Match(Strict):
    """One traffic class. Omitted fields match anything."""

    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    src: Network | None = None
    dst: Network | None = None
    src_ports: list[L4Port] | None = None
    dst_ports: list[L4Port] | None = None
    # Host names whose traffic is classified; default: every host.
    ingress: Annotated[list[Name], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _ports_need_l4(self) -> Match:
        if (self.src_ports or self.dst_ports) and self.proto not in ("tcp", "udp"):
            raise ValueError("src_ports/dst_ports need proto tcp or udp")
        for field in ("src_ports", "dst_ports"):
            ports = getattr(self, field)
            if ports is not None and (not ports or len(set(ports)) != len(ports)):
                raise ValueError(f"{field} must be a non-empty list without repeats")
        # Each (src port, dst port) pair is one flow entry per edge switch.
        combos = len(self.src_ports or [0]) * len(self.dst_ports or [0])
        if combos > MAX_PORT_COMBINATIONS:
            raise ValueError(
                f"src_ports x dst_ports gives {combos} combinations; at most "
                f"{MAX_PORT_COMBINATIONS} are allowed (use a wider match instead)"
            )
        return self

    def reversed(self) -> Match:
        """The same traffic class seen from the other direction (no ingress restriction)."""
        return Match(
            proto=self.proto,
            src=self.dst,
            dst=self.src,
            src_ports=self.dst_ports,
            dst_ports=self.src_ports,
        )


MAX_CHAIN = 8


class Service(Strict):
    """Traffic steered through one pool (``pool``) or a chain of pools (``chain``)."""

    pool: Name | None = None
    chain: Annotated[list[Name], Field(min_length=1, max_length=MAX_CHAIN)] | None = None
    bidirectional: bool = True
    priority: Annotated[int, Field(ge=0, le=1000)] = 100
    match: Annotated[list[Match], Field(min_length=1)]

    @model_validator(mode="after")
    def _pool_or_chain(self) -> Service:
        if (self.pool is None) == (self.chain is None):
            raise ValueError("give exactly one of pool and chain")
        return self

    @property
    def hops(self) -> tuple[str, ...]:
        """The pools the forward direction visits, in order (one for ``pool``)."""
        return tuple(self.chain) if self.chain is not None else (self.pool,)  # type: ignore[arg-type]


class Topology(Strict):
    name: Name
    switches: Annotated[dict[Name, Switch], Field(min_length=1)]
    links: list[Link] = Field(default_factory=list)
    hosts: dict[Name, Host] = Field(default_factory=dict)
    pools: dict[Name, Pool] = Field(default_factory=dict)
    services: dict[Name, Service] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Topology:
        problems = list(_cross_checks(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # Convenience views used by the controller and the Mininet scripts.
    def instance(self, pool: str, name: str) -> Instance:
        return self.pools[pool].instances[name]

    def attachments(self) -> dict[str, Attachment]:
        """Every host and instance by name (names are unique across both)."""
        out: dict[str, Attachment] = dict(self.hosts)
        for pool in self.pools.values():
            out.update(pool.instances)
        return out

    def virtual_addresses(self) -> list[str]:
        """Addresses served by a pool rather than a host: LB VIPs and NAT public addresses."""
        out: set[str] = set()
        for pool in self.pools.values():
            out.update(_pool_virtual_addresses(pool))
        return sorted(out, key=ipaddress.IPv4Address)

    def switch_by_dpid(self, dpid: int) -> str | None:
        for name, sw in self.switches.items():
            if sw.dpid == dpid:
                return name
        return None


def _pool_virtual_addresses(pool: Pool) -> list[str]:
    settings = pool.settings
    if pool.kind == "lb":
        return [v.vip for v in settings.vips]  # type: ignore[union-attr]
    if pool.kind == "nat" and settings.public_ip:  # type: ignore[union-attr]
        return [settings.public_ip]  # type: ignore[union-attr]
    return []


def _cross_checks(t: Topology) -> Iterable[str]:
    seen_names: dict[str, str] = {}
    for kind, names in (
        ("switch", t.switches),
        ("host", t.hosts),
        ("pool", t.pools),
        *(("instance", p.instances) for p in t.pools.values()),
    ):
        for n in names:
            if n in seen_names and not (kind == "pool" or seen_names[n] == "pool"):
                yield f"name {n!r} is used by a {seen_names[n]} and a {kind}"
            seen_names.setdefault(n, kind)

    dpids: dict[int, str] = {}
    for name, sw in t.switches.items():
        if sw.dpid in dpids:
            yield f"switches.{name}.dpid: {sw.dpid} is also the dpid of {dpids[sw.dpid]}"
        dpids.setdefault(sw.dpid, name)

    used_ports: dict[tuple[str, int], str] = {}

    def claim(where: str, switch: str, port: int) -> Iterable[str]:
        if switch not in t.switches:
            yield f"{where}: switch {switch!r} is not defined in switches"
            return
        key = (switch, port)
        if key in used_ports:
            yield f"{where}: port {switch}:{port} is already used by {used_ports[key]}"
        used_ports.setdefault(key, where)

    for i, link in enumerate(t.links):
        if link.a == link.b:
            yield f"links[{i}]: a link must join two different switches"
        yield from claim(f"links[{i}].a", link.a, link.a_port)
        yield from claim(f"links[{i}].b", link.b, link.b_port)

    macs: dict[str, str] = {}
    ips: dict[str, str] = {}
    attachments: list[tuple[str, Attachment]] = [(f"hosts.{n}", h) for n, h in t.hosts.items()]
    for pname, pool in t.pools.items():
        attachments += [(f"pools.{pname}.instances.{n}", i) for n, i in pool.instances.items()]
    for where, att in attachments:
        yield from claim(where, att.switch, att.port)
        if att.mac in macs:
            yield f"{where}.mac: {att.mac} is also the MAC of {macs[att.mac]}"
        macs.setdefault(att.mac, where)
        if att.ip_address in ips:
            yield f"{where}.ip: {att.ip_address} is also the address of {ips[att.ip_address]}"
        ips.setdefault(att.ip_address, where)

    for pname, pool in t.pools.items():
        for vip in _pool_virtual_addresses(pool):
            if vip in ips:
                yield f"pools.{pname}.nf: virtual address {vip} is also the address of {ips[vip]}"

    for sname, svc in t.services.items():
        if svc.pool is not None and svc.pool not in t.pools:
            yield f"services.{sname}.pool: pool {svc.pool!r} is not defined in pools"
        yield from _chain_checks(t, sname, svc)
        for j, m in enumerate(svc.match):
            for h in m.ingress or ():
                if h not in t.hosts:
                    yield f"services.{sname}.match[{j}].ingress: host {h!r} is not defined"
    if len(t.pools) > 250:
        yield "pools: at most 250 pools are supported"


def _chain_checks(t: Topology, sname: str, svc: Service) -> Iterable[str]:
    """A chain is a list of defined pools, none twice, with at most one NAT, and that one
    last (a NAT rewrites addresses: the pools after it would see the translated ones, and
    the reverse direction, addressed to its public address, must meet it first)."""
    if svc.chain is None:
        return
    where = f"services.{sname}.chain"
    seen: set[str] = set()
    for i, name in enumerate(svc.chain):
        if name not in t.pools:
            yield f"{where}[{i}]: pool {name!r} is not defined in pools"
        elif name in seen:
            yield f"{where}[{i}]: pool {name!r} is already in the chain"
        seen.add(name)
    nats = [
        i for i, name in enumerate(svc.chain) if name in t.pools and t.pools[name].kind == "nat"
    ]
    if len(nats) > 1:
        yield f"{where}: at most one NAT pool per chain, not {len(nats)}"
    elif nats and nats[0] != len(svc.chain) - 1:
        yield f"{where}[{nats[0]}]: NAT pool {svc.chain[nats[0]]!r} must be last in the chain"
    elif nats and len(svc.chain) > 1 and svc.bidirectional:
        nat = t.pools[svc.chain[nats[0]]]
        if not nat.settings.public_ip:  # type: ignore[union-attr]
            yield (
                f"{where}[{nats[0]}]: NAT pool {svc.chain[nats[0]]!r} needs nf.public_ip "
                "(the reverse direction of a chain enters at its public address)"
            )


# YAML 1.1's float pattern in PyYAML needs a dot in the mantissa and a sign on the exponent,
# so ``1e-7`` would be read as a string; this one is YAML 1.2's (plus the 1.1 spellings).
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate and unhashable mapping keys (PyYAML silently keeps
    the last duplicate and fails with a TypeError on an unhashable one), bounds nesting and
    the number of nodes, and reads ``1e-7`` as a number."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise yaml.YAMLError(f"more than {MAX_NODES} values")
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", mark
            )
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integers of more than 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, "integer too large", node.start_mark
            ) from None


# Drop the inherited float resolvers (copying the table first: it is shared with SafeLoader).
_StrictLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_short(key)}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_errors(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(_one_line(f"{_short(loc, 120)[1:-1]}: {msg}" if loc else msg))
    return out


def parse_topology(data: Any, path: str | Path = "<topology>") -> Topology:
    """Validate already-parsed YAML data; raises ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(path, ["the file must hold a mapping (name, switches, ...)"])
    try:
        return Topology.model_validate(data)
    except ValidationError as e:
        raise ConfigError(path, _format_errors(e)) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file; raises ConfigError with one clear message."""
    try:
        raw = read_limited(path, MAX_FILE_BYTES)
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror or e}"]) from None
    except ValueError as e:
        raise ConfigError(path, [f"cannot read: {e}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text (byte {e.start})"]) from None
    if "\x00" in text:
        raise ConfigError(path, ["not a text file (it holds NUL characters)"])
    return parse_topology_text(text, path)


def parse_topology_text(text: str, path: str | Path = "<topology>") -> Topology:
    """Parse and validate the YAML text of a topology; raises ConfigError."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, [f"{where}invalid YAML: {_one_line(problem)}"]) from None
    except RecursionError:
        raise ConfigError(path, [f"nested deeper than {MAX_DEPTH} levels"]) from None
    return parse_topology(data, path)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]
