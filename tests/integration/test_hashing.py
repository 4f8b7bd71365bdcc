"""The off-switch hash equals what Open vSwitch computes for the multipath action."""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import require, unique_name
from hypothesis import given
from hypothesis import strategies as st

from controller.core.hashing import (
    MULTIPATH_ALGORITHM,
    MULTIPATH_FIELDS,
    FiveTuple,
    flow_hash,
    slot_of,
)

# (register, basis, n_slots): one flow runs all four multipath actions, so one trace checks
# every combination. reg0 with the default slot count is what the controller programs.
BRIDGE_OPTS = ["datapath_type=netdev", "protocols=OpenFlow13"]
COMBOS = [(0, 0, 4096), (1, 7, 65536), (2, 65535, 2), (3, 12345, 256)]

ipv4 = st.ip_addresses(v=4).map(str)
port = st.integers(0, 65535)
proto = st.sampled_from([1, 6, 17, 132, 47, 0, 255])


@given(src=ipv4, dst=ipv4, proto=proto, sport=port, dport=port, basis=st.integers(0, 65535))
def test_both_directions_hash_alike(src, dst, proto, sport, dport, basis):
    ft = FiveTuple(src, dst, proto, sport, dport)
    assert flow_hash(ft, basis) == flow_hash(ft.reversed(), basis)
    assert 0 <= slot_of(ft, 4096, basis) < 4096


def test_ports_count_for_tcp_and_udp_but_not_icmp():
    a, b = "10.0.0.1", "10.0.0.129"
    for p in (6, 17):
        assert flow_hash(FiveTuple(a, b, p, 1000, 80)) != flow_hash(FiveTuple(a, b, p, 1001, 80))
    assert flow_hash(FiveTuple(a, b, 1, 8, 0)) == flow_hash(FiveTuple(a, b, 1, 0, 0))
    assert flow_hash(FiveTuple(a, b, 6, 1, 1)) != flow_hash(FiveTuple(a, b, 17, 1, 1))


def test_known_values_from_the_switch():
    # Read off `ovs-appctl ofproto/trace` on OVS 3.1.0 (Debian 3.1.0-2+deb12u1).
    assert slot_of(FiveTuple("10.1.2.3", "10.9.8.7", 6, 1234, 80), 4096, 7) == 0x536
    assert slot_of(FiveTuple("10.1.2.3", "10.1.2.3", 1, 8, 0), 4096, 7) == 0x11E


def test_parse_accepts_names_and_numbers():
    ft = FiveTuple.parse(" 10.0.0.1", "10.0.0.2", "TCP", "1234", 80)
    assert ft == FiveTuple("10.0.0.1", "10.0.0.2", 6, 1234, 80)
    assert FiveTuple.parse("1.2.3.4", "5.6.7.8", "udp", 0, 65535).proto == 17
    assert FiveTuple.parse("1.2.3.4", "5.6.7.8", "icmp", 0, 0).proto == 1
    assert FiveTuple.parse("1.2.3.4", "5.6.7.8", "47", 0, 0).proto == 47
    assert FiveTuple.parse("1.2.3.4", "5.6.7.8", 132, 1, 2).proto == 132


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("10.0.0.300", "10.0.0.2", "tcp", 1, 2), "source address '10.0.0.300'"),
        (("10.0.0.1", "::1", "tcp", 1, 2), "destination address '::1'"),
        (("10.0.0.1", "10.0.0.2", "tpc", 1, 2), "protocol 'tpc'"),
        (("10.0.0.1", "10.0.0.2", "256", 1, 2), "protocol 256"),
        (("10.0.0.1", "10.0.0.2", -1, 1, 2), "protocol -1"),
        (("10.0.0.1", "10.0.0.2", "tcp", "http", 2), "source port 'http' is not a number"),
        (("10.0.0.1", "10.0.0.2", "tcp", 1, 65536), "destination port 65536"),
        (("10.0.0.1", "10.0.0.2", "tcp", -5, 1), "source port -5"),
    ],
)
def test_parse_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        FiveTuple.parse(*args)


