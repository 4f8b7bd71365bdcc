"""The rules of a switch connection (pure): handshake deadline, echo probes, death, dpid
ownership; and the listen address and timer options."""

from __future__ import annotations

import math

import pytest

from controller.core.switchlink import (
    LinkError,
    LinkTimers,
    Verdict,
    handshake_verdict,
    idle_verdict,
    is_alive,
)
from controller.ofp.options import OptionsError, parse_listen

T = LinkTimers(handshake_s=10, echo_interval_s=5, echo_misses=3)


@pytest.mark.parametrize(
    ("now", "silent_since", "echo_sent", "verdict"),
    [
        (104.9, 100, None, Verdict.OK),  # heard from recently
        (105.0, 100, None, Verdict.ECHO),  # silent one interval: probe
        (106.0, 100, 105.0, Verdict.OK),  # probe out, not yet answered
        (110.0, 100, 105.0, Verdict.ECHO),  # still silent: probe again
        (111.0, 100, 110.0, Verdict.OK),
        (114.9, 100, 110.0, Verdict.OK),
        (115.0, 100, 110.0, Verdict.CLOSE),  # three intervals of silence: dead
        (200.0, 100, None, Verdict.CLOSE),
        (106.0, 101, 100.0, Verdict.ECHO),  # the last probe predates the silence
        (104.0, 100, 99.0, Verdict.OK),
    ],
)
def test_idle_verdict(now, silent_since, echo_sent, verdict):
    assert idle_verdict(T, now, silent_since, echo_sent) is verdict


def test_handshake_verdict():
    assert handshake_verdict(T, 109.9, 100) is Verdict.OK
    assert handshake_verdict(T, 110.0, 100) is Verdict.CLOSE


def test_is_alive_until_the_dead_limit():
    assert is_alive(T, 114.9, 100)
    assert not is_alive(T, 115.0, 100)
    assert T.dead_after_s == 15 and 0 < T.tick_s <= 1


@pytest.mark.parametrize(
    "kw",
    [
        {"handshake_s": 0},
        {"handshake_s": math.nan},
        {"echo_interval_s": -1},
        {"echo_interval_s": math.inf},
        {"echo_interval_s": True},
        {"echo_misses": 0},
        {"echo_misses": 2.5},
        {"max_pending": 0},
    ],
)
def test_bad_timers_are_refused_by_name(kw):
    with pytest.raises(LinkError, match=next(iter(kw))):
        LinkTimers(**kw)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:6653", (False, ("127.0.0.1", 6653))),
        ("tcp:127.0.0.1:6653", (False, ("127.0.0.1", 6653))),
        ("ssl:0.0.0.0:6654", (True, ("0.0.0.0", 6654))),
        ("SSL:[::1]:6654", (True, ("::1", 6654))),
        ("ssl:localhost", (True, ("127.0.0.1", 6653))),
        ("[::1]:7", (False, ("::1", 7))),
    ],
)
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["udp:127.0.0.1:1", "ssl:nohost:1", "tcp:127.0.0.1:70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(OptionsError, match="--listen"):
        parse_listen(text)
