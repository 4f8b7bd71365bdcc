"""`nfsteer top`: a live view of a running controller, refreshed every second.

Per pool: each instance's state, capacity, slots, packets per second (what the switch sent
to the instance's port, from its port counters), its share of the pool's load against its
share of the pool's active capacity; the switches and Redis; and the last events, found by
comparing one refresh with the one before (state and capacity changes, joins and removals,
epoch changes, switches and Redis coming and going). Plain curses over the REST API, so it
works in any terminal, also over SSH; `q` quits. An unreachable controller at start prints
one line and exits 1; later it is shown on the screen and retried.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from controller.ops.opscli import DEFAULT_API_URL, ApiError

EVENTS_KEPT = 12
REQUEST_TIMEOUT_S = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--api", default=DEFAULT_API_URL, metavar="URL", help="controller REST API (%(default)s)"
    )
    p.add_argument(
        "--api-token",
        default=os.environ.get("NFSTEER_API_TOKEN"),
        metavar="TOKEN",
        help="bearer token (default $NFSTEER_API_TOKEN; reading needs none unless required)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="refresh period (%(default)s s)"
    )


# --- what one refresh sees ---------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The controller's answers at one moment: /healthz and each pool's detail."""

    at: float
    health: dict[str, Any]
    pools: dict[str, dict[str, Any]]


class Fetcher:
    def __init__(self, api: str, token: str | None):
        import httpx

        self.api = api.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT_S)
        self._errors = (httpx.HTTPError, ValueError)

    def _get(self, path: str) -> Any:
        try:
            r = self.client.get(self.api + path)
            r.raise_for_status()
            return r.json()
        except self._errors as e:
            raise ApiError(f"cannot reach the controller at {self.api}: {e}") from None

    def snapshot(self) -> Snapshot:
        health = self._get("/healthz")
        pools = {
            p["name"]: self._get(f"/api/v1/pools/{p['name']}") for p in self._get("/api/v1/pools")
        }
        return Snapshot(time.monotonic(), health, pools)

    def close(self) -> None:
        self.client.close()


# --- the view: rates, shares and events from successive snapshots (no I/O) ---------------


@dataclass
class Row:
    name: str
    state: str
    capacity: float
    slots: int
    pps: float | None
    load_share: float | None
    capacity_share: float | None


@dataclass
class TopScreen:
    """What `nfsteer top` shows: the last snapshot, rows per pool, recent events."""

    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    last: Snapshot | None = None
    error: str | None = None
    rows: dict[str, list[Row]] = field(default_factory=dict)

    def update(self, snap: Snapshot, wall: float | None = None) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(wall))
        for text in _changes(self.last, snap) if self.last else []:
            self.events.append(f"{stamp} {text}")
        if self.error is not None:
            self.events.append(f"{stamp} controller reachable again")
            self.error = None
        self.rows = {
            name: _rows(detail, self.last, snap, self.rows.get(name, []))
            for name, detail in snap.pools.items()
        }
        self.last = snap

    def unreachable(self, message: str, wall: float | None = None) -> None:
        if self.error is None:
            stamp = time.strftime("%H:%M:%S", time.localtime(wall))
            self.events.append(f"{stamp} {message}")
        self.error = message

    def lines(self, api: str) -> list[str]:
        now = time.strftime("%H:%M:%S")
        out = [f"nfsteer top  {api}  {now}  (q quits)"]
        if self.last is None:
            return [*out, self.error or "waiting for the controller"]
        health = self.last.health
        switches = ", ".join(health.get("switches", [])) or "none"
        out.append(
            f"switches: {switches}   redis: {health.get('redis')}"
            + (f"   STALE: {self.error}" if self.error else "")
        )
        for name, detail in self.last.pools.items():
            rows = self.rows.get(name, [])
            total = sum(r.pps for r in rows if r.pps is not None)
            out.append("")
            out.append(
                f"pool {name}  {detail['kind']}  epoch {detail['epoch']}  "
                f"slots {detail['n_slots']}  unserved {detail['unserved_slots']}  "
                f"{_num(total)} pkt/s"
            )
            out.append(
                f"  {'INSTANCE':<12} {'STATE':<9} {'CAP':>6} {'SLOTS':>6} {'PKT/S':>8} "
                f"{'LOAD%':>6} {'CAP%':>6}"
            )
            for r in rows:
                out.append(
                    f"  {r.name:<12} {r.state:<9} {r.capacity:>6g} {r.slots:>6} "
                    f"{_num(r.pps):>8} {_pct(r.load_share):>6} {_pct(r.capacity_share):>6}"
                )
            if not any(r.state == "active" for r in rows):
                out.append(f"  pool {name} has no active instance: its traffic is dropped")
        out += ["", "last events:"]
        out += [f"  {e}" for e in reversed(self.events)] or ["  none yet"]
        return out


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.1f}k" if v >= 10_000 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


@dataclass(frozen=True)
class _Reading:
    """One port-counter reading: packets the switch sent to the instance's port (its
    steered load), and when the switch read them."""

    packets: int
    at: float  # the port's age on the switch, else our own clock


def _reading(member: dict[str, Any], at: float) -> _Reading | None:
    traffic = member.get("traffic") or {}
    if traffic.get("tx_packets") is None:
        return None
    if "duration_sec" in traffic:
        at = traffic["duration_sec"] + traffic.get("duration_nsec", 0) / 1e9
    return _Reading(traffic["tx_packets"], at)


