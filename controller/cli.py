"""The `nfsteer` command: one entry point, one module per subcommand.

A module given as ``folder/file.py`` is loaded by path from the source tree (the Mininet
scripts' folder is not a package, so that it does not shadow Mininet's ``mininet``).
Each subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` (or, for
an entry written ``module:name``, ``add_<name>_arguments`` and ``run_<name>``) and keeps its
module-level imports light (heavy imports go inside ``run``), so that `nfsteer --help` and
quick commands stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from contract import logs
from contract.errors import UsageError
from contract.topology import ConfigError

SOURCE_TREE = Path(__file__).resolve().parents[1]

# (name, module, one-line help). The order is the order of `nfsteer --help`.
SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("controller", "controller.ofp.launcher", "run the steering controller (OpenFlow app)"),
    ("check", "controller.ops.check", "validate topology files and exit"),
    ("lookup", "controller.ops.lookup", "which NF instance serves a 5-tuple"),
    ("nf", "nf.cli", "run one NF instance (firewall, nat, lb) on an interface"),
    ("store", "controller.ops.storecli", "start, stop or describe a replicated store (Sentinel)"),
    ("demo", "mininet/demo.py", "run the scale-out demo in Mininet"),
    ("status", "controller.ops.opscli:status", "pools and instances of a running controller"),
    ("top", "controller.ops.top", "live view of a running controller, refreshed every second"),
    ("pool", "controller.ops.opscli:pool", "show pools of a running controller"),
    ("instance", "controller.ops.opscli:instance", "add, remove, drain, set capacity of instances"),
]


__all__ = ["UsageError", "build_parser", "main"]


def _unavailable(name: str):
    def run(_args: argparse.Namespace) -> int:
        raise UsageError(f"the {name!r} command is not part of this installation")

    return run


def _load(module_path: str) -> ModuleType | None:
    """The subcommand's module, or None when it is not part of this installation."""
    if module_path.endswith(".py"):
        file = SOURCE_TREE / module_path
        if not file.is_file():
            return None
        spec = importlib.util.spec_from_file_location(f"nfsteer_{file.stem}", file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        if e.name != module_path:
            raise
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfsteer",
        description="Stateless hash-based traffic steering for network functions.",
    )
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name, help_text in SUBCOMMANDS:
        module_path, _, part = module_name.partition(":")
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Also after the command; SUPPRESS keeps a value given before it.
        logs.add_arguments(p, default=argparse.SUPPRESS)
        module = _load(module_path)
        if module is None:
            p.set_defaults(_run=_unavailable(name))
            continue
        getattr(module, f"add_{part}_arguments" if part else "add_arguments")(p)
        p.set_defaults(_run=getattr(module, f"run_{part}" if part else "run"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands without --log-level log warnings only (httpx would log every request).
    logs.configure(getattr(args, "log_level", "WARNING"), args.log_format)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, UsageError) as e:
        if args.log_format == "json":  # a log shipper gets this line as JSON too
            logging.getLogger(f"nfsteer.{args.command}").error("%s", e)
        else:
            print(f"nfsteer {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
