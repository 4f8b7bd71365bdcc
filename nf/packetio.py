"""Packet I/O on one interface: an AF_PACKET socket, its receive ring and its fanout group.

Three ways to receive, chosen with ``--rx`` (figures in the README, from
bench/packetio.py: a veth pair, 60-byte frames, per frame including the parse):

* ``ring`` (default) — a ``TPACKET_V2`` receive ring (``PACKET_MMAP``): the kernel copies
  each frame into a slot of shared memory and flags it; the loop walks the slots in Python
  with no system call per frame and hands each back. The kernel wakes the loop per frame,
  so nothing waits: no added latency.
* ``blocks`` — a ``TPACKET_V3`` ring: frames packed into blocks, one status word per block.
  About 0.2 µs less CPU per frame than ``ring``, but the kernel hands a block over only
  when it is full or its timeout expires (1 ms, the shortest it offers): at low load a
  frame waits up to 1 ms.
* ``socket`` — one ``recvfrom`` per frame: about 0.7 µs more CPU per frame than ``ring``.

Frames are sent with one ``send`` per frame on the same socket: ``sendmmsg`` through ctypes,
a ``TPACKET_V2`` transmit ring and ``PACKET_QDISC_BYPASS`` were measured and saved nothing
on a veth (the kernel's own per-frame transmit work dominates), so they are not used.

Several processes can share the interface's traffic through a ``PACKET_FANOUT`` group in
hash mode: the kernel hashes each frame's flow symmetrically (both directions of a
connection alike) and gives it to one member, so a connection's packets stay in order in
one process.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import socket
import struct

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2, TPACKET_V3 = 1, 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000  # reassemble before hashing: fragments hash alike
PACKET_OTHERHOST = 3
TP_STATUS_USER = 1
RX_MODES = ("ring", "blocks", "socket")

# struct tpacket_block_desc: block_status, num_pkts, offset_to_first_pkt (from offset 8)
_BLOCK = struct.Struct("<8xIII")
# struct tpacket3_hdr: tp_next_offset, tp_snaplen (12), tp_mac (24)
_FRAME = struct.Struct("<I8xI8xH")
_U32 = struct.Struct("<I")
_PKTTYPE = 48 + 10  # sockaddr_ll after the aligned tpacket3_hdr; sll_pkttype at 10
# struct tpacket2_hdr: tp_status, tp_snaplen (8), tp_mac (12); sockaddr_ll at 32
_FRAME2 = struct.Struct("<I4xIH")
_PKTTYPE2 = 32 + 10


class InterfaceGone(Exception):
    """The interface was deleted while the instance ran on it."""


def open_socket(interface: str, rcvbuf: int = 4 << 20) -> socket.socket:
    """An AF_PACKET socket on ``interface`` that sees frames for other MACs (promiscuous
    for the socket's lifetime only: the kernel undoes it when it closes)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with contextlib.suppress(OSError):  # Linux >= 4.20; the packet type is checked anyway
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for opt in (33, socket.SO_RCVBUF):  # SO_RCVBUFFORCE (root) first, then the capped one
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
            break
        except OSError:
            continue
    # The same for sending: frames held through a store failover go out in one burst.
    for opt in (32, socket.SO_SNDBUF):  # SO_SNDBUFFORCE (root) first
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
            break
        except OSError:
            continue
    sock.bind((interface, ETH_P_ALL))
    ifindex = socket.if_nametoindex(interface)
    mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


def join_fanout(sock: socket.socket, group: int) -> None:
    """Join ``sock`` to hash fanout group ``group`` (0..65535) of its interface. Raises
    OSError when the group exists with other settings or on another interface."""
    arg = group | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16)
    sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", arg))


def interface_gone(interface: str, ifindex: int) -> bool:
    """Whether ``interface`` no longer exists (or is a new interface of the same name)."""
    try:
        return socket.if_nametoindex(interface) != ifindex
    except OSError:
        return True