def _rate(now: _Reading | None, old: _Reading | None, old_rate: float | None) -> float | None:
    """Packets per second between two readings. The controller polls the counters less
    often than top refreshes: an unchanged reading keeps the last rate."""
    if now is None or old is None or now.packets < old.packets or now.at < old.at:
        return None  # no counters, or the port was re-created
    if now.at == old.at:
        return old_rate
    return (now.packets - old.packets) / (now.at - old.at)


def _rows(detail: dict[str, Any], before: Snapshot | None, snap: Snapshot,
          old_rows: list[Row]) -> list[Row]:  # fmt: skip
    members = detail["members"]
    prev = {}
    if before is not None and detail["name"] in before.pools:
        prev = {m["name"]: m for m in before.pools[detail["name"]]["members"]}
    old_rates = {r.name: r.pps for r in old_rows}
    rates: dict[str, float | None] = {}
    for m in members:
        old = prev.get(m["name"])
        rates[m["name"]] = _rate(
            _reading(m, snap.at),
            _reading(old, before.at) if old and before else None,
            old_rates.get(m["name"]),
        )
    active = [m for m in members if m["state"] == "active"]
    cap_total = sum(m["capacity"] for m in active)
    load_total = sum(rates[m["name"]] or 0.0 for m in active)
    rows = []
    for m in members:
        is_active = m["state"] == "active"
        rate = rates[m["name"]]
        rows.append(
            Row(
                name=m["name"],
                state=m["state"],
                capacity=m["capacity"],
                slots=m["slots"],
                pps=rate,
                load_share=rate / load_total
                if is_active and rate is not None and load_total
                else None,
                capacity_share=m["capacity"] / cap_total if is_active and cap_total else None,
            )
        )
    return rows


def _changes(before: Snapshot, after: Snapshot) -> list[str]:
    out = []
    was, now = set(before.health.get("switches", [])), set(after.health.get("switches", []))
    out += [f"switch {s} connected" for s in sorted(now - was)]
    out += [f"switch {s} disconnected" for s in sorted(was - now)]
    if before.health.get("redis") != after.health.get("redis"):
        out.append(f"redis {before.health.get('redis')} -> {after.health.get('redis')}")
    for pool, detail in after.pools.items():
        old = before.pools.get(pool)
        if old is None:
            out.append(f"pool {pool} appeared")
            continue
        olds = {m["name"]: m for m in old["members"]}
        for m in detail["members"]:
            o = olds.pop(m["name"], None)
            if o is None:
                out.append(f"{pool}/{m['name']} joined ({m['state']})")
                continue
            if o["state"] != m["state"]:
                out.append(f"{pool}/{m['name']} {o['state']} -> {m['state']}")
            if o["capacity"] != m["capacity"]:
                out.append(f"{pool}/{m['name']} capacity {o['capacity']:g} -> {m['capacity']:g}")
        out += [f"{pool}/{name} removed" for name in sorted(olds)]
        if old["epoch"] != detail["epoch"]:
            moved = {
                m["name"]: m["slots"] - (o["slots"] if (o := _member(old, m["name"])) else 0)
                for m in detail["members"]
            }
            gains = ", ".join(f"{n} {d:+d}" for n, d in sorted(moved.items()) if d)
            out.append(
                f"pool {pool} epoch {old['epoch']} -> {detail['epoch']}"
                + (f" (slots {gains})" if gains else "")
            )
    return out


def _member(detail: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in detail["members"] if m["name"] == name), None)


# --- the terminal ------------------------------------------------------------------------


def _loop(screen: Any, fetcher: Fetcher, view: TopScreen, interval: float) -> None:
    import curses

    curses.curs_set(0)
    screen.timeout(100)  # getch waits at most this long: keys are seen promptly
    next_fetch = time.monotonic() + interval
    while True:
        height, width = screen.getmaxyx()
        screen.erase()
        for y, line in enumerate(view.lines(fetcher.api)[:height]):
            # The last cell of the screen cannot be written without scrolling.
            with contextlib.suppress(curses.error):
                screen.addnstr(y, 0, line, width - 1)
        screen.refresh()
        while time.monotonic() < next_fetch:
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
        next_fetch = time.monotonic() + interval
        try:
            refresh(fetcher, view)
        except ApiError as e:
            view.unreachable(str(e), time.time())


def refresh(fetcher: Fetcher, view: TopScreen) -> None:
    """One refresh; an answer that is not what an nfsteer controller gives is an ApiError."""
    try:
        view.update(fetcher.snapshot(), time.time())
    except (KeyError, TypeError, AttributeError) as e:
        raise ApiError(f"{fetcher.api} gave an unexpected answer ({e!r}): is it nfsteer?") from None


def run(args: argparse.Namespace) -> int:
    import curses

    from contract.errors import UsageError

    if not 0.1 <= args.interval <= 60:
        raise UsageError("--interval must be between 0.1 and 60 seconds")
    fetcher = Fetcher(args.api, args.api_token)
    view = TopScreen()
    try:
        refresh(fetcher, view)
    except ApiError as e:
        print(f"nfsteer top: {e}", file=sys.stderr)
        fetcher.close()
        return 1
    if not sys.stdout.isatty():
        print(
            "nfsteer top: needs a terminal (for a one-off table, use nfsteer status)",
            file=sys.stderr,
        )
        fetcher.close()
        return 2
    try:
        curses.wrapper(_loop, fetcher, view, args.interval)
    finally:
        fetcher.close()
    return 0
