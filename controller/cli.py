"""The `nfsteer` command: one entry point, one module per subcommand.

Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` (or, for
an entry written ``module:name``, ``add_<name>_arguments`` and ``run_<name>``) and keeps its
module-level imports light (heavy imports go inside ``run``), so that `nfsteer --help` and
quick commands stay fast.
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
    ("store", "controller.storecli", "start, stop or describe a replicated store (Sentinel)"),
    ("demo", "controller.demo", "run the scale-out demo in Mininet"),
    ("status", "controller.opscli:status", "pools and instances of a running controller"),
    ("pool", "controller.opscli:pool", "show pools of a running controller"),
    ("instance", "controller.opscli:instance", "add, remove, drain, set capacity of instances"),
]


class UsageError(Exception):
    """Bad arguments discovered after parsing: printed as one line, exit status 2."""


def _unavailable(name: str):
    def run(_args: argparse.Namespace) -> int:
        raise UsageError(f"the {name!r} command is not part of this installation")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfsteer",
        description="Stateless hash-based traffic steering for network functions.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in SUBCOMMANDS:
        module_path, _, part = module_name.partition(":")
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as e:
            if e.name != module_path:
                raise
            p.set_defaults(_run=_unavailable(name))
            continue
        getattr(module, f"add_{part}_arguments" if part else "add_arguments")(p)
        p.set_defaults(_run=getattr(module, f"run_{part}" if part else "run"))
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
