"""The `nfsteer` entry point: every subcommand listed, arguments refused or handed on, and
`nfsteer demo` running the Mininet script on the same interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import demo
from cli.main import SUBCOMMANDS, main

REPO = Path(__file__).resolve().parents[2]


def nfsteer(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def test_help_lists_every_subcommand():
    r = nfsteer("--help")
    assert r.returncode == 0, r.stderr
    for command in SUBCOMMANDS:
        assert f"    {command.name} " in r.stdout, command.name


def test_demo_help_is_the_script_help():
    r = nfsteer("demo", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: nfsteer demo")
    assert "--scenario {scaleout,elephants}" in r.stdout


def test_demo_refuses_an_unknown_option_as_the_script():
    r = nfsteer("demo", "--no-such-option")
    assert r.returncode == 2
    assert "nfsteer demo: error: unrecognized arguments: --no-such-option" in r.stderr


def test_other_commands_still_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["check", "--no-such-option", "x.yaml"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_demo_without_the_script_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo, "SCRIPT", tmp_path / "demo.py")
    assert main(["demo", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nfsteer demo: needs the source tree") and err.count("\n") == 1


def test_demo_command_line_passes_the_log_format_first():
    argv = demo.command_line("json", ["--quick", "--log-format", "text"])
    assert argv[:2] == [sys.executable, str(REPO / "mininet" / "demo.py")]
    # The value given after `demo` comes last, so the script's parser keeps it.
    assert argv[2:] == ["--log-format", "json", "--quick", "--log-format", "text"]


def test_demo_environment_puts_the_source_tree_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert demo.environment()["PYTHONPATH"] == f"{REPO}{os.pathsep}/elsewhere"
    monkeypatch.delenv("PYTHONPATH")
    assert demo.environment()["PYTHONPATH"] == str(REPO)


def test_demo_hands_everything_after_its_name_to_the_script(monkeypatch):
    started: list[list[str]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        started.append(argv)
        raise SystemExit(0)  # where the real one replaces this process

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(SystemExit):
        main(["--log-format", "json", "demo", "--topology", "t.yaml", "-h"])
    assert started == [demo.command_line("json", ["--topology", "t.yaml", "-h"])]
