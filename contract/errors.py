"""Errors that the ``nfsteer`` command prints as one line with exit status 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad arguments discovered after parsing: printed as one line, exit status 2."""
