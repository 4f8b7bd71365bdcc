"""Flow programming: the flow table each switch should hold, and how to get it there. Pure.

Pipeline (OpenFlow 1.3, one switch; declared as data in :mod:`controller.core.pipeline`)::

  table 0  classify
    3000  in_port=<instance port>, untagged | in_port=<fabric port>  -> goto 2
    2500  any VLAN tag (from a host or instance port)        -> drop
    3001+P  in_port=<instance port of a chain's hop k>, untagged, service match
            (P = service priority)           -> hashed into the pool of hop k+1, as below
    1000+P  service match (from host ports)  -> hashed into the pool of the first hop:
            multipath mode:    write_metadata(pool id), multipath(...) -> reg0, goto 1
            select_group mode: group(pool id)
    0     anything else                                      -> goto 2
  table 1  slots (multipath mode)
    100   metadata=<pool id>, reg0=<slot>   -> deliver to the slot's owner
          (no entry: the slot has no reachable owner and its traffic is dropped)
  table 2  forward
    500   vlan_vid=<instance VID>  -> pop_vlan, output:<instance port> (at its switch)
                                   -> output:<port towards its switch> (elsewhere)
    400   any other VLAN tag       -> drop
    350   arp request, arp_tpa=<virtual ip> (edge switches)
                                   -> turned into the reply from <its VMAC>, output:IN_PORT
    300   arp, arp_tpa=<ip>        -> output towards the owner of ip
    200   ip, ipv4_dst=<virtual ip> (edge switches) -> drop (it was not classified)
    200   ip, ipv4_dst=<ip>        -> set eth_dst:<its MAC>, output towards it
    100   eth_dst=<mac>            -> output towards it

"Deliver to an instance" outputs to the instance's port when it is on this switch; an
instance on another switch is reached by pushing a VLAN tag whose VID names the instance
and sending the packet towards that switch, so the packet's own addresses are kept; the
instance's switch pops the tag. The multipath action hashes the symmetric 5-tuple, so both
directions of a connection land in the same slot.

Virtual addresses (a load balancer's VIPs, a NAT pool's public address) belong to no host
or instance. Each edge switch answers ARP for them itself, with no packet-in, so hosts can
resolve them even while the controller is away; the answer is the address's virtual MAC
(:func:`virtual_mac`). IPv4 traffic to them is for a pool: it is steered by a service in
table 0, and whatever reaches the forwarding table unclassified is dropped, never flooded.
Once an NF has translated the destination (VIP -> backend, public -> inside host) the
packet is forwarded by its new ipv4_dst like any other.

A switch's table is a dict keyed by (table, priority, match); each entry's cookie is a
stable hash of its whole content. :func:`diff` turns (what the switch holds, what it should
hold) into ordered steps: groups and flow adds/modifies first (an add with the same
match and priority replaces the old entry atomically, so a slot changes owner with no
gap), a barrier, then deletes, then a barrier. The same comparison serves rebalancing,
port and link changes, controller restarts and switch reconnects: the switch's table is
read back (table, priority, match, cookie) and only the difference is sent.

A change to the pool state usually moves a few slots out of thousands, so a switch's
desired table is kept (:class:`Desired`) and updated by :func:`update`: every entry but the
slot entries is recomputed (they are few and depend on the instance set and routes), and
only slot entries whose owner or owner's delivery changed are. :func:`update` also names
the keys that may differ, so :func:`diff` compares only those. Both go through the same
functions as the full computation (:func:`desired`), so they give the same table; a full
computation and comparison is still what a (re)connecting switch gets.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from contract.topology import Match as MatchSpec
from contract.topology import Service, Topology, virtual_mac
from controller.core.chain import reverse_public_address
from controller.core.hashing import MULTIPATH_ALGORITHM, MULTIPATH_FIELDS
from controller.core.state import InstanceInfo, Steering
from controller.core.topology import Routes, fabric_ports

T_CLASSIFY, T_SLOTS, T_FORWARD = 0, 1, 2
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
ETH_IPV4, ETH_ARP, ETH_VLAN = 0x0800, 0x0806, 0x8100
IP_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
METADATA_MASK = 0xFFFF_FFFF_FFFF_FFFF
MAX_BUCKET_WEIGHT = 0xFFFF
MAX_VID = 4094

PRIO_IN_PORT = 3000
PRIO_TAGGED_DROP = 2500
PRIO_SERVICE_BASE = 1000
PRIO_HOP_BASE = 3001  # above PRIO_IN_PORT: a chain hop's output is classified again
PRIO_DEFAULT = 0
PRIO_SLOT = 100
PRIO_VID, PRIO_VID_DROP, PRIO_ARP, PRIO_IP, PRIO_L2 = 500, 400, 300, 200, 100
PRIO_VIRTUAL_ARP = 350
OFPP_IN_PORT = 0xFFFF_FFF8  # OpenFlow's reserved port: send back where the packet came from
ARP_REQUEST, ARP_REPLY = 1, 2

# A match is a sorted tuple of (OXM field name as os-ken spells it, value); a masked value
# is (value, mask). IPv4 values are dotted strings, MACs lower-case strings, others ints.
MatchT = tuple[tuple[str, Any], ...]
Action = tuple[Any, ...]  # ("output", port) ("set_field", name, value) ("move", src, dst, bits)...
Instruction = tuple[Any, ...]
FlowKey = tuple[int, int, MatchT]


def make_match(**fields: Any) -> MatchT:
    """Canonical form of a match, identical to what :mod:`controller.ofp.ofmsg` parses back."""
    out = []
    for name, value in fields.items():
        if value is None:
            continue
        out.append((name, _canonical_value(name, value)))
    return tuple(sorted(out))


def _canonical_value(name: str, value: Any) -> Any:
    if isinstance(value, tuple):
        v, m = value
        if name in ("ipv4_src", "ipv4_dst", "arp_tpa", "arp_spa"):
            net = ipaddress.IPv4Network(f"{v}/{m}", strict=False)
            if net.prefixlen == 32:
                return str(net.network_address)
            return (str(net.network_address), str(net.netmask))
        if isinstance(v, str):
            v, m = v.lower(), m.lower()
            return v if m == "ff:ff:ff:ff:ff:ff" else (v, m)
        return (v & m, m)
    if isinstance(value, str):
        return value.lower()
    return int(value)


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: MatchT
    instructions: tuple[Instruction, ...]  # ("apply", actions) ("write_metadata", v, m) ("goto", t)

    @property
    def key(self) -> FlowKey:
        return (self.table, self.priority, self.match)

    @cached_property
    def cookie(self) -> int:
        # A stable content hash: equal cookies mean equal entries, across restarts. Kept
        # below 2**63 and non-zero so it never collides with the reserved all-ones value.
        digest = hashlib.blake2b(repr(self.content()).encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF) or 1

    def content(self) -> tuple:
        return (self.table, self.priority, self.match, self.instructions)


Bucket = tuple[int, tuple[Action, ...]]  # (weight, actions)


@dataclass(frozen=True)
class Group:
    group_id: int
    buckets: tuple[Bucket, ...]  # a select group


@dataclass
class SwitchTable:
    """What one switch should hold (desired) or holds (current: flows map key -> cookie)."""

    flows: dict[FlowKey, Flow] = field(default_factory=dict)
    groups: dict[int, Group] = field(default_factory=dict)

    def add(self, flow: Flow) -> None:
        self.flows[flow.key] = flow

    def cookies(self) -> dict[FlowKey, int]:
        return {k: f.cookie for k, f in self.flows.items()}


@dataclass
class Installed:
    """A switch's table as read back or as last programmed: keys with cookies, and groups.

    ``raw`` keeps the match of a read-back entry as the switch sent it (serialized OXM), so
    an entry the controller did not compute is deleted by exactly that match, whether or not
    its canonical form (the key) would serialize back to the same bytes."""

    flows: dict[FlowKey, int] = field(default_factory=dict)
    groups: dict[int, tuple[Bucket, ...]] = field(default_factory=dict)
    raw: dict[FlowKey, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, table: SwitchTable) -> Installed:
        return cls(table.cookies(), {g.group_id: g.buckets for g in table.groups.values()})


# Steps of a plan, in the order they must reach the switch.
@dataclass(frozen=True)
class FlowAdd:
    flow: Flow


@dataclass(frozen=True)
class FlowDelete:
    key: FlowKey
    raw_match: bytes | None = None  # the match as read back, when the entry was read back


@dataclass(frozen=True)
class WipeAll:
    """Delete every flow and group: the switch's table could not be understood."""


