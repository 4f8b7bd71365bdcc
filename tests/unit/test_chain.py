"""Service chains on the switch model: a connection's packets, forward and reverse, hop by hop
through topologies/chain.yaml (firewall -> NAT on two switches), and the chain's checks in the
topology schema. The same chain runs on real NF processes in tests/e2e/test_e2e_chain.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st_

from contract.topology import ConfigError, parse_topology, parse_topology_text
from controller.core.hashing import FiveTuple
from controller.core.state import InstanceState, Steering
from sim.network import Network, program, reprogram
from sim.packet import Packet
from sim.switch import Switch

REPO = Path(__file__).resolve().parents[2]
CHAIN = REPO / "topologies" / "chain.yaml"
PUBLIC = "10.0.0.240"
TCP = 6


def chain_data() -> dict:
    return yaml.safe_load(CHAIN.read_text())


def steering(mode: str = "multipath") -> Steering:
    data = chain_data()
    for sw in data["switches"].values():
        sw["steering"] = mode
    st = Steering(parse_topology(data, CHAIN))
    for pname, ps in st.pools.items():
        for name in ps.instances:
            st.set_state(pname, name, InstanceState.ACTIVE, 0)
    return st


def where(st: Steering) -> dict[tuple[str, int], str]:
    out = {(h.switch, h.port): n for n, h in st.topology.hosts.items()}
    for ps in st.pools.values():
        out.update({(i.switch, i.port): n for n, i in ps.instances.items()})
    return out


def one_hop(net, at: dict, sender: str, pkt: Packet) -> tuple[str, Packet]:
    """Where ``pkt`` sent by ``sender`` (a host or an instance) leaves the network."""
    st_where = {v: k for k, v in at.items()}
    sw, port = st_where[sender]
    out = net.send(sw, port, pkt)
    assert len(out) == 1, out
    sw_out, port_out, leaving, _ = out[0]
    assert leaving.vlan is None  # the fabric's tags never reach a host or an instance
    return at[(sw_out, port_out)], leaving


def walk(st: Steering, net, sport: int) -> dict[str, str]:
    """One TCP connection c1 -> sv1:5001 through the chain, with each instance doing its
    job (the firewall passes the packet on unchanged, the NAT translates); returns the
    instance each packet reached at each hop."""
    at = where(st)
    seen: dict[str, str] = {}
    fwd = Packet.l4(TCP, "10.0.0.1", "10.0.0.129", sport, 5001)
    seen["fw>"], p = one_hop(net, at, "c1", fwd)
    seen["nat>"], p = one_hop(net, at, seen["fw>"], p)
    public_port = 20000 + sport % 40000
    translated = copy.copy(p)
    translated.ipv4_src, translated.sport = PUBLIC, public_port
    dest, p = one_hop(net, at, seen["nat>"], translated)
    assert dest == "sv1" and (p.ipv4_src, p.sport) == (PUBLIC, public_port)

    reply = Packet.l4(TCP, "10.0.0.129", PUBLIC, 5001, public_port)
    seen["<nat"], p = one_hop(net, at, "sv1", reply)
    back = copy.copy(p)
    back.ipv4_dst, back.dport = "10.0.0.1", sport
    seen["<fw"], p = one_hop(net, at, seen["<nat"], back)
    dest, p = one_hop(net, at, seen["<fw"], p)
    assert dest == "c1" and (p.ipv4_src, p.dport) == ("10.0.0.129", sport)
    return seen


def test_each_hop_hashes_the_packet_as_it_is_then():
    st = steering()
    net = program(st)
    differs = 0
    for sport in range(40000, 40064):
        seen = walk(st, net, sport)
        ft = FiveTuple("10.0.0.1", "10.0.0.129", TCP, sport, 5001)
        reply = FiveTuple("10.0.0.129", PUBLIC, TCP, 5001, 20000 + sport % 40000)
        assert seen["fw>"] == st.lookup("fw", ft)
        assert seen["nat>"] == st.lookup("nat", ft)
        # The reply enters at the NAT, hashed as it arrives (to the public address) ...
        assert seen["<nat"] == st.lookup("nat", reply)
        # ... and the firewall sees it translated back: the symmetric hash of the same
        # connection, so the same instance as the forward direction.
        assert seen["<fw"] == st.lookup("fw", ft.reversed()) == seen["fw>"]
        differs += seen["<nat"] != seen["nat>"]
    # The reverse direction reaches another NAT instance for most connections (state is in
    # the store, so that is right): about two in three with three instances.
    assert 20 <= differs <= 60


def test_a_chain_follows_failures_and_new_owners():
    st = steering()
    net = program(st)
    sport = 40001
    ft = FiveTuple("10.0.0.1", "10.0.0.129", TCP, sport, 5001)
    before = walk(st, net, sport)
    st.set_state("nat", before["nat>"], InstanceState.FAILED, 1)
    st.set_state("fw", before["fw>"], InstanceState.FAILED, 1)
    reprogram(net, st)
    after = walk(st, net, sport)
    assert after["fw>"] != before["fw>"] and after["fw>"] == st.lookup("fw", ft)
    assert after["nat>"] != before["nat>"] and after["nat>"] == st.lookup("nat", ft)


def test_select_group_mode_visits_every_hop_in_its_pool():
    st = steering("select_group")
    net = program(st)
    for sport in range(40000, 40016):
        seen = walk(st, net, sport)
        assert seen["fw>"].startswith("fw") and seen["<fw"].startswith("fw")
        assert seen["nat>"].startswith("nat") and seen["<nat"].startswith("nat")


def test_traffic_outside_the_service_is_not_steered():
    st = steering()
    net = program(st)
    at = where(st)
    # Port 5002 is not in the service: c1 reaches sv1 directly, through no instance.
    dest, _ = one_hop(net, at, "c1", Packet.l4(TCP, "10.0.0.1", "10.0.0.129", 40000, 5002))
    assert dest == "sv1"


# -- the topology schema -------------------------------------------------------------------


def errors_of(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_topology(data, "chain.yaml")
    return str(e.value)


@pytest.mark.parametrize(
    ("service", "want"),
    [
        ({"chain": ["fw", "vpn"]}, "chain.yaml: services.web.chain[1]: pool 'vpn' is not defined"),
        ({"chain": ["fw", "fw"]}, "services.web.chain[1]: pool 'fw' is already in the chain"),
        ({"chain": ["nat", "fw"]}, "services.web.chain[0]: NAT pool 'nat' must be last"),
        ({"chain": ["fw", "nat", "nat2"]}, "services.web.chain: at most one NAT pool per chain"),
        ({"chain": []}, "services.web.chain: List should have at least 1 item"),
        ({"chain": ["fw"], "pool": "fw"}, "services.web: give exactly one of pool and chain"),
        ({"chain": None}, "services.web: give exactly one of pool and chain"),
        ({"chain": "fw"}, "services.web.chain: Input should be a valid list"),
    ],
)
def test_bad_chains_are_one_line_naming_file_field_and_reason(service, want):
    data = chain_data()
    data["pools"]["nat2"] = copy.deepcopy(data["pools"]["nat"])
    data["pools"]["nat2"]["instances"] = {}
    data["services"]["web"] = {**data["services"]["web"], **service}
    if service.get("chain") is None:
        del data["services"]["web"]["chain"]
    msg = errors_of(data)
    assert want in msg
    assert "\n" not in msg and msg.startswith("chain.yaml: ")


def test_a_chain_ending_in_nat_needs_its_public_address():
    data = chain_data()
    del data["pools"]["nat"]["nf"]["public_ip"]
    assert "services.web.chain[1]: NAT pool 'nat' needs nf.public_ip" in errors_of(data)


def test_a_one_pool_chain_is_the_same_as_pool():
    data = chain_data()
    data["services"]["web"]["chain"] = ["fw"]
    by_chain = program(Steering(parse_topology(data)))
    del data["services"]["web"]["chain"]
    data["services"]["web"]["pool"] = "fw"
    by_pool = program(Steering(parse_topology(data)))
    for name, sw in by_pool.switches.items():
        assert sw.flows == by_chain.switches[name].flows


def test_the_shipped_chain_loads():
    topo = parse_topology_text(CHAIN.read_text(), CHAIN)
    assert topo.services["web"].hops == ("fw", "nat")


def test_the_chain_survives_the_openflow_wire():
    """The same walk on switch models programmed with the OpenFlow messages the controller
    sends (serialized and parsed back): the hop entries' matches survive the wire."""
    from controller.core import flows as fl
    from controller.core.topology import compute_routes
    from controller.ofp import ofmsg
    from sim.ofcodec import DP, WireSwitch

    st = steering()
    routes = compute_routes(st.topology)
    net = Network()
    for name, sw in st.topology.switches.items():
        of = WireSwitch(Switch(name, sw.dpid))
        conn, _ = of.connect()
        steps = fl.diff(fl.Installed(), fl.desired_table(st, name, routes))
        replies = of.exchange(conn, ofmsg.messages(DP, steps))
        assert {type(r).__name__ for _, r in replies} == {"OFPBarrierReply"}
        assert (
            of.switch.installed().flows == fl.Installed.of(fl.desired_table(st, name, routes)).flows
        )
        net.switches[name] = of.switch
    for link in st.topology.links:
        net.add_link(link.a, link.a_port, link.b, link.b_port)
    for sport in range(40000, 40016):
        ft = FiveTuple("10.0.0.1", "10.0.0.129", TCP, sport, 5001)
        seen = walk(st, net, sport)
        assert (seen["fw>"], seen["nat>"]) == (st.lookup("fw", ft), st.lookup("nat", ft))


