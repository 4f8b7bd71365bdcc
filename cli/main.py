"""The `nfsteer` command: one entry point, one module per subcommand.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` (opscli
provides one pair per command) and keeps its module-level imports light (heavy imports go
inside ``run``), so that `nfsteer --help` and quick commands stay fast. The demo is a
Mininet script, not a module: `nfsteer demo` hands its arguments to it (see ``cli.demo``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from cli import demo
from cli.command import Run, execute
from contract import logs
from controller.ofp import launcher
from controller.ops import check, lookup, opscli, storecli, top
from nf import cli as nf_cli


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Run
    # No options of its own and no -h: everything after the name is handed to `run`
    # as ``args.rest`` (the demo script parses its own arguments).
    passes_rest: bool = False


# The order is the order of `nfsteer --help`.
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "controller",
        "run the steering controller (OpenFlow app)",
        launcher.add_arguments,
        launcher.run,
    ),
    Subcommand("check", "validate topology files and exit", check.add_arguments, check.run),
    Subcommand("lookup", "which NF instance serves a 5-tuple", lookup.add_arguments, lookup.run),
    Subcommand(
        "nf",
        "run one NF instance (firewall, nat, lb) on an interface",
        nf_cli.add_arguments,
        nf_cli.run,
    ),
    Subcommand(
        "store",
        "start, stop or describe a replicated store (Sentinel)",
        storecli.add_arguments,
        storecli.run,
    ),
    Subcommand("demo", demo.HELP, None, demo.run, passes_rest=True),
    Subcommand(
        "status",
        "pools and instances of a running controller",
        opscli.add_status_arguments,
        opscli.run_status,
    ),
    Subcommand(
        "top",
        "live view of a running controller, refreshed every second",
        top.add_arguments,
        top.run,
    ),
    Subcommand(
        "pool", "show pools of a running controller", opscli.add_pool_arguments, opscli.run_pool
    ),
    Subcommand(
        "instance",
        "add, remove, drain, set capacity of instances",
        opscli.add_instance_arguments,
        opscli.run_instance,
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfsteer",
        description="Stateless hash-based traffic steering for network functions.",
    )
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            add_help=not command.passes_rest,
        )
        p.set_defaults(_run=command.run, _passes_rest=command.passes_rest)
        if command.add_arguments is None:
            continue
        # Also after the command; SUPPRESS keeps a value given before it.
        logs.add_arguments(p, default=argparse.SUPPRESS)
        command.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args._passes_rest:
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return execute(args.command, args, args._run)


if __name__ == "__main__":
    sys.exit(main())