class PacketIO:
    """Receive steered frames in batches and send frames, on one socket."""

    def __init__(
        self,
        interface: str,
        sock: socket.socket,
        rx: str = "ring",
        block_size: int = 1 << 15,
        blocks: int = 128,
        block_timeout_ms: int = 1,
    ):
        self.interface = interface
        self.sock = sock
        self.ifindex = socket.if_nametoindex(interface)
        self.rx = rx
        self.send = sock.send
        self._ring: mmap.mmap | None = None
        if rx == "ring":
            self._setup_frames(block_size * blocks)
            self.receive = self._receive_frames
        elif rx == "blocks":
            self._setup_blocks(block_size, blocks, block_timeout_ms)
            self.receive = self._receive_blocks
        elif rx == "socket":
            self.receive = self._receive_socket
        else:
            raise ValueError(f"unknown receive mode {rx!r}")

    def _setup_blocks(self, block_size: int, blocks: int, timeout_ms: int) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frame_size = 2048  # only for tp_frame_nr: V3 packs frames of any size in a block
        req = struct.pack(
            "7I", block_size, blocks, frame_size, block_size * blocks // frame_size,
            timeout_ms, 0, 0,
        )  # fmt: skip
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._ring = mmap.mmap(s.fileno(), block_size * blocks)
        self._block_size = block_size
        self._blocks = blocks
        self._block = 0  # the block being read
        self._off = 0  # the next frame in it
        self._left = 0  # frames left in it (0: not handed over yet)

    def _setup_frames(self, size: int, frame_size: int = 2048) -> None:
        s = self.sock
        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        block = 1 << 16
        req = struct.pack("4I", block, size // block, frame_size, size // frame_size)
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self._ring = mmap.mmap(s.fileno(), size)
        self._frame_size = frame_size
        self._frames = size // frame_size
        self._slot = 0

    def _receive_frames(self, batch: int, out: list[bytes]) -> int:
        ring = self._ring
        fsize, frames = self._frame_size, self._frames
        slot = self._slot
        frame, release = _FRAME2.unpack_from, _U32.pack_into
        n = 0
        while len(out) < batch:
            off = slot * fsize
            status, snap, mac = frame(ring, off)
            if not status & TP_STATUS_USER:
                break
            n += 1
            if ring[off + _PKTTYPE2] == PACKET_OTHERHOST:
                start = off + mac
                out.append(ring[start : start + snap])  # bytes at once: no memoryview slice
            release(ring, off, 0)
            slot = (slot + 1) % frames
        self._slot = slot
        return n

    def fileno(self) -> int:
        return self.sock.fileno()

    def _receive_socket(self, batch: int, out: list[bytes]) -> int:
        """Append up to ``batch`` steered frames to ``out``; return how many frames were
        read in all (steered or not)."""
        recv = self.sock.recvfrom
        n = 0
        while len(out) < batch:
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            n += 1
            if addr[2] == PACKET_OTHERHOST:
                out.append(data)
        return n

    def _receive_blocks(self, batch: int, out: list[bytes]) -> int:
        ring = self._ring
        size, blocks = self._block_size, self._blocks
        blk, off, left = self._block, self._off, self._left
        frame, block = _FRAME.unpack_from, _BLOCK.unpack_from
        release = _U32.pack_into
        n = 0
        while len(out) < batch:
            base = blk * size
            if left == 0:
                status, count, first = block(ring, base)
                if not status & TP_STATUS_USER:
                    break
                if count == 0:  # an empty block the timeout handed over
                    release(ring, base + 8, 0)
                    blk = (blk + 1) % blocks
                    continue
                off, left = base + first, count
            nxt, snap, mac = frame(ring, off)
            n += 1
            if ring[off + _PKTTYPE] == PACKET_OTHERHOST:
                start = off + mac
                out.append(ring[start : start + snap])
            left -= 1
            off += nxt
            if left == 0:  # give the block back to the kernel
                release(ring, base + 8, 0)
                blk = (blk + 1) % blocks
        self._block, self._off, self._left = blk, off, left
        return n

    def pending_error(self) -> int:
        """The socket's pending error (e.g. ENETDOWN when the link went down), cleared.
        A ring reports errors only this way: there is no recv to raise them."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def gone(self) -> bool:
        return interface_gone(self.interface, self.ifindex)

    def close(self) -> None:
        if self._ring is not None:
            with contextlib.suppress(BufferError):
                self._ring.close()
            self._ring = None
        self.sock.close()


# recv/send errors while the interface is down (e.g. its link was taken down): the instance
# waits for the link to come back instead of exiting, so it can carry traffic again.
LINK_DOWN_ERRNOS = frozenset({errno.ENETDOWN, errno.ENXIO, errno.ENODEV})
