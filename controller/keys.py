"""The registration contract's Redis key layout: defined in ``contract/keys.py``."""

from contract.keys import *  # noqa: F403
