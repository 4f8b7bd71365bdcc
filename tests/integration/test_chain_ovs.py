"""A service chain on real Open vSwitch bridges: topologies/chain.yaml (firewall -> NAT on two
switches joined by a patch link), programmed by the controller; ``ofproto/trace`` (the
switch's own multipath hash) follows one connection's packets hop by hop, forward and
reverse, as tests/unit/test_chain.py does on the fake switch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import unique_name
from ovs_support import Bridge, Unixctl, trace_outputs

from controller.core.hashing import FiveTuple
from controller.ofp.launcher import start_in_thread
from controller.ofp.options import Options

pytestmark = [pytest.mark.ovs, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
CHAIN = REPO / "topologies" / "chain.yaml"
PUBLIC = "10.0.0.240"


@pytest.fixture
def chain_net(ovs, tmp_path) -> Iterator[tuple]:
    data = yaml.safe_load(CHAIN.read_text())
    for pool in data["pools"].values():
        pool["membership"] = "static"  # every listed instance active, no Redis needed
    topo = tmp_path / "chain.yaml"
    topo.write_text(yaml.safe_dump(data))
    app, stop = start_in_thread(Options(topology=topo, listen=("127.0.0.1", 0), api=None))
    ports: dict[str, set[int]] = {s: set() for s in data["switches"]}
    for h in data["hosts"].values():
        ports[h["switch"]].add(h["port"])
    for pool in data["pools"].values():
        for i in pool["instances"].values():
            ports[i["switch"]].add(i["port"])
    brs: dict[str, Bridge] = {}
    client = Unixctl()
    try:
        for name, sw in data["switches"].items():
            brs[name] = Bridge(unique_name("c3ch"), sw["dpid"], sorted(ports[name]))
        for link in data["links"]:
            brs[link["a"]].patch(link["a_port"], brs[link["b"]], link["b_port"])
        for br in brs.values():
            br.set_controller(app.options.listen[1])
        for name in brs:
            assert app.wait_synced(name, 30), f"{name} did not finish its first programming"
        yield app, brs, client
    finally:
        client.close()
        stop()
        for br in brs.values():
            br.delete()


def test_one_connection_hop_by_hop_on_real_switches(chain_net):
    app, brs, unixctl = chain_net
    st = app.steering
    topo = st.topology
    switch_of = {br.name: name for name, br in brs.items()}
    at = {(h.switch, h.port): n for n, h in topo.hosts.items()}
    for ps in st.pools.values():
        at.update({(i.switch, i.port): n for n, i in ps.instances.items()})
    place = {n: k for k, n in at.items()}

    def send(sender: str, ft: FiveTuple) -> str:
        """Where the switches deliver ``ft`` sent by ``sender`` (a host or an instance)."""
        sw, port = place[sender]
        proto = {6: "tcp", 17: "udp"}[ft.proto]
        flow = (
            f"in_port={port},{proto},nw_src={ft.src},nw_dst={ft.dst},"
            f"{proto}_src={ft.sport},{proto}_dst={ft.dport}"
        )
        outputs = trace_outputs(unixctl.call("ofproto/trace", brs[sw].name, flow))
        assert outputs, flow
        bridge, out_port = outputs[-1]
        return at[(switch_of[bridge], out_port)]

    differs = 0
    for sport in range(41000, 41030):
        ft = FiveTuple("10.0.0.1", "10.0.0.129", 6, sport, 5001)
        public_port = 20000 + sport % 1000
        reply = FiveTuple("10.0.0.129", PUBLIC, 6, 5001, public_port)
        fw = send("c1", ft)
        assert fw == st.lookup("fw", ft)
        nat = send(fw, ft)  # the firewall hands the packet back unchanged
        assert nat == st.lookup("nat", ft)
        assert send(nat, FiveTuple(PUBLIC, "10.0.0.129", 6, public_port, 5001)) == "sv1"
        nat_back = send("sv1", reply)  # the reply meets the NAT first, hashed as it is
        assert nat_back == st.lookup("nat", reply)
        fw_back = send(nat_back, ft.reversed())  # translated back: on to the firewall
        assert fw_back == fw  # the symmetric hash: the forward direction's instance
        assert send(fw_back, ft.reversed()) == "c1"
        differs += nat_back != nat
    assert differs > 0  # replies reach other NAT instances than their requests
