"""`nfsteer top`'s view: rates, shares and events from successive API answers (no I/O).
The same behaviour through a real terminal and controller: tests/integration/test_top.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.ops.top import Snapshot, TopScreen


def member(name, state="active", capacity=1.0, slots=8, tx=None, read_at=None):
    traffic = None if tx is None else {"tx_packets": tx, "rx_packets": tx}
    if read_at is not None:
        traffic.update(duration_sec=int(read_at), duration_nsec=int(read_at % 1 * 1e9))
    return {"name": name, "state": state, "capacity": capacity, "slots": slots,
            "traffic": traffic}  # fmt: skip


def snap(at, members, epoch=1, switches=("s1",), redis="up"):
    pool = {"name": "fw", "kind": "firewall", "epoch": epoch, "n_slots": 16,
            "unserved_slots": 0, "members": members}  # fmt: skip
    return Snapshot(at, {"switches": list(switches), "redis": redis}, {"fw": pool})


def test_rates_and_shares_follow_the_counters():
    view = TopScreen()
    view.update(snap(10.0, [member("a", tx=100), member("b", capacity=3, tx=100)]))
    assert [r.pps for r in view.rows["fw"]] == [None, None]  # one sample: no rate yet
    view.update(snap(12.0, [member("a", tx=300), member("b", capacity=3, tx=900)]))
    a, b = view.rows["fw"]
    assert (a.pps, b.pps) == (100.0, 400.0)
    assert (a.load_share, b.load_share) == (0.2, 0.8)
    assert (a.capacity_share, b.capacity_share) == (0.25, 0.75)
    # A counter that went back (switch reconnected) gives no rate rather than a negative one.
    view.update(snap(13.0, [member("a", tx=5), member("b", capacity=3, tx=1000)]))
    assert view.rows["fw"][0].pps is None and view.rows["fw"][1].load_share == 1.0


def test_rates_use_the_switch_clock_and_survive_refreshes_between_polls():
    """The controller polls port counters every 2 s, top refreshes every second: a
    refresh that sees the same reading keeps the last rate instead of showing 0."""
    view = TopScreen()
    view.update(snap(10.0, [member("a", tx=0, read_at=100.0)]))
    view.update(snap(11.0, [member("a", tx=500, read_at=102.5)]))
    assert view.rows["fw"][0].pps == 200.0  # 500 packets in 2.5 s of the switch's time
    view.update(snap(12.0, [member("a", tx=500, read_at=102.5)]))
    assert view.rows["fw"][0].pps == 200.0
    view.update(snap(13.0, [member("a", tx=500, read_at=104.5)]))
    assert view.rows["fw"][0].pps == 0.0  # a new reading without traffic
    view.update(snap(14.0, [member("a", tx=10, read_at=1.0)]))  # port re-created
    assert view.rows["fw"][0].pps is None


def test_events_name_what_changed_between_refreshes():
    view = TopScreen()
    view.update(snap(1.0, [member("a"), member("b")], epoch=1))
    assert not view.events
    view.update(
        snap(2.0, [member("a", slots=12), member("b", "failed", slots=0), member("c", slots=4)],
             epoch=2, switches=(), redis="down")
    )  # fmt: skip
    assert [e.split(" ", 1)[1] for e in view.events] == [
        "switch s1 disconnected",
        "redis up -> down",
        "fw/b active -> failed",
        "fw/c joined (active)",
        "pool fw epoch 1 -> 2 (slots a +4, b -8, c +4)",
    ]
    view.update(snap(3.0, [member("a", capacity=2, slots=16)], epoch=3))
    assert [e.split(" ", 1)[1] for e in list(view.events)[5:]] == [
        "switch s1 connected",
        "redis down -> up",
        "fw/a capacity 1 -> 2",
        "fw/b removed",
        "fw/c removed",
        "pool fw epoch 2 -> 3 (slots a +4)",
    ]


def test_unreachable_is_one_event_then_recovery_and_the_screen_says_so():
    view = TopScreen()
    view.update(snap(1.0, [member("a", "failed")]))
    view.unreachable("cannot reach the controller")
    view.unreachable("cannot reach the controller")
    text = "\n".join(view.lines("http://x"))
    assert "STALE: cannot reach the controller" in text
    assert "pool fw has no active instance" in text
    assert sum("cannot reach" in e for e in view.events) == 1
    view.update(snap(2.0, [member("a", "failed")]))
    assert view.events[-1].endswith("controller reachable again")
    assert "STALE" not in "\n".join(view.lines("http://x"))


_counts = st.one_of(st.none(), st.integers(0, 2**64 - 1))
_member = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b", "c", "d"]),
        "state": st.sampled_from(["active", "draining", "failed"]),
        "capacity": st.floats(0.001, 1e6),
        "slots": st.integers(0, 65536),
        "traffic": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {"tx_packets": _counts},
                optional={
                    "duration_sec": st.integers(0, 2**32),
                    "duration_nsec": st.integers(0, 10**9),
                },
            ),
        ),
    }
)


_answer = st.tuples(
    st.floats(0, 1e6), st.lists(_member, max_size=4), st.integers(0, 10**6), st.booleans()
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_answer, min_size=1, max_size=6))
def test_any_sequence_of_answers_renders_without_error(answers):
    view = TopScreen()
    for at, members, epoch, connected in answers:
        view.update(snap(at, members, epoch=epoch, switches=("s1",) if connected else ()))
        text = "\n".join(view.lines("http://x"))
        assert "pool fw" in text
        for row in view.rows["fw"]:
            assert row.pps is None or row.pps >= 0
            assert row.load_share is None or 0 <= row.load_share <= 1 + 1e-9
