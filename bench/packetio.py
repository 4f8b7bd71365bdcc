"""Packet I/O options for the NF's per-worker path, measured on a veth pair.

A generator process (pinned to one CPU) blasts 60-byte TCP frames into one end with
``sendmmsg``; this process (pinned to the other CPU) receives on the far end with one
option for a few seconds and reports frames per CPU second of its own (user + sys:
``time.process_time``), with and without the NF's parse and a dictionary lookup per frame,
and with each frame sent back out (forwarding). Receive options: ``recvfrom`` per frame (the
loop before the ring), ``recvfrom_into`` a reused buffer, ``recvmmsg`` through ctypes (64 per
call), a ``TPACKET_V2`` ring (one status word per frame), a ``TPACKET_V3`` ring (blocks).
Transmit options: ``send`` per frame, ``sendmmsg`` through ctypes, a ``TPACKET_V2``
transmit ring with and without ``PACKET_QDISC_BYPASS``, ``send`` on a bypass socket.
Then latency at low load: frames one at a time, send -> received, per receive option.
Medians over --rounds interleaved rounds. Needs root.

    .venv/bin/python bench/packetio.py [--rounds 3] [--seconds 1] [--size 60]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from nf.packet import parse

LIBC = ctypes.CDLL(None, use_errno=True)
SOL_PACKET = 263
PACKET_RX_RING, PACKET_TX_RING, PACKET_VERSION, PACKET_QDISC_BYPASS = 5, 13, 10, 20
PACKET_IGNORE_OUTGOING = 23
MSG_DONTWAIT = 0x40
OTHERHOST = 3
RX = ("recvfrom", "recv_into", "recvmmsg", "v2_ring", "v3_ring")
TX = ("send", "sendmmsg", "tx_ring", "tx_ring_bypass", "send_bypass")


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


MSG_LEN_OFFSET = MMsgHdr.len.offset
MMSG_SIZE = ctypes.sizeof(MMsgHdr)


def frames_for(size: int, n: int = 256) -> list[bytes]:
    out = []
    for i in range(n):
        pad = max(0, size - 54)
        tcp = struct.pack("!HHIIBBHHH", 10000 + i, 80, 1, 1, 5 << 4, 0x10, 1000, 0, 0)
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 40 + pad, 0, 0x4000, 64, 6, 0,
            socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.129"),
        )  # fmt: skip
        s = sum(struct.unpack("!10H", ip))
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
        out.append(bytes.fromhex("020000000081020000000001") + b"\x08\x00" + ip + tcp + bytes(pad))
    return out


def mmsg_vector(vlen: int, stride: int, names: bool):
    """(buffer, iovecs, mmsghdrs, names): ``vlen`` messages of ``stride`` bytes each."""
    buf = ctypes.create_string_buffer(vlen * stride)
    addrs = ctypes.create_string_buffer(vlen * 20)
    iovs = (IOVec * vlen)()
    msgs = (MMsgHdr * vlen)()
    for i in range(vlen):
        iovs[i].base = ctypes.addressof(buf) + i * stride
        iovs[i].len = stride
        msgs[i].hdr.iov = ctypes.addressof(iovs[i])
        msgs[i].hdr.iovlen = 1
        if names:
            msgs[i].hdr.name = ctypes.addressof(addrs) + 20 * i
            msgs[i].hdr.namelen = 20
    return buf, iovs, msgs, addrs


def generator(ifname: str, size: int, seconds: float) -> None:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(socket.SOL_SOCKET, 32, 16 << 20)  # SO_SNDBUFFORCE
    s.bind((ifname, 0))
    frames = frames_for(size)
    buf, iovs, msgs, _ = mmsg_vector(len(frames), 2048, names=False)
    for i, f in enumerate(frames):
        ctypes.memmove(ctypes.addressof(buf) + i * 2048, f, len(f))
        iovs[i].len = len(f)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if LIBC.sendmmsg(s.fileno(), msgs, len(frames), 0) <= 0:
            time.sleep(0.0005)


# -- receive options: each returns rx(batch) -> steered frames ------------------------------


def rx_recvfrom(s: socket.socket):
    recv = s.recvfrom

    def rx(batch: int) -> list[bytes]:
        out = []
        while len(out) < batch:
            try:
                d, a = recv(65535)
            except BlockingIOError:
                break
            if a[2] == OTHERHOST:
                out.append(d)
        return out

    return rx


def rx_recv_into(s: socket.socket):
    buf = bytearray(65536)
    view = memoryview(buf)
    recv = s.recvfrom_into

    def rx(batch: int) -> list[bytes]:
        out = []
        while len(out) < batch:
            try:
                n, a = recv(buf)
            except BlockingIOError:
                break
            if a[2] == OTHERHOST:
                out.append(bytes(view[:n]))
        return out

    return rx


def rx_recvmmsg(s: socket.socket, vlen: int = 64, stride: int = 2048):
    keep = mmsg_vector(vlen, stride, names=True)
    buf, _, msgs, addrs = keep
    data, mm = memoryview(buf).cast("B"), memoryview(msgs).cast("B")
    names = memoryview(addrs).cast("B")
    length = struct.Struct("I").unpack_from
    fd, call = s.fileno(), LIBC.recvmmsg

    def rx(batch: int) -> list[bytes]:
        assert keep
        r = call(fd, msgs, min(batch, vlen), MSG_DONTWAIT, None)
        out = []
        for i in range(max(r, 0)):
            if names[20 * i + 10] == OTHERHOST:
                n = length(mm, MMSG_SIZE * i + MSG_LEN_OFFSET)[0]
                out.append(bytes(data[i * stride : i * stride + n]))
        return out

    return rx


def rx_v3_ring(s: socket.socket, block: int = 1 << 15, blocks: int = 128, tov_ms: int = 1):
    s.setsockopt(SOL_PACKET, PACKET_VERSION, 2)
    req = struct.pack("7I", block, blocks, 2048, block * blocks // 2048, tov_ms, 0, 0)
    s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
    ring = mmap.mmap(s.fileno(), block * blocks)
    view = memoryview(ring)
    st = [0, 0, 0]  # block, offset, frames left
    hdr, bdesc, u32 = struct.Struct("<I8xI8xH"), struct.Struct("<8xIII"), struct.Struct("<I")

    def rx(batch: int) -> list[bytes]:
        out = []
        blk, off, left = st
        while len(out) < batch:
            b0 = blk * block
            if left == 0:
                status, num, first = bdesc.unpack_from(ring, b0)
                if not status & 1:
                    break
                off, left = b0 + first, num
                if num == 0:
                    u32.pack_into(ring, b0 + 8, 0)
                    blk = (blk + 1) % blocks
                    continue
            nxt, snap, mac = hdr.unpack_from(ring, off)
            if ring[off + 58] == OTHERHOST:
                out.append(bytes(view[off + mac : off + mac + snap]))
            left -= 1
            off += nxt
            if left == 0:
                u32.pack_into(ring, b0 + 8, 0)
                blk = (blk + 1) % blocks
        st[:] = blk, off, left
        return out

    return rx


def rx_v2_ring(s: socket.socket, frame: int = 2048, frames: int = 2048):
    s.setsockopt(SOL_PACKET, PACKET_VERSION, 1)
    req = struct.pack("4I", 1 << 16, frame * frames >> 16, frame, frames)
    s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
    ring = mmap.mmap(s.fileno(), frame * frames)
    view = memoryview(ring)
    st = [0]
    hdr, u32 = struct.Struct("<I4xIH"), struct.Struct("<I")  # status, snaplen, mac

    def rx(batch: int) -> list[bytes]:
        out = []
        i = st[0]
        while len(out) < batch:
            off = i * frame
            status, snap, mac = hdr.unpack_from(ring, off)
            if not status & 1:
                break
            if ring[off + 42] == OTHERHOST:
                out.append(bytes(view[off + mac : off + mac + snap]))
            u32.pack_into(ring, off, 0)
            i = (i + 1) % frames
        st[0] = i
        return out

    return rx


# -- transmit options --------------------------------------------------------------------------


def tx_send(s: socket.socket):
    send = s.send

    def tx(frames: list[bytes]) -> None:
        for f in frames:
            try:  # noqa: SIM105 - a context manager per frame would cost more than the send
                send(f)
            except BlockingIOError:
                pass

    return tx


def tx_sendmmsg(s: socket.socket, vlen: int = 64, stride: int = 2048):
    keep = mmsg_vector(vlen, stride, names=False)
    buf, iovs, msgs, _ = keep
    data, iov = memoryview(buf).cast("B"), memoryview(iovs).cast("B")
    put = struct.Struct("Q").pack_into
    fd, call = s.fileno(), LIBC.sendmmsg

    def tx(frames: list[bytes]) -> None:
        assert keep
        for j in range(0, len(frames), vlen):
            chunk = frames[j : j + vlen]
            for i, f in enumerate(chunk):
                data[i * stride : i * stride + len(f)] = f
                put(iov, 16 * i + 8, len(f))
            call(fd, msgs, len(chunk), 0)

    return tx


def tx_ring(ifname: str, bypass: bool, frame: int = 2048, frames: int = 512):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    if bypass:
        s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    s.setsockopt(SOL_PACKET, PACKET_VERSION, 1)
    req = struct.pack("4I", 1 << 16, frame * frames >> 16, frame, frames)
    s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
    s.bind((ifname, 0))
    ring = mmap.mmap(s.fileno(), frame * frames)
    view = memoryview(ring)
    st = [0]
    u32, lens = struct.Struct("<I"), struct.Struct("<II")

    def tx(out: list[bytes]) -> None:
        i = st[0]
        for f in out:
            off = i * frame
            if u32.unpack_from(ring, off)[0] != 0:  # slot still owned by the kernel
                break
            view[off + 32 : off + 32 + len(f)] = f  # data at TPACKET2_HDRLEN - sockaddr_ll
            lens.pack_into(ring, off + 4, len(f), len(f))
            u32.pack_into(ring, off, 1)  # TP_STATUS_SEND_REQUEST
            i = (i + 1) % frames
        st[0] = i
        with contextlib.suppress(BlockingIOError):
            s.send(b"", MSG_DONTWAIT)  # one kick sends every requested slot

    tx.keep = (s, ring, view)  # type: ignore[attr-defined]
    return tx


def open_rx(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
    s.bind((ifname, 3))
    s.setblocking(False)
    return s


def make_rx(name: str, s: socket.socket):
    return {
        "recvfrom": rx_recvfrom,
        "recv_into": rx_recv_into,
        "recvmmsg": rx_recvmmsg,
        "v2_ring": rx_v2_ring,
        "v3_ring": rx_v3_ring,
    }[name](s)


def make_tx(name: str, s: socket.socket, ifname: str):
    if name == "send":
        return tx_send(s)
    if name == "sendmmsg":
        return tx_sendmmsg(s)
    if name in ("tx_ring", "tx_ring_bypass"):
        return tx_ring(ifname, bypass=name == "tx_ring_bypass")
    s2 = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s2.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    s2.bind((ifname, 0))
    s2.setblocking(False)
    out = tx_send(s2)
    out.keep = s2  # type: ignore[attr-defined]
    return out


def measure(rx_name: str, tx_name: str | None, work: bool, ifname: str, seconds: float) -> float:
    """Frames per CPU second of this process for one option."""
    s = open_rx(ifname)
    rx = make_rx(rx_name, s)
    tx = make_tx(tx_name, s, ifname) if tx_name else None
    lookup: dict = {}
    n = 0
    c0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frames = rx(64)
        if not frames:
            select.select([s], [], [], 0.01)
            continue
        n += len(frames)
        if work:
            for f in frames:
                p = parse(f)
                if type(p) is not str:
                    lookup.get((p.src, p.sport, p.dst, p.dport))
        if tx is not None:
            tx(frames)
    cpu = time.process_time() - c0
    s.close()
    return n / cpu if cpu else 0.0


def latency(rx_name: str, gen_if: str, ifname: str, count: int = 300) -> tuple[float, float]:
    g = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    g.bind((gen_if, 0))
    frame = frames_for(60, 1)[0]
    s = open_rx(ifname)
    rx = make_rx(rx_name, s)
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        g.send(frame)
        while not rx(64) and time.perf_counter() - t < 0.2:
            select.select([s], [], [], 0.1)
        samples.append((time.perf_counter() - t) * 1e6)
        time.sleep(0.001)
    s.close()
    g.close()
    q = statistics.quantiles(samples, n=100)
    return round(q[49], 1), round(q[98], 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--gen", nargs=3, help=argparse.SUPPRESS)  # the generator process
    args = ap.parse_args()
    if args.gen:
        generator(args.gen[0], int(args.gen[1]), float(args.gen[2]))
        return 0
    if os.geteuid() != 0:
        print("bench/packetio.py needs root (veth pair, packet sockets)", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.seconds <= 0 or not 60 <= args.size <= 1500:
        print("bench/packetio.py: --rounds >= 1, --seconds > 0, 60 <= --size <= 1500",
              file=sys.stderr)  # fmt: skip
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    gen_cpu, my_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    tag = uuid.uuid4().hex[:5]
    a, b = f"pio{tag}g", f"pio{tag}r"
    cases = [(r, None, False) for r in RX] + [(r, None, True) for r in RX]
    cases += [("v3_ring", t, True) for t in TX] + [("recvfrom", "send", True)]
    cases += [("recvmmsg", "sendmmsg", True)]
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    results: dict[tuple, list[float]] = {}
    try:
        for dev in (a, b):
            subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
            subprocess.run(["ip", "link", "set", dev, "up"], check=True)
        if my_cpu is not None:
            os.sched_setaffinity(0, {my_cpu})
        for _ in range(args.rounds):
            for case in cases:
                gen = subprocess.Popen(
                    [sys.executable, __file__, "--gen", a, str(args.size), str(args.seconds + 1)],
                    preexec_fn=(lambda: os.sched_setaffinity(0, {gen_cpu})) if gen_cpu else None,
                )
                time.sleep(0.3)
                results.setdefault(case, []).append(measure(*case, b, args.seconds))
                gen.terminate()  # it was sending for longer than the measurement, as margin
                gen.wait()
        lat = {r: latency(r, a, b) for r in RX}
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
    print(
        f"{args.size}-byte frames, {args.rounds} rounds x {args.seconds} s; load {os.getloadavg()}"
    )
    print("| receive | transmit | per frame | k frames per CPU second (min-max) |")
    print("|---|---|---|---|")
    for (r, t, work), v in results.items():
        what = "parse + lookup" if work else "I/O only"
        print(f"| {r} | {t or '-'} | {what} | {statistics.median(v) / 1e3:,.0f} "
              f"({min(v) / 1e3:,.0f}-{max(v) / 1e3:,.0f}) |")  # fmt: skip
    print("\n| receive | p50 / p99 µs, one frame at a time |\n|---|---|")
    for r, (p50, p99) in lat.items():
        print(f"| {r} | {p50} / {p99} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
