"""What every NF provides to the packet loop, and small helpers they share."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from nf.packet import Packet
from nf.state import Op, Result, Script


class NetworkFunction:
    """Per packet, :meth:`request` says what the NF needs: ``None`` (forward unchanged, no
    state involved), a drop reason, or a state operation. The loop runs the operations of a
    whole batch in one store round trip and hands each result to :meth:`complete`, which
    returns the frame to send or a drop reason.

    :meth:`request` must depend on the packet's fields and the NF's settings only (no
    state, no clock): the loop caches its answer per packet."""

    kind: str = ""
    script: Script
    fail_open: bool = False
    # Negative results of the script's ops ("-1") -> drop reason.
    errors: dict[str, str] = {}

    def cfg(self) -> tuple[int, ...]:
        """Per-batch numbers shared by every op (TTLs, refresh intervals...)."""
        return ()

    def request(self, pkt: Packet) -> Op | str | None:
        raise NotImplementedError

    def complete(self, frame: bytes, pkt: Packet, result: Result) -> bytes | str:
        raise NotImplementedError

    def error(self, result: Result) -> str:
        return self.errors.get(result, f"{self.kind}_error") if result[0] == "-" else ""


class Prefixes:
    """A set of IPv4 prefixes with a fast membership test on integer addresses."""

    def __init__(self, prefixes: Iterable[str]):
        nets = [ipaddress.IPv4Network(p) for p in prefixes]
        self._nets = [(int(n.network_address), int(n.netmask)) for n in nets]

    def __bool__(self) -> bool:
        return bool(self._nets)

    def __contains__(self, addr: int) -> bool:
        for net, mask in self._nets:  # noqa: SIM110 - a loop beats any() on the hot path
            if addr & mask == net:
                return True
        return False


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
