"""`nfsteer demo`: replaces this process with ``mininet/demo.py`` on the same interpreter.

The Mininet scripts' folder is not a package (it would shadow Mininet's own ``mininet``), so
the demo is not imported: it runs as a script, which parses its own arguments (so
``nfsteer demo --help`` is the script's help). Replacing the process rather than starting a
child keeps the exit status, Ctrl-C and `kill` (the demo then removes its network) as they
are for any other command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from contract.errors import UsageError

SOURCE_TREE = Path(__file__).resolve().parents[1]
SCRIPT = SOURCE_TREE / "mininet" / "demo.py"
HELP = "run the scale-out demo in Mininet"


def command_line(log_format: str, rest: list[str]) -> list[str]:
    # A --log-format given after `demo` comes later and wins.
    return [sys.executable, str(SCRIPT), "--log-format", log_format, *rest]


def environment() -> dict[str, str]:
    """This environment with the source tree first on the path: the script imports the
    packages beside it, not another copy."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SOURCE_TREE) + (os.pathsep + path if path else "")
    return env


def run(args: argparse.Namespace) -> int:
    if not SCRIPT.is_file():  # the script ships with the source tree, not with a wheel
        raise UsageError(f"needs the source tree ({SCRIPT} is not here)")
    argv = command_line(args.log_format, args.rest)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, environment())
    raise AssertionError("unreachable: execve returns only by raising")
