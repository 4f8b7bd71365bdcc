"""The membership decision, as a table of cases (controller/core/membership_rules.py).

The same rules on real Redis, with real registrations and heartbeats, are exercised in
tests/integration/test_membership.py and test_service_ovs.py.
"""

from __future__ import annotations

import pytest

from controller.core.membership_rules import Action, decide
from controller.core.state import InstanceInfo, InstanceState

A, D, F, DOWN = (InstanceState.ACTIVE, InstanceState.DRAINING, InstanceState.FAILED,
                 InstanceState.DOWN)  # fmt: skip
REG = {"name": "fw1", "capacity": "1"}
DRAINING_REG = {**REG, "state": "draining"}


def info(state: InstanceState | None, capacity: float = 1.0) -> InstanceInfo | None:
    if state is None:
        return None
    return InstanceInfo("fw1", "fw", "02:00:00:00:01:01", "10.0.0.101", "s1", 11, capacity, state)


PARSED = info(A)
PARSED_2X = info(A, 2.0)

# (registration, alive, current state, source, port down, parsed) -> (action, adopt)
CASES = [
    # no registration: only a registered instance is removed
    (None, False, A, "registered", False, None, Action.REMOVE, False),
    (None, False, A, "topology", False, None, Action.NOTHING, False),
    (None, False, A, "api", False, None, Action.NOTHING, False),
    (None, False, None, "registered", False, None, Action.NOTHING, False),
    # draining registration: drains a registered active instance, nothing else
    (DRAINING_REG, True, A, "registered", False, None, Action.DRAIN, False),
    (DRAINING_REG, True, A, "api", False, None, Action.NOTHING, False),
    (DRAINING_REG, True, D, "registered", False, None, Action.NOTHING, False),
    (DRAINING_REG, True, None, "registered", False, None, Action.NOTHING, False),
    # heartbeat lost or port down: left to the heartbeat poll / port status
    (REG, False, F, "registered", False, PARSED, Action.NOTHING, False),
    (REG, True, F, "registered", True, PARSED, Action.NOTHING, False),
    # an invalid registration is ignored
    (REG, True, None, None, False, "bad capacity", Action.IGNORE, False),
    # valid: join, new capacity, keep draining, or nothing to do
    (REG, True, None, None, False, PARSED, Action.JOIN, True),
    (REG, True, F, "registered", False, PARSED, Action.JOIN, True),
    (REG, True, DOWN, "topology", False, PARSED, Action.JOIN, True),
    (REG, True, A, "registered", False, PARSED_2X, Action.SET_CAPACITY, True),
    (REG, True, A, "topology", False, PARSED, Action.NOTHING, True),
    (REG, True, D, "registered", False, PARSED, Action.NOTHING, True),
]


@pytest.mark.parametrize(
    ("reg", "alive", "state", "source", "port_down", "parsed", "action", "adopt"), CASES
)
def test_decision_table(reg, alive, state, source, port_down, parsed, action, adopt):
    d = decide(
        reg, alive=alive, current=info(state), source=source, port_down=port_down, parsed=parsed
    )
    assert (d.action, d.adopt) == (action, adopt)
    if action is Action.JOIN:
        assert d.info is parsed
    if action is Action.SET_CAPACITY:
        assert d.capacity == 2.0
    if action is Action.IGNORE:
        assert d.why == "bad capacity"
