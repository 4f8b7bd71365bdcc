"""Log set-up: the JSON and text formats, bound fields, and the option on every command."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from cli import demo
from cli import main as cli
from contract import logs


@pytest.fixture
def capture():
    root, ours = logging.getLogger(), logging.getLogger("nfsteer")
    saved = (list(root.handlers), root.level, ours.level)
    ours.setLevel(logging.NOTSET)  # a controller started by an earlier test sets its level
    logging.disable(logging.NOTSET)  # and a library may have disabled levels globally
    for name in list(logging.root.manager.loggerDict):  # and a dictConfig may disable them
        if name.startswith("nfsteer."):
            logging.getLogger(name).disabled = False
            logging.getLogger(name).setLevel(logging.NOTSET)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])
    logs.bind_clear()


def test_json_lines_carry_time_level_logger_message_and_fields(capture):
    logs.configure("INFO", "json", capture)
    log = logging.getLogger(f"nfsteer.test{uuid.uuid4().hex[:6]}")
    log.info("pool %s: %d slots moved", "fw", 3, extra={"pool": "fw", "epoch": 7})
    log.debug("not shown at INFO")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = capture.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert first["level"] == "INFO" and first["logger"] == log.name
    assert first["message"] == "pool fw: 3 slots moved"
    assert first["pool"] == "fw" and first["epoch"] == 7
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc_info"]


def test_bound_fields_are_on_every_line_and_a_call_can_override_them(capture):
    logs.configure("INFO", "json", capture)
    logs.bind(pool="fw", instance="fw2")
    logging.getLogger("nfsteer.nf").info("started")
    logging.getLogger("nfsteer.nf").info("x", extra={"instance": "other"})
    a, b = (json.loads(line) for line in capture.getvalue().splitlines())
    assert (a["pool"], a["instance"]) == ("fw", "fw2")
    assert b["instance"] == "other"


def test_text_format_shows_the_fields_after_the_message(capture):
    logs.configure("INFO", "text", capture)
    logging.getLogger("nfsteer.x").warning("no active", extra={"pool": "fw"})
    logging.getLogger("nfsteer.x").warning("plain")
    first, second = capture.getvalue().splitlines()
    assert first.endswith("WARNING nfsteer.x: no active [pool=fw]")
    assert second.endswith("WARNING nfsteer.x: plain")


def test_configure_replaces_handlers_and_rejects_unknown_formats(capture):
    logs.configure("INFO", "text", capture)
    logs.configure("INFO", "json", capture)
    assert len(logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match="log format"):
        logs.configure("INFO", "xml")


@pytest.mark.parametrize("command", [c.name for c in cli.SUBCOMMANDS])
def test_every_command_takes_log_format_before_or_after_it(command, monkeypatch):
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    parser = cli.build_parser()
    sub = {"pool": ["list"], "instance": ["remove", "p", "n"]}.get(command, [])
    positional = {"lookup": [], "nf": [], "check": ["f.yaml"], "store": ["status"]}.get(command, [])
    required = {
        "controller": ["--topology", "t.yaml"],
        "nf": ["--kind", "firewall", "--interface", "x", "--pool", "p"],
        "lookup": ["--topology", "t.yaml", "--pool", "p", "1.1.1.1", "2.2.2.2", "tcp", "1", "2"],
    }.get(command, [])
    rest = [*sub, *positional, *required]
    if command == "demo":  # what follows `demo` is the script's: it takes --log-format too
        args, handed_on = parser.parse_known_args([command, "--log-format", "json"])
        line = demo.command_line(args.log_format, handed_on)
        assert line[-2:] == ["--log-format", "json"]  # given after the command: it wins
        assert parser.parse_args(["--log-format", "json", command]).log_format == "json"
        return
    if command in ("pool", "instance"):  # the option goes before the action
        after = [command, "--log-format", "json", *rest]
    else:
        after = [command, *rest, "--log-format", "json"]
    assert parser.parse_args(after).log_format == "json"
    assert parser.parse_args(["--log-format", "json", command, *rest]).log_format == "json"
    assert parser.parse_args([command, *rest]).log_format == "text"
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    assert cli.build_parser().parse_args([command, *rest]).log_format == "json"
