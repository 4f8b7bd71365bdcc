"""Failover and join latency: from an event to the switch's barrier reply for the change.

A real controller (in this process), a real Redis, a userspace OVS bridge with one veth
port per instance, and NF registrations made with the NF's own code
(``nf.registration.Registration``) that heartbeat every 100 ms. A pool of 8 instances and
4,096 slots. Measured, each over repeated runs:

- port down: ``ip link set <peer> down`` -> OVS port status -> instance failed -> flows
  moved -> barrier reply;
- registration: the NF registers (MULTI/EXEC + PUBLISH) -> pub/sub -> join -> barrier;
- heartbeat: the NF stops beating; from its last heartbeat, and from the moment its
  heartbeat key expires (last beat + TTL), to the barrier reply of the resulting change.

Usage: ``sudo .venv/bin/python bench/failover.py [--runs 20] [--json]`` (root: it creates
a bridge and veth pairs named ``mb...``, removed on exit).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contract import keys  # noqa: E402
from controller.ofp.launcher import start_in_thread  # noqa: E402
from controller.ofp.options import Options  # noqa: E402
from controller.store.membership import POLL_INTERVAL_S  # noqa: E402
from nf.registration import Identity, Registration  # noqa: E402

POOL = "fw"
SWITCH = "s1"
DPID = 0xF0


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)
    return value


class Rig(contextlib.ExitStack):
    """Redis, bridge, veths and the topology file; all removed on exit."""

    def __init__(self, n: int, slots: int):
        super().__init__()
        self.n, self.slots = n, slots
        self.tag = uuid.uuid4().hex[:5]
        self.bridge = f"mbf{self.tag}"
        self.tmp = Path(tempfile.mkdtemp(prefix="nfsteer-failover-"))
        self.callback(shutil.rmtree, self.tmp, True)

    def __enter__(self) -> Rig:
        super().__enter__()
        try:
            self._start_redis()
            self._make_bridge()
        except BaseException:
            self.close()
            raise
        return self

    def _start_redis(self) -> None:
        self.redis_port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.callback(lambda: (proc.terminate(), proc.wait(5)))
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        wait(lambda: _can_connect(self.redis_port), 5, "redis-server")

    def _make_bridge(self) -> None:
        self.callback(sh, "ovs-vsctl", "--if-exists", "del-br", self.bridge, check=False)
        sh(
            "ovs-vsctl", "add-br", self.bridge, "--", "set", "bridge", self.bridge,
            "datapath_type=netdev", "protocols=OpenFlow13", "fail-mode=secure",
            f"other-config:datapath-id={DPID:016x}",
        )  # fmt: skip
        self.peers: dict[int, str] = {}
        for k in range(1, self.n + 1):
            port = 10 + k
            a, b = f"{self.bridge}p{k}", f"{self.bridge}q{k}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            self.callback(sh, "ip", "link", "del", a, check=False)
            for dev in (a, b):
                sh("ip", "link", "set", dev, "up")
            sh(
                "ovs-vsctl", "add-port", self.bridge, a, "--", "set", "interface", a,
                f"ofport_request={port}",
            )  # fmt: skip
            self.peers[port] = b

    def topology(self) -> Path:
        topo = {
            "name": "failover",
            "switches": {SWITCH: {"dpid": DPID}},
            "hosts": {
                "c1": {
                    "switch": SWITCH,
                    "port": 1,
                    "mac": "02:00:00:00:00:01",
                    "ip": "10.0.0.1/24",
                },
                "sv1": {
                    "switch": SWITCH,
                    "port": 2,
                    "mac": "02:00:00:00:00:81",
                    "ip": "10.0.0.129/24",
                },
            },
            "pools": {
                POOL: {
                    "kind": "firewall",
                    "slots": self.slots,
                    "membership": "registered",
                    "instances": {
                        f"fw{k}": {
                            "switch": SWITCH,
                            "port": 10 + k,
                            "mac": f"02:00:00:00:01:{k:02x}",
                            "ip": f"10.0.0.{100 + k}/24",
                        }
                        for k in range(1, self.n + 1)
                    },
                }
            },
            "services": {"web": {"pool": POOL, "match": [{"proto": "tcp", "src": "10.0.0.0/25"}]}},
        }
        path = self.tmp / "topology.yaml"
        path.write_text(yaml.safe_dump(topo))
        return path


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class NF:
    """One NF instance's registration and heartbeat loop (the NF's own code)."""

    def __init__(self, url: str, k: int, ttl_ms: int):
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=1)
        self.reg = Registration(
            self.client,
            Identity(
                name=f"fw{k}", pool=POOL, kind="firewall", mac=f"02:00:00:00:01:{k:02x}",
                ip=f"10.0.0.{100 + k}", interface=f"fw{k}-eth0", capacity=1,
            ),
            ttl_ms=ttl_ms,
        )  # fmt: skip
        self.beating = threading.Event()
        self.last_beat = 0.0
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.beating.set()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.beating.is_set():
            self.reg.heartbeat()
            self.last_beat = time.monotonic()
            time.sleep(keys.HEARTBEAT_INTERVAL_MS / 1000)

    def stop(self) -> float:
        """Stop beating; returns the monotonic time of the last heartbeat."""
        self.beating.clear()
        if self.thread is not None:
            self.thread.join()
        return self.last_beat


class Tracer:
    """The app's changes, whatever made them (its record of recent changes)."""

    def __init__(self, app: Any):
        self.app = app

    @property
    def results(self) -> list[tuple[str, Any]]:
        return self.app.recent_changes()

    def wait_for(self, since: int, match: str, timeout: float = 10.0, moved: bool = True) -> Any:
        """The first change since mark ``since`` whose reason contains ``match`` (and that
        moved slots), once every switch answered its barrier."""

        def found():
            for reason, result in self.results:
                if result.number <= since:
                    continue
                if match in reason and (not moved or any(c.moved for c in result.changes)):
                    return result
            return None

        result = wait(found, timeout, f"a change '{match}'")
        if not result.wait(timeout):
            raise RuntimeError(f"no barrier reply for '{match}'")
        return result

    def mark(self) -> int:
        """The number of the latest change: later ones are looked for."""
        results = self.results
        return results[-1][1].number if results else 0


