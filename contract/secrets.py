"""Secrets for every command: the API token and the Redis URL (which may carry a password).

Each comes from a file (``--api-token-file``, ``--redis-url-file``), the environment
(``NFSTEER_API_TOKEN``, ``NFSTEER_REDIS``) or the command line (``--api-token``,
``--redis``). Files and the environment are the ones to use: every local user can read a
process's arguments (``ps``), not its environment or a file readable by its owner only.
When several are given, a file wins, then the command line, then the environment; giving
both a file and the value itself is an error.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from contract.errors import UsageError
from contract.files import read_limited

TOKEN_ENV = "NFSTEER_API_TOKEN"
REDIS_ENV = "NFSTEER_REDIS"
MAX_SECRET_BYTES = 4096


def add_api_token_arguments(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--api-token",
        metavar="TOKEN",
        help=f"{help_text} (visible in ps: prefer --api-token-file or ${TOKEN_ENV})",
    )
    p.add_argument("--api-token-file", metavar="FILE", help="read the token from FILE (first line)")


def add_redis_url_arguments(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument(
        "--redis",
        metavar="URL",
        help=f"{help_text} (a password in it is visible in ps: prefer --redis-url-file or "
        f"${REDIS_ENV})",
    )
    p.add_argument("--redis-url-file", metavar="FILE", help="read the Redis URL from FILE")


def read_secret_file(path: str, option: str) -> str:
    """The first line of a small regular file, without its line end."""
    try:
        raw = read_limited(path, MAX_SECRET_BYTES)
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"{option} {path}: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path}: not UTF-8 text") from None
    value = text.splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise UsageError(f"{option} {path}: the file is empty")
    return value


def _choose(
    given: str | None, file: str | None, env_name: str, option: str, env: Mapping[str, str]
) -> str | None:
    if given is not None and file is not None:
        raise UsageError(f"give {option} or {option}-file, not both")
    if file is not None:
        return read_secret_file(file, f"{option}-file")
    if given is not None:
        return given or None
    return env.get(env_name) or None


def api_token(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The API token from --api-token-file, --api-token or $NFSTEER_API_TOKEN."""
    env = os.environ if environ is None else environ
    return _choose(
        getattr(args, "api_token", None),
        getattr(args, "api_token_file", None),
        TOKEN_ENV,
        "--api-token",
        env,
    )


def redis_url(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str | None:
    """The Redis URL from --redis-url-file, --redis or $NFSTEER_REDIS."""
    env = os.environ if environ is None else environ
    given, file = getattr(args, "redis", None), getattr(args, "redis_url_file", None)
    if given is not None and file is not None:
        raise UsageError("give --redis or --redis-url-file, not both")
    if file is not None:
        return read_secret_file(file, "--redis-url-file")
    if given is not None:
        return given or None
    return env.get(REDIS_ENV) or None