CHAIN_ITEMS = st_.lists(st_.sampled_from(["fw", "nat", "nat2", "lb", "vpn", "", 3]), max_size=5)


@settings(max_examples=200, deadline=None, database=None)
@given(chain=CHAIN_ITEMS, bidirectional=st_.booleans())
def test_any_chain_is_a_working_topology_or_one_clear_error(chain, bidirectional):
    """Fuzzed chains: a ConfigError naming file and field, or a topology whose every generated
    entry fits the pipeline and whose chain keeps the rules."""
    from controller.core import flows as fl
    from controller.core.pipeline import violations
    from controller.core.topology import compute_routes

    data = chain_data()
    data["pools"]["nat2"] = copy.deepcopy(data["pools"]["nat"])
    data["pools"]["nat2"]["instances"] = {}
    data["services"]["web"]["chain"] = chain
    data["services"]["web"]["bidirectional"] = bidirectional
    try:
        topo = parse_topology(data, "fuzz.yaml")
    except ConfigError as e:
        # one line per problem, each naming the file and the field
        assert all(line.startswith("fuzz.yaml: services.web") for line in str(e).split("\n"))
        return
    kinds = [topo.pools[p].kind for p in chain]
    assert len(set(chain)) == len(chain) and kinds.count("nat") <= 1
    assert "nat" not in kinds[:-1]
    st = Steering(topo)
    routes = compute_routes(topo)
    for switch in topo.switches:
        for flow in fl.desired_table(st, switch, routes).flows.values():
            assert violations(flow) == []


