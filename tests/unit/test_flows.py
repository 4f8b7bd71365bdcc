"""Flow programming against the switch model (pure logic; the same behaviour is tested on
Open vSwitch in test_ovs_controller.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3

from contract.topology import load_topology, parse_topology
from controller.core import flows as fl
from controller.core.hashing import FiveTuple
from controller.core.state import InstanceState, Steering
from controller.core.switchsync import ReadBack
from controller.core.topology import compute_routes
from controller.ofp import ofmsg
from sim.network import program, reprogram
from sim.packet import Packet
from sim.switch import Switch

REPO = Path(__file__).resolve().parents[2]
SINGLE = REPO / "topologies" / "single.yaml"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
TCP, UDP = 6, 17


def single_steering() -> Steering:
    st = Steering(load_topology(SINGLE))
    for name in ("fw1", "fw2", "fw3", "fw4"):  # a registered pool: instances start DOWN
        st.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    return st


def random_flow(rng: random.Random, src_net: str = "10.0.0.", dst_net: str = "10.0.0.") -> tuple:
    proto = rng.choice([TCP, UDP])
    src = f"{src_net}{rng.randrange(1, 127)}"
    dst = f"{dst_net}{rng.randrange(129, 255)}"
    return proto, src, dst, rng.randrange(1024, 65536), rng.choice([80, 443, 5001, 53])


def instance_port(st: Steering, pool: str, name: str | None) -> int | None:
    return None if name is None else st.pools[pool].instances[name].port


# -- single switch ---------------------------------------------------------------------------


def test_steering_matches_lookup_both_directions():
    st = single_steering()
    net = program(st)
    rng = random.Random(1)
    counts: dict[int, int] = {}
    for _ in range(3000):
        proto, src, dst, sport, dport = random_flow(rng)
        owner = st.lookup("fw", FiveTuple(src, dst, proto, sport, dport))
        fwd = net.send("s1", 1, Packet.l4(proto, src, dst, sport, dport))
        rev = net.send("s1", 3, Packet.l4(proto, dst, src, dport, sport))
        assert [d[1] for d in fwd] == [instance_port(st, "fw", owner)]
        assert [d[1] for d in rev] == [instance_port(st, "fw", owner)]
        assert fwd[0][2].eth_dst == "ff:ff:ff:ff:ff:ff"  # addresses untouched on delivery
        counts[fwd[0][1]] = counts.get(fwd[0][1], 0) + 1
    # fw4 (capacity 2) gets about twice the share of the others
    assert counts[14] / 3000 == pytest.approx(0.4, abs=0.04)


def test_non_service_and_arp_traffic_is_forwarded():
    st = single_steering()
    net = program(st)
    # client -> client (not a service): straight there, with its MAC
    out = net.send("s1", 1, Packet.l4(TCP, "10.0.0.1", "10.0.0.2", 40000, 22))
    assert [(d[1], d[2].eth_dst) for d in out] == [(2, "02:00:00:00:00:02")]
    # a service's protocol does not matter for other traffic: ICMP is not steered
    out = net.send("s1", 1, Packet.l4(1, "10.0.0.1", "10.0.0.129", 0, 0))
    assert [d[1] for d in out] == [3]
    # instance -> store (NF state access)
    out = net.send("s1", 11, Packet.l4(TCP, "10.0.0.201", "10.0.0.250", 40000, 6379))
    assert [d[1] for d in out] == [5]
    # ARP towards the owner of the address
    assert [d[1] for d in net.send("s1", 1, Packet.arp("10.0.0.129"))] == [3]
    assert [d[1] for d in net.send("s1", 3, Packet.arp("10.0.0.1"))] == [1]
    assert [d[1] for d in net.send("s1", 11, Packet.arp("10.0.0.250"))] == [5]
    # unknown destinations and stray VLAN tags are dropped
    assert net.send("s1", 1, Packet.arp("10.0.0.77")) == []
    assert net.send("s1", 1, Packet.l4(TCP, "10.0.0.1", "10.0.0.129", 1, 80, vlan=7)) == []


def test_processed_traffic_from_instance_goes_to_destination():
    st = single_steering()
    net = program(st)
    for in_port in (11, 12, 13, 14):
        out = net.send("s1", in_port, Packet.l4(TCP, "10.0.0.1", "10.0.0.130", 5555, 80))
        assert [(d[1], d[2].eth_dst) for d in out] == [(4, "02:00:00:00:00:82")]
        back = net.send("s1", in_port, Packet.l4(TCP, "10.0.0.130", "10.0.0.1", 80, 5555))
        assert [d[1] for d in back] == [1]


def test_change_sends_only_changed_slots_adds_before_deletes():
    st = single_steering()
    net = program(st)
    before = list(st.pools["fw"].assignment)
    change = st.set_state("fw", "fw4", InstanceState.FAILED, 0.0)
    plan = reprogram(net, st)["s1"]
    moved = {slot for slot, _, _ in change.moved}
    assert moved == {s for s, o in enumerate(before) if o == "fw4"}
    slot_adds = [s.flow for s in plan if isinstance(s, fl.FlowAdd) and s.flow.table == 1]
    assert {dict(f.match)["reg0"] for f in slot_adds} == moved
    assert len(plan) == len(moved) + 1  # the slot entries and one barrier, nothing else
    assert isinstance(plan[-1], fl.Barrier)
    # every slot still has exactly one entry, now for a survivor
    slot_flows = [e.flow for e in net.switches["s1"].flows.values() if e.flow.table == 1]
    assert len(slot_flows) == st.pools["fw"].n_slots
    assert all(("output", 14) not in f.instructions[0][1] for f in slot_flows)


def test_removing_an_instance_deletes_after_adds_and_never_orphans_a_slot():
    st = single_steering()
    net = program(st)
    st.remove_instance("fw", "fw2", 0.0)
    plan = reprogram(net, st)["s1"]
    first_barrier = next(i for i, s in enumerate(plan) if isinstance(s, fl.Barrier))
    kinds = [type(s) for s in plan]
    assert fl.FlowDelete in kinds
    assert all(not isinstance(s, fl.FlowDelete) for s in plan[:first_barrier])
    assert all(not isinstance(s, fl.FlowAdd) for s in plan[first_barrier:])
    # the deletes remove fw2's port rule and forwarding entries, never a slot entry
    deleted_tables = {s.key[0] for s in plan if isinstance(s, fl.FlowDelete)}
    assert 1 not in deleted_tables
    assert isinstance(plan[-1], fl.Barrier)


def test_diff_of_identical_tables_is_empty_and_apply_steps_tracks_switch():
    st = single_steering()
    routes = compute_routes(st.topology)
    desired = fl.desired_table(st, "s1", routes)
    assert fl.diff(fl.Installed.of(desired), desired) == []
    # a fresh computation gives the same cookies (stable across restarts)
    again = fl.desired_table(single_steering(), "s1", routes)
    assert again.cookies() == desired.cookies()
    steps = fl.diff(fl.Installed(), desired)
    assert fl.apply_steps(fl.Installed(), steps) == fl.Installed.of(desired)
    # a foreign entry is deleted, a changed entry is re-added
    current = fl.Installed.of(desired)
    foreign = (0, 5, fl.make_match(in_port=99))
    current.flows[foreign] = 1234
    changed = next(k for k in current.flows if k[0] == 1)
    current.flows[changed] = 1
    plan = fl.diff(current, desired)
    assert [s for s in plan if not isinstance(s, fl.Barrier)] == [
        fl.FlowAdd(desired.flows[changed]),
        fl.FlowDelete(foreign),
    ]


def test_ingress_restriction_classifies_only_listed_hosts():
    data = load_topology(SINGLE).model_dump()
    data["services"]["web"]["match"] = [
        {"proto": "tcp", "src": "10.0.0.0/25", "dst": "10.0.0.128/25", "ingress": ["c1"]}
    ]
    data["services"]["web"]["bidirectional"] = False
    st = Steering(parse_topology(data))
    for name in ("fw1", "fw2"):
        st.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    net = program(st)
    from_c1 = net.send("s1", 1, Packet.l4(TCP, "10.0.0.1", "10.0.0.129", 1000, 80))
    from_c2 = net.send("s1", 2, Packet.l4(TCP, "10.0.0.2", "10.0.0.129", 1000, 80))
    assert from_c1[0][1] in (11, 12)
    assert [d[1] for d in from_c2] == [3]  # not steered: straight to the server


def test_empty_pool_drops_service_traffic():
    st = Steering(load_topology(SINGLE))  # registered pool, nobody registered yet
    net = program(st)
    assert net.send("s1", 1, Packet.l4(TCP, "10.0.0.1", "10.0.0.129", 1000, 80)) == []
    assert [d[1] for d in net.send("s1", 1, Packet.arp("10.0.0.129"))] == [3]


# -- select groups ---------------------------------------------------------------------------


def select_group_steering() -> Steering:
    data = load_topology(SINGLE).model_dump()
    data["switches"]["s1"]["steering"] = "select_group"
    st = Steering(parse_topology(data))
    for name in ("fw1", "fw2", "fw3", "fw4"):
        st.set_state("fw", name, InstanceState.ACTIVE, 0.0)
    return st


def test_select_group_weights_never_zero_and_proportional():
    st = select_group_steering()
    table = fl.desired_table(st, "s1", compute_routes(st.topology))
    assert not any(f.table == 1 for f in table.flows.values())
    (group,) = table.groups.values()
    weights = {acts[0][1]: w for w, acts in group.buckets}
    counts = st.pools["fw"].slot_counts()
    assert weights == {st.pools["fw"].instances[n].port: c for n, c in counts.items()}
    for port, share in ((11, 1), (12, 1), (13, 1), (14, 2)):
        assert abs(weights[port] - 4096 * share / 5) < 1  # floor or ceil of its share
    # a tiny share still gets weight >= 1, and the bucket survives serialisation with it
    st.set_capacity("fw", "fw1", 0.0001, 0.0)
    table = fl.desired_table(st, "s1", compute_routes(st.topology))
    (group,) = table.groups.values()
    assert all(w >= 1 for w, _ in group.buckets)
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    msg = ofmsg.group_mod(dp, group, ofproto_v1_3.OFPGC_ADD)
    msg.serialize()
    # os-ken cannot parse a group-mod: read its buckets from the wire bytes after the
    # 16-byte fixed part
    buckets, offset = [], 16
    while offset < len(msg.buf):
        bucket = dp.ofproto_parser.OFPBucket.parser(msg.buf, offset)
        buckets.append(bucket)
        offset += bucket.len
    assert [b.weight for b in buckets] == [w for w, _ in group.buckets]
    assert all(b.weight > 0 for b in buckets)
    assert [ofmsg.parse_actions(b.actions) for b in buckets] == [a for _, a in group.buckets]
    # traffic reaches an instance through the group, proportionally
    net = program(st)
    rng = random.Random(3)
    hits: dict[int, int] = {}
    for _ in range(2000):
        proto, src, dst, sport, dport = random_flow(rng)
        out = net.send("s1", 1, Packet.l4(proto, src, dst, sport, dport))
        hits[out[0][1]] = hits.get(out[0][1], 0) + 1
    assert hits[14] / 2000 == pytest.approx(0.5, abs=0.05)


def test_select_group_change_is_one_group_modify():
    st = select_group_steering()
    net = program(st)
    st.set_state("fw", "fw3", InstanceState.FAILED, 0.0)
    plan = reprogram(net, st)["s1"]
    assert [type(s) for s in plan] == [fl.GroupModify, fl.Barrier]
    assert 13 not in {acts[0][1] for _, acts in plan[0].group.buckets}


# -- serialisation ---------------------------------------------------------------------------


def test_messages_round_trip_through_openflow_encoding():
    st = single_steering()
    table = fl.desired_table(st, "s1", compute_routes(st.topology))
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    steps = fl.diff(fl.Installed(), table)
    bodies = []
    for step, msg in zip(steps, ofmsg.messages(dp, steps), strict=True):
        if isinstance(step, fl.Barrier):
            continue
        msg.serialize()
        parsed = ofproto_parser.msg(dp, *ofproto_parser.header(msg.buf), msg.buf)
        if type(parsed).__name__ == "OFPFlowMod":
            bodies.append(parsed)
    # what a flow-stats reply would say about these entries is exactly the desired table
    readback = ReadBack()
    ofmsg.parse_flow_stats(bodies, readback)
    assert readback.flows == table.cookies() and not readback.doubtful
    mp = next(
        ins.actions[0]
        for parsed in bodies
        if parsed.table_id == 0 and 1000 < parsed.priority < 2000
        for ins in parsed.instructions
        if hasattr(ins, "actions")
    )
    assert (mp.max_link, mp.dst, mp.ofs_nbits) == (4095, "reg0", 15)


# -- several switches ------------------------------------------------------------------------


def triangle() -> Steering:
    return Steering(load_topology(TRIANGLE))


def test_remote_instance_reached_through_tagged_path_with_addresses_kept():
    st = triangle()
    net = program(st)
    rng = random.Random(5)
    seen = set()
    for _ in range(500):
        _, src, _, sport, dport = random_flow(rng)
        dst = "10.0.0.129"  # sv1, the one server of this topology
        sent = Packet.l4(
            TCP, src, dst, sport, dport, eth_src="02:00:00:00:00:01", eth_dst="02:00:00:00:00:81"
        )
        owner = st.lookup("fw", FiveTuple(src, dst, TCP, sport, dport))
        info = st.pools["fw"].instances[owner]
        out = net.send("s1", 1, sent)
        assert [(d[0], d[1]) for d in out] == [(info.switch, info.port)]
        assert out[0][2] == sent  # untagged again, addresses as sent
        seen.add(owner)
        # the reverse direction from the server side lands on the same instance
        back = net.send("s3", 1, Packet.l4(TCP, dst, src, dport, sport))
        assert [(d[0], d[1]) for d in back] == [(info.switch, info.port)]
        # processed traffic leaving the instance reaches the server
        onward = net.send(info.switch, info.port, sent)
        assert [(d[0], d[1], d[2].eth_dst) for d in onward] == [("s3", 1, "02:00:00:00:00:81")]
    assert seen == {"fw1", "fw2", "fw3"}


def test_link_down_is_routed_around():
    st = triangle()
    net = program(st)
    pkt = Packet.l4(TCP, "10.0.0.201", "10.0.0.129", 1, 80)
    assert [d[3] for d in net.send("s1", 11, pkt)] == [["s1", "s3"]]
    down = {("s1", 23), ("s3", 21)}  # the s1-s3 link
    plans = reprogram(net, st, down)
    assert [d[3] for d in net.send("s1", 11, pkt)] == [["s1", "s2", "s3"]]
    assert all(not isinstance(s, fl.FlowDelete) for s in plans["s2"])  # s2 already knew its routes
    # every slot is still delivered to its owner
    rng = random.Random(9)
    for _ in range(200):
        _, src, dst, sport, dport = random_flow(rng)
        owner = st.lookup("fw", FiveTuple(src, dst, TCP, sport, dport))
        info = st.pools["fw"].instances[owner]
        out = net.send("s1", 1, Packet.l4(TCP, src, dst, sport, dport))
        assert [(d[0], d[1]) for d in out] == [(info.switch, info.port)]


def test_unreachable_instance_switch_gets_no_slot_entries():
    st = triangle()
    down = {("s1", 21), ("s1", 23)}  # s1 cut off from the fabric
    table = fl.desired_table(st, "s1", compute_routes(st.topology, down))
    owners = {dict(f.match)["reg0"] for f in table.flows.values() if f.table == 1}
    local = {s for s, o in enumerate(st.pools["fw"].assignment) if o == "fw1"}
    assert owners == local


# -- incremental updates ---------------------------------------------------------------------


def _random_change(st: Steering, rng: random.Random, down: set, links: list) -> None:
    """One random change to the pool state or the links; a refused one changes nothing."""
    from controller.core.state import InstanceInfo, SteeringError

    pool = st.pools["fw"]
    names = sorted(pool.instances)
    kind = rng.choice(["state", "state", "capacity", "remove", "add", "add", "link"])
    try:
        if kind == "state" and names:
            state = rng.choice(list(InstanceState))
            st.set_state("fw", rng.choice(names), state, 0.0, force=True)
        elif kind == "capacity" and names:
            st.set_capacity("fw", rng.choice(names), rng.choice([1, 2, 3, 5]), 0.0)
        elif kind == "remove" and names:
            st.remove_instance("fw", rng.choice(names), 0.0)
        elif kind == "add":
            # a listed instance (back) at its port or elsewhere, or one the topology lacks
            # (it gets a VID after the listed ones, so others' VIDs may shift)
            n = rng.randrange(1, 7)
            switch = rng.choice(sorted(st.topology.switches))
            located = rng.random() < 0.9
            st.add_instance(
                InstanceInfo(
                    name=f"fw{n}",
                    pool="fw",
                    mac=f"02:00:00:00:01:{n:02x}",
                    ip=f"10.0.0.{200 + n}",
                    switch=switch if located else None,
                    port=rng.randrange(11, 16) if located else None,
                    capacity=float(rng.choice([1, 2])),
                    state=rng.choice([InstanceState.ACTIVE, InstanceState.DOWN]),
                ),
                0.0,
            )
        elif kind == "link":
            link = rng.choice(links)
            ends = {(link.a, link.a_port), (link.b, link.b_port)}
            if ends <= down:
                down -= ends
            else:
                down |= ends
    except SteeringError:
        pass


@pytest.mark.parametrize("mode", ["multipath", "select_group"])
@pytest.mark.parametrize("seed", range(4))
def test_incremental_update_gives_the_full_table(mode, seed):
    """After any sequence of changes, updating the kept table gives exactly the table and
    the steps that computing and comparing everything gives."""
    data = yaml.safe_load(TRIANGLE.read_text())
    for sw in data["switches"].values():
        sw["steering"] = mode
    st = Steering(parse_topology(data))
    rng = random.Random(seed)
    down: set[tuple[str, int]] = set()
    routes = compute_routes(st.topology)
    kept = {name: fl.desired(st, name, routes) for name in st.topology.switches}
    switches = {name: Switch(name) for name in st.topology.switches}
    for name, sw in switches.items():
        sw.apply(fl.diff(fl.Installed(), kept[name].table))
    for _ in range(60):
        _random_change(st, rng, down, st.topology.links)
        routes = compute_routes(st.topology, down)
        for name, sw in switches.items():
            kept[name], keys = fl.update(kept[name], st, name, routes)
            full = fl.desired(st, name, routes)
            assert kept[name].table == full.table
            assert kept[name].base_keys == full.base_keys
            steps = fl.diff(sw.installed(), kept[name].table, keys)
            assert steps == fl.diff(sw.installed(), full.table)
            sw.apply(steps)
            assert sw.installed() == fl.Installed.of(full.table)


def test_update_touches_only_what_changed():
    st = single_steering()
    routes = compute_routes(st.topology)
    before = fl.desired(st, "s1", routes)
    change = st.set_state("fw", "fw2", InstanceState.FAILED, 0.0)
    after, keys = fl.update(before, st, "s1", routes)
    slot_keys = {k for k in keys if k[0] == fl.T_SLOTS}
    pid = fl.pool_ids(st.topology)["fw"]
    assert slot_keys == {fl.slot_key(pid, slot) for slot, _, _ in change.moved}
    assert keys - slot_keys == set(after.base_keys) | set(before.base_keys)
    assert len(keys) < len(after.table.flows) / 4