def summary(samples_s: list[float]) -> dict[str, float | int]:
    ms = sorted(x * 1000 for x in samples_s)
    p99 = ms[min(len(ms) - 1, max(0, round(0.99 * len(ms)) - 1))]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ms[-1], 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Rig(args.instances, args.slots) as rig:
        options = Options(
            topology=rig.topology(),
            redis_url=rig.redis_url,
            listen=("127.0.0.1", 0),
            api=("127.0.0.1", 0),
            heartbeat_ttl_ms=args.ttl_ms,
            log_level=args.log_level,
        )
        app, stop = start_in_thread(options)
        rig.callback(stop)
        tracer = Tracer(app)
        sh("ovs-vsctl", "set-controller", rig.bridge, f"tcp:127.0.0.1:{app.options.listen[1]}")
        if not app.wait_synced(SWITCH, 20):
            raise RuntimeError("the switch did not connect")
        nfs = {10 + k: NF(rig.redis_url, k, args.ttl_ms) for k in range(1, args.instances + 1)}
        for nf in nfs.values():
            nf.reg.register()
            nf.start()
        rig.callback(lambda: [nf.stop() for nf in nfs.values()])
        pool = app.steering.pools[POOL]
        wait(lambda: len(pool.active_capacities()) == args.instances, 10, "all instances")

        def active(port: int) -> bool:
            return pool.instances[f"fw{port - 10}"].state == "active"

        ports = sorted(nfs)
        port_down, registration, hb_last, hb_expiry = [], [], [], []
        detect: dict[str, list[float]] = {"port_down": [], "registration": [], "heartbeat": []}
        program: list[float] = []  # apply() called -> every barrier answered
        for i in range(args.runs):
            port = ports[i % len(ports)]
            # Port down, then back up (the heartbeat brings it back).
            mark = tracer.mark()
            t0 = time.monotonic()
            sh("ip", "link", "set", rig.peers[port], "down")
            r = tracer.wait_for(mark, f"port {SWITCH}:{port} down")
            port_down.append(r.barrier_done - t0)
            detect["port_down"].append(r.started - t0)
            program.append(r.barrier_done - r.started)
            mark = tracer.mark()
            sh("ip", "link", "set", rig.peers[port], "up")
            tracer.wait_for(mark, "join")
            wait(lambda port=port: active(port), 10, "rejoin after port up")

            # Deregister, then register again.
            nf = nfs[port]
            nf.stop()
            mark = tracer.mark()
            nf.reg.deregister()
            tracer.wait_for(mark, "deregister", moved=False)  # also its barrier
            wait(lambda port=port: f"fw{port - 10}" not in pool.instances, 10, "removal")
            mark = tracer.mark()
            t0 = time.monotonic()
            nf.reg.register()
            r = tracer.wait_for(mark, "join")
            registration.append(r.barrier_done - t0)
            detect["registration"].append(r.started - t0)
            program.append(r.barrier_done - r.started)
            nf.start()

            if i < args.heartbeat_runs:
                mark = tracer.mark()
                last = nf.stop()
                r = tracer.wait_for(mark, "heartbeat lost", timeout=10)
                hb_last.append(r.barrier_done - last)
                hb_expiry.append(r.barrier_done - (last + args.ttl_ms / 1000))
                detect["heartbeat"].append(r.started - last)
                program.append(r.barrier_done - r.started)
                mark = tracer.mark()
                nf.start()
                tracer.wait_for(mark, "join")
            time.sleep(0.05)
        return {
            "bench": "failover",
            "instances": args.instances,
            "slots": args.slots,
            "heartbeat_ttl_ms": args.ttl_ms,
            "heartbeat_interval_ms": keys.HEARTBEAT_INTERVAL_MS,
            "poll_interval_ms": round(POLL_INTERVAL_S * 1000),
            "port_down": summary(port_down),
            "registration": summary(registration),
            "heartbeat_from_last_beat": summary(hb_last),
            "heartbeat_from_expiry": summary(hb_expiry),
            "detection": {k: summary(v) for k, v in detect.items()},
            "programming": summary(program),
            "switch_errors": app.counters.switch_errors,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="port-down and registration runs")
    p.add_argument("--heartbeat-runs", type=int, default=10, help="heartbeat-loss runs")
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--slots", type=int, default=4096)
    p.add_argument("--ttl-ms", type=int, default=keys.HEARTBEAT_TTL_MS)
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--log-level", default="WARNING", help="controller log level")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("os_ken").setLevel(logging.ERROR)
    out = run(args)
    print(
        f"failover, {out['instances']} instances x {out['slots']} slots, heartbeat TTL "
        f"{out['heartbeat_ttl_ms']} ms (beat every {out['heartbeat_interval_ms']} ms, "
        f"polled every {out['poll_interval_ms']} ms); event -> barrier reply:"
    )
    for key, label in (
        ("port_down", "port down"),
        ("registration", "registration"),
        ("heartbeat_from_last_beat", "heartbeat, from the last beat"),
        ("heartbeat_from_expiry", "heartbeat, from key expiry"),
    ):
        s = out[key]
        print(f"  {label:32s} median {s['median_ms']:7.1f} ms   p99 {s['p99_ms']:7.1f} ms"
              f"   (n={s['n']})")  # fmt: skip
    d = out["detection"]
    print(
        "  of which detection (event -> change applied): port down "
        f"{d['port_down']['median_ms']:.1f} ms, registration {d['registration']['median_ms']:.1f}"
        f" ms, heartbeat (from the last beat) {d['heartbeat']['median_ms']:.1f} ms (medians);"
    )
    print(
        "  programming (change -> every barrier answered): median "
        f"{out['programming']['median_ms']:.1f} ms, p99 {out['programming']['p99_ms']:.1f} ms"
    )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