@dataclass(frozen=True)
class GroupAdd:
    group: Group


@dataclass(frozen=True)
class GroupModify:
    group: Group


@dataclass(frozen=True)
class GroupDelete:
    group_id: int


@dataclass(frozen=True)
class Barrier:
    pass


Step = FlowAdd | FlowDelete | GroupAdd | GroupModify | GroupDelete | Barrier | WipeAll


# -- identifiers ------------------------------------------------------------------------------


def pool_ids(topology: Topology) -> dict[str, int]:
    """Pool number: the metadata value in the slot table and the select group id."""
    return {name: i for i, name in enumerate(sorted(topology.pools), start=1)}


def instance_vids(steering: Steering) -> dict[tuple[str, str], int]:
    """VLAN id naming each instance on the fabric. Instances listed in the topology keep
    the same VID whatever registers later; others are numbered after them."""
    listed = sorted((p, n) for p, pool in steering.topology.pools.items() for n in pool.instances)
    extra = sorted(
        (p, n)
        for p, ps in steering.pools.items()
        for n in ps.instances
        if n not in steering.topology.pools[p].instances
    )
    return {key: vid for vid, key in enumerate(listed + extra, start=1) if vid <= MAX_VID}


# -- virtual addresses ------------------------------------------------------------------------


def arp_responder(ip: str) -> Flow:
    """An ARP request for ``ip`` becomes, in the switch, the reply from its virtual MAC and
    goes back out the port it came in on."""
    mac = virtual_mac(ip)
    actions = (
        ("move", "eth_src", "eth_dst", 48),
        ("set_field", "eth_src", mac),
        ("set_field", "arp_op", ARP_REPLY),
        ("move", "arp_sha", "arp_tha", 48),
        ("move", "arp_spa", "arp_tpa", 32),
        ("set_field", "arp_sha", mac),
        ("set_field", "arp_spa", ip),
        ("output", OFPP_IN_PORT),
    )
    m = make_match(eth_type=ETH_ARP, arp_op=ARP_REQUEST, arp_tpa=ip)
    return Flow(T_FORWARD, PRIO_VIRTUAL_ARP, m, (("apply", actions),))


