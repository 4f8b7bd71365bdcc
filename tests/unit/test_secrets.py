"""Secrets from files and the environment: every command takes the API token and the Redis
URL from ``--api-token-file`` / ``--redis-url-file``, ``$NFSTEER_API_TOKEN`` /
``$NFSTEER_REDIS`` or the command line, in that order."""

from __future__ import annotations

import argparse
import os

import pytest

from cli.main import build_parser
from contract.errors import UsageError
from contract.secrets import api_token, redis_url
from controller.ofp.launcher import options_from_args

TOPOLOGY = os.path.join(os.path.dirname(__file__), "..", "data", "triangle.yaml")


def controller_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["controller", "--topology", TOPOLOGY, *extra])


def test_controller_honours_the_environment(monkeypatch):
    monkeypatch.setenv("NFSTEER_API_TOKEN", "from-env")
    monkeypatch.setenv("NFSTEER_REDIS", "redis://:pw@127.0.0.1:6399/0")
    opts = options_from_args(controller_args())
    assert opts.api_token == "from-env" and opts.redis_url == "redis://:pw@127.0.0.1:6399/0"
    # An open API needs a token: the one from the environment counts.
    assert options_from_args(controller_args("--api", "0.0.0.0:0")).api_token == "from-env"
    # Given explicitly on the command line, it wins.
    assert options_from_args(controller_args("--api-token", "argv")).api_token == "argv"


def test_secret_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NFSTEER_API_TOKEN", "from-env")
    token = tmp_path / "token"
    token.write_text("from-file\n")
    url = tmp_path / "url"
    url.write_text("redis://:secret@127.0.0.1:6390/0\n")
    opts = options_from_args(
        controller_args("--api-token-file", str(token), "--redis-url-file", str(url))
    )
    assert opts.api_token == "from-file" and opts.redis_url == "redis://:secret@127.0.0.1:6390/0"


@pytest.mark.parametrize("kind", ["missing", "empty", "zero", "both"])
def test_bad_secret_files_are_one_line(tmp_path, kind):
    path = tmp_path / "token"
    extra = ["--api-token-file", str(path)]
    if kind == "empty":
        path.write_text("\n")
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "both":
        path.write_text("x\n")
        extra += ["--api-token", "y"]
    with pytest.raises(UsageError) as e:
        options_from_args(controller_args(*extra))
    assert "\n" not in str(e.value) and "--api-token" in str(e.value)


def test_every_command_takes_the_secret_options():
    parser = build_parser()
    for argv in (
        ["status"],
        ["pool", "list"],
        ["instance", "drain", "fw", "fw1"],
        ["lookup", "--api", "http://x", "--pool", "fw", "10.0.0.1", "10.0.0.2", "tcp"],
    ):
        args = parser.parse_args([*argv, "--api-token-file", "/nonexistent"])
        with pytest.raises(UsageError, match="cannot read"):
            api_token(args)
    for argv in (["controller", "--topology", "t.yaml"], ["nf", "--kind", "firewall",
                 "--interface", "x", "--pool", "fw"]):  # fmt: skip
        args = parser.parse_args([*argv, "--redis-url-file", "/nonexistent"])
        with pytest.raises(UsageError, match="cannot read"):
            redis_url(args)


def test_nf_takes_redis_from_the_environment(monkeypatch, capsys):
    from cli.main import main

    argv = ["nf", "--kind", "firewall", "--interface", "nosuchif0", "--pool", "fw"]
    monkeypatch.delenv("NFSTEER_REDIS", raising=False)
    assert main(argv) == 2
    assert "needs --redis" in capsys.readouterr().err
    monkeypatch.setenv("NFSTEER_REDIS", "redis://127.0.0.1:6399/0")
    assert main(argv) == 2
    assert "interface 'nosuchif0' does not exist" in capsys.readouterr().err
    assert main([*argv, "--capacity", "true"]) == 2
    assert "--capacity" in capsys.readouterr().err
