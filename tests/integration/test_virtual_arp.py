"""Virtual addresses (LB VIPs, NAT public addresses): the switch answers ARP for them itself,
drops unclassified IPv4 to them, and forwards translated traffic. Pure logic against the
switch model first, then the same on Open vSwitch with real frames."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import unique_name
from os_ken.ofproto import ofproto_parser, ofproto_protocol, ofproto_v1_3
from ovs_support import Bridge, Unixctl, trace_outputs, vsctl, wait_for

from contract.topology import load_topology, parse_topology, virtual_mac
from controller.core import flows as fl
from controller.core.hashing import FiveTuple
from controller.core.state import InstanceInfo, InstanceState, Steering
from controller.core.switchsync import ReadBack
from controller.core.topology import compute_routes
from controller.ofp import ofmsg
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options
from sim.network import program, reprogram
from sim.packet import Packet

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "tests" / "data" / "services.yaml"
LEAFSPINE = REPO / "topologies" / "leafspine.yaml"
SINGLE = REPO / "topologies" / "single.yaml"
VIP, PUBLIC = "10.0.0.100", "10.0.0.240"
VIP_MAC, PUBLIC_MAC = "0e:00:0a:00:00:64", "0e:00:0a:00:00:f0"
C1_MAC, SV1_MAC = "02:00:00:00:00:01", "02:00:00:00:00:81"
TCP = 6
SERVICES_PORTS = [1, 2, 3, 4, 11, 12, 13, 14]


def services() -> Steering:
    return Steering(load_topology(SERVICES))  # static pools: every instance ACTIVE


def registered_active(path: Path) -> Steering:
    st = Steering(load_topology(path))
    for pname, pool in st.pools.items():
        for name in pool.instances:
            st.set_state(pname, name, InstanceState.ACTIVE, 0.0)
    return st


def as_packet(ft: FiveTuple, **kw) -> Packet:
    return Packet.l4(ft.proto, ft.src, ft.dst, ft.sport, ft.dport, **kw)


def port_of(st: Steering, pool: str, ft: FiveTuple) -> int | None:
    owner = st.lookup(pool, ft)
    return None if owner is None else st.pools[pool].instances[owner].port


# -- the address scheme ----------------------------------------------------------------------


def test_virtual_mac_spells_the_address_unicast_locally_administered():
    assert virtual_mac(VIP) == VIP_MAC
    assert virtual_mac("192.0.2.1") == "0e:00:c0:00:02:01"
    first = int(virtual_mac("255.255.255.255")[:2], 16)
    assert first & 0x02 and not first & 0x01
    # addresses that share their last three bytes still get different MACs
    assert virtual_mac("10.1.2.3") != virtual_mac("11.1.2.3")


def test_virtual_addresses_come_from_lb_and_nat_pools():
    assert load_topology(SERVICES).virtual_addresses() == [VIP, PUBLIC]
    assert load_topology(LEAFSPINE).virtual_addresses() == [VIP, PUBLIC]
    assert load_topology(SINGLE).virtual_addresses() == []
    # a NAT pool without a public address has none; VIPs listed for several ports count once
    data = load_topology(SERVICES).model_dump()
    data["pools"]["nat"]["nf"]["public_ip"] = None
    vip = data["pools"]["lb"]["nf"]["vips"][0]
    data["pools"]["lb"]["nf"]["vips"].append(
        {**vip, "port": 443, "backends": [{"ip": "10.0.0.129", "port": 8443}]}
    )
    assert parse_topology(data).virtual_addresses() == [VIP]
    # no configured host or instance MAC is a virtual MAC
    for path in (SERVICES, LEAFSPINE):
        topo = load_topology(path)
        macs = {a.mac for a in topo.attachments().values()}
        assert not macs & {virtual_mac(ip) for ip in topo.virtual_addresses()}


# -- switch model -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_port", "requester_mac", "requester_ip", "target", "target_mac"),
    [
        (1, C1_MAC, "10.0.0.1", VIP, VIP_MAC),  # a client resolves the VIP
        (3, SV1_MAC, "10.0.0.129", PUBLIC, PUBLIC_MAC),  # a server replies to the NAT address
        (2, "02:00:00:00:00:02", "10.0.0.2", PUBLIC, PUBLIC_MAC),
    ],
)
def test_arp_request_for_virtual_address_is_answered_at_its_port(
    in_port, requester_mac, requester_ip, target, target_mac
):
    net = program(services())
    request = Packet.arp(target, eth_src=requester_mac, arp_spa=requester_ip)
    out = net.send("s1", in_port, request)
    assert len(out) == 1
    _, port, reply, path = out[0]
    assert (port, path) == (in_port, ["s1"])
    assert (reply.eth_src, reply.eth_dst, reply.eth_type) == (target_mac, requester_mac, 0x0806)
    assert reply.arp_op == fl.ARP_REPLY
    assert (reply.arp_sha, reply.arp_spa) == (target_mac, target)
    assert (reply.arp_tha, reply.arp_tpa) == (requester_mac, requester_ip)


def test_other_arp_is_forwarded_as_before():
    net = program(services())
    # ARP for a real host still goes to that host, unchanged
    out = net.send("s1", 1, Packet.arp("10.0.0.129", eth_src=C1_MAC, arp_spa="10.0.0.1"))
    assert [(d[1], d[2].arp_op, d[2].eth_src) for d in out] == [(3, fl.ARP_REQUEST, C1_MAC)]
    assert [d[1] for d in net.send("s1", 3, Packet.arp("10.0.0.1"))] == [1]
    # an ARP reply (or gratuitous announcement) addressed to a virtual address is not
    # answered and not forwarded: nobody owns the address
    assert net.send("s1", 1, Packet.arp(VIP, arp_op=fl.ARP_REPLY)) == []
    # an unknown address is still dropped, not flooded
    assert net.send("s1", 1, Packet.arp("10.0.0.77")) == []
    # a tagged ARP request is the fabric's, never answered
    assert net.send("s1", 1, Packet.arp(VIP, vlan=7)) == []


def test_responder_entries_on_every_edge_switch_and_only_there():
    st = registered_active(LEAFSPINE)
    routes = compute_routes(st.topology)
    edge = {h.switch for h in st.topology.hosts.values()}
    assert edge == {"lf1", "lf2", "lf3"}
    for name in st.topology.switches:
        table = fl.desired_table(st, name, routes)
        responders = {
            dict(f.match)["arp_tpa"]: f
            for f in table.flows.values()
            if dict(f.match).get("arp_op") == fl.ARP_REQUEST
        }
        drops = {
            dict(f.match)["ipv4_dst"]
            for f in table.flows.values()
            if "ipv4_dst" in dict(f.match) and not f.instructions
        }
        if name in edge:
            assert set(responders) == {VIP, PUBLIC}
            assert drops == {VIP, PUBLIC}
            assert {f.table for f in responders.values()} == {fl.T_FORWARD}
            assert {f.priority for f in responders.values()} == {fl.PRIO_VIRTUAL_ARP}
        else:
            assert responders == {} and drops == set()
    # the request is answered at the client's leaf; nothing crosses the fabric
    net = program(st)
    out = net.send("lf1", 1, Packet.arp(PUBLIC, eth_src=C1_MAC, arp_spa="10.0.0.1"))
    assert [(d[0], d[1], d[3], d[2].eth_src) for d in out] == [("lf1", 1, ["lf1"], PUBLIC_MAC)]
    # topologies without virtual addresses hold no such entries
    plain = fl.desired_table(registered_active(SINGLE), "s1", compute_routes(load_topology(SINGLE)))
    assert not [f for f in plain.flows.values() if f.priority == fl.PRIO_VIRTUAL_ARP]


def test_unclassified_ipv4_to_a_virtual_address_is_dropped():
    st = services()
    net = program(st)
    for in_port, pkt in [
        (1, Packet.l4(1, "10.0.0.1", VIP, 0, 0, eth_dst=VIP_MAC)),  # ICMP: no service
        (1, Packet.l4(TCP, "10.0.0.1", VIP, 40000, 81, eth_dst=VIP_MAC)),  # another port
        (3, Packet.l4(TCP, "10.0.0.129", PUBLIC, 80, 20001, eth_dst=PUBLIC_MAC)),
        # a host that cached some host's MAC for the VIP still does not reach that host
        (1, Packet.l4(1, "10.0.0.1", VIP, 0, 0, eth_dst=SV1_MAC)),
        # an instance that passes a packet on untranslated
        (11, Packet.l4(TCP, "10.0.0.1", VIP, 40000, 80, eth_dst=VIP_MAC)),
    ]:
        assert net.send("s1", in_port, pkt) == [], pkt


def test_lb_and_nat_traffic_reach_the_pool_and_leave_translated():
    st = services()
    net = program(st)
    lb_ports, nat_ports = {11, 12}, {13, 14}
    # client -> VIP:80: steered into the LB pool, as the hash says
    ft = FiveTuple("10.0.0.1", VIP, TCP, 40000, 80)
    out = net.send("s1", 1, as_packet(ft, eth_dst=VIP_MAC))
    assert [d[1] for d in out] == [port_of(st, "lb", ft)]
    assert out[0][1] in lb_ports
    # the LB sends it on to backend sv1:8080 (destination translated, Ethernet untouched):
    # delivered to sv1 with sv1's MAC
    translated = Packet.l4(TCP, "10.0.0.1", "10.0.0.129", 40000, 8080, eth_dst=VIP_MAC)
    out = net.send("s1", out[0][1], translated)
    assert [(d[1], d[2].eth_dst) for d in out] == [(3, SV1_MAC)]
    # sv1's reply is steered into the LB pool, and once translated back reaches c1
    reply = Packet.l4(TCP, "10.0.0.129", "10.0.0.1", 8080, 40000, eth_dst=C1_MAC)
    out = net.send("s1", 3, reply)
    assert [d[1] for d in out] == [
        port_of(st, "lb", FiveTuple("10.0.0.129", "10.0.0.1", TCP, 8080, 40000))
    ]
    back = Packet.l4(TCP, VIP, "10.0.0.1", 80, 40000, eth_dst=C1_MAC)
    assert [(d[1], d[2].eth_dst) for d in net.send("s1", out[0][1], back)] == [(1, C1_MAC)]

    # NAT: c1 -> sv1:5002 steered into the NAT pool; it leaves from the public address
    ft = FiveTuple("10.0.0.1", "10.0.0.129", TCP, 40001, 5002)
    out = net.send("s1", 1, as_packet(ft, eth_dst=SV1_MAC))
    assert [d[1] for d in out] == [port_of(st, "nat", ft)] and out[0][1] in nat_ports
    natted = Packet.l4(TCP, PUBLIC, "10.0.0.129", 20001, 5002, eth_dst=SV1_MAC)
    assert [(d[1], d[2].eth_dst) for d in net.send("s1", out[0][1], natted)] == [(3, SV1_MAC)]
    # sv1 replies to the public address (resolved to its virtual MAC): steered into the pool
    ft = FiveTuple("10.0.0.129", PUBLIC, TCP, 5002, 20001)
    out = net.send("s1", 3, as_packet(ft, eth_dst=PUBLIC_MAC))
    assert [d[1] for d in out] == [port_of(st, "nat", ft)] and out[0][1] in nat_ports
    # translated back to c1 by the NAT: delivered with c1's MAC
    inside = Packet.l4(TCP, "10.0.0.129", "10.0.0.1", 5002, 40001, eth_dst=PUBLIC_MAC)
    assert [(d[1], d[2].eth_dst) for d in net.send("s1", out[0][1], inside)] == [(1, C1_MAC)]


def test_responder_entries_are_stable_and_diff_stays_minimal():
    st = services()
    routes = compute_routes(st.topology)
    desired = fl.desired_table(st, "s1", routes)
    assert fl.desired_table(services(), "s1", routes).cookies() == desired.cookies()
    net = program(st)
    # a pool change sends only slot entries: the responders are untouched
    change = st.set_state("lb", "lb1", InstanceState.FAILED, 0.0)
    plan = reprogram(net, st)["s1"]
    assert len(plan) == len(change.moved) + 1
    assert all(isinstance(s, fl.FlowAdd) and s.flow.table == fl.T_SLOTS for s in plan[:-1])
    # a NAT pool without its public address: exactly its two entries go, nothing is added
    data = st.topology.model_dump()
    data["pools"]["nat"]["nf"]["public_ip"] = None
    st2 = Steering(parse_topology(data))
    plan = fl.diff(
        program(services()).switches["s1"].installed(), fl.desired_table(st2, "s1", routes)
    )
    gone = [s.key for s in plan if isinstance(s, fl.FlowDelete)]
    assert not [s for s in plan if isinstance(s, fl.FlowAdd)]
    assert sorted(gone) == sorted(
        [
            (
                fl.T_FORWARD,
                fl.PRIO_VIRTUAL_ARP,
                fl.make_match(eth_type=0x806, arp_op=1, arp_tpa=PUBLIC),
            ),
            (fl.T_FORWARD, fl.PRIO_IP, fl.make_match(eth_type=0x800, ipv4_dst=PUBLIC)),
        ]
    )


def test_address_owned_by_an_instance_is_left_to_its_owner():
    st = services()
    owner = InstanceInfo(
        name="nat3",
        pool="nat",
        mac="02:00:00:00:02:03",
        ip=PUBLIC,
        switch="s1",
        port=15,
        capacity=1.0,
        state=InstanceState.ACTIVE,
    )
    st.add_instance(owner, 0.0)
    net = program(st)
    out = net.send("s1", 3, Packet.arp(PUBLIC))
    assert [(d[1], d[2].arp_op) for d in out] == [(15, fl.ARP_REQUEST)]
    assert [d[1] for d in net.send("s1", 1, Packet.arp(VIP))] == [1]  # VIP still answered


def test_responder_round_trips_through_openflow_encoding():
    flow = fl.arp_responder(VIP)
    dp = ofproto_protocol.ProtocolDesc(ofproto_v1_3.OFP_VERSION)
    msg = ofmsg.flow_add(dp, flow)
    msg.serialize()
    parsed = ofproto_parser.msg(dp, *ofproto_parser.header(msg.buf), msg.buf)
    readback = ReadBack()
    ofmsg.parse_flow_stats([parsed], readback)
    assert readback.flows == {flow.key: flow.cookie}
    assert ofmsg.parse_actions(parsed.instructions[0].actions) == flow.instructions[0][1]


# -- Open vSwitch ----------------------------------------------------------------------------


@pytest.fixture
def services_bridge(ovs) -> Iterator[tuple]:
    """The services topology on a real bridge, programmed by the controller."""
    app, stop = start_in_thread(Options(topology=SERVICES, listen=("127.0.0.1", 0), api=None))
    br = None
    try:
        br = Bridge(unique_name("c3v"), 1, SERVICES_PORTS)
        br.set_controller(app.options.listen[1])
        assert app.wait_synced("s1", 30), "s1 did not finish its first programming"
        yield app, br, stop
    finally:
        stop()
        if br is not None:
            br.delete()


def _arp_request(src_mac: str, src_ip: str, target: str) -> bytes:
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Padding

    frame = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00", pdst=target
    )
    return bytes(frame / Padding(b"\x00" * (60 - len(frame))))


def _arp_reply(vmac: str, vip: str, dst_mac: str, dst_ip: str) -> bytes:
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Padding

    frame = Ether(src=vmac, dst=dst_mac) / ARP(
        op=2, hwsrc=vmac, psrc=vip, hwdst=dst_mac, pdst=dst_ip
    )
    return bytes(frame / Padding(b"\x00" * (60 - len(frame))))


def _connected(br: Bridge) -> bool:
    (uuid,) = vsctl("get", "bridge", br.name, "controller").strip("[] \n").split(",")
    return vsctl("get", "controller", uuid, "is_connected").strip() == "true"


def _ask(br: Bridge, port: int, frame: bytes, timeout: float = 3.0) -> list[bytes]:
    """Send ``frame`` into the bridge at ``port``; the ARP frames that come back out of it."""
    eth_p_arp = 0x0806
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_arp))
    try:
        s.bind((br.port_name(port), eth_p_arp))
        s.send(frame)
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([s], [], [], 0.1)
            if not ready:
                if got:
                    break
                continue
            data, addr = s.recvfrom(2048)
            if addr[2] != socket.PACKET_OUTGOING:  # our own request, seen on its way out
                got.append(data)
        return got
    finally:
        s.close()


@pytest.mark.ovs
@pytest.mark.timeout(90)
def test_real_switch_answers_arp_for_virtual_addresses(services_bridge):
    _, br, stop = services_bridge
    # a client resolves the VIP; a server resolves the NAT public address
    for port, mac, ip, target in [
        (1, C1_MAC, "10.0.0.1", VIP),
        (3, SV1_MAC, "10.0.0.129", PUBLIC),
    ]:
        replies = _ask(br, port, _arp_request(mac, ip, target))
        assert replies == [_arp_reply(virtual_mac(target), target, mac, ip)]
    # no other port hears the request or the reply
    others = [
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) for _ in range(3)
    ]
    try:
        for s, port in zip(others, (2, 3, 11), strict=True):
            s.bind((br.port_name(port), 0x0806))
            s.setblocking(False)
        _ask(br, 1, _arp_request(C1_MAC, "10.0.0.1", VIP))
        time.sleep(0.2)
        for s in others:
            with pytest.raises(BlockingIOError):
                s.recv(2048)
    finally:
        for s in others:
            s.close()
    # fail-static: with the controller gone the switch keeps answering. (The controller
    # stops but stays configured: removing it from the bridge would make OVS flush the table.)
    stop()
    wait_for(lambda: not _connected(br), 15, "the switch to notice the controller is gone")
    replies = _ask(br, 2, _arp_request("02:00:00:00:00:02", "10.0.0.2", VIP))
    assert replies == [_arp_reply(VIP_MAC, VIP, "02:00:00:00:00:02", "10.0.0.2")]


@pytest.mark.ovs
@pytest.mark.timeout(90)
def test_real_switch_drops_unclassified_and_forwards_translated(services_bridge):
    app, br, _ = services_bridge
    unixctl = Unixctl()
    try:

        def outputs(flow: str) -> list[int]:
            return [p for _, p in trace_outputs(unixctl.call("ofproto/trace", br.name, flow))]

        # unclassified IPv4 to the VIP or the public address: dropped
        assert outputs(f"in_port=1,icmp,dl_dst={VIP_MAC},nw_src=10.0.0.1,nw_dst={VIP}") == []
        flow = f"in_port=3,tcp,nw_src=10.0.0.129,nw_dst={PUBLIC},tcp_src=80,tcp_dst=20001"
        assert outputs(flow) == []
        # a VIP connection is steered into the LB pool as the hash says ...
        ft = FiveTuple("10.0.0.1", VIP, TCP, 40000, 80)
        flow = f"in_port=1,tcp,nw_src=10.0.0.1,nw_dst={VIP},tcp_src=40000,tcp_dst=80"
        assert outputs(flow) == [port_of(app.steering, "lb", ft)]
        # ... and, translated to a backend, reaches it with the backend's MAC
        text = unixctl.call(
            "ofproto/trace",
            br.name,
            f"in_port=11,tcp,dl_dst={VIP_MAC},nw_src=10.0.0.1,nw_dst=10.0.0.129,"
            "tcp_src=40000,tcp_dst=8080",
        )
        assert [p for _, p in trace_outputs(text)] == [3]
        assert f"dl_dst={SV1_MAC}" in text.split("Final flow:")[1].splitlines()[0]
        # the server's reply to the NAT address goes into the NAT pool
        ft = FiveTuple("10.0.0.129", PUBLIC, TCP, 5002, 20001)
        flow = f"in_port=3,tcp,nw_src=10.0.0.129,nw_dst={PUBLIC},tcp_src=5002,tcp_dst=20001"
        assert outputs(flow) == [port_of(app.steering, "nat", ft)]
    finally:
        unixctl.close()