# -- desired table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attachment:
    switch: str
    port: int
    mac: str
    ip: str


def _attachments(steering: Steering) -> list[_Attachment]:
    out = [
        _Attachment(h.switch, h.port, h.mac, h.ip_address)
        for _, h in sorted(steering.topology.hosts.items())
    ]
    for _, ps in sorted(steering.pools.items()):
        for _, i in sorted(ps.instances.items()):
            if i.located:
                out.append(_Attachment(i.switch, i.port, i.mac.lower(), i.ip))  # type: ignore[arg-type]
    return out


def _towards(switch: str, dest_switch: str, dest_port: int, routes: Routes) -> int | None:
    if dest_switch == switch:
        return dest_port
    return routes.port_towards(switch, dest_switch)


def _deliver(
    switch: str, info: InstanceInfo | None, vid: int | None, routes: Routes
) -> tuple[Action, ...] | None:
    """Actions that bring a packet to an instance unchanged, or None if it is unreachable."""
    if info is None or not info.located:
        return None
    if info.switch == switch:
        return (("output", info.port),)
    port = routes.port_towards(switch, info.switch)  # type: ignore[arg-type]
    if port is None or vid is None:
        return None
    return (
        ("push_vlan", ETH_VLAN),
        ("set_field", "vlan_vid", OFPVID_PRESENT | vid),
        ("output", port),
    )


