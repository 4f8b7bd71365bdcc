"""Every entry the controller computes fits the declared pipeline (controller/core/pipeline.py),
for every shipped and test topology, in both steering modes, with instances failed, moved
and on other switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from contract.topology import parse_topology
from controller.core import flows as fl
from controller.core.pipeline import PIPELINE, group_violations, violations
from controller.core.state import InstanceState, Steering
from controller.core.topology import compute_routes

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "topologies").glob("*.yaml")) + sorted((REPO / "tests/data").glob("*.yaml"))


def states(path: Path, mode: str):
    data = yaml.safe_load(path.read_text())
    for sw in data["switches"].values():
        sw["steering"] = mode
    st = Steering(parse_topology(data, path))
    yield st
    for pname, ps in st.pools.items():  # everything up, then the first instance failed
        for name in ps.instances:
            st.set_state(pname, name, InstanceState.ACTIVE, 0)
        yield st
        if ps.instances:
            st.set_state(pname, next(iter(ps.instances)), InstanceState.FAILED, 0)
            yield st


@pytest.mark.parametrize("mode", ["multipath", "select_group"])
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_generated_entry_fits_the_pipeline(path, mode):
    checked = 0
    for st in states(path, mode):
        routes = compute_routes(st.topology)
        for switch in st.topology.switches:
            table = fl.desired_table(st, switch, routes)
            for flow in table.flows.values():
                assert violations(flow) == [], flow
                checked += 1
            for group in table.groups.values():
                assert group_violations(group) == []
    assert checked > 0


def test_a_stray_entry_is_named():
    bad = fl.Flow(fl.T_SLOTS, 1, fl.make_match(in_port=3), (("goto", fl.T_CLASSIFY),))
    problems = violations(bad)
    assert any("match field in_port" in p for p in problems)
    assert any("instruction goto" in p for p in problems)
    assert violations(fl.Flow(9, 1, (), ())) == ["table 9 is not in the pipeline"]
    # a chain hop entry must name the instance port it serves and take untagged frames only
    hop = fl.Flow(fl.T_CLASSIFY, fl.PRIO_HOP_BASE, fl.make_match(eth_type=fl.ETH_IPV4), ())
    problems = violations(hop)
    assert any("needs in_port" in p for p in problems)
    assert any("needs vlan_vid=0" in p for p in problems)
    assert set(PIPELINE) == {fl.T_CLASSIFY, fl.T_SLOTS, fl.T_FORWARD}
