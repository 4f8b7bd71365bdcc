"""The `nfsteer` command: one entry point, one module per subcommand.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` and keeps
its module-level imports light (heavy imports go inside ``run``), so that `nfsteer --help`
and quick commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from controller.config import ConfigError

# (name, module, one-line help). The order is the order of `nfsteer --help`.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("controller", "controller.launcher", "run the steering controller (OpenFlow app)"),
    ("check", "controller.check", "validate topology files and exit"),
    ("lookup", "controller.lookup", "which NF instance serves a 5-tuple"),
    ("nf", "nf.cli", "run one NF instance (firewall, nat, lb) on an interface"),
    ("demo", "controller.demo", "run the scale-out demo in Mininet"),
]


class UsageError(Exception):
    """Bad arguments discovered after parsing: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfsteer",
        description="Stateless hash-based traffic steering for network functions.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, UsageError) as e:
        print(f"nfsteer {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