def _prefix(net: str | None) -> Any:
    if not net:
        return None
    n = ipaddress.IPv4Network(net)
    if n.prefixlen == 0:
        return None
    return (str(n.network_address), str(n.netmask))


def chain_routes(topology: Topology, svc: Service) -> list[tuple[list[int], MatchSpec, MatchSpec]]:
    """Each direction a service steers, per match entry: (hop indexes in the order the
    direction visits them, the match where it enters the network, the match of its packets
    as the hops after the first see them).

    The forward direction visits the hops in order, the reverse direction (bidirectional
    services) in reverse order. A NAT is last in a chain, so the forward direction's
    packets are untranslated until they leave the chain; the reverse direction of a chain
    ending in a NAT is addressed to the NAT's public address where it enters, and after
    the NAT (which translates it back) it is the service's reversed match.
    """
    forward = list(range(len(svc.hops)))
    out: list[tuple[list[int], MatchSpec, MatchSpec]] = []
    public = reverse_public_address(topology, svc)
    for spec in svc.match:
        out.append((forward, spec, spec))
        if not svc.bidirectional:
            continue
        back = spec.reversed()
        entry = back
        if public:
            entry = back.model_copy(update={"dst": f"{public}/32"})
        out.append((forward[::-1], entry, back))
    return out


def service_matches(spec: MatchSpec) -> list[dict[str, Any]]:
    """One OpenFlow match (as field dict, without in_port) per port combination."""
    base: dict[str, Any] = {"eth_type": ETH_IPV4}
    if spec.proto != "any":
        base["ip_proto"] = IP_PROTOS[spec.proto]
    base["ipv4_src"] = _prefix(spec.src)
    base["ipv4_dst"] = _prefix(spec.dst)
    l4 = spec.proto if spec.proto in ("tcp", "udp") else None
    srcs: list[int | None] = list(spec.src_ports or [None])
    dsts: list[int | None] = list(spec.dst_ports or [None])
    out = []
    for sport, dport in itertools.product(srcs, dsts):
        m = dict(base)
        if l4:
            m[f"{l4}_src"] = sport
            m[f"{l4}_dst"] = dport
        out.append(m)
    return out


@functools.lru_cache(maxsize=1 << 18)
def _slot_flow(pool_id: int, slot: int, actions: tuple[Action, ...]) -> Flow:
    # Slot entries are most of a table and mostly unchanged from one change to the next:
    # reusing them keeps their (hashed) cookies, so recomputing a table stays cheap.
    return Flow(T_SLOTS, PRIO_SLOT, slot_key(pool_id, slot)[2], (("apply", actions),))


@functools.lru_cache(maxsize=1 << 18)
def slot_key(pool_id: int, slot: int) -> FlowKey:
    return (T_SLOTS, PRIO_SLOT, make_match(metadata=pool_id, reg0=slot))


@dataclass(frozen=True)
class SlotSource:
    """What one pool's slot entries on one switch are computed from."""

    pool_id: int
    assignment: tuple[str | None, ...]
    deliver: Mapping[str, tuple[Action, ...] | None]  # instance -> actions (None: unreachable)

    def entry(self, slot: int) -> Flow | None:
        owner = self.assignment[slot]
        actions = self.deliver.get(owner) if owner is not None else None
        return None if actions is None else _slot_flow(self.pool_id, slot, actions)


@dataclass
class Desired:
    """A switch's desired table, with what its slot entries were computed from."""

    table: SwitchTable
    base_keys: frozenset[FlowKey]  # every flow key but the slot entries'
    slots: dict[str, SlotSource]  # pools steered by multipath on this switch


def desired_table(steering: Steering, switch: str, routes: Routes) -> SwitchTable:
    """The complete table switch ``switch`` should hold for the current steering state."""
    return desired(steering, switch, routes).table


def desired(steering: Steering, switch: str, routes: Routes) -> Desired:
    """:func:`desired_table`, keeping what :func:`update` needs for the next change."""
    base, sources = _base_table(steering, switch, routes)
    table = SwitchTable(dict(base.flows), base.groups)
    for src in sources.values():
        for slot in range(len(src.assignment)):
            flow = src.entry(slot)
            if flow is not None:
                table.flows[flow.key] = flow
    return Desired(table, frozenset(base.flows), sources)


