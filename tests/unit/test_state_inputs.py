"""The pool state refuses, before changing anything, every value that the flow programming
could not encode or that would clash with the topology: so a refused change never leaves a
half-applied state behind (the cause of a 500 that still removed an instance)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from contract.topology import load_topology, parse_topology
from controller.core import flows as fl
from controller.core.state import InstanceInfo, InstanceState, Steering, SteeringError

SINGLE = Path(__file__).resolve().parents[2] / "topologies" / "single.yaml"


def steering() -> Steering:
    data = load_topology(SINGLE).model_dump()
    data["pools"]["fw"]["membership"] = "static"
    return Steering(parse_topology(data))


def new(**kw) -> InstanceInfo:
    base = dict(name="fw5", pool="fw", mac="02:00:00:00:01:0f", ip="10.0.0.215", switch="s1",
                port=15, capacity=1.0, state=InstanceState.ACTIVE)  # fmt: skip
    return InstanceInfo(**(base | kw))


BAD = [
    ({"port": 2**32}, "port"),
    ({"port": 0xFFFFFFFD}, "port"),
    ({"port": True}, "port"),
    ({"ip": "010.0.0.5"}, "IPv4"),
    ({"ip": "\u0661\u0660.0.0.5"}, "IPv4"),
    ({"ip": "10.0.0.5\n"}, "IPv4"),
    ({"ip": "10.0.0.0"}, "network or broadcast"),
    ({"ip": "10.0.0.255"}, "network or broadcast"),
    ({"mac": "01:00:00:00:00:01"}, "multicast"),
    ({"mac": "0e:00:0a:00:00:64"}, "reserved"),
    ({"mac": "02:00:00:00:01:0f\n"}, "MAC"),
    ({"name": "fw5\n"}, "name"),
    ({"capacity": True}, "capacity"),
    ({"switch": "s9"}, "unknown switch"),
]


@pytest.mark.parametrize(("change", "says"), BAD, ids=[repr(c) for c, _ in BAD])
def test_refused_before_anything_changes(change, says):
    st = steering()
    before = copy.deepcopy(st.pools)
    with pytest.raises(SteeringError, match=says):
        st.add_instance(new(**change), 0.0)
    assert st.pools == before


def test_another_hosts_or_instances_address_is_refused():
    st = steering()
    host = st.topology.hosts["c1"]
    other = st.pools["fw"].instances["fw1"]
    for change in ({"mac": host.mac}, {"ip": host.ip_address}, {"mac": other.mac},
                   {"ip": other.ip}):  # fmt: skip
        before = copy.deepcopy(st.pools)
        with pytest.raises(SteeringError, match=r"of (host|instance)"):
            st.add_instance(new(**change), 0.0)
        assert st.pools == before
    # Re-adding an instance with its own addresses is fine.
    st.add_instance(new(name="fw1", mac=other.mac, ip=other.ip, port=other.port), 0.0)


def test_highest_port_is_accepted_and_encodable():
    st = steering()
    st.add_instance(new(port=0xFFFFFF00), 0.0)
    assert fl.table_inputs(st)  # flows for it can be computed
