"""Logging set-up for every `nfsteer` command: plain text for people, JSON for log shippers.

``--log-format json`` writes one JSON object a line with ``time`` (ISO 8601, UTC),
``level``, ``logger`` and ``message``, plus the structured fields of the record: those a
log call passes with ``extra={"pool": ..., "instance": ..., "epoch": ...}`` and those bound
to the whole process with :func:`bind` (an NF binds its pool and instance once). The text
format shows the same fields as ``key=value`` after the message.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMAT_ENV = "NFSTEER_LOG_FORMAT"
# The structured fields a log line may carry, in the order the text format shows them.
FIELDS = ("pool", "instance", "epoch", "switch", "state", "moved", "reason")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_bound: dict[str, Any] = {}


def default_format() -> str:
    env = os.environ.get(FORMAT_ENV, "").lower()
    return env if env in FORMATS else "text"


def add_arguments(p: argparse.ArgumentParser, default: Any = None) -> None:
    """``--log-format`` (default ``$NFSTEER_LOG_FORMAT``, else text)."""
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=default_format() if default is None else default,
        help=f"log lines as text or one JSON object a line (default ${FORMAT_ENV}, else text)",
    )


def bind(**fields: Any) -> None:
    """Fields added to every record from now on (e.g. an NF's pool and instance)."""
    _bound.update(fields)


def bind_clear() -> None:
    _bound.clear()


class _BoundFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _bound.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with the structured fields as ``key=value`` after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={getattr(record, k)}" for k in FIELDS if hasattr(record, k)]
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the fields
        return f"{head} [{' '.join(fields)}]{sep}{tail}"


def json_formatter() -> logging.Formatter:
    from datetime import UTC, datetime

    from pythonjsonlogger.json import JsonFormatter

    class Formatter(JsonFormatter):
        def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
            return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")

    return Formatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        json_ensure_ascii=False,
    )


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (it may have been replaced
    since the set-up, e.g. by a test's capture), not to the stream it was then."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _not_mininet(record: logging.LogRecord) -> bool:
    return record.name != "mininet" and not record.name.startswith("mininet.")


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one writing ``fmt`` lines to stderr.

    Records of every library go through it (os-ken, uvicorn, redis-py), so a JSON log has
    no plain lines in between (the API server leaves uvicorn's records to the root logger).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_BoundFields())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Mininet's logger prints with a handler of its own (the demo): not a second time here.
    # (Filtered rather than `getLogger("mininet").propagate = False`: creating that logger
    # here would keep Mininet from creating it as its own logger class, and importing
    # mininet.log would then fail.)
    handler.addFilter(_not_mininet)