def update(
    prev: Desired, steering: Steering, switch: str, routes: Routes
) -> tuple[Desired, set[FlowKey]]:
    """The desired table after a change, from the one before it, and the flow keys whose
    entry may differ between the two (every other entry is the same).

    Every entry but the slot entries is recomputed; a slot entry is recomputed when the
    slot changed owner or its owner's delivery did (it moved, or a route to it changed).
    """
    base, sources = _base_table(steering, switch, routes)
    flows = dict(prev.table.flows)
    for key in prev.base_keys:
        del flows[key]
    flows.update(base.flows)
    keys = set(prev.base_keys) | set(base.flows)
    for pname, src in sources.items():
        old = prev.slots.get(pname)
        for slot in _changed_slots(old, src):
            key = slot_key(src.pool_id, slot)
            keys.add(key)
            flow = src.entry(slot)
            if flow is None:
                flows.pop(key, None)
            else:
                flows[key] = flow
    return Desired(SwitchTable(flows, base.groups), frozenset(base.flows), sources), keys


def _changed_slots(old: SlotSource | None, new: SlotSource) -> Iterable[int]:
    if old is None or old.pool_id != new.pool_id or len(old.assignment) != len(new.assignment):
        return range(len(new.assignment))
    changed = {
        n
        for n in old.deliver.keys() | new.deliver.keys()
        if old.deliver.get(n) != new.deliver.get(n)
    }
    if not changed and old.assignment == new.assignment:
        return ()
    return [
        slot
        for slot, (was, now) in enumerate(zip(old.assignment, new.assignment, strict=True))
        if was != now or now in changed
    ]


def table_inputs(steering: Steering) -> tuple:
    """Everything but the slot assignment that switch tables are computed from and that
    a pool change can alter: which instances exist, and where and what they are."""
    return tuple(
        (p, n, i.switch, i.port, i.mac, i.ip)
        for p, ps in sorted(steering.pools.items())
        for n, i in sorted(ps.instances.items())
    )


