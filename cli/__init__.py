"""The `nfsteer` command: the one package that sees both the controller and the NFs."""