@pytest.mark.parametrize("seed", range(3))
def test_incremental_updates_keep_every_hop_right(seed):
    """Random changes to both pools, instances joining at new ports included: the kept
    table updated change by change equals the full computation, and one connection's
    packets still reach, hop by hop, the instances each hop's hash names."""
    import random

    from controller.core import flows as fl
    from controller.core.state import InstanceInfo, SteeringError
    from controller.core.topology import compute_routes

    st = steering()
    rng = random.Random(seed)
    routes = compute_routes(st.topology)
    kept = {name: fl.desired(st, name, routes) for name in st.topology.switches}
    net = Network()
    for name in st.topology.switches:
        net.switches[name] = Switch(name)
        net.switches[name].apply(fl.diff(fl.Installed(), kept[name].table))
    for link in st.topology.links:
        net.add_link(link.a, link.a_port, link.b, link.b_port)
    for step in range(40):
        pool = rng.choice(["fw", "nat"])
        names = sorted(st.pools[pool].instances)
        try:
            if rng.random() < 0.25:
                n = 4 + step  # joins at a port the topology does not list
                st.add_instance(
                    InstanceInfo(
                        name=f"{pool}{n}",
                        pool=pool,
                        mac=f"02:00:00:00:{3 if pool == 'fw' else 4}:{n:02x}",
                        ip=f"10.0.0.{100 + n}",
                        switch=rng.choice(["s1", "s2"]),
                        port=30 + n,
                        capacity=1.0,
                        state=InstanceState.ACTIVE,
                    ),
                    0.0,
                )
            else:
                state = rng.choice([InstanceState.ACTIVE, InstanceState.FAILED])
                st.set_state(pool, rng.choice(names), state, 0.0, force=True)
        except SteeringError:
            continue
        for name, sw in net.switches.items():
            kept[name], keys = fl.update(kept[name], st, name, routes)
            full = fl.desired(st, name, routes)
            assert kept[name].table == full.table
            sw.apply(fl.diff(sw.installed(), kept[name].table, keys))
            assert sw.installed() == fl.Installed.of(full.table)
        if any(st.pools[p].assignment[0] is None for p in ("fw", "nat")):
            continue  # a pool with no active instance drops the service's traffic
        sport = 40000 + step
        ft = FiveTuple("10.0.0.1", "10.0.0.129", TCP, sport, 5001)
        seen = walk(st, net, sport)
        assert (seen["fw>"], seen["nat>"]) == (st.lookup("fw", ft), st.lookup("nat", ft))