def _base_table(
    steering: Steering, switch: str, routes: Routes
) -> tuple[SwitchTable, dict[str, SlotSource]]:
    """Every entry but the slot entries, and what the slot entries are computed from."""
    topo = steering.topology
    mode = topo.switches[switch].steering
    pids = pool_ids(topo)
    vids = instance_vids(steering)
    table = SwitchTable()
    goto_fwd = (("goto", T_FORWARD),)

    # table 0: traffic leaving an instance or arriving over the fabric is never classified.
    local_instances = sorted(
        i.port
        for ps in steering.pools.values()
        for i in ps.instances.values()
        if i.switch == switch and i.port is not None
    )
    for port in sorted(set(local_instances)):
        m = make_match(in_port=port, vlan_vid=OFPVID_NONE)
        table.add(Flow(T_CLASSIFY, PRIO_IN_PORT, m, goto_fwd))
    for port in sorted(fabric_ports(topo)[switch]):
        table.add(Flow(T_CLASSIFY, PRIO_IN_PORT, make_match(in_port=port), goto_fwd))
    # Tags belong to the fabric: a tagged frame from a host or instance is dropped.
    tagged = make_match(vlan_vid=(OFPVID_PRESENT, OFPVID_PRESENT))
    table.add(Flow(T_CLASSIFY, PRIO_TAGGED_DROP, tagged, ()))
    table.add(Flow(T_CLASSIFY, PRIO_DEFAULT, make_match(), goto_fwd))

    # Traffic is classified where it enters the network: switches without hosts (e.g.
    # spines) only forward. A chain's later hops are classified where the previous hop's
    # instance hands the packet back (in_port = that instance's port), on any switch.
    edge = any(h.switch == switch for h in topo.hosts.values())
    used_pools: set[str] = set()

    def steer(pname: str) -> tuple[Instruction, ...]:
        used_pools.add(pname)
        pool = steering.pools[pname]
        pid = pids[pname]
        if mode == "select_group":
            return (("apply", (("group", pid),)),)
        multipath = (
            "multipath",
            MULTIPATH_FIELDS,
            pool.basis,
            MULTIPATH_ALGORITHM,
            pool.n_slots - 1,  # max_link: number of links minus one
            0,
            "reg0",
            0,
            15,
        )
        return (
            ("apply", (multipath,)),
            ("write_metadata", pid, METADATA_MASK),
            ("goto", T_SLOTS),
        )

    def add_entries(
        prio: int, spec: MatchSpec, in_ports: Iterable[int | None], vlan: int | None, to: str
    ) -> None:
        in_ports = list(in_ports)
        if not in_ports:
            return
        instructions = steer(to)
        for fields_, in_port in itertools.product(service_matches(spec), in_ports):
            m = make_match(in_port=in_port, vlan_vid=vlan, **fields_)
            # The first service listed wins a tie on identical matches.
            table.flows.setdefault((T_CLASSIFY, prio, m), Flow(T_CLASSIFY, prio, m, instructions))

    def local_ports(pname: str) -> list[int]:
        return sorted(
            {
                i.port
                for i in steering.pools[pname].instances.values()
                if i.switch == switch and i.port is not None
            }
        )

    for _, svc in sorted(topo.services.items()):
        hops = svc.hops
        for route, entry_spec, later_spec in chain_routes(topo, svc):
            pools_in_order = [hops[i] for i in route]
            if edge:
                used_pools.add(pools_in_order[0])
                ingress = entry_spec.ingress
                if ingress is None:
                    in_ports: list[int | None] = [None]
                else:
                    in_ports = sorted(
                        topo.hosts[h].port for h in ingress if topo.hosts[h].switch == switch
                    )
                add_entries(
                    PRIO_SERVICE_BASE + svc.priority, entry_spec, in_ports, None, pools_in_order[0]
                )
            # Back from an instance of one hop: on to the next hop's pool.
            for here, nxt in itertools.pairwise(pools_in_order):
                add_entries(
                    PRIO_HOP_BASE + svc.priority,
                    later_spec,
                    local_ports(here),
                    OFPVID_NONE,
                    nxt,
                )

    # table 1 (or the pool's select group): slot -> instance.
    sources: dict[str, SlotSource] = {}
    for pname in sorted(used_pools):
        pool = steering.pools[pname]
        pid = pids[pname]
        deliver = {
            name: _deliver(switch, info, vids.get((pname, name)), routes)
            for name, info in pool.instances.items()
        }
        if mode == "select_group":
            counts = pool.slot_counts()
            buckets = tuple(
                (min(counts[name], MAX_BUCKET_WEIGHT), deliver[name])
                for name in sorted(counts)
                if counts[name] > 0 and deliver[name] is not None
            )
            table.groups[pid] = Group(pid, buckets)  # type: ignore[arg-type]
            continue
        sources[pname] = SlotSource(pid, tuple(pool.assignment), deliver)

    # table 2: forwarding.
    for (pname, iname), vid in sorted(vids.items()):
        info = steering.pools[pname].instances.get(iname)
        if info is None or not info.located:
            continue
        m = make_match(vlan_vid=OFPVID_PRESENT | vid)
        if info.switch == switch:
            actions: tuple[Action, ...] = (("pop_vlan",), ("output", info.port))
        else:
            port = routes.port_towards(switch, info.switch)  # type: ignore[arg-type]
            if port is None:
                continue
            actions = (("output", port),)
        table.add(Flow(T_FORWARD, PRIO_VID, m, (("apply", actions),)))
    table.add(
        Flow(T_FORWARD, PRIO_VID_DROP, make_match(vlan_vid=(OFPVID_PRESENT, OFPVID_PRESENT)), ())
    )
    attachments = _attachments(steering)
    for att in attachments:
        port = _towards(switch, att.switch, att.port, routes)
        if port is None:
            continue
        out = (("output", port),)
        for prio, m, acts in (
            (PRIO_ARP, make_match(eth_type=ETH_ARP, arp_tpa=att.ip), out),
            (
                PRIO_IP,
                make_match(eth_type=ETH_IPV4, ipv4_dst=att.ip),
                (("set_field", "eth_dst", att.mac), *out),
            ),
            (PRIO_L2, make_match(eth_dst=att.mac), out),
        ):
            table.flows.setdefault(
                (T_FORWARD, prio, m), Flow(T_FORWARD, prio, m, (("apply", acts),))
            )

    # Virtual addresses, where traffic enters the network. An address that some host or
    # instance does own (topology checks reject that) is left to its owner.
    owned = {att.ip for att in attachments}
    for ip in topo.virtual_addresses() if edge else ():
        if ip in owned:
            continue
        table.add(arp_responder(ip))
        table.add(Flow(T_FORWARD, PRIO_IP, make_match(eth_type=ETH_IPV4, ipv4_dst=ip), ()))
    return table, sources


