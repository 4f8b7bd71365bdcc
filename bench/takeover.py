"""Controller takeover: kill -9 the leader, again and again, and time the hand-over.

Three real ``nfsteer controller`` processes share one Redis and three userspace OVS bridges
(the triangle topology: every bridge is connected to every controller). Each round kills the
leader and measures, in two phases of ``--kills`` rounds each:

1. nothing else changes: kill -> MASTER on every switch and programmed (the new leader's
   ``takeover complete``: ``nfsteer_takeover_seconds_count`` goes up, polled every 10 ms),
   and the flow-mods the new leader sent for it (0: the switches are in sync);
2. one registered NF stops beating at the moment of the kill (it dies while no controller
   leads): kill -> first membership decision, the NF shown ``failed`` by the new leader.

The killed controller is restarted as a standby and the NF re-registered before the next
round. Run as root::

    .venv/bin/python bench/takeover.py --kills 20 [--lease-ms 1000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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

import httpx
import redis
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from contract import keys  # noqa: E402

NFSTEER = Path(sys.executable).parent / "nfsteer"
TRIANGLE = REPO / "tests" / "data" / "triangle.yaml"
TTL_MS = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float, what: str, step: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
        time.sleep(step)
    raise TimeoutError(f"timed out waiting for {what}")


def sh(*args: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


class Controller:
    def __init__(self, name: str, topo: Path, redis_url: str, workdir: Path, lease_ms: int):
        self.name, self.topo, self.redis_url, self.workdir = name, topo, redis_url, workdir
        self.lease_ms = lease_ms
        self.of_port, self.api_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [str(NFSTEER), "controller", "--topology", str(self.topo)]
        args += ["--redis", self.redis_url, "--id", self.name, "--lease-ms", str(self.lease_ms)]
        args += ["--listen", f"127.0.0.1:{self.of_port}", "--api", f"127.0.0.1:{self.api_port}"]
        args += ["--heartbeat-ttl-ms", str(TTL_MS), "--log-level", "WARNING"]
        out = (self.workdir / f"{self.name}.out").open("ab")
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait(self.answers, 30, f"controller {self.name}")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def answers(self) -> bool:
        try:
            httpx.get(self.api + "/healthz", timeout=0.5)
            return True
        except httpx.HTTPError:
            return False

    def health(self) -> dict[str, Any]:
        return httpx.get(self.api + "/healthz", timeout=1).json()

    def metric(self, name: str) -> float:
        text = httpx.get(self.api + "/metrics", timeout=1).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def state_of(self, pool: str, name: str) -> str | None:
        detail = httpx.get(self.api + f"/api/v1/pools/{pool}", timeout=1).json()
        return next((m["state"] for m in detail["members"] if m["name"] == name), None)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class NFBeat:
    """One registered instance's side of the contract: registration, and heartbeats every
    TTL / 5 from a thread of its own while ``alive`` is set."""

    def __init__(self, client: redis.Redis, pool: str, name: str, info: dict[str, Any]):
        self.client, self.pool, self.name, self.info = client, pool, name, info
        self.alive = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat_loop, daemon=True)
        self.thread.start()

    def _beat_loop(self) -> None:
        while not self.stopped.wait(TTL_MS / 5000):
            if self.alive.is_set():
                with contextlib.suppress(redis.RedisError):
                    self.beat()

    def register(self) -> None:
        fields = {"name": self.name, "pool": self.pool, "kind": "firewall",
                  "capacity": self.info.get("capacity", 1),
                  "mac": self.info["mac"], "ip": self.info["ip"].split("/")[0],
                  "state": "active", "pid": os.getpid(), "started": time.time()}  # fmt: skip
        p = self.client.pipeline(transaction=True)
        p.hset(keys.instance(self.pool, self.name), mapping=fields)
        p.sadd(keys.members(self.pool), self.name)
        p.execute()
        self.beat()
        self.alive.set()
        self.client.publish(keys.events(self.pool), f"register {self.name}")

    def beat(self) -> None:
        self.client.set(keys.heartbeat(self.pool, self.name), time.time(), px=TTL_MS)


def summary(samples: list[float]) -> dict[str, float | int]:
    s = sorted(samples)
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s) * 1000, 1),
        "p90_ms": round(s[int(0.9 * (len(s) - 1))] * 1000, 1),
        "max_ms": round(s[-1] * 1000, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:4]
    work = Path(tempfile.mkdtemp(prefix="nfsteer-takeover-"))
    data = yaml.safe_load(TRIANGLE.read_text())
    pool_name = next(iter(data["pools"]))
    pool = data["pools"][pool_name]
    pool["membership"] = "registered"
    pool.pop("nf", None)
    topo = work / "topology.yaml"
    topo.write_text(yaml.safe_dump(data))
    rport = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{rport}/0"
    bridges = []
    nfs: list[NFBeat] = []
    controllers = [Controller(n, topo, url, work, args.lease_ms) for n in ("ca", "cb", "cc")]
    try:
        wait(lambda: redis.Redis(port=rport).ping(), 10, "redis")
        client = redis.Redis(port=rport, decode_responses=True)
        for name, sw in data["switches"].items():
            br = f"tk{tag}{name}"
            sh("ovs-vsctl", "add-br", br, "--", "set", "bridge", br, "datapath_type=netdev",
               "protocols=OpenFlow13", "fail_mode=secure",
               f"other-config:datapath-id={sw['dpid']:016x}")  # fmt: skip
            bridges.append(br)
            ports = {i["port"] for i in pool["instances"].values() if i["switch"] == name}
            for p in sorted(ports):
                iface = f"{br}p{p}"
                sh("ovs-vsctl", "add-port", br, iface, "--", "set", "interface", iface,
                   "type=internal", f"ofport_request={p}")  # fmt: skip
                sh("ip", "link", "set", iface, "up")
        for c in controllers:
            c.start()
        for br in bridges:
            sh(
                "ovs-vsctl",
                "set-controller",
                br,
                *[f"tcp:127.0.0.1:{c.of_port}" for c in controllers],
            )
        instances = sorted(pool["instances"])
        nfs += [NFBeat(client, pool_name, n, pool["instances"][n]) for n in instances]
        for nf in nfs:
            nf.register()
        victim = nfs[0]

        def leader() -> Controller | None:
            for c in controllers:
                if c.proc and c.proc.poll() is None:
                    with contextlib.suppress(httpx.HTTPError):
                        if c.health()["role"] == "leader":
                            return c
            return None

        master_s, decision_s, flow_mods = [], [], []
        wait(lambda: leader() is not None, 20, "a first leader")
        for round_no in range(2 * args.kills):
            nf_dies = round_no >= args.kills
            # steady state: everyone beats, every instance active at the leader, and no
            # change for a while (the flow-mods counted next are the takeover's alone)
            deadline = time.monotonic() + 30
            stable: tuple[Any, ...] | None = None
            since = time.monotonic()
            while True:
                lead = leader()
                if lead is not None and all(
                    lead.state_of(pool_name, n) == "active" for n in instances
                ):
                    now_state = (lead.name, lead.metric("nfsteer_flow_mods_sent_total"))
                    if now_state != stable:
                        stable, since = now_state, time.monotonic()
                    elif time.monotonic() - since > 1.0:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("steady state")
                time.sleep(0.05)
            others = [c for c in controllers if c is not lead]
            before = {
                c.name: (
                    c.metric("nfsteer_takeover_seconds_count"),
                    c.metric("nfsteer_flow_mods_sent_total"),
                )
                for c in others
            }
            t0 = time.monotonic()
            assert lead.proc is not None
            lead.proc.send_signal(signal.SIGKILL)
            if nf_dies:
                victim.alive.clear()  # the victim dies with the leader
            new: Controller | None = None
            t_master = t_decision = None
            mods = 0.0
            if not nf_dies:
                t_decision = t0  # not measured in this phase
            while t_decision is None or t_master is None:
                now = time.monotonic()
                if now - t0 > 30:
                    raise TimeoutError(f"round {round_no}: no takeover")
                for c in others:
                    with contextlib.suppress(httpx.HTTPError):
                        count = c.metric("nfsteer_takeover_seconds_count")
                        if t_master is None and count > before[c.name][0]:
                            t_master, new = time.monotonic(), c
                            mods = c.metric("nfsteer_flow_mods_sent_total") - before[c.name][1]
                if new is not None and t_decision is None:
                    with contextlib.suppress(httpx.HTTPError):
                        if new.state_of(pool_name, victim.name) == "failed":
                            t_decision = time.monotonic()
                time.sleep(0.01)
            assert new is not None
            if nf_dies:
                decision_s.append(t_decision - t0)
                line = (
                    f"NF failed {decision_s[-1] * 1000:.0f} ms after the kill "
                    f"(MASTER after {(t_master - t0) * 1000:.0f} ms)"
                )
            else:
                master_s.append(t_master - t0)
                flow_mods.append(mods)
                line = f"MASTER on {len(bridges)} switches after {master_s[-1] * 1000:.0f} ms"
                line += f", {mods:.0f} flow-mods"
            print(f"round {round_no + 1}/{2 * args.kills}: {lead.name} killed -> {new.name}: "
                  f"{line}", file=sys.stderr)  # fmt: skip
            lead.proc.wait()
            lead.start()  # back as a standby
            if nf_dies:
                victim.register()
        return {
            "kills": args.kills,
            "lease_ms": args.lease_ms,
            "heartbeat_ttl_ms": TTL_MS,
            "switches": len(bridges),
            "controllers": len(controllers),
            "kill_to_master_on_every_switch": summary(master_s),
            "kill_to_first_membership_decision": summary(decision_s),
            "bound_nf_failure_ms": args.lease_ms + TTL_MS + 200,
            "flow_mods_per_takeover": {"max": max(flow_mods), "total": sum(flow_mods)},
        }
    finally:
        for nf in nfs:
            nf.stopped.set()
        for c in controllers:
            c.stop(signal.SIGKILL)
        for br in bridges:
            subprocess.run(["ovs-vsctl", "--if-exists", "del-br", br], capture_output=True)
        redis_proc.terminate()
        redis_proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="leader kills (default %(default)s)")
    p.add_argument("--lease-ms", type=int, default=1000, help="lease (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("takeover.py: must run as root (Open vSwitch)", file=sys.stderr)
        return 2
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
