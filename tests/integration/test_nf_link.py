"""An NF instance survives its link going down and carries traffic again when it is back."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

from conftest import require, unique_name
from nf_support import FW, NFProcess, raw_socket, receive, tcp, veth_pair, write_topology

C, S = "10.0.0.1", "10.0.0.129"


def test_instance_waits_out_a_link_down(tmp_path):
    require(os.geteuid() == 0 and shutil.which("ip") is not None, "root and iproute2")
    cfg = write_topology(tmp_path / "t.yaml", "lnk", "firewall", FW)
    with veth_pair(unique_name("nl")) as (outside, nf_if):
        nf = NFProcess(tmp_path, "--kind", "firewall", "--interface", nf_if, "--pool", "lnk",
                       "--name", "fwl", "--state", "local", "--config", str(cfg))  # fmt: skip
        try:
            nf.wait_ready()
            sock = raw_socket(outside)
            sock.send(tcp(C, S, 41000, 80, "S"))
            assert len(receive(sock, 1)) == 1
            # Taking the NF's side down makes its socket report ENETDOWN.
            subprocess.run(["ip", "link", "set", nf_if, "down"], check=True)
            # With the peer down the send may itself fail (ENOBUFS): the frame is lost
            # either way.
            with contextlib.suppress(OSError):
                sock.send(tcp(C, S, 41001, 80, "S"))
            time.sleep(0.5)
            assert nf.proc.poll() is None, "the instance exited when its link went down"
            subprocess.run(["ip", "link", "set", nf_if, "up"], check=True)
            time.sleep(0.2)
            got: list[bytes] = []
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:  # the link takes a moment
                with contextlib.suppress(OSError):  # the carrier may not be back yet
                    sock.send(tcp(C, S, 41002, 80, "S"))
                got = receive(sock, 1, timeout=0.3)
            assert got, "no traffic through the instance after its link came back"
            assert nf.proc.poll() is None
            sock.close()
        finally:
            nf.stop()
        assert nf.final is not None and nf.final["state"] == "stopped"
