"""What the controller and the NF instances agree on: the topology file, the Redis key layout
and records of the registration contract, the NF settings, and the value types every input
is checked with. Imports neither ``controller`` nor ``nf``."""
