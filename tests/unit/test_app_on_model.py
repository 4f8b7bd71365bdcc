"""The whole controller (os-ken app shim, loop, core, OpenFlow encoding) against switch
models speaking OpenFlow bytes: connect, read back, program, confirm; reconnect; foreign
entries; errors; two controllers fenced by generation ids. The same behaviours on Open
vSwitch: ``tests/integration/test_ovs_controller.py``, ``test_loop.py``, ``test_ha.py``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from model_support import ModelBed, lease, model_controller, wait_for

from controller.core import flows as fl
from controller.core.state import InstanceState
from controller.ofp import ofmsg
from sim import switch as sw

REPO = Path(__file__).resolve().parents[2]
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
MASTER, SLAVE = 2, 3


def desired_cookies(app, name: str) -> set[int]:
    want = fl.desired_table(app.steering, name, app.routes)
    return {f.cookie for f in want.flows.values()}


def held_cookies(model: sw.Switch) -> set[int]:
    return {e.cookie for e in model.flows.values()}


def test_every_switch_gets_its_table_and_confirms_it():
    with model_controller(TRIANGLE) as (bed, app):
        for name in bed.switches:
            bed.connect(app, name)
        for name, model in bed.switches.items():
            assert app.wait_synced(name, 5), name
            assert held_cookies(model) == app.call(lambda n=name: desired_cookies(app, n))
        assert app.health() == []


def test_a_change_reaches_the_switches_and_is_confirmed():
    with model_controller(TRIANGLE) as (bed, app):
        for name in bed.switches:
            bed.connect(app, name)
            assert app.wait_synced(name, 5)
        result = app.apply(lambda s: s.set_capacity("fw", "fw1", 3, time.time()), "test")
        assert result.changes[0].moved and result.wait(5)
        assert result.barrier_done is not None
        for name, model in bed.switches.items():
            assert held_cookies(model) == app.call(lambda n=name: desired_cookies(app, n))


def test_a_reconnecting_switch_gets_only_what_it_lacks():
    with model_controller(TRIANGLE) as (bed, app):
        dp = bed.connect(app, "s1")
        assert app.wait_synced("s1", 5)
        sent = app.counters.flow_mods_sent
        dp.close()
        wait_for(lambda: "s1" not in app.view().switches, message="s1 gone")
        bed.connect(app, "s1")
        assert app.wait_synced("s1", 5)
        assert app.counters.flow_mods_sent == sent, "the table was already right"


def test_foreign_entries_are_removed_at_connect():
    with model_controller(TRIANGLE) as (bed, app):
        model = bed.switches["s1"]
        stranger = fl.Flow(7, 5, fl.make_match(eth_type=0x0800), ())
        model.apply([fl.FlowAdd(stranger)])
        assert stranger.cookie in held_cookies(model)
        bed.connect(app, "s1")
        assert app.wait_synced("s1", 5)
        assert stranger.cookie not in held_cookies(model)
        assert held_cookies(model) == app.call(lambda: desired_cookies(app, "s1"))


def test_an_instance_port_going_down_moves_its_slots():
    with model_controller(TRIANGLE) as (bed, app):
        for name in bed.switches:
            bed.connect(app, name)
            assert app.wait_synced(name, 5)
        bed.set_port("s1", 11, False)
        wait_for(
            lambda: app.view().pools["fw"].instances["fw1"].state is InstanceState.FAILED,
            message="fw1 failed",
        )
        assert app.wait_confirmed(5)
        assert "fw1" not in app.view().pools["fw"].assignment
        assert held_cookies(bed.switches["s1"]) == app.call(lambda: desired_cookies(app, "s1"))


def test_a_switch_error_is_logged_with_the_message_that_caused_it(caplog):
    caplog.set_level(logging.ERROR, logger="nfsteer")
    with model_controller(TRIANGLE) as (bed, app):
        dp = bed.connect(app, "s1")
        assert app.wait_synced("s1", 5)
        bad = fl.Flow(0, 7, fl.make_match(in_port=3), (("apply", (("group", 777),)),))
        app.send_messages("s1", [ofmsg.flow_add(dp, bad)])
        wait_for(lambda: app.counters.switch_errors == 1, message="the error")
        line = next(r.getMessage() for r in caplog.records if "error type=" in r.getMessage())
        assert line.startswith("switch s1: error type=")
        assert "flow_mod add table=0 priority=7" in line and "777" in line


def test_two_controllers_only_the_newer_term_programs_the_switch():
    """The leader of term 2 is MASTER; a stale leader of term 1 is refused (STALE), steps
    down, and learns the generation; its changes never reach the switch."""
    bed = ModelBed(TRIANGLE)
    new, old = bed.controller(), bed.controller()
    try:
        lease(new, "new", 2, "new")
        lease(old, "old", 1, "old")
        for app in (new, old):
            bed.connect(app, "s1")
        assert new.wait_synced("s1", 5)
        model = bed.switches["s1"]
        wait_for(lambda: not old.leading(), message="the stale leader to step down")
        assert old.counters.fenced >= 1
        wait_for(lambda: old.view().lease.floor >= 2, message="the stale leader learns term 2")
        assert MASTER in model.roles.values() and model.generation == 2
        before = held_cookies(model)
        # applied to its own state or refused: either way nothing may reach the switch
        with contextlib.suppress(Exception):
            old.apply(lambda s: s.set_capacity("fw", "fw1", 5, time.time()), "stale")
        time.sleep(0.2)
        assert held_cookies(model) == before
    finally:
        new.loop.stop()
        old.loop.stop()


def test_a_new_master_demotes_the_old_one_which_steps_down():
    bed = ModelBed(TRIANGLE)
    first, second = bed.controller(), bed.controller()
    try:
        lease(first, "a", 1, "a")
        bed.connect(first, "s1")
        assert first.wait_synced("s1", 5)
        lease(second, "b", 2, "b")
        bed.connect(second, "s1")
        assert second.wait_synced("s1", 5)
        wait_for(lambda: not first.leading(), message="role-status to demote the first")
        assert first.counters.fenced == 1
        assert sorted(bed.switches["s1"].roles.values()) == [MASTER, SLAVE]
    finally:
        first.loop.stop()
        second.loop.stop()
