"""The topology file: defined in ``contract/topology.py`` (the controller, the NFs and the
Mininet scripts all read it) with the value types of ``contract/values.py``; re-exported
here for the controller's modules."""

from contract.topology import *  # noqa: F403
from contract.values import MAC_RE, MAX_PORT, NAME_RE, VIRTUAL_MAC_PREFIX  # noqa: F401
