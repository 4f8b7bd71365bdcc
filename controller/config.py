"""The topology file: defined in ``contract/topology.py`` (the controller, the NFs and the
Mininet scripts all read it); re-exported here for the controller's modules."""

from contract.topology import *  # noqa: F403
from contract.topology import ConfigError, Topology, load_topology, parse_topology  # noqa: F401
