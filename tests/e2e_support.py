"""Shared set-up of the end-to-end tests: real Mininet, Open vSwitch, Redis, the controller
process, NF processes and TCP traffic, built from a topology file by ``mininet/nfnet.py``.

The scripts in ``mininet/`` are loaded by path: that folder has no ``__init__.py`` so that it
never shadows Mininet's own package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from conftest import REPO, ovs_running, require

MININET_DIR = REPO / "mininet"
TOPOLOGIES = REPO / "topologies"


def load(name: str) -> ModuleType:
    """A script of mininet/ as a module (its siblings become importable too)."""
    if name in sys.modules:
        return sys.modules[name]
    if str(MININET_DIR) not in sys.path:
        sys.path.insert(0, str(MININET_DIR))
    spec = importlib.util.spec_from_file_location(name, MININET_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def require_emulation() -> None:
    """Skip on a developer machine, fail in CI, when the emulation cannot run."""
    require(os.geteuid() == 0, "root (Mininet)")
    require(ovs_running(), "Open vSwitch (ovs-vswitchd)")
    require(shutil.which("redis-server") is not None, "redis-server")
    require(shutil.which("mnexec") is not None, "Mininet (mnexec)")
    require(importlib.util.find_spec("mininet") is not None, "Mininet (python package)")


def emulation(topology: str, workdir: Path, controllers: int = 1) -> Iterator[object]:
    """A running network for a whole test module; everything is stopped afterwards.

    Logs of the controller, Redis and every process go to ``workdir``; set
    NFSTEER_E2E_LOGS=DIR to keep them in DIR/<topology> instead.
    """
    require_emulation()
    if os.environ.get("NFSTEER_E2E_LOGS"):
        workdir = Path(os.environ["NFSTEER_E2E_LOGS"]) / Path(topology).stem
        shutil.rmtree(workdir, ignore_errors=True)
    nfnet = load("nfnet")
    from mininet.log import setLogLevel

    setLogLevel("warning")
    emu = nfnet.Emulation(
        TOPOLOGIES / topology, workdir=workdir, heartbeat_ttl_ms=300, controllers=controllers
    )
    busy = [s for s in emu.topology.switches if _bridge_exists(s)]
    require(not busy, f"free bridge names ({', '.join(busy)} exist)")
    with emu:
        yield emu


def topology_with(topology: str, workdir: Path, **nf: object) -> str:
    """A copy of a topology file in ``workdir`` whose every pool has ``nf`` added to its
    NF settings (e.g. output commit); returns its path, for ``emulation``."""
    import yaml

    data = yaml.safe_load((TOPOLOGIES / topology).read_text())
    for pool in data["pools"].values():
        pool.setdefault("nf", {}).update(nf)
    path = workdir / Path(topology).name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _bridge_exists(name: str) -> bool:
    return subprocess.run(["ovs-vsctl", "--timeout=5", "br-exists", name]).returncode == 0


def logs(emu: object, names: list[str] | None = None, tail: int = 1200) -> str:
    """The last lines of the controller's and instances' logs, for assertion messages."""
    workdir: Path = emu.workdir  # type: ignore[attr-defined]
    wanted = names or ["controller", *emu.nfs]  # type: ignore[attr-defined]
    out = []
    for f in sorted(workdir.glob("*.out")):
        if f.stem in wanted:
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}")
    return "\n".join(out)
