"""End to end on topologies/single.yaml: Mininet + OVS + two controllers + the replicated
store + NF processes + real TCP. The firewall pool grows from one instance to four (fw4 with
twice the capacity), loses one to SIGKILL and one to a link failure, the store loses its
primary, the leading controller is killed and then another paused, and the pool drains back
to one, under steady traffic.
"""

from __future__ import annotations

import pytest
from e2e_support import emulation, load, logs

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.timeout(240),
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    yield from emulation("single.yaml", tmp_path_factory.mktemp("em-single"), controllers=2)


@pytest.fixture
def scaleout():
    return load("scaleout")


def test_each_instance_gets_its_capacity_share_of_flows(emu, scaleout):
    # first in the module: no leftovers of other tests' connections on the instance ports
    emu.restart_control_plane()
    for name in ("fw1", "fw2", "fw3", "fw4"):
        emu.start_nf(name, state="redis")
    sc = scaleout.Scenario(emu, "fw", "redis", scaleout.TEST_TIMING, say=lambda _: None)
    for name in ("fw1", "fw2", "fw3", "fw4"):
        assert sc.wait_state(name, ("active",)) is not None, logs(emu, [name, "controller"])
    shares = scaleout.measure_shares(emu, "fw", flows_per_client=3000)
    assert set(shares["instances"]) == {"fw1", "fw2", "fw3", "fw4"}
    for name, v in shares["instances"].items():
        # fw4 has capacity 2: 40 % of the flows; the others 20 % each
        assert v["expected"] == pytest.approx(0.4 if name == "fw4" else 0.2)
        assert v["relative_error"] <= 0.10, shares


def test_redis_state_keeps_every_connection_through_scale_out_failures_and_scale_in(emu, scaleout):
    emu.restart_control_plane()
    report = scaleout.Scenario(
        emu, "fw", "redis", scaleout.TEST_TIMING, say=lambda _: None, controller_events=True
    ).run()
    s, f = report["summary"], report["figures"]
    detail = "\n".join(scaleout.summary_lines(report)) + "\n" + logs(emu)
    # the leader was killed, then the next one paused: a standby took over each time
    assert f["controller_takeover_s"] is not None and f["controller_takeover_s"] < 3, detail
    assert f["controller_pause_takeover_s"] is not None, detail
    assert s["long_connections"] == 12
    assert s["broken"] == 0, detail
    assert s["stalled"] == 0, detail  # no gap of more than 1 s on any connection
    assert s["short_failed"] == 0, detail
    # every instance that was started carried traffic
    assert all(v["to_traffic_s"] is not None for v in f["time_to_traffic"].values()), detail
    # the killed instance was noticed by heartbeat expiry, the link failure by port status
    assert f["kill_detected_s"] is not None and f["kill_detected_s"] < 1.0, detail
    assert f["link_down_detected_s"] is not None and f["link_down_detected_s"] < 1.0, detail
    assert f["link_up_rejoined_s"] is not None, detail
    # scale-in drained: fw4 and fw2 exited on their own after SIGTERM
    assert set(f["drain_seconds"]) == {"fw4", "fw2"}, detail
    assert all(emu.nfs[n].proc.returncode == 0 for n in ("fw4", "fw2")), detail


def test_local_state_breaks_connections_in_the_same_scenario(emu, scaleout):
    emu.restart_control_plane()
    report = scaleout.Scenario(emu, "fw", "local", scaleout.TEST_TIMING, say=lambda _: None).run()
    s = report["summary"]
    # connections moved to an instance without their state are dropped by the firewall
    assert s["broken"] > 0, "\n".join(scaleout.summary_lines(report))