def test_os_ken_encodes_the_action_ovs_expects():
    """The controller builds the action with os-ken; OVS's own decoder must read it back as
    the very action whose hash this module reproduces."""
    from os_ken.ofproto import nicira_ext
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    action = parser.NXActionMultipath(
        fields=MULTIPATH_FIELDS,
        basis=7,
        algorithm=MULTIPATH_ALGORITHM,
        max_link=4095,
        arg=0,
        ofs_nbits=nicira_ext.ofs_nbits(0, 15),
        dst="reg0",
    )
    # Serialising needs only the protocol modules of a datapath, not a connection.
    dp = SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=1)
    inst = parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [action])
    msg = parser.OFPFlowMod(dp, match=parser.OFPMatch(eth_type=0x800), instructions=[inst])
    msg.set_xid(1)
    msg.serialize()
    require(shutil.which("ovs-ofctl") is not None, "ovs-ofctl (Open vSwitch)")
    r = subprocess.run(
        ["ovs-ofctl", "ofp-print", bytes(msg.buf).hex()], capture_output=True, text=True
    )
    assert "multipath(symmetric_l3l4+udp,7,modulo_n,4096,0,NXM_NX_REG0[0..15])" in r.stdout


# --- against the running switch -------------------------------------------------------


@pytest.fixture
def bridge(ovs):
    name = unique_name("slh")
    subprocess.run(
        ["ovs-vsctl", "add-br", name, "--", "set", "bridge", name, *BRIDGE_OPTS],
        check=True,
    )
    try:
        actions = ",".join(
            f"multipath(symmetric_l3l4+udp,{basis},modulo_n,{n},0,NXM_NX_REG{reg}[0..15])"
            for reg, basis, n in COMBOS
        )
        subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "add-flow", name, f"table=0,ip,actions={actions}"],
            check=True,
        )
        yield name
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name], check=False)


def _unixctl():
    with warnings.catch_warnings():  # the OVS bindings probe for eventlet on import
        warnings.simplefilter("ignore")
        import ovs.unixctl.client
    import ovs.dirs

    # The running daemon's control socket, named after its pid (as ovs-appctl finds it).
    pid = Path(ovs.dirs.RUNDIR, "ovs-vswitchd.pid").read_text().strip()
    path = str(Path(ovs.dirs.RUNDIR, f"ovs-vswitchd.{pid}.ctl"))
    err, client = ovs.unixctl.client.UnixctlClient.create(path)
    assert not err, f"cannot open {path}: {os.strerror(err)}"
    return client


def random_tuples(n: int, seed: int) -> list[FiveTuple]:
    rng = random.Random(seed)
    out = [
        FiveTuple("10.0.0.1", "10.0.0.1", 6, 0, 0),
        FiveTuple("0.0.0.0", "255.255.255.255", 17, 65535, 0),
        FiveTuple("10.0.0.1", "10.0.0.129", 6, 65535, 65535),
    ]
    while len(out) < n:
        p = rng.choice([6, 6, 17, 17, 1])
        out.append(
            FiveTuple(
                str(ipaddress.IPv4Address(rng.getrandbits(32))),
                str(ipaddress.IPv4Address(rng.getrandbits(32))),
                p,
                rng.getrandbits(16) if p != 1 else 0,
                rng.getrandbits(16) if p != 1 else 0,
            )
        )
    return out


def trace_flow(ft: FiveTuple) -> str:
    base = f"in_port=LOCAL,nw_src={ft.src},nw_dst={ft.dst}"
    if ft.proto == 6:
        return f"tcp,{base},tcp_src={ft.sport},tcp_dst={ft.dport}"
    if ft.proto == 17:
        return f"udp,{base},udp_src={ft.sport},udp_dst={ft.dport}"
    return f"icmp,{base},icmp_type=8,icmp_code=0"


REG_RE = re.compile(r"NXM_NX_REG(\d)\[0\.\.15\] is now (\w+)")


@pytest.mark.ovs
def test_switch_writes_the_same_slot(bridge):
    client = _unixctl()
    try:
        mismatches = []
        for ft in random_tuples(1200, seed=20240601):
            for direction in (ft, ft.reversed()):
                err, error, out = client.transact("ofproto/trace", [bridge, trace_flow(direction)])
                assert not err and not error, error or err
                regs = {int(r): int(v, 0) for r, v in REG_RE.findall(out)}
                assert set(regs) == {reg for reg, _, _ in COMBOS}, out
                for reg, basis, n in COMBOS:
                    if regs[reg] != slot_of(ft, n, basis):
                        mismatches.append((direction, basis, n, regs[reg], slot_of(ft, n, basis)))
        assert not mismatches, mismatches[:5]
    finally:
        client.close()
