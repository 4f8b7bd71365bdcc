"""`nfsteer check FILE...`: validate topology files without touching any switch.

Exit status 0 when every file is valid, 2 when one is not (one line per problem, each naming
the file and the field)."""

from __future__ import annotations

import argparse
import sys

from contract.topology import ConfigError, load_topology


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="topology YAML file(s)")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            topo = load_topology(path)
        except ConfigError as e:
            print(e, file=sys.stderr)
            failed += 1
            continue
        n_inst = sum(len(p.instances) for p in topo.pools.values())
        print(
            f"{path}: ok ({len(topo.switches)} switches, {len(topo.hosts)} hosts, "
            f"{len(topo.pools)} pools, {n_inst} instances, {len(topo.services)} services)"
        )
    return 2 if failed else 0
