"""Running one parsed command: logging set-up, and bad input as one line with status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from contract import logs
from contract.errors import UsageError
from contract.topology import ConfigError

Run = Callable[[argparse.Namespace], int | None]


def execute(name: str, args: argparse.Namespace, run: Run) -> int:
    """``run(args)``'s exit status; a ConfigError or UsageError is one line and status 2."""
    # Commands without --log-level log warnings only (httpx would log every request).
    logs.configure(getattr(args, "log_level", "WARNING"), args.log_format)
    try:
        return int(run(args) or 0)
    except (ConfigError, UsageError) as e:
        if args.log_format == "json":  # a log shipper gets this line as JSON too
            logging.getLogger(f"nfsteer.{name}").error("%s", e)
        else:
            print(f"nfsteer {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def standalone(
    name: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Run,
    argv: list[str] | None = None,
) -> int:
    """One subcommand as its own program (a script `nfsteer` starts rather than imports)."""
    parser = argparse.ArgumentParser(prog=f"nfsteer {name}", description=description)
    logs.add_arguments(parser)
    add_arguments(parser)
    return execute(name, parser.parse_args(argv), run)