# -- diff -------------------------------------------------------------------------------------


def diff(
    current: Installed, desired: SwitchTable, keys: Collection[FlowKey] | None = None
) -> list[Step]:
    """Ordered steps that turn ``current`` into ``desired``; [] when they are equal.

    ``keys``, when given, limits the flow comparison to those keys: the caller knows every
    other entry of ``current`` already equals ``desired`` (see :func:`update`). Groups are
    always compared.

    Adds and modifies go first (later tables before the tables that jump to them, so no
    packet is sent to an entry that does not exist yet), then a barrier, then deletes
    (tables that jump first), then a barrier; groups are created before and deleted after
    the flows that use them.
    """
    steps: list[Step] = []
    for gid, group in sorted(desired.groups.items()):
        if gid not in current.groups:
            steps.append(GroupAdd(group))
        elif current.groups[gid] != group.buckets:
            steps.append(GroupModify(group))
    wanted = desired.flows
    if keys is None:
        adds = [f for k, f in wanted.items() if current.flows.get(k) != f.cookie]
        gone: Iterable[FlowKey] = (k for k in current.flows if k not in wanted)
    else:
        adds = [wanted[k] for k in keys if k in wanted and current.flows.get(k) != wanted[k].cookie]
        gone = (k for k in keys if k not in wanted and k in current.flows)
    adds.sort(key=lambda f: (-f.table, -f.priority, repr(f.match)))
    steps += [FlowAdd(f) for f in adds]
    if steps:
        steps.append(Barrier())
    deletes = sorted(gone, key=lambda k: (k[0], -k[1], repr(k[2])))
    if deletes:
        steps += [FlowDelete(k, current.raw.get(k)) for k in deletes]
        steps.append(Barrier())
    gone_groups = sorted(g for g in current.groups if g not in desired.groups)
    if gone_groups:
        steps += [GroupDelete(g) for g in gone_groups]
        steps.append(Barrier())
    return steps


def apply_steps(current: Installed, steps: Iterable[Step]) -> Installed:
    """What the switch holds after ``steps`` (used to track a switch between changes)."""
    flows = dict(current.flows)
    groups = dict(current.groups)
    raw = dict(current.raw)
    for step in steps:
        if isinstance(step, FlowAdd):
            flows[step.flow.key] = step.flow.cookie
            raw.pop(step.flow.key, None)  # replaced by ours: our own match from now on
        elif isinstance(step, FlowDelete):
            flows.pop(step.key, None)
            raw.pop(step.key, None)
        elif isinstance(step, WipeAll):
            flows, groups, raw = {}, {}, {}
        elif isinstance(step, GroupAdd | GroupModify):
            groups[step.group.group_id] = step.group.buckets
        elif isinstance(step, GroupDelete):
            groups.pop(step.group_id, None)
    return Installed(flows, groups, raw)


def count_mods(steps: Iterable[Step]) -> Mapping[str, int]:
    out = {"flow": 0, "group": 0, "barrier": 0}
    for s in steps:
        if isinstance(s, Barrier):
            out["barrier"] += 1
        elif isinstance(s, FlowAdd | FlowDelete | WipeAll):
            out["flow"] += 1
        else:
            out["group"] += 1
    return out
